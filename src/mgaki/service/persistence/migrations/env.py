"""Alembic environment: runs on the connection handed in by ``mgaki.service.persistence.db.upgrade``."""

from __future__ import annotations

from alembic import context

from mgaki.service.persistence.db import METADATA

__all__: list[str] = []

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=METADATA, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
