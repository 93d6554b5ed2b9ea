"""An audit that holds up (issue 16 point 7), on SQLite and PostgreSQL.

Append-only in the database (triggers refuse UPDATE, DELETE and TRUNCATE, whoever asks), tamper-evident
(a sha256 chain over the rows; ``mgaki audit verify`` names the first broken link), and complete: rows for
401s, for 404s on unknown patients, for CDS feedback, and one row per patient a list returned.
"""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import READER, WRITER, auth, bundle, make_config
from mgaki.cli import app as cli
from mgaki.service import create_app
from mgaki.service.persistence.db import make_engine, upgrade, verify_audit, write_audit

runner = CliRunner()


@pytest.fixture
def client(tmp_path: Path, database_url: str | None) -> Iterator[TestClient]:
    with TestClient(create_app(make_config(tmp_path, database_url=database_url)),
                    raise_server_exceptions=False) as c:
        yield c


def _bundle(pid: str) -> dict[str, Any]:
    b = json.loads(json.dumps(bundle("general_low_cheungpasitporn")).replace('"Patient/p1"', f'"Patient/{pid}"'))
    b["type"] = "batch"
    for e in b["entry"]:
        e["resource"]["id"] = pid if e["resource"]["resourceType"] == "Patient" else f"{e['resource']['id']}-{pid}"
    b["entry"].append({"resource": {"resourceType": "Encounter", "id": f"e-{pid}", "status": "in-progress",
                                    "subject": {"reference": f"Patient/{pid}"},
                                    "period": {"start": "2024-02-29T08:00:00+00:00"}}})
    return b


def _rows(c: TestClient) -> list[tuple[Any, ...]]:
    with c.app.state.engine.connect() as con:  # type: ignore[attr-defined]
        return [tuple(r) for r in con.execute(sa.text(
            "SELECT actor, action, endpoint, patient_id, detail FROM audit ORDER BY seq"))]


def _some_rows(c: TestClient) -> None:
    for pid in ("pa", "pb"):
        assert c.post("/fhir", json=_bundle(pid), headers=auth(WRITER)).status_code == 200
    for _ in range(3):
        assert c.get("/patients/pa/alerts", headers=auth(READER)).status_code == 200


def _verify(c: TestClient, tmp_path: Path, *extra: str) -> Any:
    cfg = c.app.state.cfg  # type: ignore[attr-defined]
    args = ["audit", "verify", "--data-dir", str(cfg.data_dir)]
    if cfg.database_url:
        args += ["--database-url", cfg.database_url]
    return runner.invoke(cli, [*args, *extra], env={"MGAKI_CONFIG": ""})


