"""A view of a log as it stood at one position, moved forward on demand.

Exact resume by re-execution: after a crash the log may hold events recorded after the
newest checkpoint. The training loop rebuilds its executor as a follower over
``LogView(store, upto=<the checkpoint's position>)``, restores the checkpoint, re-runs the
lost steps while it :meth:`~LogView.advance`\\ s the view step by step (``Executor.sync()``
folds the recorded decisions: nothing is decided twice), then :meth:`~LogView.release`\\ s
it and calls ``Executor.lead()``. Everything that reads through the view (replay, the
ledger, checkpoints) sees the log clipped at :attr:`LogView.limit`; once released, the view
is a plain pass-through.
"""

from __future__ import annotations

from contextlib import closing
from datetime import datetime
from typing import Any, Generator, Mapping, Sequence

from kasmina.errors import KasminaError
from kasmina.events.runs import FEED_START, FeedEvent, FeedPosition, RunInfo, genesis
from kasmina.events.store import AppendResult, EventStore, PendingAppend, RecordedEvent, Snapshot
from kasmina.lifecycle.state import STATE_SCHEMA


class ReadOnlyView(KasminaError):
    """An append reached a :class:`LogView` that is still clipped.

    Deliberately not a :class:`~kasmina.errors.StoreError`: the executor treats those as a
    passing outage (``step()`` keeps them in ``last_error`` and carries on, ``handle()``
    answers ``store_unavailable``), while a write through a clipped view is a mistake in the
    resume loop (``lead()`` before ``release()``) that must stop it, not be retried.
    """


class LogView(EventStore):
    """``store`` as it stood at position ``upto``: nothing past :attr:`limit` is visible.

    While limited the view is read-only: appends raise :class:`ReadOnlyView` and
    :meth:`save_snapshot` does nothing (snapshots are a cache: one not taken only costs
    replay time later). :meth:`command_ids_since` is not clipped: a command recorded past
    the limit has been handled, and its id must stay refused as a replay. :meth:`close`
    leaves ``store`` open: its owner closes it.
    """

    def __init__(self, store: EventStore, upto: int) -> None:
        if isinstance(upto, bool) or not isinstance(upto, int) or upto < 0:
            raise KasminaError(f"a log view needs a position >= 0 to stop at, got {upto!r}")
        self.store = store
        self._limit: int | None = upto

    @property
    def url(self) -> str:  # type: ignore[override]
        return self.store.url

    @property
    def run(self) -> str:  # type: ignore[override]
        return self.store.run

    @property
    def limit(self) -> int | None:
        """The last position the view shows; ``None`` once released."""
        return self._limit

    def advance(self, upto: int) -> None:
        """Show the log up to ``upto`` (never backwards: folded events cannot be unfolded)."""
        if self._limit is None:
            raise KasminaError("the log view was released: it has no limit to advance")
        if isinstance(upto, bool) or not isinstance(upto, int):
            raise KasminaError(f"a log view advances to a position (an int), got {upto!r}")
        if upto < self._limit:
            raise KasminaError(f"the log view is at position {self._limit}; it cannot move back to {upto}")
        self._limit = upto

    def release(self) -> None:
        """Drop the limit: from now on every call, appends included, goes to the store."""
        self._limit = None

    def _clip(self, upto: int | None) -> int | None:
        if self._limit is None:
            return upto
        return self._limit if upto is None else min(upto, self._limit)

    # -- writes ---------------------------------------------------------------------------
    def append_many(self, batches: Sequence[PendingAppend]) -> list[AppendResult]:
        if self._limit is not None:
            raise ReadOnlyView(f"the view of {self.url} up to position {self._limit} is read-only; "
                               "release() it before writing")
        return self.store.append_many(batches)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        if self._limit is None:
            self.store.save_snapshot(snapshot)

    # -- runs: not clipped (the view is of one run's positions) ---------------------------
    def for_run(self, name: str, *, create: bool = False) -> EventStore:
        return self.store.for_run(name, create=create)

    def runs(self) -> list[RunInfo]:
        return self.store.runs()

    def mark_run(self, status: str, *, config: Mapping[str, Any] | None = None) -> None:
        self.store.mark_run(status, config=config)

    def read_all(self, *, after: FeedPosition = FEED_START, limit: int | None = None,
                 raw: bool = False) -> Generator[FeedEvent, None, None]:
        return self.store.read_all(after=after, limit=limit, raw=raw)

    def feed_head(self) -> FeedPosition:
        return self.store.feed_head()

    # -- reads ----------------------------------------------------------------------------
    def read(self, *, stream_id: str | None = None, after: int = 0, upto: int | None = None,
             after_version: int = 0, raw: bool = False) -> Generator[RecordedEvent, None, None]:
        return self.store.read(stream_id=stream_id, after=after, upto=self._clip(upto),
                               after_version=after_version, raw=raw)

    def head(self) -> tuple[int, str]:
        head = self.store.head()
        limit = self._limit
        if limit is None or head[0] <= limit:
            return head
        if limit == 0:
            return 0, genesis(self.store.run)
        with closing(self.store.read(after=limit - 1, upto=limit, raw=True)) as events:
            event = next(events)
        return event.position, event.hash

    def stream_version(self, stream_id: str) -> int:
        if self._limit is None:
            return self.store.stream_version(stream_id)
        # From the stream's newest snapshot within the view, then its events up to the limit.
        snap = self.store.latest_snapshot(stream_id, state_schema=STATE_SCHEMA, upto=self._limit)
        version = snap.version if snap is not None else 0
        with closing(self.store.read(stream_id=stream_id, after_version=version, upto=self._limit,
                                     raw=True)) as events:
            for event in events:
                version = event.version
        return version

    def streams(self) -> list[str]:
        if self._limit is None:
            return self.store.streams()
        return [sid for sid in self.store.streams() if self._starts_within(sid)]

    def _starts_within(self, stream_id: str) -> bool:
        with closing(self.store.read(stream_id=stream_id, upto=self._limit, raw=True)) as events:
            return next(events, None) is not None

    def find_command(self, command_id: str) -> tuple[int, ...]:
        positions = self.store.find_command(command_id)
        limit = self._limit
        return positions if limit is None else tuple(p for p in positions if p <= limit)

    def command_ids_since(self, since: datetime) -> set[str]:
        return self.store.command_ids_since(since)

    def latest_snapshot(self, stream_id: str, *, state_schema: int, upto: int | None = None) -> Snapshot | None:
        return self.store.latest_snapshot(stream_id, state_schema=state_schema, upto=self._clip(upto))

    def close(self) -> None:
        """Nothing to release: the wrapped store belongs to whoever opened it."""

    def __repr__(self) -> str:
        return f"LogView({self.store!r}, limit={self._limit})"
