"""The same API on a real PostgreSQL (local server, trust auth): a schema of its own per run, dropped after.

The server is the machine's PostgreSQL (``MGAKI_TEST_PG`` overrides the URL); when it is not running the
tests start the local cluster (Debian ``pg_ctlcluster``) rather than assume it. Only
``MGAKI_SKIP_POSTGRES=1`` turns a missing server into a skip; otherwise it fails, saying what to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from conftest import READER, WRITER, auth, bundle, hook_request, make_config
from mgaki.service import create_app

PG = os.environ.get("MGAKI_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _reachable(engine: sa.Engine) -> str | None:
    """None when the server answers, else why not."""
    try:
        with engine.connect() as con:
            con.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        return type(exc.orig).__name__
    return None


def _start_local_cluster() -> str:
    """Start the machine's PostgreSQL cluster(s) with Debian's pg_ctlcluster; what was done."""
    ctl, etc = shutil.which("pg_ctlcluster"), Path("/etc/postgresql")
    if ctl is None or not etc.is_dir():
        return "no local cluster to start (pg_ctlcluster or /etc/postgresql missing)"
    for version in sorted(p.name for p in etc.iterdir() if p.is_dir()):
        subprocess.run([ctl, "--skip-systemctl-redirect", version, "main", "start"], capture_output=True,
                       timeout=60, check=False)
    return "started the local cluster with pg_ctlcluster"


@pytest.fixture(scope="session")
def pg_server() -> str:
    admin = sa.create_engine(PG, connect_args={"connect_timeout": 3})
    try:
        why = _reachable(admin)
        if why is not None:
            done = _start_local_cluster()
            deadline = time.monotonic() + 30
            while (why := _reachable(admin)) is not None and time.monotonic() < deadline:
                time.sleep(1)
            if why is not None:
                msg = (f"PostgreSQL not reachable at {PG} ({why}; {done}). Start a server, point MGAKI_TEST_PG at "
                       "one, or set MGAKI_SKIP_POSTGRES=1 to skip these tests")
                if os.environ.get("MGAKI_SKIP_POSTGRES") == "1":
                    pytest.skip(msg)
                pytest.fail(msg)
    finally:
        admin.dispose()
    return PG


@pytest.fixture
def pg_url(pg_server: str):
    admin = sa.create_engine(pg_server, connect_args={"connect_timeout": 3})
    schema = f"mgaki_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as con:
        con.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{pg_server}?options=-csearch_path%3D{schema}", schema
    finally:
        with admin.begin() as con:
            con.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_postgres_ingest_alerts_cds_audit(tmp_path, pg_url):
    url, schema = pg_url
    cfg = make_config(tmp_path, database_url=url)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        engine = c.app.state.engine
        assert engine.dialect.name == "postgresql"
        with engine.connect() as con:
            tables = set(con.execute(sa.text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = :s"), {"s": schema}).scalars())
        assert {"audit", "alerts", "cds_jti", "cds_feedback", "alembic_version"} <= tables
        b = bundle("general_low_cheungpasitporn")
        b["type"] = "batch"
        b["entry"].append({"resource": {"resourceType": "Encounter", "id": "e1", "status": "in-progress",
                                        "subject": {"reference": "Patient/p1"},
                                        "period": {"start": "2024-02-29T08:00:00+00:00"}}})
        first = c.post("/fhir", json=b, headers=auth(WRITER)).json()
        assert first["added"]["events"] == 2 and first["new_alerts"] >= 1
        assert c.post("/fhir", json=b, headers=auth(WRITER)).json()["new_alerts"] == 0
        alerts = c.get("/patients/p1/alerts", headers=auth(READER)).json()["alerts"]
        assert len(alerts) == first["new_alerts"] and alerts[0]["subject_id"] == "p1"
        assert c.post("/cds-services/mgaki-patient-view",
                      json=hook_request("general_low_cheungpasitporn")).status_code == 200
        with engine.connect() as con:
            n = con.execute(sa.text("SELECT count(*) FROM audit WHERE patient_id = 'p1'")).scalar_one()
        assert n == 3  # the write, the read of p1's alerts, the CDS call
    # migrations are idempotent: a second start on the same database changes nothing
    with TestClient(create_app(cfg)) as c2:
        assert len(c2.get("/alerts", headers=auth(READER)).json()["alerts"]) == len(alerts)


def test_postgres_over_long_ids_are_4xx_not_500(tmp_path, pg_url):
    """PostgreSQL enforces VARCHAR lengths (SQLite does not): ids longer than the audit columns must be refused."""
    url, _ = pg_url
    with TestClient(create_app(make_config(tmp_path, database_url=url)), raise_server_exceptions=False) as c:
        r = c.get("/patients/" + "p" * 300 + "/alerts", headers=auth(READER))
        assert r.status_code == 422 and "patient_id" in r.text
        req = hook_request("general_low_cheungpasitporn")
        req["context"]["patientId"] = req["prefetch"]["patient"]["id"] = "p" * 300
        r = c.post("/cds-services/mgaki-patient-view", json=req)
        assert r.status_code == 400 and "context.patientId" in r.json()["error"]
        req = hook_request("general_low_cheungpasitporn")
        req["context"]["userId"] = "Practitioner/" + "u" * 300
        req["hookInstance"] = "h" * 600
        assert c.post("/cds-services/mgaki-patient-view", json=req).status_code == 200  # actor/detail truncated
