"""The SQLAlchemy Core implementation of the store, shared by SQLite and Postgres.

Backends subclass :class:`SQLEventStore` and add only their dialect's differences (engine
set-up, how a write transaction begins). Driver and SQLAlchemy errors are translated into
Kasmina's hierarchy in exactly one place, :meth:`SQLEventStore._errors`.
"""

from __future__ import annotations

import itertools
import operator
import json
import threading
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Generator, Iterator, Mapping, Sequence

from sqlalchemy import Connection, DateTime, Engine, bindparam, func, inspect, select, text, update
from sqlalchemy import exc as sa_exc

from kasmina.errors import (IntegrityViolation, PermissionDenied, SchemaMismatch, StaleVersion, StoreError,
                            StoreUnavailable)
from kasmina.events import codec
from kasmina.events import runs as _runs
from kasmina.events import schema
from kasmina.events.hashing import event_hash, timestamp_text
from kasmina.events.runs import FEED_START, FeedEvent, FeedPosition, RunInfo
from kasmina.events.schema import DEFAULT_RUN
from kasmina.events.upcasting import CURRENT_SCHEMA
from kasmina.events.store import AppendResult, EventStore, PendingAppend, RecordedEvent, Snapshot
from kasmina.events.urls import redact
from kasmina.lifecycle.state import canonical_json

_E = schema.events
#: Rows fetched per round trip when streaming a replay (bounded memory, few round trips).
READ_CHUNK = 5000


class _Dialect:
    """What every run shares: the feed across runs, decoding, the streaming cursor.

    Needs no run, so a role that sees only its own runs (or an auditor over a log with no
    ``default`` run) can list runs and follow the feed without binding one.
    """

    _SELECT = "position, stream_id, version, event_type, payload, schema_version, command_id, recorded_at, hash, prev_hash"

    def __init__(self, dialect: str) -> None:
        self.postgres = dialect == "postgresql"
        self.native_datetime = self.postgres
        p = "%s" if self.postgres else "?"
        self.p = p
        # Across runs. On Postgres only rows below the snapshot's xmin: every transaction
        # with a smaller id has ended, so no row can still commit before the cursor.
        fence = " AND e.tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint" if self.postgres else ""
        columns = ", ".join(f"e.{c.strip()}" for c in self._SELECT.split(","))
        self.feed = (f"SELECT e.tx, e.run_id, r.name, {columns} FROM kasmina_events e "
                     f"JOIN kasmina_runs r ON r.run_id = e.run_id "
                     f"WHERE (e.tx, e.run_id, e.position) > ({p}, {p}, {p}){fence} "
                     "ORDER BY e.tx, e.run_id, e.position")
        self.feed_head = (f"SELECT e.tx, e.run_id, e.position FROM kasmina_events e WHERE 1 = 1{fence} "
                          "ORDER BY e.tx DESC, e.run_id DESC, e.position DESC LIMIT 1")
        #: The last SQLite timestamp parsed, and what it parsed to (replaced whole: no lock).
        self._last_at: tuple[str, datetime] = ("", datetime.min)

    def streaming_cursor(self, connection: Any) -> Any:
        """A server-side cursor on Postgres (rows arrive in chunks); SQLite steps natively."""
        if self.postgres:
            cursor = connection.cursor(name=f"kasmina_read_{next(_CURSOR_IDS)}")
            cursor.itersize = READ_CHUNK
            return cursor
        return connection.cursor()

    def decode(self, row: Any) -> RecordedEvent:
        pos, stream, version, etype, payload, schema_v, command_id, at, h, prev = row
        if isinstance(payload, str):  # SQLite: text (Postgres' jsonb comes decoded, by codec.loads too)
            payload = codec.loads(payload)
        if isinstance(at, str):  # SQLite: UTC text, the same for every event of one append
            last_text, last_at = self._last_at
            if at == last_text:
                at = last_at
            else:
                parsed = datetime.fromisoformat(at).replace(tzinfo=timezone.utc)
                self._last_at, at = (at, parsed), parsed
        elif at.tzinfo is None:
            at = at.replace(tzinfo=timezone.utc)
        return RecordedEvent(pos, stream, version, etype, payload, schema_v, command_id, at, h, prev)


