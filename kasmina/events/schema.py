"""Table definitions: the one description of the schema that the store queries and the
first migration creates (a drift test compares the two)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON, BigInteger, Column, DateTime, Index, Integer, MetaData, SmallInteger, String, Table,
    TypeDecorator, UniqueConstraint,
)

#: Alembic revisions this Kasmina knows, oldest first; the last one is the head it needs.
KNOWN_REVISIONS: tuple[str, ...] = ("0001_event_log",)
SCHEMA_REVISION = KNOWN_REVISIONS[-1]

metadata = MetaData()


class Payload(TypeDecorator[Any]):
    """JSON text on SQLite (queried with json_extract), JSONB on Postgres (queried with ->>).

    The Postgres type is resolved lazily: importing SQLAlchemy's postgresql dialect costs
    about 0.1 s, which the SQLite-only log commands should not pay.
    """

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


events = Table(
    "kasmina_events",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("stream_id", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("schema_version", SmallInteger, nullable=False),
    Column("command_id", String(255), nullable=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("payload", Payload(), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("stream_id", "version", name="uq_kasmina_events_stream_version"),
    Index("ix_kasmina_events_command_id", "command_id"),
    Index("ix_kasmina_events_recorded_at", "recorded_at"),
)

#: One row: the last position and hash. Writers lock it, which makes commit order equal
#: position order (so positions are gap-free for readers, even with several writers).
head = Table(
    "kasmina_head",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("position", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

snapshots = Table(
    "kasmina_snapshots",
    metadata,
    Column("stream_id", String(255), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("position", BigInteger, nullable=False),
    Column("state_schema", SmallInteger, nullable=False),
    Column("state", Payload(), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_kasmina_snapshots_position", "stream_id", "position"),
)
