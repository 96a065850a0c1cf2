"""Exact resume by re-execution: a log clipped at a position (LogView) and Executor.lead().

A leader trains a tiny MLP, checkpoints, trains on and is "killed" (never closed), leaving
lifecycle events past its checkpoint. A follower over a LogView clipped at the checkpoint
restores it, re-runs the lost steps while the view moves forward, then leads. Every test
runs against SQLite and a real PostgreSQL (see conftest.py); nothing is mocked.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kasmina
from kasmina import commands
from kasmina.catalogue import Blueprint, Catalogue
from kasmina.catalogue.blueprints import default_blueprints
from kasmina.errors import KasminaError, StoreError
from kasmina.events import EventStore, LogView, NewEvent, ReadOnlyView, Snapshot, migrate, open_store
from kasmina.events.hashing import GENESIS
from kasmina.executor.checkpoint import Checkpoint
from kasmina.ledger import Ledger
from kasmina.lifecycle import events as lev
from kasmina.lifecycle.state import STATE_SCHEMA, SeedState, digest
from kasmina.rebuild import replay, replay_seed, verify
from test_executor import FAST, SECRET, signed

SITES = ["0", "2"]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[EventStore]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    migrate.upgrade(url)
    opened = open_store(url)
    try:
        yield opened
    finally:
        opened.close()


def build() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, ex: kasmina.Executor) -> list[int]:
    g = torch.Generator().manual_seed(1000 + ex.step_count)  # the batch of the step about to run
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return ex.step(metrics={"val_loss": 1.0})


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class Mark:
    """What the leader's log and model were after one command or one training step."""

    kind: str
    position: int
    seeds: dict[str, SeedState]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Run:
    checkpoint: Checkpoint
    at_checkpoint: Mark
    lost: list[Mark]        # what happened after the checkpoint, up to the "kill"
    late_command: Any       # a command the leader handled after the checkpoint


def killed_run(store: EventStore, folder: Path) -> Run:
    """A leader that checkpoints after 3 steps, goes on for 6 steps and a command, then dies."""
    model, opt = build()
    leader = kasmina.Executor(model, SITES, db=store, secret=SECRET, optimizer=opt)
    leader.ledger.snapshot_every = 2  # snapshots everywhere, past every clip point too

    def mark(kind: str) -> Mark:
        return Mark(kind, store.head()[0], dict(leader.ledger.seeds), weights(model))

    assert leader.handle(signed(commands.germinate("0", "bottleneck_mlp", parameters=FAST))).accepted
    for _ in range(3):
        train_step(model, opt, leader)
    saved = leader.checkpoint(folder)
    at_checkpoint = mark("checkpoint")
    lost = []
    late = signed(commands.germinate("2", "zero_linear", parameters=FAST))
    for i in range(6):
        if i == 2:
            assert leader.handle(late).accepted
            lost.append(mark("command"))
        train_step(model, opt, leader)
        lost.append(mark("step"))
    # Killed: no close(), so no executor_closed; the log ends with the last step's events.
    changed = [e for e in store.read(after=saved.position) if e.type == lev.STAGE_CHANGED]
    assert {e.stream_id for e in changed} == {"0", "2"}  # decisions past the checkpoint, both seeds
    return Run(saved, at_checkpoint, lost, late)


def seed_states(result_seeds: dict[str, SeedState]) -> dict[str, SeedState]:
    return {k: v for k, v in result_seeds.items() if v.version > 0}


# -- the view over a store ---------------------------------------------------------------------

def test_a_view_replays_what_the_log_held_at_its_position(store: EventStore, tmp_path: Path) -> None:
    killed_run(store, tmp_path / "ckpt")
    events = list(store.read())
    head = len(events)
    assert store.head() == (head, events[-1].hash)
    for p in range(head + 1):
        view = LogView(store, p)
        truth = replay(store, to_position=p, use_snapshots=False)
        assert seed_states(replay(view).seeds) == seed_states(truth.seeds), p
        assert replay(view).position == p
        for sid in SITES:
            assert replay_seed(view, sid) == replay_seed(store, sid, to_position=p), (p, sid)
            snap = view.latest_snapshot(sid, state_schema=STATE_SCHEMA)
            assert snap is None or snap.position <= p
            upto = [e for e in events[:p] if e.stream_id == sid]
            assert view.stream_version(sid) == (upto[-1].version if upto else 0), (p, sid)
        assert view.head() == ((p, events[p - 1].hash) if p else (0, GENESIS))
        assert view.streams() == sorted({e.stream_id for e in events[:p]})
    # The clipping above was exercised: both seeds have snapshots past an early position.
    early = next(e.position for e in events if e.stream_id == "2") - 1
    for sid in SITES:
        newest = store.latest_snapshot(sid, state_schema=STATE_SCHEMA)
        assert newest is not None and newest.position > early


