"""The SQLAlchemy Core implementation of the store, shared by SQLite and Postgres.

Backends subclass :class:`SQLEventStore` and add only their dialect's differences (engine
set-up, how a write transaction begins). Driver and SQLAlchemy errors are translated into
Kasmina's hierarchy in exactly one place, :meth:`SQLEventStore._errors`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Generator, Iterator, Sequence

from sqlalchemy import Connection, Engine, func, inspect, select, text, update
from sqlalchemy import exc as sa_exc

from kasmina.errors import IntegrityViolation, SchemaMismatch, StaleVersion, StoreError, StoreUnavailable
from kasmina.events import schema
from kasmina.events.hashing import GENESIS, chain_hash
from kasmina.events.store import AppendResult, EventStore, PendingAppend, RecordedEvent, Snapshot
from kasmina.events.urls import redact

_E = schema.events
_READ_COLUMNS = (_E.c.position, _E.c.stream_id, _E.c.version, _E.c.event_type, _E.c.payload,
                 _E.c.schema_version, _E.c.command_id, _E.c.recorded_at, _E.c.hash, _E.c.prev_hash)
#: Rows fetched per round trip when streaming a replay (bounded memory, few round trips).
READ_CHUNK = 5000


def _utc(moment: datetime) -> datetime:
    """Aware UTC: SQLite stores naive UTC text and writes an aware bound value unconverted."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _to_record(row: Any) -> RecordedEvent:
    pos, stream, version, etype, payload, schema_v, command_id, at, h, prev = row
    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at
    return RecordedEvent(pos, stream, version, etype, payload, schema_v, command_id, at, h, prev)


class SQLEventStore(EventStore):
    """Event store over an SQLAlchemy engine whose schema was made by ``kasmina db upgrade``."""

    dialect_label = "sql"

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url

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

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction; backends make its start take the writer lock."""
        with self._errors("append"), self.engine.connect() as conn:
            conn = conn.execution_options(kasmina_write=True)
            with conn.begin():
                yield conn

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
    def append_many(self, batches: Sequence[PendingAppend]) -> list[AppendResult]:
        now = datetime.now(timezone.utc)
        with self._write() as conn:
            position, last_hash = conn.execute(
                select(schema.head.c.position, schema.head.c.hash)
                .where(schema.head.c.id == 1)
                .with_for_update()
            ).one()
            rows: list[dict[str, Any]] = []
            results: list[AppendResult] = []
            versions: dict[str, int] = {}
            seen_commands: dict[str, AppendResult] = {}
            for batch in batches:
                if batch.command_id is not None:
                    earlier = seen_commands.get(batch.command_id) or self._duplicate(conn, batch)
                    if earlier is not None:
                        results.append(replace(earlier, duplicate=True, events=()))
                        continue
                version = versions.get(batch.stream_id)
                if version is None:
                    version = self._version(conn, batch.stream_id)
                if batch.expected_version is not None and batch.expected_version != version:
                    raise StaleVersion(batch.stream_id, batch.expected_version, version)
                recorded: list[RecordedEvent] = []
                for event in batch.events:
                    position += 1
                    version += 1
                    try:
                        new_hash = chain_hash(
                            last_hash, position=position, stream_id=batch.stream_id, version=version,
                            event_type=event.type, schema_version=event.schema_version,
                            command_id=batch.command_id, recorded_at=now, payload=event.data,
                        )
                    except (TypeError, ValueError) as e:
                        raise StoreError(f"event {event.type!r} has a payload that is not plain JSON: {e}") from e
                    rows.append({
                        "position": position, "stream_id": batch.stream_id, "version": version,
                        "event_type": event.type, "schema_version": event.schema_version,
                        "command_id": batch.command_id, "recorded_at": now, "payload": event.data,
                        "prev_hash": last_hash, "hash": new_hash,
                    })
                    recorded.append(RecordedEvent(position, batch.stream_id, version, event.type, event.data,
                                                  event.schema_version, batch.command_id, now, new_hash, last_hash))
                    last_hash = new_hash
                versions[batch.stream_id] = version
                result = AppendResult(batch.stream_id, tuple(r.position for r in recorded), version,
                                      events=tuple(recorded))
                if batch.command_id is not None:
                    seen_commands[batch.command_id] = result
                results.append(result)
            if rows:
                conn.execute(_E.insert(), rows)
                conn.execute(update(schema.head).where(schema.head.c.id == 1)
                             .values(position=position, hash=last_hash))
        return results

    def _version(self, conn: Connection, stream_id: str) -> int:
        found = conn.execute(select(func.max(_E.c.version)).where(_E.c.stream_id == stream_id)).scalar()
        return int(found or 0)

    def _duplicate(self, conn: Connection, batch: PendingAppend) -> AppendResult | None:
        rows = conn.execute(
            select(_E.c.position, _E.c.stream_id, _E.c.version)
            .where(_E.c.command_id == batch.command_id).order_by(_E.c.position)
        ).all()
        if not rows:
            return None
        return AppendResult(rows[-1].stream_id, tuple(r.position for r in rows), rows[-1].version, duplicate=True)

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
        stmt = select(*_READ_COLUMNS).where(_E.c.position > after).order_by(_E.c.position)
        if stream_id is not None:
            stmt = stmt.where(_E.c.stream_id == stream_id)
            if after_version:
                stmt = stmt.where(_E.c.version > after_version)
        if upto is not None:
            stmt = stmt.where(_E.c.position <= upto)
        with self._read() as conn:
            result = conn.execution_options(stream_results=True, yield_per=READ_CHUNK).execute(stmt)
            for rows in result.partitions(READ_CHUNK):
                for row in rows:
                    record = _to_record(row)
                    yield record if raw else record.upcast()

    def head(self) -> tuple[int, str]:
        with self._read() as conn:
            row = conn.execute(select(schema.head.c.position, schema.head.c.hash)
                               .where(schema.head.c.id == 1)).first()
        return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))

    def stream_version(self, stream_id: str) -> int:
        with self._read() as conn:
            return self._version(conn, stream_id)

    def streams(self) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(select(_E.c.stream_id).distinct().order_by(_E.c.stream_id)).scalars())

    def find_command(self, command_id: str) -> tuple[int, ...]:
        with self._read() as conn:
            return tuple(conn.execute(select(_E.c.position).where(_E.c.command_id == command_id)
                                      .order_by(_E.c.position)).scalars())

    def command_ids_since(self, since: datetime) -> set[str]:
        with self._read() as conn:
            return set(conn.execute(select(_E.c.command_id).distinct()
                                    .where((_E.c.recorded_at >= _utc(since)) & _E.c.command_id.is_not(None))).scalars())

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
