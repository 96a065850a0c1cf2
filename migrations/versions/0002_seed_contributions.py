"""The seed_contributions view: every counterfactual measurement a gate was given.

Revision ID: 0002_seed_contributions
Revises: 0001_event_log
"""

from __future__ import annotations

from alembic import op

from kasmina.migrations.sqljson import field

revision = "0002_seed_contributions"
down_revision = "0001_event_log"
branch_labels = None
depends_on = None


def _body() -> str:
    number = "DOUBLE PRECISION" if op.get_bind().dialect.name == "postgresql" else "REAL"
    return f"""
        SELECT position, stream_id AS seed_id,
               COALESCE({field('from_stage')}, {field('stage')}) AS stage,
               CAST({field('step')} AS BIGINT) AS step,
               CAST({field('inputs.loss_with')} AS {number}) AS loss_with,
               CAST({field('inputs.loss_without')} AS {number}) AS loss_without,
               CAST({field('inputs.contribution')} AS {number}) AS contribution,
               CAST({field('inputs.contribution_threshold')} AS {number}) AS threshold,
               {field('gate')} AS gate, {field('to_stage')} AS to_stage, recorded_at
        FROM kasmina_events
        WHERE event_type IN ('stage_changed', 'gate_failed') AND {field('inputs.contribution')} IS NOT NULL"""


def upgrade() -> None:
    op.execute(f"CREATE VIEW seed_contributions AS {_body()}")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS seed_contributions")
