"""Circuit breaker guarding kernel fetches.

After ``failure_threshold`` consecutive failures the breaker OPENs and refuses fetches for
``cooldown_s`` (the catalogue serves its fallback instead of hammering a broken artifact
store). The first ``allow()`` after the cooldown moves it to HALF_OPEN, which lets trial
fetches through: ``success_threshold`` successes in a row CLOSE it, any failure re-OPENs it
at once. The clock is injectable so tests and replays need no sleeping.

Differences from the prototype's breaker (reference §5.6), on purpose: a HALF_OPEN failure
re-opens immediately (the prototype needed ``failure_threshold`` fresh failures), and
``force`` also accepts Leyline wire values and names, as a CIRCUIT_BREAKER command carries.
"""

from __future__ import annotations

import enum
import threading
import time
from typing import Any, Callable

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.IntEnum):
    """Breaker states; values equal Leyline ``CircuitBreakerState`` (``CIRCUIT_STATE_*``)."""

    CLOSED = 1
    OPEN = 2
    HALF_OPEN = 3

    @classmethod
    def parse(cls, value: BreakerState | int | str) -> BreakerState:
        """Accept a member, a Leyline wire value, or a name (``OPEN`` or ``CIRCUIT_STATE_OPEN``)."""
        if isinstance(value, str):
            name = value.strip().upper().removeprefix("CIRCUIT_STATE_")
            if name in cls.__members__:
                return cls[name]
            raise ValueError(f"breaker state must be CLOSED, OPEN or HALF_OPEN, got {value!r}")
        try:
            return cls(int(value))
        except ValueError:
            raise ValueError(f"breaker state must be CLOSED, OPEN or HALF_OPEN, got {value!r}") from None


class CircuitBreaker:
    """CLOSED / OPEN / HALF_OPEN breaker; thread-safe, injectable clock (seconds)."""

    def __init__(self, failure_threshold: int = 3, cooldown_s: float = 30.0, success_threshold: int = 2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1 or success_threshold < 1:
            raise ValueError("failure_threshold and success_threshold must be >= 1")
        if not cooldown_s >= 0:
            raise ValueError("cooldown_s must be >= 0")
        self.failure_threshold = int(failure_threshold)
        self.cooldown_s = float(cooldown_s)
        self.success_threshold = int(success_threshold)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0  # consecutive, in CLOSED / HALF_OPEN
        self._successes = 0  # consecutive, in HALF_OPEN
        self._open_until: float | None = None
        self._denied = 0
        self._opened = 0
        self._last_failure: str | None = None
        self._last_transition: dict[str, Any] | None = None

    @property
    def state(self) -> BreakerState:
        """The current state (an OPEN breaker past its cooldown turns HALF_OPEN on ``allow()``)."""
        return self._state

    def allow(self) -> bool:
        """May a fetch be attempted now? OPEN refuses until the cooldown has elapsed."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return True
            if self._open_until is not None and self._clock() >= self._open_until:
                self._to(BreakerState.HALF_OPEN, "cooldown_elapsed")
                return True
            self._denied += 1
            return False

    def record_success(self) -> None:
        """A fetch worked: reset the failure streak; enough in a row close a HALF_OPEN breaker."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                self._failures = 0
            elif self._state is BreakerState.HALF_OPEN:
                self._failures = 0
                self._successes += 1
                if self._successes >= self.success_threshold:
                    self._to(BreakerState.CLOSED, "stabilised")
            # OPEN: a late success from before the breaker opened proves nothing; ignored.

    def record_failure(self, reason: str) -> None:
        """A fetch failed for ``reason``: count it, open at the threshold, re-open from HALF_OPEN."""
        with self._lock:
            self._last_failure = str(reason)
            if self._state is BreakerState.OPEN:
                self._open_until = self._clock() + self.cooldown_s  # still failing: extend the window
            elif self._state is BreakerState.HALF_OPEN:
                self._open(f"trial failed: {reason}")
            else:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._open(f"{self._failures} consecutive failures, last: {reason}")

    def force(self, state: BreakerState | int | str, rationale: str) -> None:
        """Set the state by hand (operator or controller command); OPEN starts a fresh cooldown."""
        target = BreakerState.parse(state)
        with self._lock:
            if target is BreakerState.OPEN:
                self._open(f"forced: {rationale}")
                self._failures = self.failure_threshold
            else:
                self._failures = self._successes = 0
                self._open_until = None
                self._to(target, f"forced: {rationale}")

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready view for telemetry and the event log."""
        with self._lock:
            now = self._clock()
            remaining = max(0.0, self._open_until - now) if self._state is BreakerState.OPEN and \
                self._open_until is not None else 0.0
            return {
                "state": self._state.name,
                "failure_count": self._failures,
                "success_count": self._successes,
                "failure_threshold": self.failure_threshold,
                "success_threshold": self.success_threshold,
                "cooldown_s": self.cooldown_s,
                "cooldown_remaining_s": remaining,
                "denied": self._denied,
                "times_opened": self._opened,
                "last_failure": self._last_failure,
                "last_transition": dict(self._last_transition) if self._last_transition else None,
            }

    # -- internals (caller holds the lock) ---------------------------------------------------

    def _open(self, reason: str) -> None:
        self._open_until = self._clock() + self.cooldown_s
        self._opened += 1
        self._to(BreakerState.OPEN, reason)

    def _to(self, state: BreakerState, reason: str) -> None:
        previous = self._state
        self._state = state
        if state is BreakerState.HALF_OPEN:
            self._failures = self._successes = 0
        elif state is BreakerState.CLOSED:
            self._failures = self._successes = 0
            self._open_until = None
        else:
            self._successes = 0
        self._last_transition = {"from": previous.name, "to": state.name, "reason": reason, "at": self._clock()}
