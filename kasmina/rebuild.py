"""Rebuild seed states from the log, and verify the log.

Replay is a fold of :func:`kasmina.lifecycle.evolve` over stored events, the very function
the live executor uses. Per seed, the newest snapshot at or before the target position is
put in front of the events after it, so replaying one seed costs the events since its last
snapshot, not its whole history. Full replays stream: memory is bounded by the number of
seeds, not the number of events.
"""

from __future__ import annotations

import hashlib
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from kasmina.errors import LogCorrupted
from kasmina.events.hashing import GENESIS, chain_hash
from kasmina.events.runs import genesis as run_genesis
from kasmina.events.schema import DEFAULT_RUN
from kasmina.events.store import SNAPSHOT_EVERY, EventStore, RecordedEvent, Snapshot
from kasmina.lifecycle import events as ev
from kasmina.lifecycle.evolve import ReplayError, evolve
from kasmina.lifecycle.gates import GateInputs, evaluate_all
from kasmina.lifecycle.machine import gates_for
from kasmina.lifecycle.stages import Gate, Stage
from kasmina.lifecycle.state import STATE_SCHEMA, SeedState, canonical_json, digest


@dataclass(frozen=True, slots=True)
class ReplayResult:
    seeds: dict[str, SeedState]
    position: int
    events: int

    @property
    def digest(self) -> str:
        return digest(self.seeds.values())


def is_seed_stream(stream_id: str) -> bool:
    return stream_id != ev.EXECUTOR_STREAM


#: What a seed's events record about how long something took, not what was decided.
_TIMINGS = frozenset({"fetch_ms", "fetch_latency_ms", "prewarm_ms", "cache_hit"})


def _decided(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _decided(v) for k, v in value.items() if k not in _TIMINGS}
    if isinstance(value, list):
        return [_decided(v) for v in value]
    return value


def decisions_digest(store: EventStore, *, to_position: int | None = None) -> str:
    """SHA-256 of what the log decided, seed by seed: every seed event in order, without timings.

    The state digest (:attr:`ReplayResult.digest`) also covers log positions and kernel
    fetch times, so two runs that made the same decisions never share it. This one leaves
    out the executor stream (checkpoints, notes), ``kernel_attached`` facts (a resumed run
    attaches its seeds again) and timing fields: two runs share it exactly when every seed
    went through the same stages at the same steps, for the same recorded reasons.
    """
    body: dict[str, list[Any]] = {}
    with closing(store.read(upto=to_position)) as events:
        for event in events:
            if is_seed_stream(event.stream_id) and event.type != ev.KERNEL_ATTACHED:
                body.setdefault(event.stream_id, []).append([event.type, _decided(dict(event.data))])
    return hashlib.sha256(canonical_json({k: body[k] for k in sorted(body)}).encode()).hexdigest()


def fold(events: Iterable[RecordedEvent], seeds: dict[str, SeedState] | None = None) -> ReplayResult:
    """Apply events (in position order) to per-seed states."""
    seeds = {} if seeds is None else seeds
    position = count = 0
    for event in events:
        position = event.position
        count += 1
        if not is_seed_stream(event.stream_id):
            continue
        state = seeds.get(event.stream_id) or SeedState(event.stream_id)
        seeds[event.stream_id] = evolve(state, event)
    return ReplayResult(seeds, position, count)


def replay_seed(store: EventStore, seed_id: str, *, to_position: int | None = None,
                use_snapshots: bool = True) -> SeedState:
    """One seed's state at ``to_position`` (default: now), from its newest snapshot on."""
    state, after_version = SeedState(seed_id), 0
    snap = store.latest_snapshot(seed_id, state_schema=STATE_SCHEMA, upto=to_position) if use_snapshots else None
    if snap is not None:
        state = SeedState.from_dict(snap.state)
        after_version = snap.version
    for event in store.read(stream_id=seed_id, upto=to_position, after_version=after_version):
        state = evolve(state, event)
    return state


def replay(store: EventStore, *, to_position: int | None = None, use_snapshots: bool = True) -> ReplayResult:
    """Every seed's state at ``to_position`` (default: the head of the log)."""
    if not use_snapshots:
        return fold(store.read(upto=to_position))
    head, _ = store.head()
    upto = head if to_position is None else min(to_position, head)
    seeds = {
        sid: replay_seed(store, sid, to_position=upto)
        for sid in store.streams() if is_seed_stream(sid)
    }
    seeds = {sid: s for sid, s in seeds.items() if s.version > 0}
    return ReplayResult(seeds, upto, sum(s.version for s in seeds.values()))


