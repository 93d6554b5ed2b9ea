"""The service's own database (SQLite by default, PostgreSQL by URL): audit, alerts, CDS state.

Events stay in the Parquet event store (mgaki.events); this database holds what the
service must answer quickly or keep for accountability. Schema changes go through
Alembic (``migrations/``); ``upgrade`` runs them at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

__all__ = [
    "MAX_OFFSET",
    "METADATA",
    "alerts",
    "audit",
    "audit_row",
    "cds_feedback",
    "cds_jti",
    "column_width",
    "make_engine",
    "upgrade",
    "utcnow",
    "write_audit",
    "writer",
]

METADATA = sa.MetaData()
MAX_OFFSET = 2**31 - 1  # paging offsets beyond a 32-bit INTEGER are refused (422), not passed to the database

audit = sa.Table(
    "audit", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),  # read | write
    sa.Column("endpoint", sa.String(200), nullable=False),
    sa.Column("patient_id", sa.String(200)),
    sa.Column("detail", sa.String(500)),
)

alerts = sa.Table(
    "alerts", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("subject_id", sa.String(200), nullable=False, index=True),
    sa.Column("encounter_id", sa.String(200)),
    sa.Column("kind", sa.String(50), nullable=False),
    sa.Column("time", sa.DateTime, nullable=False),
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("detail", sa.String(500)),
    sa.Column("value", sa.Float),
    sa.Column("emitted_at", sa.DateTime, nullable=False),
)

cds_jti = sa.Table(
    "cds_jti", METADATA,
    sa.Column("iss", sa.String(500), primary_key=True),
    sa.Column("jti", sa.String(500), primary_key=True),
    sa.Column("exp", sa.DateTime, nullable=False),
)

cds_feedback = sa.Table(
    "cds_feedback", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("service", sa.String(100), nullable=False),
    sa.Column("card", sa.String(200), nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("accepted", sa.String(2000)),
    sa.Column("override_code", sa.String(200)),
    sa.Column("outcome_at", sa.String(40), nullable=False),
)


def utcnow() -> datetime:
    """Naive UTC: stored the same way by SQLite and PostgreSQL ``timestamp`` columns."""
    return datetime.now(UTC).replace(tzinfo=None)


def column_width(col: sa.ColumnElement[Any]) -> int:
    """The declared length of a string column (PostgreSQL enforces it; SQLite does not)."""
    t = col.type
    assert isinstance(t, sa.String) and t.length is not None
    return t.length


def audit_row(actor: str, action: str, endpoint: str, patient_id: str | None,
              detail: str | None = None) -> dict[str, Any]:
    """One audit row; free text is cut to its column (a caller's long userId or hookInstance must not
    fail the call)."""
    return {"at": utcnow(), "actor": actor[:column_width(audit.c.actor)], "action": action, "endpoint": endpoint,
            "patient_id": patient_id, "detail": detail and detail[:column_width(audit.c.detail)]}


def write_audit(engine: sa.Engine, actor: str, action: str, endpoint: str,
                patient_ids: Sequence[str | None], detail: str | None = None) -> None:
    """One audit row per patient (none for an empty list), committed before the caller answers."""
    if not patient_ids:
        return
    with writer(engine).begin() as con:
        con.execute(sa.insert(audit), [audit_row(actor, action, endpoint, p, detail) for p in patient_ids])


def make_engine(url: str, busy_timeout_s: float = 30.0, synchronous: str = "FULL") -> sa.Engine:
    """An engine; SQLite files get their folder created, WAL mode, ``synchronous`` and a busy timeout.

    SQLite transactions are begun explicitly (pysqlite's implicit BEGIN is off): ``BEGIN IMMEDIATE`` on
    connections with the ``mgaki_write`` execution option (``writer(engine)``), so a transaction that reads
    before it writes waits for the write lock up to ``busy_timeout_s`` instead of failing at once with
    ``database is locked`` when another process committed in between (WAL snapshot upgrade); plain
    ``BEGIN`` otherwise. PostgreSQL is untouched.
    """
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
    sqlite = url.startswith("sqlite")
    if sqlite and url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    eng = sa.create_engine(url, pool_pre_ping=True, **({"connect_args": {"timeout": busy_timeout_s}} if sqlite else {}))
    if eng.dialect.name == "sqlite":
        @sa.event.listens_for(eng, "connect")
        def _pragmas(dbapi_con: Any, _rec: object) -> None:
            dbapi_con.isolation_level = None  # transactions are begun by _begin below
            cur = dbapi_con.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.close()

        @sa.event.listens_for(eng, "begin")
        def _begin(con: sa.Connection) -> None:
            con.exec_driver_sql("BEGIN IMMEDIATE" if con.get_execution_options().get("mgaki_write") else "BEGIN")
    return eng


def writer(engine: sa.Engine) -> sa.Engine:
    """``engine`` for transactions that write (same pool): on SQLite they begin IMMEDIATE."""
    return engine.execution_options(mgaki_write=True)


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Run the Alembic migrations on ``engine`` (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as con:
        cfg.attributes["connection"] = con
        command.upgrade(cfg, revision)