class _Owner:
    """What a database owner can do and the service cannot: switch the append-only triggers off and on."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"
        with engine.connect() as con:
            self.sqlite_ddl = [] if self.pg else list(con.execute(sa.text(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'")).scalars())

    def run(self, *sql: str) -> None:
        with self.engine.begin() as con:
            if self.pg:
                con.execute(sa.text("ALTER TABLE audit DISABLE TRIGGER USER"))
            else:
                for name in ("audit_no_update", "audit_no_delete"):
                    con.execute(sa.text(f"DROP TRIGGER {name}"))
            for s in sql:
                con.execute(sa.text(s))
            if self.pg:
                con.execute(sa.text("ALTER TABLE audit ENABLE TRIGGER USER"))
            else:
                for ddl in self.sqlite_ddl:
                    con.execute(sa.text(ddl))


def test_the_audit_table_refuses_update_delete_and_truncate(client: TestClient) -> None:
    _some_rows(client)
    engine = client.app.state.engine  # type: ignore[attr-defined]
    before = _rows(client)
    refused = ["UPDATE audit SET detail = 'x' WHERE seq = 1", "DELETE FROM audit WHERE seq = 1", "DELETE FROM audit"]
    if engine.dialect.name == "postgresql":
        refused.append("TRUNCATE audit")
    for sql in refused:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as con:
            con.execute(sa.text(sql))
    assert _rows(client) == before and len(before) >= 5


def test_the_hash_chain_names_the_first_broken_link(client: TestClient, tmp_path: Path) -> None:
    _some_rows(client)
    ok = _verify(client, tmp_path)
    assert ok.exit_code == 0, ok.output
    assert "audit chain intact" in ok.output
    head = ok.output.split("head ")[1].split()[0]
    n = int(head.split(":")[0])
    assert n >= 5
    owner = _Owner(client.app.state.engine)  # type: ignore[attr-defined]
    with client.app.state.engine.connect() as con:  # type: ignore[attr-defined]
        detail2 = con.execute(sa.text("SELECT detail FROM audit WHERE seq = 2")).scalar_one()
        row3 = dict(con.execute(sa.text("SELECT * FROM audit WHERE seq = 3")).mappings().one())

    owner.run("UPDATE audit SET detail = 'nothing to see' WHERE seq = 2")  # an edit
    bad = _verify(client, tmp_path)
    assert bad.exit_code == 1 and "BROKEN after 1 good rows" in bad.output
    assert "seq 2 (id" in bad.output and "does not match its hash" in bad.output
    owner.run(f"UPDATE audit SET detail = {_lit(detail2)} WHERE seq = 2")
    assert _verify(client, tmp_path).exit_code == 0

    owner.run("DELETE FROM audit WHERE seq = 3")  # a row removed from the middle
    bad = _verify(client, tmp_path)
    assert bad.exit_code == 1 and "seq 3 is missing" in bad.output
    cols = ", ".join(row3)
    owner.run(f"INSERT INTO audit ({cols}) VALUES ({', '.join(_lit(v) for v in row3.values())})")
    assert _verify(client, tmp_path).exit_code == 0

    owner.run(f"DELETE FROM audit WHERE seq >= {n - 1}")  # the last rows cut: a shorter chain, valid on its own
    assert _verify(client, tmp_path).exit_code == 0
    cut = _verify(client, tmp_path, "--expect", head)  # but not through the head recorded before
    assert cut.exit_code == 1 and f"recorded head seq {n}" in cut.output

    # a row inserted around the service (no place in the chain)
    owner.run("INSERT INTO audit (at, actor, action, endpoint) VALUES ('2024-01-01 00:00:00', 'x', 'read', 'y')")
    bad = _verify(client, tmp_path)
    assert bad.exit_code == 1 and "outside the chain" in bad.output


def _lit(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, int):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def test_concurrent_writers_keep_one_unbroken_chain(client: TestClient) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]

    def write(i: int) -> None:
        for j in range(10):
            write_audit(engine, f"writer-{i}", "read", "GET /x", [f"p{i}", f"q{j}"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))
    res = verify_audit(engine)
    assert res.ok, res.problem
    assert res.rows == res.head_seq == 8 * 10 * 2


def test_rows_written_before_the_chain_are_chained_by_the_migration(tmp_path: Path, database_url: str | None) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'old.db'}")
    try:
        upgrade(engine, "0001")
        with engine.begin() as con:
            for i in range(5):
                con.execute(sa.text("INSERT INTO audit (at, actor, action, endpoint, patient_id, detail) "
                                    "VALUES (:at, :a, 'read', 'GET /alerts', :p, NULL)"),
                            {"at": f"2024-03-0{i + 1} 08:00:00.{i:06d}", "a": f"actor-{i}", "p": f"p{i}"})
        upgrade(engine)
        res = verify_audit(engine)
        assert res.ok and res.rows == 5, res.problem
        with engine.connect() as con:
            assert list(con.execute(sa.text("SELECT seq FROM audit ORDER BY id")).scalars()) == [1, 2, 3, 4, 5]
        write_audit(engine, "after", "read", "GET /alerts", ["p9"])  # the chain goes on from the old rows
        assert verify_audit(engine).rows == 6
    finally:
        engine.dispose()


def test_refusals_unknown_patients_feedback_and_lists_are_audited(client: TestClient) -> None:
    for pid in ("pa", "pb"):
        assert client.post("/fhir", json=_bundle(pid), headers=auth(WRITER)).status_code == 200
    # 401s: no token, an unknown token; the patient the path names is recorded
    assert client.get("/patients/pa/alerts").status_code == 401
    assert client.get("/alerts", headers=auth("not-a-token-0123456789")).status_code == 401
    # a 404 on a patient the service does not hold
    assert client.get("/dashboard/patients/nobody/timeline", headers=auth(READER)).status_code == 404
    # CDS feedback
    fb = {"card": "card-1", "outcome": "overridden", "outcomeTimestamp": "2024-03-01T08:00:00Z"}
    assert client.post("/cds-services/mgaki-patient-view/feedback", json={"feedback": [fb]}).status_code == 200
    # lists: one row per patient returned
    alerts = client.get("/alerts", headers=auth(READER)).json()["alerts"]
    listed = client.get("/dashboard/patients?scope=all", headers=auth(READER)).json()["patients"]
    rows = _rows(client)
    assert ("unauthenticated", "denied", "GET /patients/{patient_id}/alerts", "pa",
            "401 missing bearer token (Authorization: Bearer <token>)") in rows
    assert ("unauthenticated", "denied", "GET /alerts", None, "401 unknown bearer token") in rows
    assert ("nurse-station", "not-found", "GET /dashboard/patients/{patient_id}/timeline", "nobody",
            "404 no data for this patient") in rows
    assert ("unauthenticated-cds-client", "write", "POST /cds-services/{service_id}/feedback", None,
            "mgaki-patient-view: 1 feedback item(s)") in rows
    assert {a["subject_id"] for a in alerts} == {"pa", "pb"}
    assert {r[3] for r in rows if r[:3] == ("nurse-station", "read", "GET /alerts")} == {"pa", "pb"}
    assert {r[3] for r in rows if r[:3] == ("nurse-station", "read", "GET /dashboard/patients")} == \
        {p["patient_id"] for p in listed} == {"pa", "pb"}
    assert verify_audit(client.app.state.engine).ok  # type: ignore[attr-defined]


def test_postgres_service_role_may_append_and_read_the_audit_only(tmp_path: Path, pg_server: str) -> None:
    """`mgaki audit grants`: the service connects as a role of its own with SELECT and INSERT on the audit; the
    migrations run as the tables' owner. The service works under that role, and the role cannot change a row."""
    from conftest import pg_schema

    role = f"mgaki_app_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_server)
    with pg_schema(pg_server) as owner_url:
        schema = owner_url.split("search_path%3D")[1]
        app_url = owner_url.replace("postgres@", f"{role}@")
        try:
            with TestClient(create_app(make_config(tmp_path / "o", database_url=owner_url))):
                pass  # the owner migrates
            out = runner.invoke(cli, ["audit", "grants", "--role", role, "--schema", schema])
            assert out.exit_code == 0, out.output
            with admin.begin() as con:
                con.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
                for stmt in out.output.strip().splitlines():
                    con.execute(sa.text(stmt))
            with TestClient(create_app(make_config(tmp_path / "a", database_url=app_url)),
                            raise_server_exceptions=False) as c:
                assert c.post("/fhir", json=_bundle("pa"), headers=auth(WRITER)).status_code == 200
                assert c.get("/patients/pa/alerts", headers=auth(READER)).json()["alerts"]
                engine = c.app.state.engine  # type: ignore[attr-defined]
                assert engine.url.username == role
                for sql in ("UPDATE audit SET detail = 'x'", "DELETE FROM audit", "TRUNCATE audit",
                            "ALTER TABLE audit DISABLE TRIGGER USER", "DROP TRIGGER audit_append_only ON audit"):
                    with pytest.raises(sa.exc.ProgrammingError, match=r"permission denied|must be owner"), \
                            engine.begin() as con:
                        con.execute(sa.text(sql))
                assert verify_audit(engine).ok
        finally:
            with admin.begin() as con:
                if _role_exists(con, role):
                    con.execute(sa.text(f'DROP OWNED BY "{role}"'))
                con.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
            admin.dispose()


def _role_exists(con: sa.Connection, role: str) -> bool:
    return con.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first() is not None
