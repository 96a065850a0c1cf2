"""The event store: an append-only, hash-chained SQL log of every seed's history.

``open_store(url)`` picks the backend from the URL (``sqlite:///PATH`` by default,
``postgresql://...`` for a shared log, ``memory://`` for a throwaway one) and checks that
the database schema is the one this Kasmina knows.
"""

from __future__ import annotations

from kasmina.events.store import (
    SNAPSHOT_EVERY, AppendResult, EventStore, NewEvent, PendingAppend, RecordedEvent, Snapshot,
)
from kasmina.events.urls import default_url, parse, redact
from kasmina.events.view import LogView, ReadOnlyView

__all__ = [
    "SNAPSHOT_EVERY", "AppendResult", "EventStore", "LogView", "NewEvent", "PendingAppend", "ReadOnlyView",
    "RecordedEvent", "Snapshot", "default_url", "open_store", "redact",
]


def open_store(url: str | None = None, *, create: bool = False, check_schema: bool = True,
               synchronous: str = "FULL") -> EventStore:
    """Open the log at ``url``; never creates or migrates a schema (``kasmina db upgrade`` does)."""
    parsed = parse(default_url() if url is None else url)
    if parsed.backend == "memory":
        from kasmina.events.memory import MemoryEventStore

        return MemoryEventStore()
    store: EventStore
    if parsed.backend == "sqlite":
        from kasmina.events import sqlite

        store = sqlite.SQLiteEventStore(sqlite.make_engine(parsed, create=create, synchronous=synchronous),
                                        parsed.text)
    else:
        from kasmina.events import postgres

        store = postgres.PostgresEventStore(postgres.make_engine(parsed), parsed.text)
    if check_schema:
        try:
            store.check_schema()  # type: ignore[attr-defined]
        except Exception:
            store.close()
            raise
    return store
