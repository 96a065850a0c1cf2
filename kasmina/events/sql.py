"""The SQLAlchemy Core implementation of the store, shared by SQLite and Postgres.

Backends subclass :class:`SQLEventStore` and add only their dialect's differences (engine
set-up, how a write transaction begins). Driver and SQLAlchemy errors are translated into
Kasmina's hierarchy in exactly one place, :meth:`SQLEventStore._errors`.
"""

from __future__ import annotations

import itertools
import json
import threading
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Generator, Iterator, Sequence

from sqlalchemy import Connection, Engine, func, inspect, select, text, update
from sqlalchemy import exc as sa_exc

from kasmina.errors import IntegrityViolation, SchemaMismatch, StaleVersion, StoreError, StoreUnavailable
from kasmina.events import schema
from kasmina.events.hashing import GENESIS, event_hash, timestamp_text
from kasmina.events.upcasting import CURRENT_SCHEMA
from kasmina.events.store import AppendResult, EventStore, PendingAppend, RecordedEvent, Snapshot
from kasmina.events.urls import redact
from kasmina.lifecycle.state import canonical_json

_E = schema.events
#: Rows fetched per round trip when streaming a replay (bounded memory, few round trips).
READ_CHUNK = 5000


class _Statements:
    """The few statements on the hot paths, written once per dialect.

    Postgres serialises appends with a transaction-scoped advisory lock; SQLite takes its
    database write lock with ``BEGIN IMMEDIATE``. Either way the last event, read after the
    lock, is the head: positions and the hash chain continue from it. Timestamps are native on Postgres and SQLAlchemy's
    SQLite text form (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC) on SQLite.
    """

    _COLUMNS = ("position, stream_id, version, event_type, schema_version, command_id, recorded_at, "
                "payload, prev_hash, hash")

    def __init__(self, dialect: str) -> None:
        self.postgres = dialect == "postgresql"
        self.native_datetime = self.postgres
        p = "%s" if self.postgres else "?"
        self.p = p
        self.begin = f"SELECT pg_advisory_xact_lock({schema.APPEND_LOCK_KEY})" if self.postgres else "BEGIN IMMEDIATE"
        self.head = "SELECT position, hash FROM kasmina_events ORDER BY position DESC LIMIT 1"
        self.version = f"SELECT MAX(version) FROM kasmina_events WHERE stream_id = {p}"
        self.command = (f"SELECT position, stream_id, version FROM kasmina_events WHERE command_id = {p} "
                        "ORDER BY position")
        self.insert = f"INSERT INTO kasmina_events ({self._COLUMNS}) VALUES ({', '.join([p] * 10)})"
        self._read = (f"SELECT position, stream_id, version, event_type, payload, schema_version, command_id, "
                      f"recorded_at, hash, prev_hash FROM kasmina_events WHERE position > {p}")

    def read(self, *, stream_id: str | None, after: int, upto: int | None,
             after_version: int) -> tuple[str, tuple[Any, ...]]:
        sql, params = self._read, [after]
        if stream_id is not None:
            sql += f" AND stream_id = {self.p}"
            params.append(stream_id)
            if after_version:
                sql += f" AND version > {self.p}"
                params.append(after_version)
        if upto is not None:
            sql += f" AND position <= {self.p}"
            params.append(upto)
        return sql + " ORDER BY position", tuple(params)

    def streaming_cursor(self, connection: Any) -> Any:
        """A server-side cursor on Postgres (rows arrive in chunks); SQLite steps natively."""
        if self.postgres:
            cursor = connection.cursor(name=f"kasmina_read_{next(_CURSOR_IDS)}")
            cursor.itersize = READ_CHUNK
            return cursor
        return connection.cursor()

    def decode(self, row: Any) -> RecordedEvent:
        pos, stream, version, etype, payload, schema_v, command_id, at, h, prev = row
        if isinstance(payload, str):
            payload = json.loads(payload)
        if isinstance(at, str):  # SQLite: UTC text
            at = datetime.fromisoformat(at).replace(tzinfo=timezone.utc)
        elif at.tzinfo is None:
            at = at.replace(tzinfo=timezone.utc)
        return RecordedEvent(pos, stream, version, etype, payload, schema_v, command_id, at, h, prev)


