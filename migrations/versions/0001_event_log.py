"""The event log: events, snapshots, append-only triggers and audit views.

Revision ID: 0001_event_log
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kasmina.migrations.sqljson import field as _field
from kasmina.migrations.sqljson import flag as _flag


revision = "0001_event_log"
down_revision = None
branch_labels = None
depends_on = None

#: JSON text, not JSONB: JSONB rewrites numbers (1e16 -> int, -0.0 -> 0.0), breaking hashes.
Payload = sa.JSON
#: INTEGER on SQLite so the position is the rowid (no second copy of every row).
Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _views() -> list[tuple[str, str]]:
    f = _field
    return [
        ("seed_transitions", f"""
            SELECT position, stream_id AS seed_id,
                   {f('from_stage')} AS from_stage, {f('to_stage')} AS to_stage,
                   {f('gate')} AS gate, {f('reason')} AS reason,
                   command_id, recorded_at, event_type,
                   CAST({f('step')} AS BIGINT) AS step
            FROM kasmina_events
            WHERE event_type IN ('stage_changed', 'seed_rolled_back')"""),
        ("seed_current_stage", """
            SELECT t.seed_id, t.to_stage AS stage, t.position AS since_position,
                   t.recorded_at AS since, t.step AS since_step,
                   (SELECT COUNT(*) FROM seed_transitions g
                     WHERE g.seed_id = t.seed_id AND g.to_stage = 'GERMINATED') AS generation
            FROM seed_transitions t
            WHERE t.position = (SELECT MAX(m.position) FROM seed_transitions m WHERE m.seed_id = t.seed_id)"""),
        ("seed_gate_verdicts", f"""
            SELECT position, stream_id AS seed_id, {f('gate')} AS gate,
                   {_flag('passed')} AS passed, {f('reason')} AS reason,
                   {f('from_stage')} AS from_stage, {f('to_stage')} AS to_stage,
                   CAST({f('step')} AS BIGINT) AS step, recorded_at
            FROM kasmina_events
            WHERE event_type IN ('stage_changed', 'gate_failed') AND {f('gate')} IS NOT NULL"""),
        ("command_refusals", f"""
            SELECT position, {f('seed_id')} AS seed_id, {f('reason')} AS reason,
                   {f('detail')} AS detail, command_id, recorded_at
            FROM kasmina_events
            WHERE event_type = 'command_refused'"""),
    ]


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
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE FUNCTION kasmina_refuse_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'kasmina_events is append-only: % refused', TG_OP;
            END $$""")
        op.execute("""CREATE TRIGGER kasmina_events_append_only BEFORE UPDATE OR DELETE ON kasmina_events
                      FOR EACH ROW EXECUTE FUNCTION kasmina_refuse_mutation()""")
        op.execute("""CREATE TRIGGER kasmina_events_no_truncate BEFORE TRUNCATE ON kasmina_events
                      FOR EACH STATEMENT EXECUTE FUNCTION kasmina_refuse_mutation()""")
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(f"""CREATE TRIGGER kasmina_events_no_{action.lower()} BEFORE {action} ON kasmina_events
                           BEGIN SELECT RAISE(ABORT, 'kasmina_events is append-only: {action} refused'); END""")
    for name, body in _views():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name, _ in reversed(_views()):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS kasmina_events_append_only ON kasmina_events")
        op.execute("DROP TRIGGER IF EXISTS kasmina_events_no_truncate ON kasmina_events")
        op.execute("DROP FUNCTION IF EXISTS kasmina_refuse_mutation()")
    else:
        op.execute("DROP TRIGGER IF EXISTS kasmina_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS kasmina_events_no_delete")
    op.drop_table("kasmina_snapshots")
    op.drop_table("kasmina_events")