class _Statements(_Dialect):
    """The few statements on the hot paths, written once per dialect, for one run.

    Postgres serialises a run's appends with a transaction-scoped advisory lock keyed by the
    run (other runs' appends do not wait); SQLite takes its database write lock with
    ``BEGIN IMMEDIATE``. Either way the run's last event, read after the lock, is its head:
    positions and the hash chain continue from it. ``tx`` (the order across runs) is the
    writing transaction's id on Postgres (a column default) and one more than the largest
    on SQLite, which has one writer at a time. Timestamps are native on Postgres and
    SQLAlchemy's SQLite text form (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC) on SQLite.
    """

    _COLUMNS = ("run_id, position, stream_id, version, event_type, schema_version, command_id, recorded_at, "
                "payload, prev_hash, hash")

    def __init__(self, dialect: str, run_id: int) -> None:
        super().__init__(dialect)
        p = self.p
        self.run_id = run_id
        run = f"run_id = {run_id}"  # an int from the database: safe to inline, and one parameter fewer
        self.begin = (f"SELECT pg_advisory_xact_lock({schema.RUN_LOCK_CLASS}, {run_id})" if self.postgres
                      else "BEGIN IMMEDIATE")
        self.head = f"SELECT position, hash FROM kasmina_events WHERE {run} ORDER BY position DESC LIMIT 1"
        self.version = f"SELECT MAX(version) FROM kasmina_events WHERE {run} AND stream_id = {p}"
        # "+position": an expression, so SQLite takes the command index instead of walking
        # the whole run in key order to skip the sort (milliseconds per append at 20k events).
        self.command = (f"SELECT position, stream_id, version FROM kasmina_events WHERE {run} AND command_id = {p} "
                        "ORDER BY +position")
        if self.postgres:
            self.next_tx = None
            self.insert = f"INSERT INTO kasmina_events ({self._COLUMNS}) VALUES ({', '.join([p] * 11)})"
        else:
            self.next_tx = "SELECT COALESCE(MAX(tx), 0) + 1 FROM kasmina_events"
            self.insert = f"INSERT INTO kasmina_events ({self._COLUMNS}, tx) VALUES ({', '.join([p] * 12)})"
        self.mark_head = (f"UPDATE kasmina_runs SET last_position = {p}, last_hash = {p}, updated_at = {p} "
                          f"WHERE {run}")
        self._read = f"SELECT {self._SELECT} FROM kasmina_events WHERE {run} AND position > {p}"

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
        # One stream: version order is its position order, and walks the (run, stream,
        # version) index instead of the whole run (a long seed's replay: 28 ms -> 0.7 ms).
        return sql + (" ORDER BY version" if stream_id is not None else " ORDER BY position"), tuple(params)


_CURSOR_IDS = itertools.count(1)
#: A read row's schema version (column 5 of _Dialect._SELECT), and the set all-current rows give.
_SCHEMA_OF = operator.itemgetter(5)
_CURRENT_ONLY = {CURRENT_SCHEMA}
#: SQLSTATE for "permission denied" (a missing privilege or a row-level security refusal).
_INSUFFICIENT_PRIVILEGE = "42501"
_REORDER_MARGIN = timedelta(minutes=1)


