"""The seed_contributions view: every counterfactual measurement a gate was given.

Revision ID: 0002_seed_contributions
Revises: 0001_event_log
"""

from __future__ import annotations

from alembic import op

from kasmina.migrations import views

revision = "0002_seed_contributions"
down_revision = "0001_event_log"
branch_labels = None
depends_on = None


def upgrade() -> None:
    views.create(["seed_contributions"], runs=False)


def downgrade() -> None:
    views.drop(["seed_contributions"])
