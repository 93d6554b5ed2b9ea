"""Issue 13 point 8 at the service: a resource id that comes back naming another patient is refused.

POST /fhir answers 409 with an OperationOutcome naming the resource and both patients, and
stores nothing (the other patient's results, alerts and audit stay as they were); HL7 over
MLLP answers AE 205 the same way. On SQLite and on a real PostgreSQL (conftest ``pg_server``).
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from test_postgres import pg_url  # noqa: F401 - the PostgreSQL schema fixture

from conftest import READER, WRITER, auth, make_config
from mgaki.events import EventStore
from mgaki.service import create_app
from mgaki.service.ingest.hl7 import Result, oru_r01, read_ack
from mgaki.service.ingest.mllp import handle_message
from mgaki.synth.fhir import T0
from mgaki.synth.fhir import BundleBuilder as B


def _bundle(pid: str, values: list[float], **meta: str) -> dict[str, Any]:
    b = B(pid=pid).encounter(-1.0, icu=False, eid=f"{pid}-stay")  # the patient's own admission
    for i, v in enumerate(values):
        b.obs("magnesium", v, "mg/dL", float(i))
    out = b.build()
    out["type"] = "batch"
    if meta:
        out["meta"] = meta
    return out


def _check_refused(c: TestClient, store: EventStore) -> None:
    first = c.post("/fhir", json=_bundle("p1", [1.1, 1.2]), headers=auth(WRITER))
    assert first.status_code == 200 and first.json()["new_alerts"] >= 1
    alerts = c.get("/patients/p1/alerts", headers=auth(READER)).json()["alerts"]
    before = sorted((r["subject_id"], r["numeric_value"]) for r in store.read("events").to_pylist())

    r = c.post("/fhir", json=_bundle("p2", [2.1, 2.2]), headers=auth(WRITER))
    assert r.status_code == 409
    out = r.json()
    assert out["resourceType"] == "OperationOutcome"
    issues = {i["expression"][0]: i for i in out["issue"]}
    assert set(issues) == {"Observation/obs1", "Observation/obs2"}
    diag = issues["Observation/obs1"]["diagnostics"]
    assert issues["Observation/obs1"]["code"] == "conflict"
    assert "belongs to patient 'p1'" in diag and "names patient 'p2'" in diag and "nothing was stored" in diag
    # nothing moved, nothing half-written: p1's results and alerts as before, nothing for p2
    assert sorted((r["subject_id"], r["numeric_value"]) for r in store.read("events").to_pylist()) == before
    assert {r["subject_id"] for r in store.read("subjects").to_pylist()} == {"p1"}
    assert c.get("/patients/p1/alerts", headers=auth(READER)).json()["alerts"] == alerts
    assert c.get("/patients/p2/alerts", headers=auth(READER)).json()["alerts"] == []
    # a source system named by the sender does not change the default identity (type + id)
    named = c.post("/fhir", json=_bundle("p2", [2.1], source="http://lab-b.example.org"), headers=auth(WRITER))
    assert named.status_code == 409


def test_sqlite_refuses_a_record_of_another_patient(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        _check_refused(c, EventStore(cfg.data_dir / "events"))


def test_postgres_refuses_a_record_of_another_patient(tmp_path, pg_url) -> None:  # type: ignore[no-untyped-def] # noqa: F811
    url, _ = pg_url
    cfg = make_config(tmp_path, database_url=url)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        assert c.app.state.engine.dialect.name == "postgresql"
        _check_refused(c, EventStore(cfg.data_dir / "events"))
        with c.app.state.engine.connect() as con:  # the refused request wrote no audit row for p2
            writes = sa.text("SELECT count(*) FROM audit WHERE patient_id = 'p2' AND action = 'write'")
            assert con.execute(writes).scalar_one() == 0


def test_identities_per_source_system_when_configured(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, identity_per_source=True)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        a = c.post("/fhir", json=_bundle("p1", [1.1], source="http://lab-a.example.org"), headers=auth(WRITER))
        b = c.post("/fhir", json=_bundle("p2", [2.1], source="http://lab-b.example.org"), headers=auth(WRITER))
        assert (a.status_code, b.status_code) == (200, 200)
        clash = c.post("/fhir", json=_bundle("p3", [3.1], source="http://lab-b.example.org"), headers=auth(WRITER))
        assert clash.status_code == 409 and "belongs to patient 'p2'" in json.dumps(clash.json())


def test_mllp_message_reusing_an_order_number_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, surveil_on_ingest=False)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        ingestor = c.app.state.ingestor
        msg = oru_r01("p1", [Result("19123-9", 1.1, "mg/dL", T0)], visit="v1", order="ord-1", admitted=T0)
        assert read_ack(handle_message(ingestor, msg)).code == "AA"
        other = oru_r01("p2", [Result("19123-9", 2.1, "mg/dL", T0)], visit="v2", order="ord-1", admitted=T0)
        reply = read_ack(handle_message(ingestor, other))
        assert reply.code == "AE"
        assert any("HL7/ord-1/LN/19123-9: belongs to patient 'p1'" in e and "'p2'" in e for e in reply.errors)
        assert {r["subject_id"] for r in ingestor.store.read("events").to_pylist()} == {"p1"}
