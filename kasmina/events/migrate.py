"""Schema migrations, driven in code (``kasmina db upgrade`` / ``downgrade`` / ``current``).

Alembic is imported only here, lazily, so log commands that do not migrate stay fast. The
scripts are found inside the installed package (``kasmina.migrations``), never relative to
the working directory.
"""

from __future__ import annotations

from contextlib import closing
from importlib import resources
from typing import TYPE_CHECKING, Any, Mapping

from kasmina.errors import SchemaMismatch
from kasmina.events import schema
from kasmina.events.schema import DEFAULT_RUN
from kasmina.events.urls import parse, redact

if TYPE_CHECKING:
    from kasmina.events.store import EventStore


def _config(url: str, connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("kasmina.migrations")))
    # configparser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def _run(url: str, action: str, revision: str, create: bool) -> None:
    from alembic import command
    from alembic.util.exc import CommandError

    from kasmina.events import open_store
    from kasmina.events.sql import SQLEventStore

    parsed = parse(url)
    if parsed.backend == "memory":
        return  # nothing to migrate: the in-memory store has no schema
    store = open_store(url, create=create, check_schema=False)
    assert isinstance(store, SQLEventStore)
    try:
        with store._errors(f"db {action}"), store.engine.connect() as conn:
            if action == "upgrade":
                _refuse_unknown(conn, url)
            try:
                getattr(command, action)(_config(url, conn), revision)
            except CommandError as e:
                raise SchemaMismatch(f"db {action} {revision}: {e}") from e
            except AssertionError as e:  # alembic asserts on some malformed revision strings
                raise SchemaMismatch(f"db {action}: {revision!r} is not a revision alembic can resolve") from e
            conn.commit()
    finally:
        store.close()


def _refuse_unknown(conn: Any, url: str) -> None:
    """A schema newer than this Kasmina must not be 'upgraded' by it (mlflow's trap)."""
    from sqlalchemy import inspect, text

    if inspect(conn).has_table("alembic_version"):
        found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        conn.rollback()
        if found is not None and found not in schema.KNOWN_REVISIONS:
            raise SchemaMismatch(
                f"{redact(url)} has schema {found}, newer than this kasmina knows "
                f"(up to {schema.SCHEMA_REVISION}): upgrade kasmina instead"
            )


def upgrade(url: str, revision: str = "head") -> None:
    """Create or upgrade the log's schema (creates a SQLite file if needed)."""
    _run(url, "upgrade", revision, create=True)


def open_log(url: str, *, run: str = DEFAULT_RUN, config: Mapping[str, Any] | None = None) -> EventStore:
    """Open run ``run`` of a log for writing, creating the log first when it is brand new,
    and the run when the log does not hold it yet; the run is marked ``running`` by this
    process (with ``config`` if it has none yet).

    Brand new is a SQLite file that does not exist yet, or one that holds no table at all
    (a process killed while creating it leaves exactly that: the schema is created in one
    transaction). Any other database must already be at the head revision: it is never
    upgraded implicitly (mlflow's trap); the user runs ``kasmina db upgrade``.
    """
    from kasmina.events import open_store

    parsed = parse(url)
    if parsed.backend == "sqlite" and _brand_new(parsed.sqlite_path):
        upgrade(url)
    store = open_store(url, run=run, create_run=True)
    try:
        store.mark_run("running", config=config)
    except Exception:
        store.close()
        raise
    return store


def _brand_new(path: str) -> bool:
    import os
    import sqlite3

    if not os.path.exists(path):
        return True
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    except sqlite3.DatabaseError:
        return False  # not a database: open_store says so in one line


def downgrade(url: str, revision: str) -> None:
    """Downgrade to ``revision`` (``base`` drops every Kasmina table: the log is lost)."""
    _run(url, "downgrade", revision, create=False)


def current(url: str) -> str | None:
    """The revision the database is at (None if it has no Kasmina schema)."""
    from sqlalchemy import inspect, text

    from kasmina.events import open_store
    from kasmina.events.sql import SQLEventStore

    store = open_store(url, check_schema=False)
    assert isinstance(store, SQLEventStore)
    try:
        with store._read("db current") as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        store.close()
