"""Initial service schema: audit, alerts, CDS jti replay log, CDS feedback.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("patient_id", sa.String(200)),
        sa.Column("detail", sa.String(500)),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("subject_id", sa.String(200), nullable=False),
        sa.Column("encounter_id", sa.String(200)),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("time", sa.DateTime, nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("detail", sa.String(500)),
        sa.Column("value", sa.Float),
        sa.Column("emitted_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_alerts_subject_id", "alerts", ["subject_id"])
    op.create_table(
        "cds_jti",
        sa.Column("iss", sa.String(500), primary_key=True),
        sa.Column("jti", sa.String(500), primary_key=True),
        sa.Column("exp", sa.DateTime, nullable=False),
    )
    op.create_table(
        "cds_feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("service", sa.String(100), nullable=False),
        sa.Column("card", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("accepted", sa.String(2000)),
        sa.Column("override_code", sa.String(200)),
        sa.Column("outcome_at", sa.String(40), nullable=False),
    )


def downgrade() -> None:
    for t in ("cds_feedback", "cds_jti", "alerts", "audit"):
        op.drop_table(t)
