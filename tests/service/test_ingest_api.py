"""FHIR ingest (Bundle and NDJSON) into the event store, idempotence, surveillance alerts, audit."""

from __future__ import annotations

import json

import sqlalchemy as sa

from conftest import READER, WRITER, auth, bundle

NDJSON = {**auth(WRITER), "content-type": "application/fhir+ndjson"}


def _batch(name: str) -> dict:
    """The vignette bundle as a batch, with an inpatient encounter (surveillance alerts are per encounter)."""
    b = bundle(name)
    b["type"] = "batch"
    b["entry"].append({"resource": {"resourceType": "Encounter", "id": "e1", "status": "in-progress",
                                    "class": {"code": "IMP"}, "subject": {"reference": "Patient/p1"},
                                    "period": {"start": "2024-02-29T08:00:00+00:00"}}})
    return b


def test_bundle_ingest_is_idempotent_and_raises_alerts(client):
    b = _batch("general_low_cheungpasitporn")
    r = client.post("/fhir", json=b, headers=auth(WRITER))
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["added"]["events"] == 2 and first["added"]["subjects"] == 1
    assert first["new_alerts"] >= 1
    again = client.post("/fhir", json=b, headers=auth(WRITER)).json()
    assert again["added"]["events"] == 0 and again["new_alerts"] == 0
    alerts = client.get("/alerts", headers=auth(READER)).json()["alerts"]
    assert len(alerts) == first["new_alerts"]
    low = next(a for a in alerts if a["kind"] == "mg_out_of_range")
    assert low["subject_id"] == "p1" and low["value"] == 1.4
    mine = client.get("/patients/p1/alerts", headers=auth(READER)).json()
    assert mine["alerts"] == alerts
    assert client.get("/patients/nobody/alerts", headers=auth(READER)).json()["alerts"] == []
    assert client.get("/alerts?severity=critical", headers=auth(READER)).json()["alerts"] == \
        [a for a in alerts if a["severity"] == "critical"]
    with client.app.state.engine.connect() as con:
        rows = con.execute(sa.text("SELECT actor, action, endpoint, patient_id FROM audit ORDER BY id")).all()
    assert rows[0] == ("lab-feed", "write", "POST /fhir", "p1")
    assert ("nurse-station", "read", "GET /patients/{patient_id}/alerts", "p1") in rows
    assert ("nurse-station", "read", "GET /patients/{patient_id}/alerts", "nobody") in rows


def test_a_held_sample_reaches_the_alert_list_as_a_repeat_request(client):
    """A Mg of 0.9 mg/dL (grade 3) in a draw where creatinine fell with it (co-dilution: a diluted sample) is held:
    no critical mg_out_of_range, but the ward's alert list asks for the repeat (a suspect_specimen warning)."""
    from mgaki.synth.fhir import BundleBuilder, at

    b = (BundleBuilder(pid="pd", id_prefix="pd-").encounter(-2, icu=False, eid="pd-e1")
         .series("magnesium", "mg/dL", [(0, 2.2), (12, 0.9)]).series("creatinine", "mg/dL", [(0, 1.1), (12, 0.5)]))
    r = client.post("/fhir", json={**b.build(), "type": "batch"}, headers=auth(WRITER))
    assert r.status_code == 200, r.text
    alerts = client.get("/patients/pd/alerts", headers=auth(READER)).json()["alerts"]
    held = [a for a in alerts if a["kind"] == "suspect_specimen"]
    assert len(held) == 1 and held[0]["severity"] == "warning" and held[0]["value"] == 0.9, alerts
    assert held[0]["time"][:19] == at(12)[:19] and "repeat the sample" in held[0]["detail"]
    assert not [a for a in alerts if a["kind"] != "suspect_specimen" and a["value"] == 0.9], alerts
    assert not [a for a in alerts if a["severity"] == "critical"], alerts


def test_ndjson_ingest(client):
    res = [e["resource"] for e in bundle("crcl_lt30_halved")["entry"]]
    body = "".join(json.dumps(r) + "\n" for r in res)
    r = client.post("/fhir/$import-ndjson", content=body.encode(), headers=NDJSON)
    assert r.status_code == 200, r.text
    added = r.json()["added"]
    assert added["events"] + added["weights"] == sum(x["resourceType"] == "Observation" for x in res)
    again = client.post("/fhir/$import-ndjson", content=body.encode(), headers=NDJSON).json()
    assert sum(again["added"].values()) == 0


def test_malformed_ingest_is_400_operation_outcome(client):
    cases = [
        (b"{oops", "not JSON"),
        (json.dumps({"resourceType": "Patient", "id": "x"}).encode(), "expected a FHIR Bundle"),
        (json.dumps({"resourceType": "Bundle", "type": "searchset"}).encode(), "'searchset' not accepted"),
        (json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {}}]}).encode(),
         "entry[0]"),
    ]
    for body, msg in cases:
        r = client.post("/fhir", content=body, headers={**auth(WRITER), "content-type": "application/fhir+json"})
        assert r.status_code == 400, body
        out = r.json()
        assert out["resourceType"] == "OperationOutcome" and msg in out["issue"][0]["diagnostics"]
    r = client.post("/fhir/$import-ndjson", content=b'{"resourceType": "Patient"}\n[1]\n', headers=NDJSON)
    assert r.status_code == 400 and "line 2" in r.json()["issue"][0]["diagnostics"]
    r = client.post("/fhir/$import-ndjson", content=b"\xff\xfe", headers=NDJSON)
    assert r.status_code == 400
    assert client.get("/alerts?limit=0", headers=auth(READER)).status_code == 422


def test_quarantined_rows_are_counted_not_stored_as_events(client):
    b = _batch("general_low_cheungpasitporn")
    b["entry"][1]["resource"]["valueQuantity"].update({"unit": "furlongs", "code": "furlongs"})
    r = client.post("/fhir", json=b, headers=auth(WRITER)).json()
    assert r["quarantined"] == 1 and r["added"]["events"] == 1


def test_alerts_logged_before_a_crash_reach_the_database_on_the_next_run(client, monkeypatch):
    """Surveillance writes its alert log, then the process dies before the database insert: the next
    ingest copies every logged alert the database lacks (the log is the source of truth)."""
    import mgaki.service.ingest.ingestor as ingest_mod

    def crash(self, log):  # the insert never happens (the database went away mid-request)
        raise OSError("database connection lost")

    monkeypatch.setattr(ingest_mod.Ingestor, "sync_alerts", crash)
    failed = client.post("/fhir", json=_batch("general_low_cheungpasitporn"), headers=auth(WRITER))
    assert failed.status_code == 500 and "database connection lost" not in failed.text
    monkeypatch.undo()
    assert client.get("/alerts", headers=auth(READER)).json()["alerts"] == []
    res = [e["resource"] for e in bundle("crcl_lt30_halved")["entry"]]
    body = "".join(json.dumps(r) + "\n" for r in res)
    r = client.post("/fhir/$import-ndjson", content=body.encode(), headers=NDJSON)
    assert r.status_code == 200, r.text
    kinds = {(a["subject_id"], a["kind"]) for a in client.get("/alerts", headers=auth(READER)).json()["alerts"]}
    assert ("p1", "mg_out_of_range") in kinds
