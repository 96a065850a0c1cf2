"""``kasmina.simulate.run_many``: a sweep of runs written at the same time into one log.

Each run is written by its own process; the runs must really overlap (all open before any
writes; on PostgreSQL their events interleave in the log's order across runs), stay apart (the same seed ids in every run, each
run's events exactly those of the same simulation written alone), verify, and end
``finished``; a worker that fails, or dies, is reported and its run marked ``crashed``.
The sweeps are small: the cost is mostly each worker's start (importing Kasmina).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kasmina import simulate
from kasmina.errors import KasminaError
from kasmina.events import NewEvent, migrate, open_store
from kasmina.ledger import Ledger
from kasmina.rebuild import verify
from kasmina.simulate import SWEEP_BLEND_MODES, SweepFailed, run, run_many

RUNS, SEEDS, STEPS, RNG = 3, 3, 100, 5
NAMES = [f"sim-{i}" for i in range(RUNS)]


def _history(store: Any) -> list[tuple[Any, ...]]:
    """What a run holds, without the times and hashes (which differ between writes)."""
    return [(e.stream_id, e.version, e.type, json.dumps(e.data, sort_keys=True), e.command_id)
            for e in store.read()]


def _alone(name: str, rng: int) -> list[tuple[Any, ...]]:
    """The same run simulated alone, in memory."""
    store = open_store("memory://", run=name)
    run(store, seeds=SEEDS, steps=STEPS, rng=rng, blend_modes=SWEEP_BLEND_MODES)
    return _history(store)


@pytest.fixture(params=["sqlite", "postgres"])
def log_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")  # a new file: run_many migrates it
    url = request.getfixturevalue("pg_url")
    migrate.upgrade(url)
    return url


def test_runs_are_written_concurrently_and_stay_apart(log_url: str) -> None:
    seen: list[int] = []
    summary = run_many(log_url, runs=RUNS, seeds=SEEDS, steps=STEPS, rng=RNG, workers=RUNS, progress=seen.append)

    assert list(summary["runs"]) == NAMES and summary["failed"] == {}
    totals = summary["totals"]
    assert (totals["runs"], totals["finished"], totals["crashed"]) == (RUNS, RUNS, 0)
    assert totals["events"] == sum(r["events"] for r in summary["runs"].values())
    assert totals["steps"] == RUNS * STEPS and sum(totals["final_stages"].values()) == RUNS * SEEDS
    assert seen and seen == sorted(seen) and seen[-1] == RUNS * STEPS

    with open_store(log_url) as store:
        infos = {r.name: r for r in store.runs()}
        feed = list(store.read_all())
    assert set(NAMES) <= set(infos)
    alone = [_alone(name, RNG + i) for i, name in enumerate(NAMES)]
    for i, name in enumerate(NAMES):
        info = infos[name]
        assert info.status == "finished" and info.effective_status == "finished"
        assert info.config["simulate"]["rng"] == RNG + i and info.config["sweep"]["index"] == i
        with open_store(log_url, run=name) as store:
            report = summary["runs"][name]
            assert verify(store) == report["events"] == info.last_position
            # the same seed ids in every run, each run's exactly its own simulation's
            assert set(store.streams()) - {"$executor"} == {f"sim.layer{k}" for k in range(SEEDS)}
            assert _history(store) == alone[i]
            ledger = Ledger.open(store)
            assert {sid: s.stage.name for sid, s in ledger.seeds.items()} == report["final_stages"]
    first_seed = [[h for h in history if h[0] == "sim.layer0"] for history in alone]
    assert len({json.dumps(h) for h in first_seed}) == RUNS, "the runs simulated the same thing"

    # concurrent: every run was open, each in its own process, before any wrote an event
    # (the workers start together) ...
    assert len({infos[name].pid for name in NAMES}) == RUNS
    first_event = min(e.event.recorded_at for e in feed if e.run in NAMES)
    assert max(infos[name].created_at for name in NAMES) <= first_event
    if not log_url.startswith("postgresql"):
        return  # SQLite has one writer at a time, and may hand its lock to one run for long
    # ... and on PostgreSQL, where runs append in parallel, their events interleave in the
    # log's one order across runs, and each run's span of time overlaps another's
    order = [e.run for e in feed if e.run in NAMES]
    switches = sum(a != b for a, b in zip(order, order[1:]))
    assert switches > RUNS - 1, f"the runs were written one after another: {order}"
    spans = {name: (min(e.event.recorded_at for e in feed if e.run == name),
                    max(e.event.recorded_at for e in feed if e.run == name)) for name in NAMES}
    for name, (start, end) in spans.items():
        assert any(o != name and start <= other_end and other_start <= end
                   for o, (other_start, other_end) in spans.items()), f"{name} overlapped no other run: {spans}"


def _statuses(url: str) -> dict[str, str]:
    with open_store(url) as store:
        return {r.name: r.status for r in store.runs()}


def test_a_failing_worker_is_reported_and_its_run_marked_crashed(sqlite_url: str) -> None:
    """sim-1 already holds an event the lifecycle cannot replay: its worker fails, the other
    run finishes, and the sweep raises once both have ended."""
    migrate.upgrade(sqlite_url)
    with open_store(sqlite_url, run="sim-1", create_run=True) as store:
        store.append("sim.layer0", [NewEvent("stage_changed", {"from_stage": "FOSSILIZED", "to_stage": "TRAINING",
                                                               "step": 1, "reason": "impossible"})])
    with pytest.raises(SweepFailed) as caught:
        run_many(sqlite_url, runs=2, seeds=2, steps=40, rng=1)
    failure = caught.value
    assert isinstance(failure, KasminaError) and "1 of 2 simulated runs failed" in str(failure)
    assert "sim-1: ReplayError" in str(failure)
    summary = failure.summary
    assert list(summary["runs"]) == ["sim-0"] and list(summary["failed"]) == ["sim-1"]
    assert "Traceback" in summary["failed"]["sim-1"]["traceback"]
    assert (summary["totals"]["finished"], summary["totals"]["crashed"]) == (1, 1)
    assert {k: v for k, v in _statuses(sqlite_url).items() if k != "default"} == {"sim-0": "finished",
                                                                                 "sim-1": "crashed"}
    with open_store(sqlite_url, run="sim-0") as store:
        assert verify(store) == summary["runs"]["sim-0"]["events"]


def test_a_worker_that_dies_is_reported_and_its_run_marked_crashed(sqlite_url: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed after opening its run says nothing: its exit and stderr are the report."""
    monkeypatch.setattr(simulate, "_CHILD_CODE", (
        "import json, os, sys\n"
        "from kasmina.events import migrate\n"
        "task = json.loads(sys.stdin.readline())\n"
        "migrate.open_log(task['url'], run=task['name']).close()\n"
        "print('worker lost', file=sys.stderr, flush=True)\n"
        "os._exit(3)\n"))
    with pytest.raises(SweepFailed) as caught:
        run_many(sqlite_url, runs=1, seeds=1, steps=10)
    error = caught.value.summary["failed"]["sim-0"]["error"]
    assert "exited with code 3 without a report: worker lost" in error, error
    assert _statuses(sqlite_url)["sim-0"] == "crashed"


