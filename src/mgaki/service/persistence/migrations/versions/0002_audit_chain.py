"""Audit that holds up (issue 16 points 4 and 7): hash chain, append-only triggers, alert rejects.

- ``audit.seq`` and ``audit.row_hash``: every row is a link of a sha256 chain (``db.chain_hash``); rows
  written before this migration are chained here, in id order.
- Triggers refuse UPDATE and DELETE on ``audit`` (and TRUNCATE on PostgreSQL) whoever asks, the table's
  owner included; on PostgreSQL, PUBLIC loses UPDATE, DELETE and TRUNCATE on it (the service's own role gets
  SELECT and INSERT only: ``mgaki audit grants``). What gets through (an owner dropping the triggers) breaks
  the chain, which ``mgaki audit verify`` reports.
- ``alert_rejects``: alert rows the database cannot hold, set aside with the reason.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mgaki.service.persistence.db import AUDIT_LOCK, GENESIS, chain_hash

__all__ = ["downgrade", "upgrade"]

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# PostgreSQL links each inserted row itself (db.chain_hash builds the same text): under an advisory lock held
# to the commit, it reads the head (a plpgsql statement after the lock reads with a new snapshot, so it sees the
# previous holder's commit, and the rows an earlier row of the same INSERT added) and sets seq and row_hash.
# One INSERT is then all an append takes, whoever inserts.
_PG_CHAIN = f"""
CREATE OR REPLACE FUNCTION mgaki_audit_field(t text) RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT CASE WHEN t IS NULL THEN '-' ELSE length(t)::text || ':' || t END $$;

CREATE OR REPLACE FUNCTION mgaki_audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
    head_hash varchar;
BEGIN
    PERFORM pg_advisory_xact_lock({AUDIT_LOCK});
    SELECT a.seq, a.row_hash INTO head_seq, head_hash FROM audit a WHERE a.seq IS NOT NULL
        ORDER BY a.seq DESC LIMIT 1;
    NEW.seq := coalesce(head_seq, 0) + 1;
    NEW.row_hash := encode(sha256(convert_to(
        NEW.seq::text || '|' || coalesce(head_hash, '{GENESIS}') || '|' ||
        mgaki_audit_field(to_char(NEW.at, 'YYYY-MM-DD"T"HH24:MI:SS.US')) || '|' ||
        mgaki_audit_field(NEW.actor) || '|' || mgaki_audit_field(NEW.action) || '|' ||
        mgaki_audit_field(NEW.endpoint) || '|' || mgaki_audit_field(NEW.patient_id) || '|' ||
        mgaki_audit_field(NEW.detail), 'UTF8')), 'hex');
    RETURN NEW;
END
$$"""

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION mgaki_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit table is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$"""


def upgrade() -> None:
    op.add_column("audit", sa.Column("seq", sa.BigInteger, nullable=True))
    op.add_column("audit", sa.Column("row_hash", sa.String(64), nullable=True))
    bind = op.get_bind()
    # typed columns: ``at`` read back as the datetime the service hashes (SQLite stores it as text)
    t = sa.table("audit", sa.column("id", sa.Integer), sa.column("at", sa.DateTime), sa.column("actor", sa.String),
                 sa.column("action", sa.String), sa.column("endpoint", sa.String),
                 sa.column("patient_id", sa.String), sa.column("detail", sa.String))
    old = bind.execute(sa.select(t).order_by(t.c.id)).mappings().all()
    prev, links = GENESIS, []
    for seq, row in enumerate(old, 1):
        prev = chain_hash(seq, prev, row)
        links.append({"i": row["id"], "s": seq, "h": prev})
    if links:
        bind.execute(sa.text("UPDATE audit SET seq = :s, row_hash = :h WHERE id = :i"), links)
    op.create_index("ux_audit_seq", "audit", ["seq"], unique=True)
    op.create_table(
        "alert_rejects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
    )
    if bind.dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_CHAIN)
        op.execute("CREATE TRIGGER audit_chain BEFORE INSERT ON audit FOR EACH ROW "
                   "EXECUTE FUNCTION mgaki_audit_chain()")
        op.execute("CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
                   "FOR EACH ROW EXECUTE FUNCTION mgaki_audit_append_only()")
        op.execute("CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
                   "FOR EACH STATEMENT EXECUTE FUNCTION mgaki_audit_append_only()")
        op.execute("REVOKE UPDATE, DELETE, TRUNCATE ON audit FROM PUBLIC")
    else:  # SQLite (a DELETE without WHERE fires the trigger too: no truncate optimisation with a trigger)
        for what in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_no_{what.lower()} BEFORE {what} ON audit "
                       f"BEGIN SELECT RAISE(ABORT, 'the audit table is append-only: {what} refused'); END")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_no_truncate ON audit")
        op.execute("DROP TRIGGER IF EXISTS audit_append_only ON audit")
        op.execute("DROP FUNCTION IF EXISTS mgaki_audit_append_only()")
        op.execute("DROP TRIGGER IF EXISTS audit_chain ON audit")
        op.execute("DROP FUNCTION IF EXISTS mgaki_audit_chain()")
        op.execute("DROP FUNCTION IF EXISTS mgaki_audit_field(text)")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_no_delete")
    op.drop_table("alert_rejects")
    op.drop_index("ux_audit_seq", "audit")
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("row_hash")
        batch.drop_column("seq")
