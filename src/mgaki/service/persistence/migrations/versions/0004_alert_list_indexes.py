"""Indexes for listing alerts newest first (issue 18): ``GET /alerts`` and ``GET /alerts?kind=``.

``ORDER BY time DESC, id`` with a ``LIMIT`` read and sorted the whole ``alerts`` table on every call; with
``(time DESC, id)`` and ``(kind, time DESC, id)`` the database walks the index backwards and stops after the page.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # in the listing's order (time descending, id ascending): the page is read off the index, no sort
    op.create_index("ix_alerts_time", "alerts", [sa.text('"time" DESC'), "id"])
    op.create_index("ix_alerts_kind_time", "alerts", ["kind", sa.text('"time" DESC'), "id"])


def downgrade() -> None:
    op.drop_index("ix_alerts_kind_time", "alerts")
    op.drop_index("ix_alerts_time", "alerts")
