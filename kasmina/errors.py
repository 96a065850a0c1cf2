"""Kasmina's error hierarchy: user errors are one clear line; anything else is a bug.

The CLI prints ``error: <message>`` for a :class:`KasminaError` and exits non-zero; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class KasminaError(Exception):
    """A problem the user can fix; its message is one line that says how."""


class StoreError(KasminaError):
    """The event store refused or failed an operation."""


class BadDatabaseURL(StoreError):
    pass


class DatabaseNotFound(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The database could not be reached (down, locked for too long, network gone)."""


class SchemaMismatch(StoreError):
    """The database schema is not the one this Kasmina was built for."""


class PermissionDenied(StoreError):
    """The database refused this role the read or write (``kasmina db grant`` gives roles theirs)."""


class StaleVersion(StoreError):
    """Optimistic concurrency: the stream moved on since the caller read it."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id!r} is at version {actual}, expected {expected}")
        self.stream_id, self.expected, self.actual = stream_id, expected, actual


class IntegrityViolation(StoreError):
    """The database refused a write that would break the log (e.g. UPDATE on an event)."""


class UnknownSeed(KasminaError):
    pass


class LogCorrupted(KasminaError):
    """The hash chain or the replay found a bad event."""

    def __init__(self, position: int, problem: str, run: str | None = None) -> None:
        super().__init__(f"{'' if run is None else f'run {run!r}, '}position {position}: {problem}")
        self.position, self.problem, self.run = position, problem, run
