"""In-memory store: the reference implementation of the contract, and a fast fixture.

It keeps the same guarantees as the SQL backends (per-run gap-free positions, stale-version
refusal, idempotent command ids, all-or-nothing batches, the hash chain, one order across
runs) without a database. Handles from :meth:`MemoryEventStore.for_run` share one
:class:`_Log`; ``open_store("memory://")`` always makes a new, empty one.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Generator, Mapping, Sequence

from kasmina.errors import StaleVersion, StoreError
from kasmina.events import runs as _runs
from kasmina.events.hashing import chain_hash
from kasmina.events.runs import FEED_START, FeedEvent, FeedPosition, RunInfo
from kasmina.events.schema import DEFAULT_RUN
from kasmina.events.store import AppendResult, EventStore, PendingAppend, RecordedEvent, Snapshot
from kasmina.lifecycle.state import canonical_json


@dataclass
class _Run:
    info: RunInfo
    genesis: str
    events: list[RecordedEvent] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    commands: dict[str, list[int]] = field(default_factory=dict)
    snapshots: dict[tuple[str, int], Snapshot] = field(default_factory=dict)


@dataclass
class _Log:
    runs: dict[str, _Run] = field(default_factory=dict)
    feed: list[FeedEvent] = field(default_factory=list)
    tx: Any = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, name: str, *, create: bool) -> _Run:
        with self.lock:
            found = self.runs.get(name)
            if found is None:
                if not create:
                    raise _runs.UnknownRun(f"no run {name!r} in memory://; runs: {', '.join(self.runs)}")
                now = datetime.now(timezone.utc)
                info = RunInfo(len(self.runs) + 1, name, "finished" if name == DEFAULT_RUN else "running",
                               now, now, None, None, None, None, 0, _runs.genesis(name))
                found = self.runs[name] = _Run(info, _runs.genesis(name))
            return found


class MemoryEventStore(EventStore):
    url = "memory://"

    def __init__(self, log: _Log | None = None, run: str = DEFAULT_RUN) -> None:
        self._log = _Log() if log is None else log
        self.run = _runs.check_name(run)
        self._run = self._log.run(run, create=True)

    # -- runs ---------------------------------------------------------------------------
    def for_run(self, name: str, *, create: bool = False) -> EventStore:
        self._log.run(_runs.check_name(name), create=create)
        return MemoryEventStore(self._log, name)

    def runs(self) -> list[RunInfo]:
        with self._log.lock:
            return [replace(r.info, last_position=len(r.events), last_hash=r.events[-1].hash if r.events else r.genesis)
                    for r in self._log.runs.values()]

    def mark_run(self, status: str, *, config: Mapping[str, Any] | None = None) -> None:
        host, pid = _runs.this_process()
        with self._log.lock:
            info = self._run.info
            self._run.info = replace(info, status=_runs.check_status(status), host=host, pid=pid,
                                     updated_at=datetime.now(timezone.utc),
                                     config=info.config if info.config is not None or config is None
                                     else _json_copy(config))

    def read_all(self, *, after: FeedPosition = FEED_START, limit: int | None = None,
                 raw: bool = False) -> Generator[FeedEvent, None, None]:
        with self._log.lock:
            feed = [f for f in self._log.feed if f.at > after]
        for item in feed[:limit]:
            yield item if raw else item._replace(event=item.event.upcast())

    def feed_head(self) -> FeedPosition:
        with self._log.lock:
            return self._log.feed[-1].at if self._log.feed else FEED_START

    # -- writes -------------------------------------------------------------------------
    def append_many(self, batches: Sequence[PendingAppend]) -> list[AppendResult]:
        now = datetime.now(timezone.utc)
        run = self._run
        with self._log.lock:
            position, last_hash = self._head()
            staged: list[RecordedEvent] = []
            versions = dict(run.versions)
            commands: dict[str, AppendResult] = {}
            results: list[AppendResult] = []
            for batch in batches:
                if batch.command_id is not None:
                    earlier = commands.get(batch.command_id) or self._duplicate(batch.command_id)
                    if earlier is not None:
                        results.append(replace(earlier, duplicate=True, events=()))
                        continue
                version = versions.get(batch.stream_id, 0)
                if batch.expected_version is not None and batch.expected_version != version:
                    raise StaleVersion(batch.stream_id, batch.expected_version, version)
                recorded = []
                for event in batch.events:
                    position, version = position + 1, version + 1
                    try:
                        data = _json_copy(event.data)
                        new_hash = chain_hash(last_hash, position=position, stream_id=batch.stream_id,
                                              version=version, event_type=event.type,
                                              schema_version=event.schema_version, command_id=batch.command_id,
                                              recorded_at=now, payload=data)
                    except (TypeError, ValueError) as e:
                        raise StoreError(f"event {event.type!r} has a payload that is not plain JSON: {e}") from e
                    recorded.append(RecordedEvent(position, batch.stream_id, version, event.type, data,
                                                  event.schema_version, batch.command_id, now, new_hash, last_hash))
                    last_hash = new_hash
                versions[batch.stream_id] = version
                staged.extend(recorded)
                result = AppendResult(batch.stream_id, tuple(r.position for r in recorded), version,
                                      events=tuple(recorded))
                if batch.command_id is not None:
                    commands[batch.command_id] = result
                results.append(result)
            # Commit: nothing above touched the store, so a failure leaves it unchanged.
            run.events.extend(staged)
            run.versions = versions
            if staged:
                tx = next(self._log.tx)
                self._log.feed.extend(FeedEvent(FeedPosition(tx, run.info.run_id, r.position), self.run, r)
                                      for r in staged)
            for record in staged:
                if record.command_id is not None:
                    run.commands.setdefault(record.command_id, []).append(record.position)
        return results

    def _duplicate(self, command_id: str) -> AppendResult | None:
        positions = self._run.commands.get(command_id)
        if not positions:
            return None
        last = self._run.events[positions[-1] - 1]
        return AppendResult(last.stream_id, tuple(positions), last.version, duplicate=True)

    def _head(self) -> tuple[int, str]:
        events = self._run.events
        return (len(events), events[-1].hash) if events else (0, self._run.genesis)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._run.snapshots.setdefault((snapshot.stream_id, snapshot.version), snapshot)

    # -- reads --------------------------------------------------------------------------
    def read(self, *, stream_id: str | None = None, after: int = 0, upto: int | None = None,
             after_version: int = 0, raw: bool = False) -> Generator[RecordedEvent, None, None]:
        events = self._run.events
        end = len(events) if upto is None else min(upto, len(events))
        for record in events[after:end]:
            if stream_id is not None and (record.stream_id != stream_id or record.version <= after_version):
                continue
            yield record if raw else record.upcast()

    def head(self) -> tuple[int, str]:
        with self._log.lock:
            return self._head()

    def stream_version(self, stream_id: str) -> int:
        return self._run.versions.get(stream_id, 0)

    def streams(self) -> list[str]:
        return sorted(self._run.versions)

    def find_command(self, command_id: str) -> tuple[int, ...]:
        return tuple(self._run.commands.get(command_id, ()))

    def command_ids_since(self, since: datetime) -> set[str]:
        since = since.replace(tzinfo=timezone.utc) if since.tzinfo is None else since
        return {e.command_id for e in self._run.events if e.command_id is not None and e.recorded_at >= since}

    def latest_snapshot(self, stream_id: str, *, state_schema: int, upto: int | None = None) -> Snapshot | None:
        found = [s for (sid, _), s in self._run.snapshots.items()
                 if sid == stream_id and s.state_schema == state_schema and (upto is None or s.position <= upto)]
        return max(found, key=lambda s: s.version, default=None)


def _json_copy(data: object) -> dict:
    """A private copy, checked to be plain JSON, so callers can't mutate the log."""
    import json

    return json.loads(canonical_json(data))
