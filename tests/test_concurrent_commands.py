"""Four processes submitting lifecycle commands to the same seeds on one PostgreSQL log.

``tests/test_store_concurrency.py`` races raw appends; this races the write path the
executor uses, ``Ledger.submit`` (decide -> append with the seed's version -> evolve), with
4 workers x 500 commands on three shared seed slots. No worker ever reads what the others
did except when its append fails, so almost every command is decided on a stale state at
first: the conflicts are the point.

Afterwards the log must be a serial history of exactly those commands:

* every command id is in the log exactly once (one contiguous group of events, at the
  positions its worker was told), or was a no-op that wrote nothing;
* positions are 1..N, the hash chain and every transition verify;
* deciding each command again, on the state the log holds just before its events, gives
  exactly the recorded events or refusal (so no decision was made on a stale state), and
  every no-op was a no-op on the seed's real version at some moment during its call;
* a fresh ``Ledger.open`` (snapshots) equals a full replay.

The fast tests below pin the ledger behaviour this relies on, one interleaving at a time,
on the in-memory store.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_right
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import pytest

import _workload as w
from kasmina.errors import StaleVersion
from kasmina.events import AppendResult, NewEvent, PendingAppend, RecordedEvent, migrate, open_store
from kasmina.events.memory import MemoryEventStore
from kasmina.ledger import CONCURRENT_UPDATE, Ledger
from kasmina.lifecycle import commands as c
from kasmina.lifecycle import events as ev
from kasmina.lifecycle.decide import decide
from kasmina.lifecycle.evolve import evolve
from kasmina.lifecycle.state import SeedState, canonical_json
from kasmina.rebuild import replay, verify

WORKERS = 4
COMMANDS = 500


def run_workers(url: str, tmp_path: Path) -> list[dict[str, Any]]:
    """Start the workers, release them together once all are connected, collect reports."""
    go = tmp_path / "go"
    procs = [w.spawn("concurrent", url, worker, COMMANDS, go) for worker in range(WORKERS)]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{worker}").exists() for worker in range(WORKERS)):
        failed = [p for p in procs if p.poll() is not None]
        assert not failed, f"a worker exited before the start:\n{failed[0].communicate()[1]}"
        assert time.monotonic() < deadline, "workers did not connect within 60 s"
        time.sleep(0.01)
    go.touch()
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"worker failed (an exception escaped Ledger.submit?):\n{err}"
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def plain(data: Any) -> Any:
    """Data as the log stores it (canonical JSON), so decided and stored events compare."""
    return json.loads(canonical_json(data))


def check_serial(events: list[RecordedEvent], records: dict[str, dict[str, Any]]) -> dict[str, SeedState]:
    """Re-decide every command on the state just before its events; returns the final states."""
    groups: dict[str, list[RecordedEvent]] = {}
    for event in events:
        assert event.command_id is not None, f"position {event.position}: an event with no command id"
        groups.setdefault(event.command_id, []).append(event)
    states: dict[str, SeedState] = {}
    #: Per seed: its state after each version (index = version), for judging no-ops.
    history: dict[str, list[SeedState]] = {}
    #: Per seed: the positions of its events (its version at position p: how many are <= p).
    positions: dict[str, list[int]] = {}

    def version_at(seed: str, position: int) -> int:
        return bisect_right(positions.get(seed, []), position)

    def command_of(record: dict[str, Any]) -> c.Command:
        seed, to = record["seed"], record["to_position"]
        rollback = record["kind"] == "rollback"
        rollback_to = (to, history.get(seed, [SeedState(seed)])[version_at(seed, to)]) if rollback else None
        return w.command(record["kind"], seed, record["step"], rollback_to)

    for event in events:
        group = groups[event.command_id]  # type: ignore[index]
        if event is group[0]:
            record = records[event.command_id]  # type: ignore[index]
            seed = record["seed"]
            state = states.get(seed) or SeedState(seed)
            where = f"command {record['id']} ({record['kind']} {seed} at step {record['step']}, positions " \
                    f"{[e.position for e in group]}) decided on {state.stage.name} v{state.version}"
            if record["status"] == f"refused:{CONCURRENT_UPDATE}":
                assert [(e.stream_id, e.type, e.data["reason"]) for e in group] == \
                       [(ev.EXECUTOR_STREAM, ev.COMMAND_REFUSED, CONCURRENT_UPDATE)], where
            else:
                decision = decide(state, command_of(record))
                if decision.refusal is not None:
                    expected = [(ev.EXECUTOR_STREAM, decision.refusal.type, plain(decision.refusal.data))]
                else:
                    expected = [(seed, e.type, plain(e.data)) for e in decision.events]
                stored = [(e.stream_id, e.type, plain(e.data)) for e in group]
                assert stored == expected, f"{where}: the log holds {stored}, deciding again gives {expected}"
        if event.stream_id != ev.EXECUTOR_STREAM:
            state = evolve(states.get(event.stream_id) or SeedState(event.stream_id), event)
            states[event.stream_id] = state
            history.setdefault(event.stream_id, [SeedState(event.stream_id)]).append(state)
            positions.setdefault(event.stream_id, []).append(event.position)


    for record in records.values():
        if record["status"] != "noop":
            continue
        seed, version = record["seed"], record["version"]
        low, high = version_at(seed, record["head_before"]), version_at(seed, record["head_after"])
        assert low <= version <= high, (
            f"no-op {record['id']} was decided on {seed} v{version}, but during the call the seed was at "
            f"v{low}..v{high}: decided on a stale state")
        state = history.get(seed, [SeedState(seed)])[version]
        decision = decide(state, command_of(record))
        assert decision.accepted and not decision.events, (
            f"{record['id']} reported a no-op, but deciding it on {seed} v{version} gives {decision}")
    return states


@pytest.mark.slow
def test_four_writers_on_the_same_seeds(pg_url: str, tmp_path: Path) -> None:
    migrate.upgrade(pg_url)
    started = time.monotonic()
    reports = run_workers(pg_url, tmp_path)
    wall = time.monotonic() - started
    records = {r["id"]: r for report in reports for r in report["records"]}
    assert len(records) == WORKERS * COMMANDS

    with open_store(pg_url) as store:
        events = list(store.read())
        total = len(events)
        assert [e.position for e in events] == list(range(1, total + 1)), "positions are not exactly 1..N"
        assert verify(store) == total

        # Every command is in the log once, where its worker was told, or wrote nothing.
        logged: dict[str, list[RecordedEvent]] = {}
        for event in events:
            logged.setdefault(event.command_id or "", []).append(event)
        assert set(logged) <= set(records), f"events from no command: {sorted(set(logged) - set(records))[:5]}"
        for command_id, record in records.items():
            stored = logged.get(command_id, [])
            positions = [e.position for e in stored]
            if record["status"] == "noop":
                assert not stored, f"no-op {command_id} wrote {positions}"
                continue
            assert stored, f"{command_id} was {record['status']} but is not in the log: a lost update"
            assert positions == record["positions"], f"{command_id}: told {record['positions']}, stored {positions}"
            assert positions == list(range(positions[0], positions[0] + len(positions))), \
                f"{command_id} is not one contiguous append: {positions}"
            assert len({e.stream_id for e in stored}) == 1, f"{command_id} spans streams"
            assert store.find_command(command_id) == tuple(positions)
        assert not any(r["status"] == "refused:duplicate_command" for r in records.values())

        final = check_serial(events, records)
        replayed = replay(store, use_snapshots=False).seeds
        assert replayed == final
        assert Ledger.open(store).seeds == replayed, "snapshots + tail differ from a full replay"

    statuses = Counter(r["status"] for r in records.values())
    conflicts = sum(report["conflicts"] for report in reports)
    assert conflicts == sum(r["conflicts"] for r in records.values())
    assert conflicts > 0, "no command ever met another writer: the test did not exercise a conflict"
    figures = {
        "workers": WORKERS, "commands": len(records), "events_appended": total,
        "accepted": statuses["accepted"], "noop": statuses["noop"],
        "refused": {k.removeprefix("refused:"): n for k, n in sorted(statuses.items()) if k.startswith("refused:")},
        "conflicts_retried": conflicts,
        "commands_with_conflicts": sum(r["conflicts"] > 0 for r in records.values()),
        "max_conflicts_one_command": max(r["conflicts"] for r in records.values()),
        "worker_seconds": [report["seconds"] for report in reports], "wall_seconds": round(wall, 2),
    }
    print(f"\nconcurrent commands figures: {json.dumps(figures)}")


# -- one interleaving at a time (in-memory store, fast) -------------------------------------

class RivalStore(MemoryEventStore):
    """A store where another writer appends to ``seed`` just before each of our appends."""

    def __init__(self, seed: str) -> None:
        super().__init__()
        self.seed, self.rival_appends = seed, 0

    def append_many(self, batches: Sequence[PendingAppend]) -> list[AppendResult]:
        if self.rival_appends >= 0:
            self.rival_appends += 1
            super().append_many([PendingAppend(self.seed, [NewEvent(ev.ANNOTATION_WARNING, {"rival": True})])])
        return super().append_many(batches)


def test_a_seed_that_always_moves_first_gives_a_concurrent_update_refusal() -> None:
    store = RivalStore("s")
    store.rival_appends = -1  # no rival while the seed is set up
    ledger = Ledger(store)
    assert ledger.submit(w.command("germinate", "s", 1)).accepted
    store.rival_appends = 0
    outcome = ledger.submit(w.command("pause", "s", 2), command_id="pause-1")
    assert (outcome.accepted, outcome.reason, outcome.conflicts) == (False, CONCURRENT_UPDATE, 4)
    assert ledger.conflicts == 4 and store.rival_appends == 5  # 4 stale attempts + the refusal
    positions = store.find_command("pause-1")
    (event,) = [e for e in store.read() if e.position in positions]
    assert (event.stream_id, event.data["reason"], event.data["seed_id"]) == \
           (ev.EXECUTOR_STREAM, CONCURRENT_UPDATE, "s")
    assert not any(e.type == ev.SEED_PAUSED for e in store.read())


def two_ledgers() -> tuple[Ledger, Ledger]:
    """Two writers on one log, both opened after seed ``s`` was germinated at step 1."""
    store = MemoryEventStore()
    assert Ledger(store).submit(w.command("germinate", "s", 1)).accepted
    return Ledger.open(store), Ledger.open(store)


def test_a_refusal_decided_on_a_stale_state_is_decided_again() -> None:
    """B thinks ``s`` is running; A paused it: B's resume is legal, not ``not_paused``."""
    a, b = two_ledgers()
    assert a.submit(w.command("pause", "s", 2)).accepted
    outcome = b.submit(w.command("resume", "s", 3), command_id="resume-b")
    assert (outcome.accepted, outcome.reason, outcome.conflicts) == (True, "accepted", 1)
    assert [e.type for e in outcome.events] == [ev.SEED_RESUMED]
    assert not any(e.type == ev.COMMAND_REFUSED for e in b.store.read())


