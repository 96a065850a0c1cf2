"""The event-store contract every backend implements, and the records it trades in.

Modelled on eventsourcing's recorders: one abstract contract here, one module per backend
(``memory``, ``sqlite``, ``postgres``) holding only what differs, and one shared test suite
(``tests/test_store.py``) run against all of them.

A store handle is bound to one run (:attr:`EventStore.run`, ``default`` unless named):
every call below reads and writes that run only, so a ledger, a follower, a checkpoint or
a nonce cache over the handle sees one training job. :meth:`EventStore.for_run` gives a
handle on another run over the same connections; :meth:`EventStore.read_all` reads every
run in one total order.

Guarantees every backend gives, per run:

* positions are gap-free and strictly increasing, in commit order;
* ``(stream_id, version)`` is unique; an append with a stale ``expected_version`` raises
  :class:`~kasmina.errors.StaleVersion` and writes nothing;
* an append carrying a ``command_id`` already in the log writes nothing and returns the
  original positions (``duplicate=True``): handling a command twice is a no-op;
* one public call is one transaction: a batch is written whole or not at all;
* each event carries a SHA-256 chained to the one before it in its run;
* appends to different runs do not wait for each other's commits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generator, Mapping, NamedTuple, Sequence

from kasmina.events.runs import FEED_START, FeedEvent, FeedPosition, RunInfo
from kasmina.events.schema import DEFAULT_RUN
from kasmina.events.upcasting import CURRENT_SCHEMA, upcast

#: A snapshot is taken every this many events of one stream.
SNAPSHOT_EVERY = 200


@dataclass(frozen=True, slots=True)
class NewEvent:
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = CURRENT_SCHEMA


@dataclass(frozen=True, slots=True)
class PendingAppend:
    """Events for one stream, to be appended in one transaction with others."""

    stream_id: str
    events: Sequence[NewEvent]
    expected_version: int | None = None
    command_id: str | None = None


class RecordedEvent(NamedTuple):
    """A stored event. A named tuple, not a dataclass: replay builds millions of them, and
    a frozen dataclass's ``__init__`` costs about three times a tuple's."""

    position: int
    stream_id: str
    version: int
    type: str
    data: Mapping[str, Any]
    schema_version: int
    command_id: str | None
    recorded_at: datetime
    hash: str
    prev_hash: str

    def upcast(self) -> RecordedEvent:
        """This event in the current schema (a no-op for events written by this version)."""
        if self.schema_version == CURRENT_SCHEMA:
            return self
        event_type, data = upcast(self.type, self.data, self.schema_version)
        return RecordedEvent(self.position, self.stream_id, self.version, event_type, data,
                             CURRENT_SCHEMA, self.command_id, self.recorded_at, self.hash, self.prev_hash)


@dataclass(frozen=True, slots=True)
class AppendResult:
    stream_id: str
    positions: tuple[int, ...]
    version: int
    duplicate: bool = False
    events: tuple[RecordedEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    stream_id: str
    version: int
    position: int
    state_schema: int
    state: Mapping[str, Any]


class EventStore(ABC):
    """An append-only, hash-chained log of events in per-seed streams, for one run."""

    url: str = ""
    #: The run this handle reads and writes.
    run: str = DEFAULT_RUN

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> AppendResult:
        """Append events to one stream in one transaction."""
        return self.append_many([PendingAppend(stream_id, events, expected_version, command_id)])[0]

    @abstractmethod
    def append_many(self, batches: Sequence[PendingAppend]) -> list[AppendResult]:
        """Append several streams' events in one transaction (all or nothing)."""

    @abstractmethod
    def read(
        self,
        *,
        stream_id: str | None = None,
        after: int = 0,
        upto: int | None = None,
        after_version: int = 0,
        raw: bool = False,
    ) -> Generator[RecordedEvent, None, None]:
        """Events in position order, streamed; upcast to the current schema unless ``raw``."""

    @abstractmethod
    def head(self) -> tuple[int, str]:
        """The last position and its hash (``(0, GENESIS)`` for an empty log)."""

    @abstractmethod
    def stream_version(self, stream_id: str) -> int:
        """The stream's last version (0 when it has no events)."""

    @abstractmethod
    def streams(self) -> list[str]:
        """Every stream id in the log, sorted."""

    @abstractmethod
    def find_command(self, command_id: str) -> tuple[int, ...]:
        """Positions of the events a command produced (empty if never seen)."""

    @abstractmethod
    def command_ids_since(self, since: datetime) -> set[str]:
        """Command ids recorded at or after ``since`` (rebuilds the nonce ledger)."""

    @abstractmethod
    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a snapshot (a cache: losing one only costs replay time)."""

    @abstractmethod
    def latest_snapshot(
        self, stream_id: str, *, state_schema: int, upto: int | None = None
    ) -> Snapshot | None:
        """The newest snapshot of a stream at or before position ``upto``."""

    # -- runs -------------------------------------------------------------------------
    @abstractmethod
    def for_run(self, name: str, *, create: bool = False) -> EventStore:
        """A handle on run ``name`` sharing this one's connections (closing it closes nothing).

        Raises :class:`~kasmina.events.runs.UnknownRun` if the run does not exist, unless
        ``create``: then it is created, owned by the caller's database role.
        """

    @abstractmethod
    def runs(self) -> list[RunInfo]:
        """Every run this handle may see, by creation order."""

    @abstractmethod
    def mark_run(self, status: str, *, config: Mapping[str, Any] | None = None) -> None:
        """Record this run's status, with this host and process (``running`` when a job opens
        it, ``finished`` or ``crashed`` when it stops); ``config`` is kept if none was yet."""

    @abstractmethod
    def read_all(self, *, after: FeedPosition = FEED_START, limit: int | None = None,
                 raw: bool = False) -> Generator[FeedEvent, None, None]:
        """Every run's events in one total order, from just after ``after``.

        The order is ``(tx, run, position)``; within a run it is position order. An event
        is only given once every event before it in this order has committed, so a reader
        that resumes from the last :class:`~kasmina.events.runs.FeedPosition` it saw never
        misses one (how each backend keeps that promise: docs/postgres.md).
        """

    @abstractmethod
    def feed_head(self) -> FeedPosition:
        """Where :meth:`read_all` stands now: the last event it would give (``FEED_START`` if none)."""

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