def test_reads_and_commands_are_clipped(store: EventStore, tmp_path: Path) -> None:
    run = killed_run(store, tmp_path / "ckpt")
    p = run.checkpoint.position
    view = LogView(store, p)
    assert view.url == store.url and view.limit == p
    assert [e.position for e in view.read()] == list(range(1, p + 1))
    assert [e.position for e in view.read(after=p - 2, upto=p + 5)] == [p - 1, p]
    assert list(view.read(after=p)) == []
    assert all(e.position <= p for e in view.read(stream_id="0"))
    assert [e.position for e in view.read(stream_id="0", raw=True)] == \
        [e.position for e in store.read(stream_id="0", upto=p, raw=True)]
    assert "2" not in view.streams() and view.stream_version("2") == 0
    late = store.find_command(run.late_command.command_id)
    assert late and min(late) > p and view.find_command(run.late_command.command_id) == ()
    assert LogView(store, max(late)).find_command(run.late_command.command_id) == late
    # Command ids are not clipped: a command recorded past the limit stays refused as a replay.
    since = min(e.recorded_at for e in store.read())
    assert run.late_command.command_id in view.command_ids_since(since)
    # A view past the head shows the whole log, as it is now.
    wide = LogView(store, store.head()[0] + 10)
    assert wide.head() == store.head() and wide.streams() == store.streams()
    with pytest.raises(KasminaError, match="position >= 0"):
        LogView(store, -1)


def test_advance_folds_exactly_the_events_in_between(store: EventStore, tmp_path: Path) -> None:
    run = killed_run(store, tmp_path / "ckpt")
    first, second = run.checkpoint.position, run.lost[3].position
    view = LogView(store, first)
    ledger = Ledger.open(view)
    assert ledger.position == first
    assert seed_states(ledger.seeds) == seed_states(run.at_checkpoint.seeds)
    view.advance(second)
    folded = ledger.catch_up()
    assert [e.position for e in folded] == list(range(first + 1, second + 1))
    assert ledger.position == second and ledger.catch_up() == []
    assert seed_states(ledger.seeds) == seed_states(run.lost[3].seeds)
    with pytest.raises(KasminaError, match=f"at position {second}; it cannot move back to {first}"):
        view.advance(first)
    assert view.limit == second
    view.advance(second)  # standing still is allowed
    view.release()
    assert view.limit is None and view.head() == store.head()
    with pytest.raises(KasminaError, match="released"):
        view.advance(second)


def test_a_clipped_view_is_read_only_until_released(store: EventStore, tmp_path: Path) -> None:
    run = killed_run(store, tmp_path / "ckpt")
    p = run.checkpoint.position
    head = store.head()
    view = LogView(store, p)
    note = NewEvent(lev.ANNOTATION_WARNING, {"key": "x"})
    with pytest.raises(ReadOnlyView, match=f"up to position {p} is read-only") as refused:
        view.append("0", [note])
    assert not isinstance(refused.value, StoreError)  # not an outage the executor would retry
    snap = Snapshot("2", 999, head[0], STATE_SCHEMA, SeedState("2").to_dict())
    view.save_snapshot(snap)  # a cache: silently not taken
    assert store.latest_snapshot("2", state_schema=STATE_SCHEMA).version != 999
    assert store.head() == head
    view.release()
    result = view.append("0", [note])
    assert result.positions == (head[0] + 1,) and view.head() == store.head()
    view.save_snapshot(snap)
    assert store.latest_snapshot("2", state_schema=STATE_SCHEMA).version == 999
    view.close()  # does not close the store it wraps
    assert store.head()[0] == head[0] + 1 and verify(store) == head[0] + 1


# -- resuming by re-execution, then leading ----------------------------------------------------

