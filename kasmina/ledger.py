"""The write path: decide -> append -> evolve, in one place for every caller.

The executor (for commands and training steps) and ``kasmina simulate`` both go through a
:class:`Ledger`: it holds the replayed state of every seed, asks the pure ``decide`` what a
command means, appends the resulting events with the seed's version as the expected
version, and folds the *stored* events back through ``evolve``. So the state a ledger holds
is, by construction, what a replay of its log yields.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping, Sequence

from kasmina.errors import StaleVersion
from kasmina.events.store import SNAPSHOT_EVERY, AppendResult, EventStore, NewEvent, PendingAppend, RecordedEvent
from kasmina.lifecycle import commands as c
from kasmina.lifecycle import events as ev
from kasmina.lifecycle.decide import Decision, decide
from kasmina.lifecycle.evolve import evolve
from kasmina.lifecycle.gates import GateInputs
from kasmina.lifecycle.state import SeedState
from kasmina.rebuild import is_seed_stream, replay, replay_seed, snapshot_due, take_snapshot

#: How often a command is re-decided after another writer moved its seed's stream.
MAX_RETRIES = 3
#: The refusal reason when other writers moved the seed on every one of those attempts.
CONCURRENT_UPDATE = "concurrent_update"


@dataclass(frozen=True, slots=True)
class Outcome:
    accepted: bool
    reason: str
    events: tuple[RecordedEvent, ...] = ()
    duplicate: bool = False
    #: Times another writer moved the seed first, so the command was decided again.
    conflicts: int = 0


class Ledger:
    """Replayed seed states plus the one way to change them."""

    def __init__(self, store: EventStore, seeds: Mapping[str, SeedState] | None = None, *,
                 snapshot_every: int = SNAPSHOT_EVERY,
                 on_recorded: Callable[[Sequence[RecordedEvent]], None] | None = None) -> None:
        self.store = store
        self.seeds: dict[str, SeedState] = dict(seeds or {})
        #: Every event up to this log position has been folded (a follower catches up from here).
        self.position = max((s.position for s in self.seeds.values()), default=0)
        #: The newest position this ledger appended (above ``position`` when another writer
        #: appended in between: those events are still to be caught up).
        self.written = self.position
        self.snapshot_every = snapshot_every
        #: Told about every event this ledger appends (the executor's telemetry listens).
        self.on_recorded = on_recorded
        #: Optimistic-concurrency conflicts met by :meth:`submit` (another writer was first).
        self.conflicts = 0

    @classmethod
    def open(cls, store: EventStore, *, snapshot_every: int = SNAPSHOT_EVERY,
             on_recorded: Callable[[Sequence[RecordedEvent]], None] | None = None) -> Ledger:
        """A ledger whose states are rebuilt from the log (snapshots first)."""
        replayed = replay(store)
        ledger = cls(store, replayed.seeds, snapshot_every=snapshot_every, on_recorded=on_recorded)
        ledger.position = ledger.written = replayed.position
        return ledger

    def reload(self, seed_ids: Iterable[str]) -> list[str]:
        """Rebuild these seeds from the log (after a conflict); returns those that changed."""
        changed = []
        for seed_id in seed_ids:
            fresh = replay_seed(self.store, seed_id)
            if fresh != self.state(seed_id):
                self.seeds[seed_id] = fresh
                changed.append(seed_id)
        return changed

    def catch_up(self, upto: int | None = None) -> list[RecordedEvent]:
        """Fold what others appended since :attr:`position` (up to ``upto``); returns it.

        How a follower (another rank, a read-only tail) keeps a live replayed view without
        writing: the same ``evolve`` as live handling and replay, over the stored events.
        Events this ledger appended itself are already folded and are skipped by version.
        """
        if upto is not None and upto <= self.position:
            return []
        with closing(self.store.read(after=self.position, upto=upto)) as events:
            return self.apply(events)

    def apply(self, events: Iterable[RecordedEvent]) -> list[RecordedEvent]:
        """Fold events that follow :attr:`position`, read by the caller (a reader of every
        run hands each run's ledger its share of the feed); returns those folded."""
        folded: list[RecordedEvent] = []
        for event in events:
            if event.position <= self.position:
                continue  # already folded
            self.position = event.position
            if not is_seed_stream(event.stream_id):
                folded.append(event)
                continue
            state = self.state(event.stream_id)
            if event.version <= state.version:
                continue  # our own append, folded when it was made
            self.seeds[event.stream_id] = evolve(state, event)
            folded.append(event)
        return folded

    def _append(self, batches: Sequence[PendingAppend]) -> list[AppendResult]:
        """Every append goes through here, so listeners hear of each recorded event once."""
        results = self.store.append_many(batches)
        mine = sorted(e.position for r in results for e in r.events)
        if mine:
            self.written = max(self.written, mine[-1])
            if mine[0] == self.position + 1:  # nobody else appended in between: still contiguous
                self.position = mine[-1]
        if self.on_recorded is not None:
            recorded = [e for r in results for e in r.events]
            if recorded:
                self.on_recorded(recorded)
        return results

    def state(self, seed_id: str) -> SeedState:
        return self.seeds.get(seed_id) or SeedState(seed_id)

    def submit(self, command: c.Command, *, command_id: str | None = None) -> Outcome:
        """Decide, append and evolve one command; refusals go to the executor stream.

        If another writer moved the seed since this ledger last saw it, the append fails
        (``StaleVersion``, nothing written): the seed is replayed and the command decided
        again, up to :data:`MAX_RETRIES` times. If the seed moved every time, the command is
        refused with reason ``concurrent_update``: a conflict is an outcome, never an error.
        """
        for attempt in range(MAX_RETRIES + 1):
            state = self.state(command.seed_id)
            try:
                outcome = self._record(state, decide(state, command), command_id)
            except StaleVersion:
                self.conflicts += 1
                self.seeds[command.seed_id] = replay_seed(self.store, command.seed_id)
                continue
            return replace(outcome, conflicts=attempt) if attempt else outcome
        detail = (f"other writers moved {command.seed_id} during each of {MAX_RETRIES + 1} attempts; "
                  "send the command again")
        refused = self.refuse(ev.refused(CONCURRENT_UPDATE, seed_id=command.seed_id, detail=detail),
                              command_id=command_id)
        return replace(refused, conflicts=MAX_RETRIES + 1)

    def refuse(self, refusal: ev.Event, *, command_id: str | None = None) -> Outcome:
        """Record a refusal decided before ``decide`` (bad signature, stale command, ...)."""
        (result,) = self._append([PendingAppend(ev.EXECUTOR_STREAM, [NewEvent(refusal.type, dict(refusal.data))],
                                                command_id=command_id)])
        return Outcome(False, str(refusal.data["reason"]), result.events, result.duplicate)

    def note(self, stream_id: str, events: Iterable[ev.Event], *, command_id: str | None = None,
             retry: bool = False) -> Outcome:
        """Record facts that need no decision (a kernel attached, an emergency) and fold them.

        With ``retry``, a fact that holds whatever another writer did (a kernel attached) is
        appended after that writer's events; without it (a fact the caller chose from the
        seed's state, such as a first baseline) a moved stream raises ``StaleVersion``.
        """
        new = _new(events)
        if stream_id == ev.EXECUTOR_STREAM:
            (result,) = self._append([PendingAppend(stream_id, new, command_id=command_id)])
            return Outcome(not result.duplicate, "recorded", result.events, result.duplicate)
        for attempt in range(MAX_RETRIES + 1):
            state = self.state(stream_id)
            try:
                (result,) = self._append([PendingAppend(stream_id, new, expected_version=state.version,
                                                        command_id=command_id)])
            except StaleVersion:
                # An unconditional fact: take the other writer's events, then append after them.
                if not retry or attempt == MAX_RETRIES:
                    raise
                self.conflicts += 1
                self.seeds[stream_id] = replay_seed(self.store, stream_id)
                continue
            if not result.duplicate:
                self._fold(state, result.events)
            return Outcome(not result.duplicate, "recorded", result.events, result.duplicate)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _record(self, state: SeedState, decision: Decision, command_id: str | None) -> Outcome:
        """Record a decision only if ``state`` is still the seed's stored state.

        Accepted events are appended at the seed's version. A refusal goes to the executor
        stream together with an empty append at the seed's version, in one transaction, so
        it fails the same way (``StaleVersion``, nothing written) when another writer moved
        the seed: a refusal decided on a stale state may be wrong (the command may be legal
        by now), and its recorded ``stage`` would contradict the log. A no-op writes nothing,
        but is checked against the stored version for the same reason.
        """
        if decision.refusal is not None:
            guard = PendingAppend(state.seed_id, [], expected_version=state.version)
            refusal = PendingAppend(ev.EXECUTOR_STREAM, _new([decision.refusal]), command_id=command_id)
            _, result = self._append([guard, refusal])
            return Outcome(False, decision.reason, result.events, result.duplicate)
        if not decision.events:
            stored = self.store.stream_version(state.seed_id)
            if stored != state.version:
                raise StaleVersion(state.seed_id, state.version, stored)
            return Outcome(True, "no change")
        (result,) = self._append([PendingAppend(state.seed_id, _new(decision.events),
                                                expected_version=state.version, command_id=command_id)])
        if result.duplicate:
            return Outcome(False, "duplicate_command", duplicate=True)
        self._fold(state, result.events)
        return Outcome(True, decision.reason, result.events)

    def tick(self, step: int, measure: Callable[[SeedState, tuple], GateInputs] | None = None,
             seed_ids: Iterable[str] | None = None) -> list[RecordedEvent]:
        """Advance every seed to ``step``; gate inputs are measured only for seeds with a gate due.

        All seeds' events of one step are appended in one transaction.
        """
        from kasmina.lifecycle.decide import due_gates

        pending: list[PendingAppend] = []
        for seed_id in sorted(self.seeds if seed_ids is None else seed_ids):
            state = self.state(seed_id)
            gates = due_gates(state, step)
            inputs = measure(state, gates) if gates and measure is not None else None
            decision = decide(state, c.Tick(seed_id, step, inputs))
            if decision.events:
                pending.append(PendingAppend(seed_id, _new(decision.events), expected_version=state.version))
        if not pending:
            return []
        recorded: list[RecordedEvent] = []
        for result in self._append(pending):
            self._fold(self.state(result.stream_id), result.events)
            recorded.extend(result.events)
        return recorded

    def _fold(self, state: SeedState, events: Iterable[RecordedEvent]) -> None:
        before = state
        for event in events:
            state = evolve(state, event)
        self.seeds[state.seed_id] = state
        if snapshot_due(before, state, self.snapshot_every):
            take_snapshot(self.store, state)


def _new(events: Iterable[ev.Event]) -> list[NewEvent]:
    return [NewEvent(e.type, dict(e.data)) for e in events]
