"""The event log: events, snapshots, append-only triggers and audit views.

Revision ID: 0001_event_log
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kasmina.migrations import appendonly, views


revision = "0001_event_log"
down_revision = None
branch_labels = None
depends_on = None

#: JSON text, not JSONB: JSONB rewrites numbers (1e16 -> int, -0.0 -> 0.0), breaking hashes.
Payload = sa.JSON
#: INTEGER on SQLite so the position is the rowid (no second copy of every row).
Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: The audit views this revision makes (their SQL: kasmina/migrations/views.py).
_VIEWS = views.NAMES[:4]


def upgrade() -> None:
    op.create_table(
        "kasmina_events",
        sa.Column("position", Position, primary_key=True, autoincrement=False),
        sa.Column("stream_id", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("schema_version", sa.SmallInteger, nullable=False),
        sa.Column("command_id", sa.String(255), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", Payload, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("stream_id", "version", name="uq_kasmina_events_stream_version"),
    )
    op.create_index("ix_kasmina_events_command_id", "kasmina_events", ["command_id"],
                    sqlite_where=sa.text("command_id IS NOT NULL"),
                    postgresql_where=sa.text("command_id IS NOT NULL"))
    op.create_table(
        "kasmina_snapshots",
        sa.Column("stream_id", sa.String(255), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("state_schema", sa.SmallInteger, nullable=False),
        sa.Column("state", Payload, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_kasmina_snapshots_position", "kasmina_snapshots", ["stream_id", "position"])

    # Append-only, enforced by the database itself, not by Kasmina's good manners.
    appendonly.create()
    views.create(_VIEWS, runs=False)


def downgrade() -> None:
    views.drop(_VIEWS)
    appendonly.drop()
    op.drop_table("kasmina_snapshots")
    op.drop_table("kasmina_events")