def _utc(moment: datetime) -> datetime:
    """Aware UTC: SQLite stores naive UTC text and writes an aware bound value unconverted."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _refuse_unusable_schema(conn: Connection, where: str) -> None:
    """Postgres leaves a schema the role may not use out of its search path, so a log there
    looks absent; name the schema and the fix instead of "not a Kasmina log yet"."""
    who, path = conn.execute(text("SELECT current_user, current_setting('search_path')")).one()
    for name in (part.strip().strip('"') for part in str(path).split(",")):
        name = who if name == "$user" else name
        usable = conn.execute(text("SELECT has_schema_privilege(n.oid, 'USAGE') FROM pg_namespace n "
                                   "WHERE n.nspname = :name"), {"name": name}).scalar()
        if usable is False:
            raise PermissionDenied(f"role {who!r} may not use schema {name!r} of {where}: the log's admin "
                                   f"gives a role its rights with 'kasmina db grant --db URL {who}'")


class SQLEventStore(EventStore):
    """Event store over an SQLAlchemy engine whose schema was made by ``kasmina db upgrade``.

    Bound to one run, resolved (and, with ``create_run``, created) on first use; until then
    the handle can open a database that has no schema yet, which ``kasmina db upgrade`` needs.
    """

    dialect_label = "sql"

    def __init__(self, engine: Engine, url: str, *, run: str = DEFAULT_RUN, create_run: bool = False,
                 owns_engine: bool = True) -> None:
        self.engine = engine
        self.url = url
        self.run = _runs.check_name(run)
        self._create_run = create_run
        self._owns_engine = owns_engine
        self._bound: _Statements | None = None
        self._dialect = _Dialect(engine.dialect.name)
        self._genesis = _runs.genesis(run)
        self._writer: Any = None
        self._lock = threading.Lock()
        #: Versions of streams this store appended to, valid while the head is _last_written.
        self._versions: dict[str, int] = {}
        self._last_written = -1

    @property
    def _sql(self) -> _Statements:
        if self._bound is None:
            self._bound = _Statements(self.engine.dialect.name, self._resolve_run())
        return self._bound

    @property
    def run_id(self) -> int:
        return self._sql.run_id

    def _resolve_run(self) -> int:
        r = schema.runs
        with self._errors("open run"), self.engine.connect().execution_options(kasmina_write=self._create_run) as conn:
            with conn.begin():
                if self._create_run:
                    now = datetime.now(timezone.utc)
                    host, pid = _runs.this_process()
                    conn.execute(text(
                        "INSERT INTO kasmina_runs (name, created_at, updated_at, status, host, pid, last_position, "
                        "last_hash) VALUES (:name, :now, :now, 'running', :host, :pid, 0, :genesis) "
                        "ON CONFLICT (name) DO NOTHING").bindparams(bindparam("now", type_=DateTime(timezone=True))),
                        {"name": self.run, "now": now, "host": host, "pid": pid, "genesis": self._genesis})
                found = conn.execute(select(r.c.run_id).where(r.c.name == self.run)).scalar()
        if found is not None:
            return int(found)
        where = redact(self.url)
        if self._create_run:
            raise _runs.UnknownRun(f"run {self.run!r} exists in {where} but belongs to another database role")
        names = [info.name for info in self.runs()]
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise _runs.UnknownRun(f"no run {self.run!r} in {where}; its runs: {shown or 'none'}")

    # -- runs ---------------------------------------------------------------------------
    def for_run(self, name: str, *, create: bool = False) -> EventStore:
        handle = type(self)(self.engine, self.url, run=name, create_run=create, owns_engine=False)
        handle._sql  # resolve now: an unknown run is refused here, not at first use
        return handle

    def runs(self) -> list[RunInfo]:
        r = schema.runs
        stmt = select(r.c.run_id, r.c.name, r.c.status, r.c.created_at, r.c.updated_at, r.c.host, r.c.pid,
                      r.c.config, r.c.owner, r.c.last_position, r.c.last_hash).order_by(r.c.run_id)
        with self._read("list runs") as conn:
            rows = conn.execute(stmt).all()
        return [RunInfo(int(row[0]), row[1], row[2], _utc(row[3]), _utc(row[4]), row[5], row[6], row[7], row[8],
                        int(row[9]), row[10]) for row in rows]

    def mark_run(self, status: str, *, config: Mapping[str, Any] | None = None) -> None:
        r = schema.runs
        host, pid = _runs.this_process()
        values: dict[str, Any] = {"status": _runs.check_status(status), "host": host, "pid": pid,
                                  "updated_at": datetime.now(timezone.utc)}
        run_id = self.run_id
        with self._errors("mark run"), self.engine.connect().execution_options(kasmina_write=True) as conn:
            with conn.begin():
                if config is not None and conn.execute(
                        select(r.c.config).where(r.c.run_id == run_id)).scalar() is None:
                    values["config"] = json.loads(canonical_json(config))
                conn.execute(update(r).where(r.c.run_id == run_id).values(**values))

    def read_all(self, *, after: FeedPosition = FEED_START, limit: int | None = None,
                 raw: bool = False) -> Generator[FeedEvent, None, None]:
        sql = self._dialect.feed + ("" if limit is None else f" LIMIT {int(limit)}")
        decode = self._dialect.decode
        for rows in self._chunks(sql, tuple(after)):
            for row in rows:
                record = decode(row[3:])
                if not raw and record.schema_version != CURRENT_SCHEMA:
                    record = record.upcast()
                yield FeedEvent(FeedPosition(int(row[0]), int(row[1]), record.position), row[2], record)

    def feed_head(self) -> FeedPosition:
        with self._read("feed head") as conn:
            row = conn.exec_driver_sql(self._dialect.feed_head).first()
        return FEED_START if row is None else FeedPosition(int(row[0]), int(row[1]), int(row[2]))

    # -- the one error seam -------------------------------------------------------------
    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except (sa_exc.DBAPIError, self.engine.dialect.loaded_dbapi.Error) as e:
            raise self._mapped(action, e) from e

    def _mapped(self, action: str, error: Exception) -> StoreError:
        """The one-line StoreError for an SQLAlchemy error or, on the hot paths, which run
        on the driver's cursor, the driver's own PEP 249 error."""
        dbapi = self.engine.dialect.loaded_dbapi
        orig = error.orig if isinstance(error, sa_exc.DBAPIError) else error
        message = _first_line(orig)
        if getattr(orig, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
            return PermissionDenied(f"{action} refused: {message} (a role's rights: docs/postgres.md, "
                                    "'Who may write where')")
        if isinstance(error, (sa_exc.IntegrityError, dbapi.IntegrityError)) or "append-only" in message:
            return IntegrityViolation(f"{action} refused by the database: {message}")
        if isinstance(error, sa_exc.ProgrammingError):
            return SchemaMismatch(f"{action} failed: {message}")
        if "no such table" in message or "does not exist" in message:
            return SchemaMismatch(f"{redact(self.url)} has no Kasmina schema: run 'kasmina db upgrade --db URL'")
        if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError,
                              dbapi.OperationalError, dbapi.InterfaceError)):
            return StoreUnavailable(f"{action} failed, database unavailable: {message}")
        return StoreError(f"{action} failed: {message}")

    @contextmanager
    def _read(self, action: str = "read") -> Iterator[Connection]:
        with self._errors(action), self.engine.connect() as conn, conn.begin():
            yield conn

    # -- schema check -------------------------------------------------------------------
    def check_schema(self) -> None:
        """Refuse a database whose schema is older, newer or absent, saying what to do."""
        with self._read("schema check") as conn:
            if not inspect(conn).has_table("alembic_version"):
                if conn.dialect.name == "postgresql":
                    _refuse_unusable_schema(conn, redact(self.url))
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
        sql = self._sql
        run_id = sql.run_id
        with self._lock, self._errors("append"):
            raw = self._writer_connection()
            cursor = None
            try:
                cursor = raw.cursor()
                cursor.execute(sql.begin)
                cursor.execute(sql.head)
                position, last_hash = cursor.fetchone() or (0, self._genesis)
                if sql.next_tx is not None:
                    cursor.execute(sql.next_tx)
                    tail: tuple[Any, ...] = (cursor.fetchone()[0],)
                else:
                    tail = ()
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
                        cursor.execute(sql.version, (batch.stream_id,))
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
                        rows.append((run_id, position, batch.stream_id, version, event.type, event.schema_version,
                                     batch.command_id, stamp, text_, last_hash, new_hash) + tail)
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
                        cursor.execute(sql.insert, rows[0])
                    else:
                        cursor.executemany(sql.insert, rows)
                    cursor.execute(sql.mark_head, (position, last_hash, stamp))
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
        sn = schema.snapshots
        run_id = self.run_id
        with self._errors("snapshot"), self.engine.begin() as conn:
            exists = conn.execute(select(sn.c.version).where(
                (sn.c.run_id == run_id) & (sn.c.stream_id == snapshot.stream_id)
                & (sn.c.version == snapshot.version))).first()
            if exists is None:
                conn.execute(sn.insert().values(
                    run_id=run_id, stream_id=snapshot.stream_id, version=snapshot.version,
                    position=snapshot.position, state_schema=snapshot.state_schema, state=dict(snapshot.state),
                    created_at=datetime.now(timezone.utc)))

    # -- reads --------------------------------------------------------------------------
    def read(self, *, stream_id: str | None = None, after: int = 0, upto: int | None = None,
             after_version: int = 0, raw: bool = False) -> Generator[RecordedEvent, None, None]:
        """Stream events in position order, a chunk per round trip, on the driver's cursor."""
        sql, params = self._sql.read(stream_id=stream_id, after=after, upto=upto, after_version=after_version)
        decode = self._sql.decode
        for rows in self._chunks(sql, params):
            # One generator, not one per row source: replay's cost per event is decoding
            # it, and each layer around that adds to it. Records are made one at a time
            # (a chunk's worth alive at once would wake the garbage collector over and over).
            if raw or set(map(_SCHEMA_OF, rows)) == _CURRENT_ONLY:
                yield from map(decode, rows)
            else:
                for row in rows:
                    yield decode(row).upcast()

    def _chunks(self, sql: str, params: tuple[Any, ...]) -> Generator[list[Any], None, None]:
        """Rows of one query, a chunk per round trip, on a connection of their own."""
        with self._errors("read"):
            connection = self.engine.raw_connection()
        cursor = None
        try:
            with self._errors("read"):
                cursor = self._dialect.streaming_cursor(connection)
                cursor.execute(sql, params)
            while True:
                with self._errors("read"):
                    rows = cursor.fetchmany(READ_CHUNK)
                if not rows:
                    break
                yield rows
        finally:
            try:
                if cursor is not None:
                    cursor.close()
                connection.rollback()
            except Exception:  # noqa: BLE001 - a broken connection is discarded below
                connection.invalidate()
            finally:
                connection.close()

    def _mine(self) -> Any:
        return _E.c.run_id == self.run_id

    def head(self) -> tuple[int, str]:
        mine = self._mine()
        with self._read() as conn:
            row = conn.execute(select(_E.c.position, _E.c.hash).where(mine)
                               .order_by(_E.c.position.desc()).limit(1)).first()
        return (0, self._genesis) if row is None else (int(row[0]), str(row[1]))

    def run_head(self) -> tuple[int, str]:
        """The head ``kasmina_runs`` recorded at the run's last append (``verify`` compares it)."""
        r = schema.runs
        with self._read() as conn:
            row = conn.execute(select(r.c.last_position, r.c.last_hash).where(r.c.run_id == self.run_id)).one()
        return int(row[0]), str(row[1])

    def stream_version(self, stream_id: str) -> int:
        mine = self._mine()
        with self._read() as conn:
            found = conn.execute(select(func.max(_E.c.version)).where(mine & (_E.c.stream_id == stream_id))).scalar()
        return int(found or 0)

    def streams(self) -> list[str]:
        mine = self._mine()
        with self._read() as conn:
            return list(conn.execute(select(_E.c.stream_id).where(mine).distinct().order_by(_E.c.stream_id))
                        .scalars())

    def find_command(self, command_id: str) -> tuple[int, ...]:
        mine = self._mine()
        with self._read() as conn:
            # Sorted here, not by the query: see _Statements.command.
            return tuple(sorted(conn.execute(select(_E.c.position).where(mine & (_E.c.command_id == command_id)))
                                .scalars()))

    def command_ids_since(self, since: datetime) -> set[str]:
        """Walks the run backwards from its head (no timestamp index to maintain on append).

        Concurrent writers may commit slightly out of timestamp order, so the walk goes on
        a minute past ``since`` before it stops.
        """
        since = _utc(since)
        stop = since - _REORDER_MARGIN
        found: set[str] = set()
        stmt = select(_E.c.command_id, _E.c.recorded_at).where(self._mine()).order_by(_E.c.position.desc())
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
                .where((s.c.run_id == self.run_id) & (s.c.stream_id == stream_id)
                       & (s.c.state_schema == state_schema))
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
        if self._owns_engine:
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
