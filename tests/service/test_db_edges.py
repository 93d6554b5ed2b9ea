"""Ids and NUL at the edge, and failure isolation in the alert copy (issue 16 point 4), on SQLite and PostgreSQL.

PostgreSQL enforces VARCHAR lengths and refuses NUL; SQLite does neither. Before: a FHIR patient id of 300
characters was stored, then every alert copy failed on PostgreSQL (every later POST /fhir a 500, no alert
for anyone); NUL in an id or a field was a 500. Now ids are checked where they come in, NUL is refused,
and the alert copy goes one patient at a time with a row it cannot store set aside with the reason.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import jwt
import pyarrow as pa
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from hl7.client import MLLPClient

from conftest import READER, WRITER, auth, bundle, hook_request, make_config, refuse_inserts
from mgaki.service import create_app
from mgaki.service.ingest.hl7 import Result, oru_r01, read_ack

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def client(tmp_path, database_url: str | None) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, database_url=database_url, mllp_port=0)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        yield c


def _bundle_for(patient_id: str) -> dict[str, Any]:
    """The low-Mg vignette (it raises alerts) with its patient renamed, and its resources (ids of their own)."""
    b = bundle("general_low_cheungpasitporn")
    b["type"] = "batch"
    b["entry"].append({"resource": {"resourceType": "Encounter", "id": "e1", "status": "in-progress",
                                    "subject": {"reference": "Patient/p1"},
                                    "period": {"start": "2024-02-29T08:00:00+00:00"}}})
    text = json.dumps(b).replace('"Patient/p1"', json.dumps(f"Patient/{patient_id}"))
    out = json.loads(text)
    tag = uuid.uuid4().hex[:8]
    for e in out["entry"]:
        res = e["resource"]
        res["id"] = patient_id if res["resourceType"] == "Patient" else f"{res.get('id', 'r')}-{tag}"
    return out


def test_an_over_long_patient_id_is_quarantined_and_alerts_go_on_for_everyone(client: TestClient) -> None:
    r = client.post("/fhir", json=_bundle_for("p" * 300), headers=auth(WRITER))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["subjects"] == 0 and sum(body["added"].get(t, 0) for t in ("events", "subjects")) == 0
    assert any("subject_id is not a FHIR id" in k for k in body["quarantine_reasons"]), body["quarantine_reasons"]
    # before: every later POST was a 500 on PostgreSQL and no alert reached anyone
    ok = client.post("/fhir", json=_bundle_for("p1"), headers=auth(WRITER))
    assert ok.status_code == 200, ok.text
    assert ok.json()["new_alerts"] >= 1
    assert client.get("/patients/p1/alerts", headers=auth(READER)).json()["alerts"]


def test_nul_anywhere_is_a_400_naming_where_not_a_500(client: TestClient) -> None:
    b = _bundle_for("p1")
    b["entry"][1]["resource"]["id"] = "obs\x00x"
    r = client.post("/fhir", json=b, headers=auth(WRITER))
    assert r.status_code == 400 and "Bundle.entry[1].resource.id: contains a NUL" in r.text
    nd = "\n".join(json.dumps(e["resource"]) for e in _bundle_for("p\x002")["entry"])
    r = client.post("/fhir/$import-ndjson", content=nd,
                    headers={**auth(WRITER), "Content-Type": "application/fhir+ndjson"})
    assert r.status_code == 400 and "contains a NUL" in r.text
    for path in ("/patients/a%00b/alerts", "/alerts?kind=%00", "/dashboard/patients?q=x%00"):
        r = client.get(path, headers=auth(READER))
        assert r.status_code == 400 and "NUL" in r.json()["error"], path
    req = hook_request("general_low_cheungpasitporn")
    req["context"]["userId"] = "Practitioner/u\x001"
    r = client.post("/cds-services/mgaki-patient-view", json=req)
    assert r.status_code == 400 and "context.userId: contains a NUL" in r.json()["error"]
    req = hook_request("general_low_cheungpasitporn")
    req["context"]["patientId"] = "p" * 65
    r = client.post("/cds-services/mgaki-patient-view", json=req)
    assert r.status_code == 400 and "context.patientId is longer than 64" in r.json()["error"]
    fb = {"card": "c\x001", "outcome": "overridden", "outcomeTimestamp": "2024-03-01T08:00:00Z"}
    r = client.post("/cds-services/mgaki-patient-view/feedback", json={"feedback": [fb]})
    assert r.status_code == 400 and "feedback[0].card: contains a NUL" in r.json()["error"]
    r = client.post("/cds-services/mgaki-patient-view/feedback", json={"feedback": [{**fb, "card": "c" * 201}]})
    assert r.status_code == 400 and "feedback[0]: card is longer than 200" in r.json()["error"]
    # the service still answers, and nothing of the above was stored
    assert client.get("/alerts", headers=auth(READER)).status_code == 200
    assert client.get("/health").status_code == 200


def test_hl7_ids_over_their_length_and_nul_are_refused(client: TestClient) -> None:
    port = client.app.state.mllp.port  # type: ignore[attr-defined]
    with MLLPClient("127.0.0.1", port) as mllp:
        long_pid = oru_r01("9" * 65, [Result("19123-9", 1.0, "mg/dL", T0)], control_id="c1")
        reply = read_ack(mllp.send_message(long_pid))
        assert reply.code == "AE" and reply.errors == ["patient identifier is longer than 64 characters"]
        nul = oru_r01("p1", [Result("19123-9", 1.0, "mg/dL", T0)], visit="v\x001", admitted=T0, control_id="c2")
        reply = read_ack(mllp.send_message(nul))
        assert reply.code == "AE" and "NUL" in reply.errors[0]
        ok = oru_r01("p1", [Result("19123-9", 1.0, "mg/dL", T0)], control_id="c3")
        assert read_ack(mllp.send_message(ok)).code == "AA"


def test_a_jwt_whose_jti_no_database_holds_is_refused_not_a_500(tmp_path, database_url: str | None) -> None:  # type: ignore[no-untyped-def]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "alg": "RS384"})
    iss = "https://ehr.example.org"
    cfg = make_config(tmp_path, database_url=database_url, cds_require_jwt=True,
                      cds_issuers=[{"iss": iss, "keys": [jwk]}], public_base_url="http://testserver")
    url = "http://testserver/cds-services/mgaki-patient-view"
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        for jti in ("a\x00b", "j" * 600):
            now = int(time.time())
            tok = jwt.encode({"iss": iss, "aud": url, "iat": now, "exp": now + 60, "jti": jti}, key,
                             algorithm="RS384", headers={"kid": "k1"})
            r = c.post("/cds-services/mgaki-patient-view", json=hook_request("general_low_cheungpasitporn"),
                       headers=auth(tok))
            assert r.status_code == 401 and "jti must be a string" in r.json()["error"]
        now = int(time.time())
        good = jwt.encode({"iss": iss, "aud": url, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}, key,
                          algorithm="RS384", headers={"kid": "k1"})
        assert c.post("/cds-services/mgaki-patient-view", json=hook_request("general_low_cheungpasitporn"),
                      headers=auth(good)).status_code == 200


def _log(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([{"subject_id": r["s"], "encounter_id": None, "kind": "mg_out_of_range",
                                  "time": T0.replace(tzinfo=None),
                                  "severity": "warning", "detail": "Mg low", "value": 1.0} for r in rows])


def test_one_bad_alert_row_is_set_aside_and_the_others_are_copied(client: TestClient) -> None:
    """The alert copy itself: a row no database column holds, and a row the database refuses (a trigger here, as
    a constraint or a failing extension would), are set aside with the reason; every other patient's alerts land."""
    engine = client.app.state.engine  # type: ignore[attr-defined]
    ingestor = client.app.state.ingestor  # type: ignore[attr-defined]
    refuse_inserts(engine, "alerts", subject_id="poison")
    log = _log([{"s": "good-1"}, {"s": "x" * 300}, {"s": "poison"}, {"s": "good-2"}, {"s": "nul\x00id"}])
    assert ingestor.sync_alerts(log) == 2
    with engine.connect() as con:
        held = sorted(con.execute(sa.text("SELECT subject_id FROM alerts")).scalars())
        rejects = con.execute(sa.text("SELECT reason, raw FROM alert_rejects ORDER BY id")).all()
    assert held == ["good-1", "good-2"]
    reasons = sorted(r.reason for r in rejects)
    assert reasons[0].startswith("subject_id contains a control character")
    assert reasons[1] == "subject_id is longer than 64 characters"
    assert reasons[2].startswith("the database refused the row (")
    assert {json.loads(r.raw)["subject_id"] for r in rejects} == {"x" * 300, "poison", "nul\x00id"}
    # the same log again (every surveillance run hands over the whole log): nothing retried, nothing doubled
    assert ingestor.sync_alerts(log) == 0
    with engine.connect() as con:
        assert con.execute(sa.text("SELECT count(*) FROM alert_rejects")).scalar_one() == 3
        assert con.execute(sa.text("SELECT count(*) FROM alerts")).scalar_one() == 2
    # and a new alert of a good patient still lands
    later = copy.deepcopy(log.to_pylist())
    later.append({**later[0], "subject_id": "good-3"})
    assert ingestor.sync_alerts(pa.Table.from_pylist(later, schema=log.schema)) == 1
