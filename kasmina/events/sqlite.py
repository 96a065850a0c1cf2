"""SQLite backend: the embedded default for a single training process.

Durability choices (https://www.sqlite.org/pragma.html, https://www.sqlite.org/wal.html):

* ``journal_mode=WAL`` lets readers (``kasmina history`` during a run) read while the
  trainer writes, and makes a commit one sequential WAL append.
* ``synchronous=FULL`` (default here): every commit is fsynced, so an acknowledged event
  survives power loss, which an audit log needs. ``NORMAL`` is offered for throwaway logs.
* ``busy_timeout`` makes a writer wait for the lock instead of failing at once.
* Writes start with ``BEGIN IMMEDIATE``: the write lock is taken before reading the head
  row, so two processes can never both read the same last position.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event

from kasmina.errors import BadDatabaseURL, DatabaseNotFound
from kasmina.events import codec
from kasmina.events.sql import SQLEventStore
from kasmina.events.urls import ParsedURL

SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")
BUSY_TIMEOUT_MS = 10_000


def make_engine(parsed: ParsedURL, *, create: bool, synchronous: str = "FULL") -> Engine:
    path = parsed.sqlite_path
    if synchronous.upper() not in SYNCHRONOUS_MODES:
        raise BadDatabaseURL(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}")
    if not create and not os.path.exists(path):
        raise DatabaseNotFound(f"database file {path!r} not found: run 'kasmina db upgrade --db {parsed.text}' first")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DatabaseNotFound(f"folder {parent!r} for the database file does not exist")
    assert parsed.url is not None
    engine = create_engine(parsed.url, json_deserializer=codec.loads)  # snapshots, run configs
    mode = synchronous.upper()

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below issues BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={mode}")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        write = conn.get_execution_options().get("kasmina_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class SQLiteEventStore(SQLEventStore):
    dialect_label = "sqlite"
