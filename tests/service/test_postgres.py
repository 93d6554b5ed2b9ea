"""The same API on a real PostgreSQL (local server, trust auth): a schema of its own per run, dropped after.

The server comes from the ``pg_server`` fixture (conftest): started when it is down, never assumed.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from conftest import READER, WRITER, auth, bundle, hook_request, make_config
from mgaki.service import create_app


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
