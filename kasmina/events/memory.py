"""In-memory store: the reference implementation of the contract, and a fast fixture.

It keeps the same guarantees as the SQL backends (gap-free positions, stale-version
refusal, idempotent command ids, all-or-nothing batches, the hash chain) without a database.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timezone
from typing import Generator, Sequence

from kasmina.errors import StaleVersion, StoreError
from kasmina.events.hashing import GENESIS, chain_hash
from kasmina.events.store import AppendResult, EventStore, PendingAppend, RecordedEvent, Snapshot
from kasmina.lifecycle.state import canonical_json


class MemoryEventStore(EventStore):
    url = "memory://"

    def __init__(self) -> None:
        self._events: list[RecordedEvent] = []
        self._versions: dict[str, int] = {}
        self._commands: dict[str, list[int]] = {}
        self._snapshots: dict[tuple[str, int], Snapshot] = {}
        self._lock = threading.Lock()

    def append_many(self, batches: Sequence[PendingAppend]) -> list[AppendResult]:
        now = datetime.now(timezone.utc)
        with self._lock:
            position, last_hash = self._head()
            staged: list[RecordedEvent] = []
            versions = dict(self._versions)
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
            self._events.extend(staged)
            self._versions = versions
            for record in staged:
                if record.command_id is not None:
                    self._commands.setdefault(record.command_id, []).append(record.position)
        return results

    def _duplicate(self, command_id: str) -> AppendResult | None:
        positions = self._commands.get(command_id)
        if not positions:
            return None
        last = self._events[positions[-1] - 1]
        return AppendResult(last.stream_id, tuple(positions), last.version, duplicate=True)

    def _head(self) -> tuple[int, str]:
        return (len(self._events), self._events[-1].hash) if self._events else (0, GENESIS)

    def read(self, *, stream_id: str | None = None, after: int = 0, upto: int | None = None,
             after_version: int = 0, raw: bool = False) -> Generator[RecordedEvent, None, None]:
        end = len(self._events) if upto is None else min(upto, len(self._events))
        for record in self._events[after:end]:
            if stream_id is not None and (record.stream_id != stream_id or record.version <= after_version):
                continue
            yield record if raw else record.upcast()

    def head(self) -> tuple[int, str]:
        with self._lock:
            return self._head()

    def stream_version(self, stream_id: str) -> int:
        return self._versions.get(stream_id, 0)

    def streams(self) -> list[str]:
        return sorted(self._versions)

    def find_command(self, command_id: str) -> tuple[int, ...]:
        return tuple(self._commands.get(command_id, ()))

    def command_ids_since(self, since: datetime) -> set[str]:
        since = since.replace(tzinfo=timezone.utc) if since.tzinfo is None else since
        return {e.command_id for e in self._events if e.command_id is not None and e.recorded_at >= since}

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._snapshots.setdefault((snapshot.stream_id, snapshot.version), snapshot)

    def latest_snapshot(self, stream_id: str, *, state_schema: int, upto: int | None = None) -> Snapshot | None:
        found = [s for (sid, _), s in self._snapshots.items()
                 if sid == stream_id and s.state_schema == state_schema and (upto is None or s.position <= upto)]
        return max(found, key=lambda s: s.version, default=None)


def _json_copy(data: object) -> dict:
    """A private copy, checked to be plain JSON, so callers can't mutate the log."""
    import json

    return json.loads(canonical_json(data))