def snapshot_due(before: SeedState, after: SeedState, every: int = SNAPSHOT_EVERY) -> bool:
    return after.version // every > before.version // every


def take_snapshot(store: EventStore, state: SeedState) -> None:
    store.save_snapshot(Snapshot(state.seed_id, state.version, state.position, STATE_SCHEMA, state.to_dict()))


# -- verification ---------------------------------------------------------------------------

def _check_gates(event: RecordedEvent) -> str | None:
    """Re-run the recorded gates on the recorded inputs; None if the verdicts match."""
    recorded = event.data.get("verdicts")
    if not recorded:
        return None
    inputs = GateInputs.from_dict(event.data.get("inputs", {}))
    if event.type == ev.GATE_FAILED:
        gates: tuple[Gate, ...] = tuple(Gate[v["gate"]] for v in recorded)
    else:
        source = Stage.parse(event.data["from_stage"])
        dest = Stage.parse(event.data["to_stage"])
        gates = gates_for(source, dest) if dest is not Stage.CULLED else tuple(Gate[v["gate"]] for v in recorded)
    again = [v.to_dict() for v in evaluate_all(gates, inputs)]
    if again != list(recorded):
        return f"gate verdicts do not reproduce: recorded {recorded}, now {again}"
    return None


def verify_events(events: Iterator[RecordedEvent], *, genesis: str = GENESIS) -> int:
    """Check the hash chain (from ``genesis``, the run's), positions and replay of one run's
    raw events; returns the count.

    Raises :class:`LogCorrupted` naming the first bad position.
    """
    prev_hash, expected_position, count = genesis, 1, 0
    seeds: dict[str, SeedState] = {}
    versions: dict[str, int] = {}
    for raw in events:
        count += 1
        if raw.position != expected_position:
            raise LogCorrupted(expected_position, f"position missing (next stored is {raw.position})")
        if raw.prev_hash != prev_hash:
            raise LogCorrupted(raw.position, "prev_hash does not match the previous event's hash")
        again = chain_hash(prev_hash, position=raw.position, stream_id=raw.stream_id, version=raw.version,
                           event_type=raw.type, schema_version=raw.schema_version, command_id=raw.command_id,
                           recorded_at=raw.recorded_at, payload=raw.data)
        if again != raw.hash:
            raise LogCorrupted(raw.position, "hash does not match the stored event (tampered?)")
        if raw.version != versions.get(raw.stream_id, 0) + 1:
            raise LogCorrupted(raw.position, f"stream {raw.stream_id!r} version {raw.version} out of sequence")
        versions[raw.stream_id] = raw.version
        event = raw.upcast()
        if is_seed_stream(event.stream_id):
            problem = _check_gates(event)
            if problem:
                raise LogCorrupted(event.position, problem)
            try:
                seeds[event.stream_id] = evolve(seeds.get(event.stream_id) or SeedState(event.stream_id), event)
            except (ReplayError, KeyError, ValueError, TypeError) as e:
                raise LogCorrupted(event.position, f"replay failed: {e}") from e
        prev_hash = raw.hash
        expected_position += 1
    return count


def verify(store: EventStore) -> int:
    """Verify the store's run, and that the heads it reports are its last event.

    Two heads: the last event the store finds, and the one ``kasmina_runs`` recorded at the
    run's last append (SQL stores), which tells a cut-off tail from a short run.
    """
    run = None if store.run == DEFAULT_RUN else store.run
    try:
        # closing(): a failed check must not leave the read transaction (and its lock) open.
        with closing(store.read(raw=True)) as events:
            count = verify_events(events, genesis=run_genesis(store.run))
        head, head_hash = store.head()
        _check_head(store, count, head, head_hash, "head")
        recorded = getattr(store, "run_head", None)
        if recorded is not None:
            _check_head(store, count, *recorded(), "the run's recorded head")
    except LogCorrupted as e:
        raise LogCorrupted(e.position, e.problem, run) from None
    return count


def _check_head(store: EventStore, count: int, head: int, head_hash: str, what: str) -> None:
    if head != count:
        raise LogCorrupted(count + 1 if head > count else head, f"{what} says {head} events, log holds {count}")
    with closing(store.read(after=max(head - 1, 0), raw=True)) as tail:
        last = next(tail, None)
    if last is not None and last.hash != head_hash:
        raise LogCorrupted(head, f"{what}'s hash does not match the last event")