def test_a_follower_resumes_exactly_over_a_view_and_then_leads(store: EventStore, tmp_path: Path) -> None:
    run = killed_run(store, tmp_path / "ckpt")
    head = store.head()[0]
    model, opt = build()
    view = LogView(store, run.checkpoint.position)
    ex = kasmina.Executor(model, SITES, db=view, secret=SECRET, optimizer=opt, role="follower")
    try:
        assert seed_states(ex.ledger.seeds) == seed_states(run.at_checkpoint.seeds)
        restored = ex.restore()  # a follower may restore: it only reads
        assert restored is not None and restored.checkpoint.sha256 == run.checkpoint.sha256
        assert restored.seeds_loaded == ["0"] and ex.step_count == run.checkpoint.step
        assert weights(model).keys() == run.at_checkpoint.weights.keys()
        assert all(torch.equal(weights(model)[k], v) for k, v in run.at_checkpoint.weights.items())
        with pytest.raises(KasminaError, match="clipped at position"):
            ex.lead()

        *replayed, last = run.lost
        for mark in replayed:  # re-run the lost steps; the decisions come from the log
            if mark.kind == "step":
                assert train_step(model, opt, ex) == []
            view.advance(mark.position)
            ex.sync()
            assert ex.ledger.position == mark.position
            assert seed_states(ex.ledger.seeds) == seed_states(mark.seeds), mark
            assert weights(model).keys() == mark.weights.keys()
            assert all(torch.equal(weights(model)[k], v) for k, v in mark.weights.items()), mark
        assert store.head()[0] == head  # the follower wrote nothing
        assert last.kind == "step"
        train_step(model, opt, ex)
        view.release()
        behind = head - ex.ledger.position
        assert behind > 0
        with pytest.raises(KasminaError, match=f"{behind} events behind the log .*sync\\(\\) first"):
            ex.lead()
        ex.sync()
        assert seed_states(ex.ledger.seeds) == seed_states(last.seeds)
        assert all(torch.equal(weights(model)[k], v) for k, v in last.weights.items())

        ex.lead()
        with pytest.raises(KasminaError, match="already leads"):
            ex.lead()
        # Like a leader opened on this log: it records the kernels this process attached.
        attached = list(store.read(after=head))
        assert {(e.stream_id, e.type) for e in attached} == {("0", lev.KERNEL_ATTACHED), ("2", lev.KERNEL_ATTACHED)}
        assert ex.ledger.position == ex.ledger.written == store.head()[0]
        assert digest(ex.ledger.seeds.values()) == digest(Ledger.open(store).seeds.values())

        replay_of_late = ex.handle(run.late_command)
        assert (replay_of_late.accepted, replay_of_late.reason) == (False, "nonce_replayed")
        paused = ex.handle(signed(commands.pause("2")))
        assert paused.accepted and min(paused.positions) > head
        assert ex.handle(signed(commands.resume("2"))).accepted
        recorded = [p for _ in range(8) for p in train_step(model, opt, ex)]
        changes = [e for e in store.read(after=head) if e.position in recorded and e.type == lev.STAGE_CHANGED]
        assert changes and all(e.data["verdicts"] for e in changes if e.data["to_stage"] != "CULLED")
        assert ex.seed("0").stage == "FOSSILIZED"
        assert digest(ex.ledger.seeds.values()) == digest(replay(store).seeds.values())
        position = ex.note("evaluation", {"acc": 0.5})
        saved = ex.checkpoint(tmp_path / "ckpt")
        assert saved.position == position + 1
        mine = weights(model)
    finally:
        ex.close()
    with closing(store.read(after=store.head()[0] - 1)) as tail:
        last_event = next(tail)
    assert last_event.type == lev.EXECUTOR_CLOSED  # a leader now: close() is recorded
    assert verify(store) == store.head()[0]

    model2, opt2 = build()
    with kasmina.Executor(model2, SITES, db=store, secret=SECRET, optimizer=opt2) as again:
        restored = again.restore()
        assert restored is not None and restored.checkpoint.sha256 == saved.sha256
        assert all(torch.equal(weights(model2)[k], v) for k, v in mine.items())
    assert verify(store) == store.head()[0]


class _OnlyOnLeader(nn.Module):
    def __init__(self, site: nn.Module, generator: torch.Generator) -> None:
        super().__init__()
        self.inner = nn.Linear(site.in_features, site.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_a_rank_takes_over_from_a_leader_that_is_gone(store: EventStore) -> None:
    extra = Blueprint("only_on_leader", 1, "a blueprint the follower's catalogue lacks", builder=_OnlyOnLeader,
                      supports=lambda m: isinstance(m, nn.Linear))
    model_a, opt_a = build()
    model_b, opt_b = build()
    follower = kasmina.Executor(model_b, SITES, db=store, secret=SECRET, optimizer=opt_b, role="follower",
                                catalogue=Catalogue(fallback_blueprint_id=None))
    leader = kasmina.Executor(model_a, SITES, db=store, secret=SECRET, optimizer=opt_a,
                              catalogue=Catalogue([*default_blueprints(), extra]))
    try:
        assert leader.handle(signed(commands.germinate("0", "bottleneck_mlp", parameters=FAST))).accepted
        # Handled after the follower was built: only the log holds its nonce.
        late = signed(commands.germinate("2", "only_on_leader", parameters=FAST))
        assert leader.handle(late).accepted
        head = store.head()[0]
        follower.sync()
        assert follower.sites["2"].seed is None  # could not fetch it; a follower waits, writes nothing
        assert follower.sites["0"].seed is not None and store.head()[0] == head
        refused = follower.handle(signed(commands.pause("0")))
        assert refused.reason == "not_leader" and store.head()[0] == head
        # The leader is gone (never closed). The follower takes over.
        follower.lead()
        assert follower.leader and follower.state("2").stage.name in ("CULLED", "EMBARGOED")
        culled = [e for e in store.read(after=head, stream_id="2") if e.type == lev.STAGE_CHANGED]
        assert culled and "kernel fetch failed" in culled[0].data["reason"]
        assert [e.type for e in store.read(after=head, stream_id="0")] == [lev.KERNEL_ATTACHED]
        again = follower.handle(late)
        assert (again.accepted, again.reason) == (False, "nonce_replayed")
        assert follower.handle(signed(commands.pause("0"))).accepted
        assert digest(follower.ledger.seeds.values()) == digest(Ledger.open(store).seeds.values())
        with closing(store.read(raw=True)) as events:
            assert sum(1 for _ in events) == verify(store)
    finally:
        follower.close()