_CURSOR_IDS = itertools.count(1)
_REORDER_MARGIN = timedelta(minutes=1)


def _utc(moment: datetime) -> datetime:
    """Aware UTC: SQLite stores naive UTC text and writes an aware bound value unconverted."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


class SQLEventStore(EventStore):
    """Event store over an SQLAlchemy engine whose schema was made by ``kasmina db upgrade``."""

    dialect_label = "sql"

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self._sql = _Statements(engine.dialect.name)
        self._writer: Any = None
        self._lock = threading.Lock()
        #: Versions of streams this store appended to, valid while the head is _last_written.
        self._versions: dict[str, int] = {}
        self._last_written = -1

    # -- the one error seam -------------------------------------------------------------
    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except sa_exc.IntegrityError as e:
            raise IntegrityViolation(f"{action} refused by the database: {_first_line(e.orig)}") from e
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as e:
            message = _first_line(e.orig)
            if "no such table" in message or "does not exist" in message:
                raise SchemaMismatch(
                    f"{redact(self.url)} has no Kasmina schema: run 'kasmina db upgrade --db URL'"
                ) from e
            if "append-only" in message:
                raise IntegrityViolation(f"{action} refused by the database: {message}") from e
            raise StoreUnavailable(f"{action} failed, database unavailable: {message}") from e
        except sa_exc.ProgrammingError as e:
            raise SchemaMismatch(f"{action} failed: {_first_line(e.orig)}") from e
        except sa_exc.DBAPIError as e:
            message = _first_line(e.orig)
            if "append-only" in message:
                raise IntegrityViolation(f"{action} refused by the database: {message}") from e
            raise StoreError(f"{action} failed: {message}") from e
        except self.engine.dialect.loaded_dbapi.Error as e:
            # The hot paths run on the driver's cursor: map its PEP 249 classes the same way.
            dbapi = self.engine.dialect.loaded_dbapi
            message = _first_line(e)
            if isinstance(e, dbapi.IntegrityError) or "append-only" in message:
                raise IntegrityViolation(f"{action} refused by the database: {message}") from e
            if "no such table" in message or "does not exist" in message:
                raise SchemaMismatch(
                    f"{redact(self.url)} has no Kasmina schema: run 'kasmina db upgrade --db URL'"
                ) from e
            if isinstance(e, (dbapi.OperationalError, dbapi.InterfaceError)):
                raise StoreUnavailable(f"{action} failed, database unavailable: {message}") from e
            raise StoreError(f"{action} failed: {message}") from e

    @contextmanager
    def _read(self, action: str = "read") -> Iterator[Connection]:
        with self._errors(action), self.engine.connect() as conn, conn.begin():
            yield conn

    # -- schema check -------------------------------------------------------------------
    def check_schema(self) -> None:
        """Refuse a database whose schema is older, newer or absent, saying what to do."""
        with self._read("schema check") as conn:
            if not inspect(conn).has_table("alembic_version"):
                raise SchemaMismatch(
                    f"{redact(self.url)} is not a Kasmina log yet: run 'kasmina db upgrade --db URL'"
                )
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        check_revision(found, redact(self.url))

    # -- writes -------------------------------------------------------------------------
    def _writer_connection(self) -> Any:
        """The connection appends go through, held between calls (no pool round trip)."""
        if self._writer is None:
            self._writer = self.engine.raw_connection()
        return self._writer

    def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.invalidate()
            except Exception:  # noqa: BLE001 - a dead connection may fail to close; it is gone anyway
                pass

    def append_many(self, batches: Sequence[PendingAppend]) -> list[AppendResult]:
        """One transaction on the driver's cursor with prebuilt SQL (the hot path).

        SQLAlchemy's per-statement work costs several times what SQLite needs to run these
        few statements, so appends bypass it; the SQL is fixed and per dialect
        (:class:`_Statements`), and every error still goes through :meth:`_errors`.
        """
        now = datetime.now(timezone.utc)
        stamp = now if self._sql.native_datetime else now.replace(tzinfo=None).isoformat(sep=" ")
        hashed_time = timestamp_text(now)
        with self._lock, self._errors("append"):
            raw = self._writer_connection()
            cursor = None
            try:
                cursor = raw.cursor()
                if self._sql.begin:
                    cursor.execute(self._sql.begin)
                cursor.execute(self._sql.head)
                position, last_hash = cursor.fetchone() or (0, GENESIS)
                # Stream versions this store wrote itself are still right if nobody else
                # appended since (the head is where we left it): skip asking the database.
                known = self._versions if position == self._last_written else {}
                rows: list[tuple[Any, ...]] = []
                results: list[AppendResult] = []
                versions: dict[str, int] = {}
                seen_commands: dict[str, AppendResult] = {}
                for batch in batches:
                    if batch.command_id is not None:
                        earlier = seen_commands.get(batch.command_id) or self._duplicate(cursor, batch.command_id)
                        if earlier is not None:
                            results.append(replace(earlier, duplicate=True, events=()))
                            continue
                    version = versions.get(batch.stream_id, known.get(batch.stream_id))
                    if version is None:
                        cursor.execute(self._sql.version, (batch.stream_id,))
                        version = int(cursor.fetchone()[0] or 0)
                    if batch.expected_version is not None and batch.expected_version != version:
                        raise StaleVersion(batch.stream_id, batch.expected_version, version)
                    recorded: list[RecordedEvent] = []
                    for event in batch.events:
                        position += 1
                        version += 1
                        try:
                            text_ = canonical_json(event.data)
                        except (TypeError, ValueError) as e:
                            raise StoreError(f"event {event.type!r} has a payload that is not plain JSON: {e}") from e
                        new_hash = event_hash(
                            last_hash, position=position, stream_id=batch.stream_id, version=version,
                            event_type=event.type, schema_version=event.schema_version,
                            command_id=batch.command_id, timestamp=hashed_time, payload_text=text_,
                        )
                        rows.append((position, batch.stream_id, version, event.type, event.schema_version,
                                     batch.command_id, stamp, text_, last_hash, new_hash))
                        recorded.append(RecordedEvent(position, batch.stream_id, version, event.type,
                                                      event.data, event.schema_version, batch.command_id,
                                                      now, new_hash, last_hash))
                        last_hash = new_hash
                    versions[batch.stream_id] = version
                    result = AppendResult(batch.stream_id, tuple(r.position for r in recorded), version,
                                          events=tuple(recorded))
                    if batch.command_id is not None:
                        seen_commands[batch.command_id] = result
                    results.append(result)
                if rows:
                    if len(rows) == 1:
                        cursor.execute(self._sql.insert, rows[0])
                    else:
                        cursor.executemany(self._sql.insert, rows)
                raw.commit()
                if known is not self._versions:
                    self._versions = {}
                self._versions.update(versions)
                self._last_written = position
            except BaseException as e:
                try:
                    raw.rollback()
                except Exception:  # noqa: BLE001 - the connection itself is broken
                    self._drop_writer()
                if self._is_disconnect(e):
                    self._drop_writer()
                raise
            finally:
                if cursor is not None:
                    cursor.close()
        return results

    def _is_disconnect(self, error: BaseException) -> bool:
        dbapi = self.engine.dialect.loaded_dbapi
        return isinstance(error, (dbapi.OperationalError, dbapi.InterfaceError))

    def _duplicate(self, cursor: Any, command_id: str) -> AppendResult | None:
        cursor.execute(self._sql.command, (command_id,))
        rows = cursor.fetchall()
        if not rows:
            return None
        return AppendResult(rows[-1][1], tuple(r[0] for r in rows), rows[-1][2], duplicate=True)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        with self._errors("snapshot"), self.engine.begin() as conn:
            exists = conn.execute(select(schema.snapshots.c.version).where(
                (schema.snapshots.c.stream_id == snapshot.stream_id)
                & (schema.snapshots.c.version == snapshot.version))).first()
            if exists is None:
                conn.execute(schema.snapshots.insert().values(
                    stream_id=snapshot.stream_id, version=snapshot.version, position=snapshot.position,
                    state_schema=snapshot.state_schema, state=dict(snapshot.state),
                    created_at=datetime.now(timezone.utc)))

    # -- reads --------------------------------------------------------------------------
    def read(self, *, stream_id: str | None = None, after: int = 0, upto: int | None = None,
             after_version: int = 0, raw: bool = False) -> Generator[RecordedEvent, None, None]:
        """Stream events in position order, a chunk per round trip, on the driver's cursor."""
        sql, params = self._sql.read(stream_id=stream_id, after=after, upto=upto, after_version=after_version)
        decode = self._sql.decode
        current = CURRENT_SCHEMA
        with self._errors("read"):
            connection = self.engine.raw_connection()
        try:
            with self._errors("read"):
                cursor = self._sql.streaming_cursor(connection)
                cursor.execute(sql, params)
            while True:
                with self._errors("read"):
                    rows = cursor.fetchmany(READ_CHUNK)
                if not rows:
                    break
                for row in rows:
                    record = decode(row)
                    yield record if raw or record.schema_version == current else record.upcast()
        finally:
            try:
                connection.rollback()
            finally:
                connection.close()

    def head(self) -> tuple[int, str]:
        with self._read() as conn:
            row = conn.execute(select(_E.c.position, _E.c.hash).order_by(_E.c.position.desc()).limit(1)).first()
        return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))

    def stream_version(self, stream_id: str) -> int:
        with self._read() as conn:
            found = conn.execute(select(func.max(_E.c.version)).where(_E.c.stream_id == stream_id)).scalar()
        return int(found or 0)

    def streams(self) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(select(_E.c.stream_id).distinct().order_by(_E.c.stream_id)).scalars())

    def find_command(self, command_id: str) -> tuple[int, ...]:
        with self._read() as conn:
            return tuple(conn.execute(select(_E.c.position).where(_E.c.command_id == command_id)
                                      .order_by(_E.c.position)).scalars())

    def command_ids_since(self, since: datetime) -> set[str]:
        """Walks the log backwards from the head (no timestamp index to maintain on append).

        Concurrent writers may commit slightly out of timestamp order, so the walk goes on
        a minute past ``since`` before it stops.
        """
        since = _utc(since)
        stop = since - _REORDER_MARGIN
        found: set[str] = set()
        stmt = select(_E.c.command_id, _E.c.recorded_at).order_by(_E.c.position.desc())
        with self._read("nonce rebuild") as conn:
            for command_id, at in conn.execution_options(stream_results=True, yield_per=1000).execute(stmt):
                at = _utc(datetime.fromisoformat(at) if isinstance(at, str) else at)
                if at < stop:
                    break
                if command_id is not None and at >= since:
                    found.add(command_id)
        return found

    def latest_snapshot(self, stream_id: str, *, state_schema: int, upto: int | None = None) -> Snapshot | None:
        s = schema.snapshots
        stmt = (select(s.c.stream_id, s.c.version, s.c.position, s.c.state_schema, s.c.state)
                .where((s.c.stream_id == stream_id) & (s.c.state_schema == state_schema))
                .order_by(s.c.version.desc()).limit(1))
        if upto is not None:
            stmt = stmt.where(s.c.position <= upto)
        with self._read() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else Snapshot(*row)

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self.engine.dispose()


def check_revision(found: str | None, where: str) -> None:
    """Tell an older schema (upgrade the database) from a newer one (upgrade Kasmina)."""
    if found == schema.SCHEMA_REVISION:
        return
    if found in schema.KNOWN_REVISIONS:
        raise SchemaMismatch(
            f"{where} has schema {found}, older than this kasmina's {schema.SCHEMA_REVISION}: "
            "back it up, then run 'kasmina db upgrade --db URL'"
        )
    if found is None:
        raise SchemaMismatch(f"{where} is not a Kasmina log yet: run 'kasmina db upgrade --db URL'")
    raise SchemaMismatch(
        f"{where} has schema {found}, newer than this kasmina knows (up to {schema.SCHEMA_REVISION}): "
        "upgrade kasmina; do not run 'db upgrade' with this version"
    )


def _first_line(error: BaseException | None) -> str:
    return str(error).strip().splitlines()[0] if error is not None and str(error).strip() else repr(error)
