"""Table definitions: the one description of the schema that the store queries and the
first migration creates (a drift test compares the two)."""

from __future__ import annotations

from sqlalchemy import (
    JSON, BigInteger, Column, DateTime, Index, Integer, MetaData, SmallInteger, String, Table,
    UniqueConstraint, text,
)

#: Alembic revisions this Kasmina knows, oldest first; the last one is the head it needs.
KNOWN_REVISIONS: tuple[str, ...] = ("0001_event_log", "0002_seed_contributions")
SCHEMA_REVISION = KNOWN_REVISIONS[-1]

metadata = MetaData()


#: JSON as text on both backends. Not JSONB: JSONB stores numbers as ``numeric`` and gives
#: back 1e16 as an int and -0.0 as 0.0, which would change an event after it was hashed.
#: The ``json`` type keeps the text as written, and ``->>`` still queries it.
Payload = JSON
#: 64-bit on both; on SQLite it must be spelled INTEGER to become the rowid (else every
#: row is stored twice: once in the table, once in the primary-key index).
Position = BigInteger().with_variant(Integer(), "sqlite")
#: Postgres advisory lock every append takes (transaction-scoped): appends are serialised,
#: so commit order is position order. SQLite gets the same from BEGIN IMMEDIATE.
APPEND_LOCK_KEY = 0x4B61736D696E61  # "Kasmina"


events = Table(
    "kasmina_events",
    metadata,
    Column("position", Position, primary_key=True, autoincrement=False),
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
    # Partial: most events (training-step transitions) carry no command id.
    Index("ix_kasmina_events_command_id", "command_id",
          sqlite_where=text("command_id IS NOT NULL"), postgresql_where=text("command_id IS NOT NULL")),
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
