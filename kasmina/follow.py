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
from typing import Callable, Iterator, Sequence

from kasmina.events import EventStore, RecordedEvent
from kasmina.ledger import Ledger
from kasmina.lifecycle.state import SeedState, digest


@dataclass(slots=True)
class Lag:
    """How far behind the log the view is, and has been."""

    applied: int = 0          # events applied since the follower started
    position: int = 0         # last position applied
    head: int = 0             # head seen at the last poll
    last_s: float = 0.0       # lag of the last event applied, in seconds
    max_s: float = 0.0        # the largest such lag so far
    mean_s: float = 0.0

    @property
    def events_behind(self) -> int:
        return max(self.head - self.position, 0)

    def to_dict(self) -> dict[str, float | int]:
        return {"applied": self.applied, "position": self.position, "head": self.head,
                "events_behind": self.events_behind, "lag_last_ms": round(self.last_s * 1000, 3),
                "lag_max_ms": round(self.max_s * 1000, 3), "lag_mean_ms": round(self.mean_s * 1000, 3)}


def _seconds_since(recorded_at: datetime, now: datetime) -> float:
    when = recorded_at if recorded_at.tzinfo is not None else recorded_at.replace(tzinfo=timezone.utc)
    return max((now - when).total_seconds(), 0.0)


class Follower:
    """A live replayed view of ``store``; call :meth:`poll`, or iterate :meth:`follow`.

    It starts from the replayed head (snapshots first), or with ``from_start`` from an
    empty view that applies every event, as a new dashboard showing the history would.
    """

    def __init__(self, store: EventStore, *, interval_s: float = 0.2, from_start: bool = False) -> None:
        if not (isinstance(interval_s, (int, float)) and math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval must be a positive number of seconds, got {interval_s!r}")
        self.store = store
        self.interval_s = float(interval_s)
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
        now = datetime.now(timezone.utc)
        for event in events:
            seconds = _seconds_since(event.recorded_at, now)
            self.lag.applied += 1
            self.lag.last_s = seconds
            self.lag.max_s = max(self.lag.max_s, seconds)
            self.lag.mean_s += (seconds - self.lag.mean_s) / self.lag.applied
        self.lag.position = self.ledger.position
        return events

    def follow(self, *, until_position: int | None = None, idle_timeout_s: float | None = None,
               sleep: Callable[[float], None] = time.sleep) -> Iterator[Sequence[RecordedEvent]]:
        """Poll forever (or until ``until_position`` is applied, or nothing new for
        ``idle_timeout_s``), yielding each non-empty batch of applied events."""
        quiet_since = time.monotonic()
        while until_position is None or self.lag.position < until_position:
            events = self.poll()
            if events:
                quiet_since = time.monotonic()
                yield events
            elif idle_timeout_s is not None and time.monotonic() - quiet_since >= idle_timeout_s:
                return
            if until_position is None or self.lag.position < until_position:
                sleep(self.interval_s)