def test_run_many_refuses_what_it_cannot_do(tmp_path: Any) -> None:
    with pytest.raises(KasminaError, match="not memory://"):
        run_many("memory://", runs=2, seeds=1, steps=1)
    with pytest.raises(KasminaError, match="at least 1"):
        run_many(f"sqlite:///{tmp_path}/x.db", runs=0, seeds=1, steps=1)
    with pytest.raises(KasminaError, match="run name"):
        run_many(f"sqlite:///{tmp_path}/x.db", runs=1, seeds=1, steps=1, prefix="no spaces")
    assert not (tmp_path / "x.db").exists()


def test_blend_modes_change_nothing_but_the_blend() -> None:
    """run() without blend modes writes what it always did (no blend config); with them, the
    same lifecycle plus a blend config per germination that draws a mode other than default."""
    plain, blended = open_store("memory://"), open_store("memory://")
    run(plain, seeds=4, steps=200, rng=7)
    run(blended, seeds=4, steps=200, rng=7, blend_modes=SWEEP_BLEND_MODES)
    assert not any(e.type == "blend_config" for e in plain.read())
    configs = [e.data for e in blended.read() if e.type == "blend_config"]
    assert configs and {c["mode"] for c in configs} <= set(SWEEP_BLEND_MODES) - {"default"}
    assert all(len(c["alpha_vec"]) == c["alpha_vec_len"] for c in configs if c["mode"] == "CHANNEL")

    def lifecycle(store: Any) -> list[tuple[Any, ...]]:
        return [(e.stream_id, e.type, json.dumps(e.data, sort_keys=True), e.command_id)
                for e in store.read() if e.type != "blend_config"]
    assert lifecycle(plain) == lifecycle(blended)
