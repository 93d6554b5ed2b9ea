"""The service's own database (SQLite by default, PostgreSQL by URL): audit, alerts, CDS state.

Events stay in the Parquet event store (mgaki.events); this database holds what the
service must answer quickly or keep for accountability. Schema changes go through
Alembic (``migrations/``); ``upgrade`` runs them at start-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from mgaki.service.persistence.ids import id_problem, safe_text

__all__ = [
    "ALERT_KEY",
    "AUDIT_LOCK",
    "GENESIS",
    "MAX_OFFSET",
    "METADATA",
    "AuditCheck",
    "alert_actions",
    "alert_key_hash",
    "alert_rejects",
    "alerts",
    "allocations",
    "append_audit",
    "audit",
    "audit_row",
    "cds_feedback",
    "cds_jti",
    "chain_hash",
    "column_overflow",
    "column_width",
    "insert_alerts",
    "make_engine",
    "private_dir",
    "record_read",
    "service_grants",
    "upgrade",
    "utcnow",
    "verify_audit",
    "write_audit",
    "writer",
]

log = logging.getLogger("mgaki.service.persistence")

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
    # the hash chain (migration 0002): seq 1, 2, 3 ... with no gap; row_hash over seq, the previous row's hash
    # and the row's content (chain_hash). Rows are never updated or deleted (database triggers).
    sa.Column("seq", sa.BigInteger, unique=True),
    sa.Column("row_hash", sa.String(64)),
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
    # migration 0003 (issue 17): the mode the alert was stored in (live: shown; silent: a shadow run, evaluated
    # but never shown; off: suppressed), and the unit's allocation when its kind is randomised. NULL: live
    sa.Column("mode", sa.String(10)),
    sa.Column("allocation_id", sa.Integer),
    # migration 0004: GET /alerts lists newest first, by kind or not; without these every call sorted the
    # whole table (625 ms at the 100 k cohort's log)
    sa.Index("ix_alerts_time", sa.text('"time" DESC'), "id"),
    sa.Index("ix_alerts_kind_time", "kind", sa.text('"time" DESC'), "id"),
)

# what clinicians did with an alert (migration 0003), append-only: the state is the latest action
alert_actions = sa.Table(
    "alert_actions", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id"), nullable=False, index=True),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),  # seen | acknowledge | snooze | assign | resolve | reopen
    sa.Column("reason", sa.String(500)),
    sa.Column("until", sa.DateTime),  # snooze expiry
    sa.Column("assignee", sa.String(200)),
)

# the randomised rollout's allocations (migration 0003): one row per unit, made at its first eligibility
allocations = sa.Table(
    "allocations", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("policy", sa.String(16), nullable=False),  # AllocationSettings.policy_id(): seed, label, blocks
    sa.Column("unit", sa.String(10), nullable=False),  # patient | ward
    sa.Column("unit_id", sa.String(200), nullable=False),
    sa.Column("stratum", sa.String(200), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),  # order of eligibility within the stratum, from 1
    sa.Column("arm", sa.String(10), nullable=False),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("first_kind", sa.String(50), nullable=False),
    sa.Column("first_time", sa.DateTime, nullable=False),  # the triggering result of the first eligible alert
    sa.UniqueConstraint("policy", "unit", "unit_id", name="ux_allocation_unit"),
    sa.UniqueConstraint("policy", "stratum", "seq", name="ux_allocation_seq"),
)

# alert rows the database refused or that cannot be stored (migration 0002): set aside with the reason,
# so that one bad row stops neither the others nor later copies (issue 16 point 4)
alert_rejects = sa.Table(
    "alert_rejects", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # sha256 of the alert's key (_alert_key)
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("raw", sa.Text, nullable=False),  # the row as JSON, ASCII-escaped and cut (PHI: database only)
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


def column_overflow(table: sa.Table, row: dict[str, Any]) -> str | None:
    """The first text value of ``row`` longer than its column in ``table`` ("card is longer than 200
    characters"), or None: PostgreSQL refuses it, SQLite would store it."""
    for name, val in row.items():
        col_type = table.c[name].type
        if isinstance(val, str) and isinstance(col_type, sa.String):
            width = col_type.length
            if width is not None and len(val) > width:
                return f"{name} is longer than {width} characters"
    return None


def audit_row(actor: str, action: str, endpoint: str, patient_id: str | None,
              detail: str | None = None) -> dict[str, Any]:
    """One audit row that any database stores: free text cut to its column with NUL made visible (a caller's
    long userId or hookInstance, or a refused token's claims, must not fail the call); a patient id that is not
    an id (too long, control characters) is kept out of the id column and named in the detail."""
    if patient_id is not None and id_problem(patient_id) is not None:
        detail = f"patient id not valid ({id_problem(patient_id)}); {detail or ''}".rstrip("; ")
        patient_id = None
    return {"at": utcnow(), "actor": safe_text(actor, column_width(audit.c.actor)), "action": action,
            "endpoint": safe_text(endpoint, column_width(audit.c.endpoint)), "patient_id": patient_id,
            "detail": safe_text(detail, column_width(audit.c.detail)) if detail else None}


GENESIS = "0" * 64  # the previous hash of the first audit row
AUDIT_LOCK = 0x6D67616B69  # PostgreSQL advisory lock key ("mgaki"): one chain writer at a time (trigger)


def _field(value: str | None) -> str:
    return "-" if value is None else f"{len(value)}:{value}"


def chain_hash(seq: int, prev: str, row: Any) -> str:
    """sha256 over the row's place in the chain (``seq``, the previous row's hash) and its content.

    The text hashed is ``seq|prev|`` then each field as ``<length>:<text>`` (``-`` for none), so no field can
    pass for another; PostgreSQL's ``mgaki_audit_chain`` trigger (migration 0002) builds the same text.
    """
    at = row["at"]
    stamp = at.isoformat(timespec="microseconds") if isinstance(at, datetime) else str(at)
    text = f"{seq}|{prev}|" + "|".join(_field(v) for v in (stamp, row["actor"], row["action"], row["endpoint"],
                                                            row["patient_id"], row["detail"]))
    return hashlib.sha256(text.encode()).hexdigest()


def append_audit(con: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Add ``rows`` (``audit_row``) to the audit chain inside the caller's write transaction.

    PostgreSQL: the ``audit_chain`` trigger links each row (under an advisory lock held to the commit), so a
    plain INSERT is all it takes. SQLite: linked here; its write transactions already have one writer at a
    time (``BEGIN IMMEDIATE``, ``writer``).
    """
    if not rows:
        return
    if con.dialect.name == "postgresql":
        con.execute(sa.insert(audit), list(rows))
        return
    last = con.execute(sa.select(audit.c.seq, audit.c.row_hash).where(audit.c.seq.is_not(None))
                       .order_by(audit.c.seq.desc()).limit(1)).first()
    seq, prev = (int(last.seq), str(last.row_hash)) if last is not None else (0, GENESIS)
    out = []
    for r in rows:
        seq += 1
        prev = chain_hash(seq, prev, r)
        out.append({**r, "seq": seq, "row_hash": prev})
    con.execute(sa.insert(audit), out)


# PostgreSQL: the replay log's row and the audit row in one statement (one round trip, autocommit); the jti's
# primary key refuses a replay, and the statement then writes nothing
_PG_ADMIT = sa.text(
    "WITH j AS (INSERT INTO cds_jti (iss, jti, exp) VALUES (:iss, :jti, :exp) RETURNING 1) "
    "INSERT INTO audit (at, actor, action, endpoint, patient_id, detail) "
    "SELECT :at, :actor, :action, :endpoint, :patient_id, :detail FROM j")


def record_read(engine: sa.Engine, row: dict[str, Any], jti: tuple[str, str, datetime] | None = None) -> bool:
    """Commit a CDS read's audit row, with the JWT's (iss, jti, exp) in the replay log when given, before any data
    is read. False, and nothing written, when that jti is in the log already (a replay).

    PostgreSQL: one statement in autocommit (the trigger links the row): two round trips fewer than a
    transaction, which counts when the database's processes wait for a CPU (issue 16 point 10).
    """
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as con:
            if jti is None:
                con.execute(sa.insert(audit), [row])
                return True
            try:
                con.execute(_PG_ADMIT, {**row, "iss": jti[0], "jti": jti[1], "exp": jti[2]})
            except sa.exc.IntegrityError as exc:
                if getattr(getattr(exc.orig, "diag", None), "table_name", None) == "cds_jti":
                    return False
                raise
        return True
    try:
        with writer(engine).begin() as con:
            if jti is not None:
                con.execute(sa.insert(cds_jti).values(iss=jti[0], jti=jti[1], exp=jti[2]))
            append_audit(con, [row])
    except sa.exc.IntegrityError as exc:
        if jti is not None and "cds_jti" in str(exc.orig):
            return False
        raise
    return True


def write_audit(engine: sa.Engine, actor: str, action: str, endpoint: str,
                patient_ids: Sequence[str | None], detail: str | None = None) -> None:
    """One audit row per patient (none for an empty list), committed before the caller answers."""
    if not patient_ids:
        return
    with writer(engine).begin() as con:
        append_audit(con, [audit_row(actor, action, endpoint, p, detail) for p in patient_ids])


@dataclass(frozen=True)
class AuditCheck:
    """What ``verify_audit`` found: rows checked, the head of the chain, and the first broken link (if any)."""

    rows: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None  # the first row whose link does not hold
    broken_id: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_audit(engine: sa.Engine, expect: tuple[int, str] | None = None) -> AuditCheck:
    """Walk the audit chain in ``seq`` order and report the first link that does not hold.

    Found: a row edited (its hash no longer matches), deleted (a gap in ``seq``, or the next row's link),
    inserted or reordered, a row outside the chain (no ``seq``). Rows cut from the *end* leave a valid
    shorter chain: ``expect`` (a (seq, hash) head recorded earlier, e.g. printed by ``mgaki audit verify``)
    checks that the chain still passes through it.
    """
    prev, n, seq = GENESIS, 0, 0
    cols = [audit.c.id, audit.c.seq, audit.c.row_hash, audit.c.at, audit.c.actor, audit.c.action,
            audit.c.endpoint, audit.c.patient_id, audit.c.detail]
    seen_expect = expect is None
    with engine.connect() as con:
        outside = con.execute(sa.select(audit.c.id).where(audit.c.seq.is_(None)).order_by(audit.c.id).limit(1)).first()
        result = con.execution_options(yield_per=5000).execute(sa.select(*cols).order_by(audit.c.seq))
        try:
            for r in result:
                if r.seq is None:
                    continue
                n += 1
                if r.seq != seq + 1:
                    what = "missing (deleted?)" if r.seq > seq + 1 else "repeated"
                    return AuditCheck(n - 1, seq, prev, seq + 1, None,
                                      f"audit row seq {seq + 1} is {what}; the chain jumps from {seq} to {r.seq}")
                if chain_hash(r.seq, prev, r._mapping) != r.row_hash:
                    return AuditCheck(n - 1, seq, prev, r.seq, r.id,
                                      f"audit row seq {r.seq} (id {r.id}) does not match its hash: the row was edited, "
                                      "or the row before it was")
                seq, prev = r.seq, r.row_hash
                if expect is not None and (seq, prev) == expect:
                    seen_expect = True
        finally:
            result.close()  # a server-side cursor on PostgreSQL: closed also on an early return
    if outside is not None:
        return AuditCheck(n, seq, prev, None, outside.id,
                          f"audit row id {outside.id} is outside the chain (no seq): inserted around the service")
    if not seen_expect:
        assert expect is not None
        return AuditCheck(n, seq, prev, expect[0], None,
                          f"the recorded head seq {expect[0]} with hash {expect[1][:12]}... is not in the chain "
                          "(rows cut from the end, or rewritten)")
    return AuditCheck(n, seq, prev)


# --- alerts: one bad row must not stop the others --------------------------------------------------------

ALERT_KEY = ("subject_id", "encounter_id", "kind", "time")


def alert_key_hash(row: Any) -> str:
    t = row["time"]
    key = [row["subject_id"], row["encounter_id"], row["kind"], t.isoformat() if isinstance(t, datetime) else t]
    return hashlib.sha256(json.dumps(key, ensure_ascii=True).encode()).hexdigest()


def _alert_problem(row: dict[str, Any]) -> str | None:
    """Why the database could not hold this alert row (checked the same way on every database), or None."""
    for col in ("subject_id", "encounter_id"):
        if row.get(col) is not None and (p := id_problem(str(row[col]), col)) is not None:
            return p
    for col in ("kind", "severity", "detail"):
        val = row.get(col)
        if isinstance(val, str):
            if "\x00" in val:
                return f"{col} contains NUL"
            if len(val) > column_width(alerts.c[col]):
                return f"{col} is longer than {column_width(alerts.c[col])} characters"
    if not isinstance(row.get("time"), datetime):
        return "time is missing"
    return None


def insert_alerts(con: sa.Connection, rows: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Insert alert rows in the caller's write transaction, one patient at a time; a row the database cannot
    hold is set aside in ``alert_rejects`` with the reason. Returns (inserted, set aside).

    Each patient's rows go in a savepoint: a patient whose rows fail (checked beforehand, or refused by the
    database) is rolled back alone and the others are stored. Rows set aside are never retried
    (``alert_rejects.key_hash``); the log names counts and reasons, never values.
    """
    by_patient: dict[str, list[dict[str, Any]]] = {}
    rejects: list[tuple[dict[str, Any], str]] = []
    for r in rows:
        problem = _alert_problem(r)
        if problem is not None:
            rejects.append((r, problem))
        else:
            by_patient.setdefault(r["subject_id"], []).append(r)
    inserted = 0
    now = utcnow()
    for group in by_patient.values():
        try:
            with con.begin_nested():
                con.execute(sa.insert(alerts), [{**r, "emitted_at": now} for r in group])
        except (sa.exc.DataError, sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.InternalError) as exc:
            why = f"the database refused the row ({type(exc.orig).__name__ if exc.orig else type(exc).__name__})"
            rejects.extend((r, why) for r in group)
        else:
            inserted += len(group)
    if rejects:
        have = set(con.execute(sa.select(alert_rejects.c.key_hash)).scalars())
        fresh = {}
        for r, why in rejects:
            h = alert_key_hash(r)
            if h not in have:
                fresh[h] = {"at": now, "key_hash": h, "reason": why[:200],
                            "raw": json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v)
                                               for k, v in r.items()}, ensure_ascii=True, default=str)[:4000]}
        if fresh:
            con.execute(sa.insert(alert_rejects), list(fresh.values()))
        kinds: dict[str, int] = {}
        for _, why in rejects:
            kinds[why] = kinds.get(why, 0) + 1
        log.warning("alert copy: %d row(s) set aside in alert_rejects: %s", len(rejects),
                    "; ".join(f"{n} {why}" for why, n in sorted(kinds.items())))
    return inserted, len(rejects)


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
        db_file = Path(url.removeprefix("sqlite:///").split("?")[0])
        private_dir(db_file.parent)
        # created owner-only before SQLite opens it (SQLite gives its -wal and -shm files the same mode)
        os.close(os.open(db_file, os.O_RDWR | os.O_CREAT, 0o600))
    # hide_parameters: an error's text (and SQLAlchemy's own log) never carries the values bound to a statement,
    # which are patient ids, MRNs and alert rows (issue 16 point 5)
    eng = sa.create_engine(url, pool_pre_ping=True, hide_parameters=True,
                           **({"connect_args": {"timeout": busy_timeout_s}} if sqlite else {}))
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


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) owner-only (0700): it holds patient data. An existing folder keeps
    its mode; a warning names the problem if others may read it."""
    path = Path(path)
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.chmod(0o700)  # mkdir's mode is filtered by the umask
    elif path.stat().st_mode & 0o077:
        log.warning("the data folder %s can be read by other users (mode %o); 0700 is advised",
                    path, path.stat().st_mode & 0o777)
    return path


def writer(engine: sa.Engine) -> sa.Engine:
    """``engine`` for transactions that write (same pool): on SQLite they begin IMMEDIATE."""
    return engine.execution_options(mgaki_write=True)


_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# what the service does with each table, and no more: the audit is read and appended to, never changed
_PRIVILEGES = {"audit": "SELECT, INSERT", "alerts": "SELECT, INSERT", "alert_rejects": "SELECT, INSERT",
               "alert_actions": "SELECT, INSERT", "allocations": "SELECT, INSERT",
               "cds_jti": "SELECT, INSERT, DELETE", "cds_feedback": "SELECT, INSERT", "alembic_version": "SELECT"}


def service_grants(role: str, schema: str = "public") -> list[str]:
    """PostgreSQL statements giving the service's login ``role`` what it needs on the migrated tables: SELECT and
    INSERT on ``audit`` (no UPDATE, DELETE or TRUNCATE); the migrations run as the tables' owner, not as it."""
    if not _ROLE.fullmatch(role) or not _ROLE.fullmatch(schema):
        raise ValueError("role and schema: lower-case letters, digits and _, starting with a letter or _")
    out = [f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}";']
    out += [f'GRANT {priv} ON "{schema}"."{table}" TO "{role}";' for table, priv in _PRIVILEGES.items()]
    out += [f'GRANT USAGE ON SEQUENCE "{schema}"."{t}_id_seq" TO "{role}";'
            for t in ("audit", "alerts", "alert_rejects", "cds_feedback", "alert_actions", "allocations")]
    return out


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Run the Alembic migrations on ``engine`` (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as con:
        cfg.attributes["connection"] = con
        command.upgrade(cfg, revision)
