"""Executor checkpoints (SPEC §13): atomic files the log vouches for, restored by seed id.

Each test trains the small CNN of ``test_executor`` with real seeds on a real SQLite log,
checkpoints it, then opens a NEW model and executor on the same log (as a restarted
process would) and restores.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

import kasmina
from kasmina import commands
from kasmina.errors import KasminaError
from kasmina.executor import checkpoint as checkpoints
from kasmina.rebuild import replay
from test_executor import FAST, SECRET, Net, _catalogue, signed, train

SITES = ["features.2", "classifier.1"]
SLOW = {**FAST, "training_steps": 50}


def open_run(db: str) -> tuple[Net, torch.optim.Optimizer, kasmina.Executor]:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, opt, kasmina.Executor(model, sites=SITES, db=db, secret=SECRET, catalogue=_catalogue(),
                                        optimizer=opt)


def germinate(ex: kasmina.Executor, site: str, blueprint: str = "conv_adapter") -> None:
    assert ex.handle(signed(commands.germinate(site, blueprint, parameters=SLOW))).accepted


def seed_group(opt: torch.optim.Optimizer, seed: str) -> dict:
    return next(g for g in opt.param_groups if g.get("kasmina_seed") == seed)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'run.db'}"


def test_restore_brings_back_host_seeds_and_optimizer_state_by_seed_id(db: str, tmp_path: Path) -> None:
    model, opt, ex = open_run(db)
    germinate(ex, "classifier.1", "bottleneck_mlp")
    germinate(ex, "features.2")
    train(model, opt, ex, 6)
    saved = ex.checkpoint(tmp_path / "ckpt", extra={"epoch": 3, "curve": [0.5, 0.25]})
    want = {k: v.clone() for k, v in model.state_dict().items()}
    want_state = {s: [opt.state[p]["exp_avg"].clone() for p in seed_group(opt, s)["params"]] for s in SITES}
    step = ex.step_count
    ex.close()

    # A new process attaches the seeds in site order, not in the order they were germinated:
    # the optimizer's groups come out in another order, which keying by seed id must survive.
    model2, opt2, ex2 = open_run(db)
    try:
        assert [g.get("kasmina_seed") for g in opt2.param_groups][1:] != \
            [g.get("kasmina_seed") for g in opt.param_groups][1:]
        restored = ex2.restore()
        assert restored is not None and restored.checkpoint.sha256 == saved.sha256
        assert restored.extra == {"epoch": 3, "curve": [0.5, 0.25]}
        assert sorted(restored.seeds_loaded) == sorted(SITES) and restored.seeds_fresh == []
        assert restored.skipped == []
        got = model2.state_dict()
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert torch.equal(got[key], value), key
        for seed, states in want_state.items():
            params = seed_group(opt2, seed)["params"]
            for p, exp_avg in zip(params, states):
                assert torch.equal(opt2.state[p]["exp_avg"], exp_avg), seed
        assert ex2.step_count == step
        train(model2, opt2, ex2, 2)
    finally:
        ex2.close()


def test_after_restore_a_seed_still_follows_its_host_groups_schedule(db: str, tmp_path: Path) -> None:
    """Found by the trainer integrations: ``optimizer.load_state_dict`` replaces every group
    dict, and the seeds went on following the old ones, so their learning rate froze."""
    def open_scheduled() -> tuple[Net, torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR, kasmina.Executor]:
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return model, opt, scheduler, kasmina.Executor(model, sites=SITES, db=db, secret=SECRET,
                                                       catalogue=_catalogue(), optimizer=opt, scheduler=scheduler)

    _, _, _, ex = open_scheduled()
    germinate(ex, "classifier.1", "bottleneck_mlp")
    ex.checkpoint(tmp_path / "ckpt")
    ex.close()
    model, opt, scheduler, ex = open_scheduled()
    try:
        ex.restore()
        for _ in range(3):
            model(torch.randn(2, 1, 6, 6)).sum().backward()
            opt.step()
            scheduler.step()
            ex.step()
        host = opt.param_groups[0]["lr"]
        assert host == 0.125 and seed_group(opt, "classifier.1")["lr"] == host
    finally:
        ex.close()


def test_restore_brings_back_the_gates_windows(db: str, tmp_path: Path) -> None:
    """Found by the trainer integrations: a checkpoint kept no isolation-monitor window and
    no reported metric, so a gate whose window spanned it read a different run."""
    model, opt, ex = open_run(db)
    germinate(ex, "features.2")
    train(model, opt, ex, 3, val_loss=0.75)
    assert ex.seed("features.2").stage == "TRAINING"
    window = ex._runtime["features.2"].monitor.grad_sq.clone()
    assert float(window.sum()) > 0
    ex.checkpoint(tmp_path / "ckpt")
    ex.close()
    model2, opt2, ex2 = open_run(db)
    try:
        assert not torch.equal(ex2._runtime["features.2"].monitor.grad_sq, window)  # empty before
        ex2.restore()
        assert torch.equal(ex2._runtime["features.2"].monitor.grad_sq, window)
        assert ex2._metrics["val_loss"] == 0.75 and isinstance(ex2._metrics["loss"], float)
    finally:
        ex2.close()


def test_a_seed_grafted_after_the_checkpoint_keeps_its_initial_weights(db: str, tmp_path: Path) -> None:
    model, opt, ex = open_run(db)
    germinate(ex, "features.2")
    train(model, opt, ex, 3)
    ex.checkpoint(tmp_path / "ckpt")
    germinate(ex, "classifier.1", "bottleneck_mlp")
    initial = {k: v.clone() for k, v in ex.sites["classifier.1"].seed.state_dict().items()}
    train(model, opt, ex, 3)
    # killed here: no close(), no later checkpoint
    ex.store.close()

    model2, opt2, ex2 = open_run(db)
    try:
        restored = ex2.restore()
        assert restored is not None
        assert restored.seeds_loaded == ["features.2"] and restored.seeds_fresh == ["classifier.1"]
        assert restored.skipped == ["seed:classifier.1"]
        for key, value in ex2.sites["classifier.1"].seed.state_dict().items():
            assert torch.equal(value, initial[key]), key  # rebuilt from its own generator
        # The log's last step (classifier.1 entered TRAINING at step 4), not the checkpoint's (3);
        # steps 5-6 left no trace anywhere, so they are lost.
        assert ex2.step_count == 4
    finally:
        ex2.close()


def test_a_missing_or_altered_newer_checkpoint_is_passed_over(db: str, tmp_path: Path) -> None:
    model, opt, ex = open_run(db)
    germinate(ex, "features.2")
    train(model, opt, ex, 2)
    first = ex.checkpoint(tmp_path / "ckpt")
    train(model, opt, ex, 2)
    second = ex.checkpoint(tmp_path / "ckpt")
    ex.close()
    data = bytearray(second.path.read_bytes())
    data[-10] ^= 0xFF
    second.path.write_bytes(bytes(data))

    model2, opt2, ex2 = open_run(db)
    try:
        restored = ex2.restore()
        assert restored is not None and restored.checkpoint.step == first.step
        assert any("does not match its checksum" in p for p in restored.skipped)
        # Restoring the altered file directly is refused.
        with pytest.raises(KasminaError, match="does not match the checksum"):
            checkpoints.restore(ex2, second)
        first.path.unlink()
        with pytest.raises(KasminaError, match="no usable checkpoint: checkpoint of step"):
            ex2.restore()
    finally:
        ex2.close()


def test_no_checkpoint_restores_nothing(db: str) -> None:
    _, _, ex = open_run(db)
    try:
        assert ex.restore() is None
    finally:
        ex.close()


def test_checkpoint_files_are_atomic_and_pruned_only_once_recorded(db: str, tmp_path: Path) -> None:
    model, opt, ex = open_run(db)
    folder = tmp_path / "ckpt"
    try:
        made = []
        for _ in range(4):
            train(model, opt, ex, 1)
            made.append(ex.checkpoint(folder, keep=2))
        files = sorted(p.name for p in folder.iterdir())
        assert files == [made[2].path.name, made[3].path.name]  # no temporary file left over
        assert [c.step for c in checkpoints.history(ex.store)] == [c.step for c in made]
        with pytest.raises(ValueError):
            ex.checkpoint(folder, keep=0)
        # A writer killed mid-write leaves a temporary file: the next checkpoint removes it.
        stale = folder / f".{made[3].path.name}.killed.tmp"
        stale.write_bytes(b"half a checkpoint")
        train(model, opt, ex, 1)
        ex.checkpoint(folder, keep=2)
        assert not stale.exists()
    finally:
        ex.close()


def test_notes_are_recorded_for_audit_and_ignored_by_replay(db: str, tmp_path: Path) -> None:
    model, opt, ex = open_run(db)
    germinate(ex, "features.2")
    train(model, opt, ex, 2)
    before = replay(ex.store).digest
    position = ex.note("evaluation", {"val_acc": 0.91, "split": "validation"})
    assert replay(ex.store).digest == before
    head = ex.store.head()[0]
    for kind, data, message in [
        ("", {}, "needs a kind"),
        ("x" * 101, {}, "needs a kind"),
        ("nan", {"value": float("nan")}, "must be JSON"),
        ("tensor", {"value": torch.ones(1)}, "must be JSON"),
        ("huge", {"blob": "x" * 20_000}, "the limit is"),
    ]:
        with pytest.raises(KasminaError, match=message):
            ex.note(kind, data)
    assert ex.store.head()[0] == head  # nothing written by a refused note
    ex.close()
    row = sqlite3.connect(db.removeprefix("sqlite:///")).execute(
        "SELECT event_type, payload FROM kasmina_events WHERE position = ?", (position,)).fetchone()
    assert row[0] == "run_note" and json.loads(row[1]) == {"kind": "evaluation", "val_acc": 0.91,
                                                           "split": "validation", "step": 2}


def test_two_checkpoints_of_one_step_and_two_runs_in_one_folder_never_overwrite(tmp_path: Path) -> None:
    """Found in review: files were named by step alone, so a second checkpoint of the same
    step overwrote the one the log vouched for, and a second run sharing the folder (the
    demo's default off SQLite) pruned the first run's files."""
    folder = tmp_path / "shared"
    runs = [open_run(f"sqlite:///{tmp_path / name}") for name in ("a.db", "b.db")]
    try:
        (model, opt, ex), (_, _, other) = runs
        first = ex.checkpoint(folder)
        second = ex.checkpoint(folder)  # the same step
        assert first.step == second.step and first.path != second.path
        theirs = [other.checkpoint(folder) for _ in range(3)]  # prunes only its own files
        assert first.path.exists() and second.path.exists()
        assert checkpoints.latest(ex.store) == (second, [])
        assert not theirs[0].path.exists() and theirs[1].path.exists() and theirs[2].path.exists()
    finally:
        for _, _, executor in runs:
            executor.close()
