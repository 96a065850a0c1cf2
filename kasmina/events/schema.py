"""Table definitions: the one description of the schema that the store queries and the
migrations create (a drift test compares the two).

Every event belongs to a run (``kasmina_runs``). Positions, versions and the hash chain
are per run, so one database holds many training jobs that never collide on seed ids;
``tx`` orders events across runs (see :mod:`kasmina.events.postgres`).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON, BigInteger, CheckConstraint, Column, DateTime, ForeignKey, Index, Integer, MetaData, SmallInteger,
    String, Table, UniqueConstraint, text,
)

#: Alembic revisions this Kasmina knows, oldest first; the last one is the head it needs.
KNOWN_REVISIONS: tuple[str, ...] = ("0001_event_log", "0002_seed_contributions", "0003_runs")
SCHEMA_REVISION = KNOWN_REVISIONS[-1]

metadata = MetaData()

#: The run a log written before runs existed became, and the one used when none is named.
DEFAULT_RUN = "default"
RUN_STATUSES = ("running", "finished", "crashed")
#: First key of the Postgres advisory lock an append takes: ``(RUN_LOCK_CLASS, run_id)``.
#: One lock per run, so runs append concurrently; within a run, appends are serialised
#: and commit in position order. SQLite gets the same from BEGIN IMMEDIATE.
RUN_LOCK_CLASS = 0x4B61736D  # "Kasm"

#: JSON as text on both backends. Not JSONB: JSONB stores numbers as ``numeric`` and gives
#: back 1e16 as an int and -0.0 as 0.0, which would change an event after it was hashed.
#: The ``json`` type keeps the text as written, and ``->>`` still queries it.
Payload = JSON


runs = Table(
    "kasmina_runs",
    metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("config", Payload(), nullable=True),
    Column("host", String(255), nullable=True),
    Column("pid", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    # The database role that created the run (Postgres: DEFAULT current_user; row-level
    # security lets a job's role see and write only its own runs).
    Column("owner", String(128), nullable=True),
    Column("last_position", BigInteger, nullable=False),
    Column("last_hash", String(64), nullable=False),
    UniqueConstraint("name", name="uq_kasmina_runs_name"),
    CheckConstraint("status IN ('running', 'finished', 'crashed')", name="ck_kasmina_runs_status"),
)

#: Postgres roles that may read every run (row-level security reads this table).
auditors = Table(
    "kasmina_auditors",
    metadata,
    Column("role_name", String(128), primary_key=True),
)

events = Table(
    "kasmina_events",
    metadata,
    Column("run_id", Integer, ForeignKey("kasmina_runs.run_id", name="fk_kasmina_events_run"),
           primary_key=True, autoincrement=False),
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
    # The order across runs: the writing transaction's id on Postgres, a commit counter on
    # SQLite; 0 for events written before runs existed.
    Column("tx", BigInteger, nullable=False),
    UniqueConstraint("run_id", "stream_id", "version", name="uq_kasmina_events_stream_version"),
    # Partial: most events (training-step transitions) carry no command id.
    Index("ix_kasmina_events_command_id", "run_id", "command_id",
          sqlite_where=text("command_id IS NOT NULL"), postgresql_where=text("command_id IS NOT NULL")),
    Index("ix_kasmina_events_tx", "tx", "run_id", "position"),
)

snapshots = Table(
    "kasmina_snapshots",
    metadata,
    Column("run_id", Integer, ForeignKey("kasmina_runs.run_id", name="fk_kasmina_snapshots_run"),
           primary_key=True, autoincrement=False),
    Column("stream_id", String(255), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("position", BigInteger, nullable=False),
    Column("state_schema", SmallInteger, nullable=False),
    Column("state", Payload(), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_kasmina_snapshots_position", "run_id", "stream_id", "position"),
)
