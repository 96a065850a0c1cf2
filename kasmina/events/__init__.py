"""The event store: an append-only, hash-chained SQL log of every seed's history.

``open_store(url)`` picks the backend from the URL (``sqlite:///PATH`` by default,
``postgresql://...`` for a shared log, ``memory://`` for a throwaway one), checks that
the database schema is the one this Kasmina knows, and binds the handle to one run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kasmina.events.store import (
    SNAPSHOT_EVERY, AppendResult, EventStore, NewEvent, PendingAppend, RecordedEvent, Snapshot,
)
from kasmina.events.runs import FEED_START, FeedEvent, FeedPosition, RunInfo, UnknownRun, check_name
from kasmina.events.schema import DEFAULT_RUN
from kasmina.events.urls import default_url, parse, redact

if TYPE_CHECKING:
    from kasmina.events.sql import SQLEventStore
from kasmina.events.view import LogView, ReadOnlyView

__all__ = [
    "DEFAULT_RUN", "FEED_START", "SNAPSHOT_EVERY", "AppendResult", "EventStore", "FeedEvent", "FeedPosition",
    "LogView", "NewEvent", "PendingAppend", "ReadOnlyView", "RecordedEvent", "RunInfo", "Snapshot", "UnknownRun",
    "default_url", "open_store", "redact",
]


def open_store(url: str | None = None, *, run: str = DEFAULT_RUN, create_run: bool = False,
               create: bool = False, check_schema: bool = True, bind_run: bool = True,
               synchronous: str = "FULL") -> EventStore:
    """Open run ``run`` of the log at ``url``; never creates or migrates a schema (``kasmina
    db upgrade`` does). The run must exist unless ``create_run`` (a writer's path: see
    :func:`kasmina.events.migrate.open_log`).

    ``bind_run=False`` leaves the run unresolved until a call needs it: whole-log work
    (:meth:`~EventStore.runs`, :meth:`~EventStore.read_all`, :meth:`~EventStore.for_run`,
    audit queries) then runs for a role that cannot see ``run``, or on a log without it.
    """
    check_name(run)
    parsed = parse(default_url() if url is None else url)
    if parsed.backend == "memory":
        from kasmina.events.memory import MemoryEventStore

        return MemoryEventStore(run=run)
    store: SQLEventStore
    if parsed.backend == "sqlite":
        from kasmina.events import sqlite

        store = sqlite.SQLiteEventStore(sqlite.make_engine(parsed, create=create, synchronous=synchronous),
                                        parsed.text, run=run, create_run=create_run)
    else:
        from kasmina.events import postgres

        store = postgres.PostgresEventStore(postgres.make_engine(parsed), parsed.text, run=run,
                                            create_run=create_run)
    if check_schema:
        try:
            store.check_schema()
            if bind_run:
                store.run_id  # an unknown run is refused now, in one line
        except Exception:
            store.close()
            raise
    return store
