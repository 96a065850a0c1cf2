"""``kasmina demo`` end to end (issue 6): a real run on SQLite, kill -9 and resume, the plot.

The demo runs as the user runs it, through the ``kasmina`` console script in a child
process; the short runs use ``--steps 96 --host-steps 150`` (the plan scales its stage
lengths to the run, so the whole lifecycle still happens). The kill test SIGKILLs the child
once the log holds a checkpoint from the middle of the run, resumes it, and compares the
seeds with an uninterrupted run of the same ``--rng``.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _demo import KASMINA, kill_demo

SHORT = ["--steps", "96", "--host-steps", "150"]


def kasmina(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([KASMINA, *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"kasmina {' '.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done


def demo_json(db: Path, *extra: str) -> dict[str, Any]:
    out = kasmina("demo", "--db", f"sqlite:///{db}", *SHORT, "--json", "--quiet", *extra)
    return json.loads(out.stdout)


def outcome(report: dict[str, Any]) -> list[tuple[str, str, str | None, int]]:
    return [(s["seed"], s["stage"], s["blend_mode"], s["generations"]) for s in report["seeds"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    db = tmp_path_factory.mktemp("demo") / "run.db"
    return db, demo_json(db, "--rng", "3")


def test_short_demo_grows_seeds_and_writes_a_verifiable_log(uninterrupted: tuple[Path, dict[str, Any]]) -> None:
    db, report = uninterrupted
    assert {"task", "contenders", "seeds", "events", "log_digest"} <= report.keys() and report["task"] == "digits"
    contenders = report["contenders"]
    assert list(contenders) == ["host", "grown", "static"]
    assert all(0.0 <= c["val_accuracy"] <= 1.0 and c["seconds"] > 0 for c in contenders.values())
    # The static network has the grown network's architecture: the same parameters, more than the host's.
    assert contenders["static"]["parameters"] == contenders["grown"]["parameters"] > contenders["host"]["parameters"]
    assert report["steps"] == 96 and report["events"] > 20
    fossils = [s for s in report["seeds"] if s["stage"] == "FOSSILIZED"]
    assert len({s["blend_mode"] for s in fossils}) >= 2, report["seeds"]
    culled = [s for s in report["seeds"] if s["culls"]]
    assert culled, "the unstable seed must be culled by a gate"
    cull = culled[0]["culls"][0]
    assert cull["gate"] == "G2_STABILITY" and "not finite" in cull["reason"]
    # ... then embargoed, reset and germinated again: generation 2 of the same site.
    assert culled[0]["generations"] == 2
    stages = [r[0] for r in sqlite3.connect(db).execute(
        "SELECT to_stage FROM seed_transitions WHERE seed_id = ? ORDER BY position", (culled[0]["seed"],))]
    i = stages.index("CULLED")
    assert stages[i:i + 4] == ["CULLED", "EMBARGOED", "RESETTING", "DORMANT"]
    assert "GERMINATED" in stages[i + 4:]
    assert [r["reason"] for r in report["refusals"]] == ["illegal_transition"]
    verified = kasmina("verify", "--db", f"sqlite:///{db}", "--json")
    assert json.loads(verified.stdout)["ok"] is True
    # Every command was signed: no security refusal in the log.
    refusals = sqlite3.connect(db).execute("SELECT reason FROM command_refusals").fetchall()
    assert refusals == [("illegal_transition",)]


def test_the_same_rng_gives_the_same_run(uninterrupted: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    _, first = uninterrupted
    again = demo_json(tmp_path / "again.db", "--rng", "3")
    assert outcome(again) == outcome(first)
    assert again["log_digest"] == first["log_digest"]
    for name in ("host", "grown", "static"):
        assert again["contenders"][name]["val_accuracy"] == first["contenders"][name]["val_accuracy"]


def _checkpoint_steps(db: Path) -> list[int]:
    """Steps of the checkpoints the log holds, read while the writer runs (WAL: no blocking)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            rows = conn.execute("SELECT payload FROM kasmina_events WHERE event_type = 'checkpoint_saved'").fetchall()
    except sqlite3.OperationalError:  # the schema is still being created
        return []
    return [json.loads(r[0])["step"] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_step", [None, 30, 70])
def test_kill_and_resume_matches_an_uninterrupted_run(uninterrupted: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                      kill_after_step: int | None) -> None:
    """SIGKILL mid-run (``None``: while the host still trains alone, before any checkpoint)."""
    _, expected = uninterrupted
    db = tmp_path / "killed.db"
    status = kill_demo(["--db", f"sqlite:///{db}", *SHORT, "--rng", "3", "--checkpoint-every", "4"],
                       after_step=kill_after_step, db=db)
    assert status == -signal.SIGKILL
    killed_at = max(_checkpoint_steps(db), default=None)
    if kill_after_step is not None:
        assert killed_at is not None and kill_after_step - 4 <= killed_at < 96
    resumed = demo_json(db, "--rng", "3", "--resume")
    assert outcome(resumed) == outcome(expected)
    # Exactly the uninterrupted run: the steps after the checkpoint were trained again under
    # the decisions the log held for them, so the same decisions and the same weights.
    assert resumed["log_digest"] == expected["log_digest"]
    for name in ("host", "grown", "static"):
        assert resumed["contenders"][name]["val_accuracy"] == expected["contenders"][name]["val_accuracy"]
    if kill_after_step is not None:
        assert resumed["resumed_from_step"] == killed_at
    assert json.loads(kasmina("verify", "--db", f"sqlite:///{db}", "--json").stdout)["ok"] is True
    # Resuming a finished run reports it again and changes nothing in the seeds.
    again = demo_json(db, "--resume")
    assert outcome(again) == outcome(expected)


def test_plot_is_a_png_with_three_panels(uninterrupted: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    db, _ = uninterrupted
    copy = tmp_path / "run.db"
    shutil.copy(db, copy)
    png = tmp_path / "demo.png"
    report = demo_json(copy, "--resume", "--plot", str(png))
    assert report["plot"] == str(png)
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    assert (width, height) == (1000, 900)
    assert png.stat().st_size > 20_000  # three drawn panels, not an empty canvas

    from kasmina.demo import plot
    from kasmina.demo.digits import model
    from kasmina.events import open_store

    with open_store(f"sqlite:///{copy}") as store:
        fig = plot.figure(store, model.SITES, {name: {"step": [151, 152], "value": [0.5, 0.6]}
                                               for name in ("host", "grown", "static")}, offset=150,
                          label="validation accuracy")
        alphas, spans = plot.trajectory(store, "body.2", 96)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 3 and "Blend weight" in titles[0] and "accuracy" in titles[1] and "Lifecycle" in titles[2]
    assert len(alphas) == 97 and alphas[0] == 0.0 and alphas[-1] == 1.0  # generation 2 fossilized
    assert [s[2].name for s in spans].count("CULLED") == 1


# -- refusals: one line, exit code, nothing written -----------------------------------------------

def _one_line_error(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _events(db: Path) -> int:
    return sqlite3.connect(db).execute("SELECT COUNT(*) FROM kasmina_events").fetchone()[0]


def test_second_run_on_the_same_log_needs_resume(uninterrupted: tuple[Path, dict[str, Any]]) -> None:
    db, _ = uninterrupted
    before = _events(db)
    done = kasmina("demo", "--db", f"sqlite:///{db}", *SHORT, "--quiet", check=False)
    _one_line_error(done, 1, "already holds a demo run", "--resume")
    assert _events(db) == before


def test_resume_with_other_settings_is_refused(uninterrupted: tuple[Path, dict[str, Any]]) -> None:
    db, _ = uninterrupted
    before = _events(db)
    done = kasmina("demo", "--db", f"sqlite:///{db}", "--resume", "--rng", "4", "--quiet", check=False)
    _one_line_error(done, 1, "--rng 3, not 4")
    assert _events(db) == before


def test_a_run_whose_checkpoints_are_gone_is_not_resumed(tmp_path: Path) -> None:
    """Found in review: with every checkpoint file gone, --resume re-trained the host and
    carried on from the log's step, pairing the log's stages with weights never theirs."""
    db = tmp_path / "lost.db"
    demo_json(db, "--rng", "3", "--steps", "24", "--host-steps", "20")
    shutil.rmtree(tmp_path / "lost.db.checkpoints")
    before = _events(db)
    done = kasmina("demo", "--db", f"sqlite:///{db}", "--resume", "--quiet", check=False)
    _one_line_error(done, 1, "cannot be resumed", "no usable checkpoint")
    assert _events(db) == before


def test_a_log_of_something_else_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "sim.db"
    kasmina("simulate", "--db", f"sqlite:///{db}", "--seeds", "2", "--steps", "20", "--quiet")
    before = _events(db)
    done = kasmina("demo", "--db", f"sqlite:///{db}", *SHORT, "--quiet", check=False)
    _one_line_error(done, 1, "not a kasmina demo run")
    assert _events(db) == before


@pytest.mark.parametrize("args, fragment", [
    (["--plot", "out.jpg"], "ending in .png"),
    (["--steps", "0"], "expected a number in"),
    (["--rng", "-1"], "expected a number >= 0"),
    (["--device", "tpu"], "invalid choice"),
    (["--task", "images"], "invalid choice"),
    (["--context", "64"], "--context is an option of --task text"),
    (["--task", "text", "--width", "0"], "expected a number in"),
])
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str], fragment: str) -> None:
    done = kasmina("demo", "--db", f"sqlite:///{tmp_path / 'x.db'}", *args, check=False, cwd=tmp_path)
    _one_line_error(done, 2, fragment)
    assert not (tmp_path / "x.db").exists()


def test_a_text_context_longer_than_the_validation_split_allows_is_refused(tmp_path: Path) -> None:
    done = kasmina("demo", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--task", "text", "--context", "100000",
                   check=False)
    _one_line_error(done, 1, "--context 100000", "give at most")
    assert _events(tmp_path / "x.db") == 0  # nothing written


def test_cuda_without_a_gpu_is_refused(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = kasmina("demo", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--device", "cuda", check=False)
    _one_line_error(done, 1, "no CUDA device")


def test_the_host_only_control_shares_no_optimizer_state_with_the_grown_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control is trained beside the grown network: had its AdamW moments been the grown
    host's (load_state_dict keeps tensors it need not cast), each step would update both."""
    import importlib

    import torch

    from kasmina.demo import DemoOptions

    demo_run = importlib.import_module("kasmina.demo.run")  # the module, not the function it exports

    seen: list[torch.optim.Optimizer] = []
    original = demo_run._train_step

    def spy(task: Any, model: Any, optimizer: torch.optim.Optimizer, x: Any, y: Any) -> Any:
        if optimizer not in seen:
            seen.append(optimizer)
        return original(task, model, optimizer, x, y)

    monkeypatch.setattr(demo_run, "_train_step", spy)
    demo_run.run(DemoOptions(db=f"sqlite:///{tmp_path / 'd.db'}", steps=4, host_steps=20, rng=1))
    host, control, static = seen  # the grown host's, the control's, the static network's
    assert static is not host and static is not control
    assert host is not control
    storages = [{t.untyped_storage().data_ptr() for s in o.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor) and t.numel() > 1} for o in (host, control)]
    assert storages[0] and storages[1] and not storages[0] & storages[1]


def test_the_static_curve_noted_in_the_log_is_thinned_but_keeps_its_ends() -> None:
    from kasmina.demo.run import NOTED_POINTS, _thinned

    long = {"step": list(range(1, 2201)), "value": [float(i) for i in range(2200)]}
    thin = _thinned(long)
    assert len(thin["step"]) == NOTED_POINTS and thin["step"][0] == 1 and thin["step"][-1] == 2200
    assert thin["step"] == sorted(thin["step"]) and all(v == s - 1 for s, v in zip(thin["step"], thin["value"]))
    short = {"step": [10, 20], "value": [0.5, 0.6]}
    assert _thinned(short) == short


def test_catch_up_marks_never_step_back_for_a_late_recorded_fact() -> None:
    """Found in review: a kernel_attached that lead() recorded late carries an old step; taken
    as is, it let a second resume fold every later decision at that old step at once."""
    from kasmina.executor.catchup import CatchUp
    from kasmina.events import LogView, open_store
    from kasmina.events.store import NewEvent

    with open_store("memory://") as store:
        for step in (5, 7, 5, 8):  # the third: a fact recorded late with the step it happened at
            store.append("s", [NewEvent("run_note", {"kind": "x", "step": step})])
        catch_up = CatchUp(store, LogView(store, 1), 1)
        assert [s for _, s in catch_up.marks] == [7, 7, 8]
        assert catch_up.last_step == 8
