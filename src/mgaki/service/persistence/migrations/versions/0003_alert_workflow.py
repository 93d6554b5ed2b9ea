"""Alerts clinicians act on (issue 17): the alert's mode and allocation, the workflow log, the allocations.

- ``alerts.mode`` (live | silent | off; NULL for rows stored before: live) and ``alerts.allocation_id``.
- ``alert_actions``: acknowledge, snooze (reason, expiry), assign, resolve, reopen, seen; append-only (as the
  audit: triggers refuse UPDATE and DELETE), each action also audited in the hash chain.
- ``allocations``: one row per randomised unit, made at its first eligibility; append-only too.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_APPEND_ONLY = ("alert_actions", "allocations")
_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION mgaki_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$"""


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("mode", sa.String(10), nullable=True))
        batch.add_column(sa.Column("allocation_id", sa.Integer, nullable=True))
    op.create_table(
        "alert_actions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id"), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(500)),
        sa.Column("until", sa.DateTime),
        sa.Column("assignee", sa.String(200)),
    )
    op.create_index("ix_alert_actions_alert_id", "alert_actions", ["alert_id"])
    op.create_table(
        "allocations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("policy", sa.String(16), nullable=False),
        sa.Column("unit", sa.String(10), nullable=False),
        sa.Column("unit_id", sa.String(200), nullable=False),
        sa.Column("stratum", sa.String(200), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("arm", sa.String(10), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("first_kind", sa.String(50), nullable=False),
        sa.Column("first_time", sa.DateTime, nullable=False),
        sa.UniqueConstraint("policy", "unit", "unit_id", name="ux_allocation_unit"),
        sa.UniqueConstraint("policy", "stratum", "seq", name="ux_allocation_seq"),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
    for table in _APPEND_ONLY:
        if bind.dialect.name == "postgresql":
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION mgaki_append_only()")
            op.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM PUBLIC")
        else:
            for what in ("UPDATE", "DELETE"):
                op.execute(f"CREATE TRIGGER {table}_no_{what.lower()} BEFORE {what} ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {what} refused'); END")


def downgrade() -> None:
    bind = op.get_bind()
    for table in _APPEND_ONLY:
        if bind.dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        else:
            for what in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{what}")
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS mgaki_append_only()")
    op.drop_table("allocations")
    op.drop_index("ix_alert_actions_alert_id", "alert_actions")
    op.drop_table("alert_actions")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("allocation_id")
        batch.drop_column("mode")
