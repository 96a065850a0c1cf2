"""A read-only follower: tails a log and keeps a live replayed view of every seed.

Meant for a dashboard, an auditor or a standby process next to a training job that writes
to a shared PostgreSQL log (SQLite works too, on one machine). It polls the log's head (one
small query per interval) and folds new events through the same ``evolve`` as replay
(:meth:`kasmina.ledger.Ledger.catch_up`); it never writes. Polling rather than
LISTEN/NOTIFY keeps the append path free of any per-commit notification and works the
same on both backends; the cost is up to one interval of extra lag.

Lag is reported two ways: in events (the head it saw minus what it has applied) and in
seconds (when it applied an event minus when the event was recorded; both clocks are
wall clocks, so across machines the figure includes their skew).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

from kasmina.events import FEED_START, EventStore, FeedEvent, RecordedEvent
from kasmina.ledger import Ledger
from kasmina.lifecycle.state import SeedState, digest


@dataclass(slots=True)
class Lag:
    """How far behind the log the view is, and has been."""

    applied: int = 0          # events applied since the follower started
    position: int = 0         # last position applied (of the run; 0 for a follower of every run)
    head: int = 0             # head seen at the last poll (likewise)
    last_s: float = 0.0       # lag of the last event applied, in seconds
    max_s: float = 0.0        # the largest such lag so far
    mean_s: float = 0.0

    @property
    def events_behind(self) -> int:
        return max(self.head - self.position, 0)

    def record(self, events: Sequence[RecordedEvent]) -> None:
        """Count ``events`` as applied now."""
        now = datetime.now(timezone.utc)
        for event in events:
            seconds = _seconds_since(event.recorded_at, now)
            self.applied += 1
            self.last_s = seconds
            self.max_s = max(self.max_s, seconds)
            self.mean_s += (seconds - self.mean_s) / self.applied

    def to_dict(self) -> dict[str, float | int]:
        return {"applied": self.applied, "position": self.position, "head": self.head,
                "events_behind": self.events_behind, "lag_last_ms": round(self.last_s * 1000, 3),
                "lag_max_ms": round(self.max_s * 1000, 3), "lag_mean_ms": round(self.mean_s * 1000, 3)}


def _seconds_since(recorded_at: datetime, now: datetime) -> float:
    when = recorded_at if recorded_at.tzinfo is not None else recorded_at.replace(tzinfo=timezone.utc)
    return max((now - when).total_seconds(), 0.0)


def _interval(interval_s: float) -> float:
    if not (isinstance(interval_s, (int, float)) and math.isfinite(interval_s) and interval_s > 0):
        raise ValueError(f"interval must be a positive number of seconds, got {interval_s!r}")
    return float(interval_s)


class _Polling:
    interval_s: float

    def poll(self) -> Sequence[Any]:
        raise NotImplementedError

    def _done(self, until_position: int | None) -> bool:
        return False

    def follow(self, *, until_position: int | None = None, idle_timeout_s: float | None = None,
               sleep: Callable[[float], None] = time.sleep) -> Iterator[Sequence[Any]]:
        """Poll forever (or until ``until_position`` is applied, or nothing new for
        ``idle_timeout_s``), yielding each non-empty batch of applied events."""
        quiet_since = time.monotonic()
        while not self._done(until_position):
            events = self.poll()
            if events:
                quiet_since = time.monotonic()
                yield events
            elif idle_timeout_s is not None and time.monotonic() - quiet_since >= idle_timeout_s:
                return
            if not self._done(until_position):
                sleep(self.interval_s)


class Follower(_Polling):
    """A live replayed view of ``store``'s run; call :meth:`poll`, or iterate :meth:`follow`.

    It starts from the replayed head (snapshots first), or with ``from_start`` from an
    empty view that applies every event, as a new dashboard showing the history would.
    """

    def __init__(self, store: EventStore, *, interval_s: float = 0.2, from_start: bool = False) -> None:
        self.interval_s = _interval(interval_s)
        self.store = store
        # From the start: an empty view that applies the whole log, event by event.
        self.ledger = Ledger(store) if from_start else Ledger.open(store)
        self.lag = Lag(position=self.ledger.position, head=self.ledger.position)

    @property
    def seeds(self) -> dict[str, SeedState]:
        return self.ledger.seeds

    @property
    def digest(self) -> str:
        """Same digest as ``kasmina replay`` gives for the same position."""
        return digest(self.ledger.seeds.values())

    def poll(self) -> list[RecordedEvent]:
        """Apply everything up to the current head; returns the events applied."""
        head = self.store.head()[0]
        self.lag.head = head
        events = self.ledger.catch_up(head)
        self.lag.record(events)
        self.lag.position = self.ledger.position
        return events

    def _done(self, until_position: int | None) -> bool:
        return until_position is not None and self.lag.position >= until_position


class RunsFollower(_Polling):
    """A live replayed view of every run in the log, from the one order across runs.

    One query per poll, whatever the number of runs (:meth:`EventStore.read_all`); each
    run's events go to that run's ledger. Runs that appear later are picked up as their
    first event arrives. It starts from every run's replayed head, or with ``from_start``
    from nothing.
    """

    def __init__(self, store: EventStore, *, interval_s: float = 0.2, from_start: bool = False) -> None:
        self.interval_s = _interval(interval_s)
        self.store = store
        self.ledgers: dict[str, Ledger] = {}
        self.lag = Lag()
        # The cursor first, then the replays: an event appended in between is in both,
        # and the ledger skips what it already holds (Ledger.apply), so none is missed.
        self.cursor = FEED_START if from_start else store.feed_head()
        if not from_start:
            for info in store.runs():
                self.ledgers[info.name] = Ledger.open(store.for_run(info.name))

    def _ledger(self, run: str) -> Ledger:
        ledger = self.ledgers.get(run)
        if ledger is None:
            ledger = self.ledgers[run] = Ledger(self.store.for_run(run))
        return ledger

    def poll(self) -> list[FeedEvent]:
        """Apply everything committed since the last poll; returns the feed items applied."""
        applied: list[FeedEvent] = []
        for item in self.store.read_all(after=self.cursor):
            self.cursor = item.at
            if self._ledger(item.run).apply([item.event]):
                applied.append(item)
        self.lag.record([item.event for item in applied])
        return applied

    @property
    def digests(self) -> dict[str, str]:
        """Each run's digest, as ``kasmina replay --run NAME`` gives it."""
        return {run: digest(ledger.seeds.values()) for run, ledger in sorted(self.ledgers.items())}