def test_a_no_op_decided_on_a_stale_state_is_decided_again() -> None:
    """B thinks ``s`` is paused (nothing to do at a tick); A resumed it: the tick moves it."""
    a, _ = two_ledgers()
    assert a.submit(w.command("pause", "s", 2)).accepted
    b = Ledger.open(a.store)
    assert a.submit(w.command("resume", "s", 2)).accepted
    outcome = b.submit(w.command("tick", "s", 3), command_id="tick-b")
    assert outcome.accepted and outcome.conflicts == 1
    assert [(e.data["from_stage"], e.data["to_stage"]) for e in outcome.events] == [("GERMINATED", "TRAINING")]


def test_a_refusal_on_a_current_state_costs_no_retry() -> None:
    a, _ = two_ledgers()
    outcome = a.submit(w.command("resume", "s", 2), command_id="resume-a")
    assert (outcome.accepted, outcome.reason, outcome.conflicts, a.conflicts) == (False, "not_paused", 0, 0)
    assert a.store.find_command("resume-a") == tuple(e.position for e in outcome.events)


def test_a_fact_after_another_writer_moved_the_seed_is_appended_after_it() -> None:
    """An unconditional fact (``note(retry=True)``, e.g. a kernel attached) takes the other
    writer's events and appends after them; a conditional one still raises StaleVersion."""
    a, b = two_ledgers()
    assert a.submit(w.command("pause", "s", 2)).accepted
    with pytest.raises(StaleVersion):
        b.note("s", [ev.Event(ev.BASELINE_RECORDED, {"metric": 0.5, "step": 2})])
    b = Ledger.open(a.store)
    assert a.submit(w.command("resume", "s", 2)).accepted and a.submit(w.command("pause", "s", 2)).accepted
    outcome = b.note("s", [ev.Event(ev.BASELINE_RECORDED, {"metric": 0.5, "step": 2})], retry=True)
    assert outcome.accepted and b.conflicts == 1
    assert b.state("s").paused and b.state("s").baseline_metric == 0.5
    assert [e.type for e in b.store.read(stream_id="s")][-2:] == [ev.SEED_PAUSED, ev.BASELINE_RECORDED]
    assert b.state("s") == Ledger.open(b.store).state("s")
