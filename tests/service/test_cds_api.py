"""CDS Hooks endpoints end to end through the app (SQLite), cards checked against the model and the engine."""

from __future__ import annotations

import copy
import json

import sqlalchemy as sa

import mgaki
from conftest import bundle, hook_request, mgso4_order
from mgaki.service.cds.models import CdsResponse


def test_discovery_lists_services_with_prefetch(client):
    r = client.get("/cds-services")
    assert r.status_code == 200
    services = {s["id"]: s for s in r.json()["services"]}
    assert set(services) == {"mgaki-patient-view", "mgaki-order-select", "mgaki-order-sign"}
    assert services["mgaki-order-sign"]["hook"] == "order-sign"
    pf = services["mgaki-patient-view"]["prefetch"]
    assert pf["patient"] == "Patient/{{context.patientId}}"
    assert "http://loinc.org|19123-9" in pf["observations"]  # serum Mg (mass) from codes.yaml
    assert "http://loinc.org|2160-0" in pf["observations"]  # creatinine
    assert pf["medicationRequests"].startswith("MedicationRequest?subject={{context.patientId}}")


def test_patient_view_cards(client):
    r = client.post("/cds-services/mgaki-patient-view", json=hook_request("general_low_cheungpasitporn"))
    assert r.status_code == 200, r.text
    resp = CdsResponse.model_validate(r.json())
    expected = mgaki.assess(bundle("general_low_cheungpasitporn"))
    summary = resp.cards[0]
    assert summary.summary.startswith(f"Mg {expected.magnesium.value_mg_dl:.2f} mg/dL")
    assert summary.indicator == "warning"
    # one card per warning/critical finding, each with its source and a DOI link
    warn = [f for f in expected.findings if f.severity != "info"]
    assert [c.indicator for c in resp.cards[1:]] == [f.severity for f in warn]
    hypo = next(c for c in resp.cards[1:] if c.summary == expected.findings[0].message[:138] or
                c.detail.startswith(next(f.message for f in warn if f.code == "mg_aki_risk")))
    assert hypo.source.url is not None and hypo.source.url.startswith("https://doi.org/10.")
    assert all(lk.type == "absolute" for c in resp.cards for lk in c.links or [])


def test_order_sign_hold_suggests_removing_the_draft(client):
    req = hook_request("hypermg_mild_hold", "order-sign", draft=[mgso4_order(2.0)])
    r = client.post("/cds-services/mgaki-order-sign", json=req)
    assert r.status_code == 200, r.text
    cards = CdsResponse.model_validate(r.json()).cards
    assert len(cards) == 1
    card = cards[0]
    # mild (CTCAE grade 1) hypermagnesaemia: hold and recheck, not an emergency (issue 13 point 9)
    assert card.indicator == "warning" and card.summary.startswith("Hold magnesium sulfate")
    assert "dialysis" not in (card.detail or "") and "calcium" not in (card.detail or "")
    action = card.suggestions[0].actions[0]
    assert (action.type, action.resourceId) == ("delete", "MedicationRequest/draft-mg")


def test_order_sign_renal_adjustment_edits_the_dose(client):
    planned = mgaki.assess(bundle("crcl_lt30_halved")).plan.doses[0].g_mgso4
    req = hook_request("crcl_lt30_halved", "order-sign", draft=[mgso4_order(4.0)])
    r = client.post("/cds-services/mgaki-order-sign", json=req)
    cards = CdsResponse.model_validate(r.json()).cards
    assert len(cards) == 1
    action = cards[0].suggestions[0].actions[0]
    assert action.type == "update"
    dose = action.resource["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
    assert dose["value"] == planned == 2.0
    assert action.resource["id"] == "draft-mg"
    # an order already within the adjusted dose draws no card; nor does a non-Mg order
    ok = hook_request("crcl_lt30_halved", "order-sign", draft=[mgso4_order(2.0)])
    assert client.post("/cds-services/mgaki-order-sign", json=ok).json()["cards"] == []
    other = mgso4_order(4.0)
    other["medicationCodeableConcept"] = {"text": "acetaminophen 500 mg"}
    none = hook_request("crcl_lt30_halved", "order-sign", draft=[other])
    assert client.post("/cds-services/mgaki-order-sign", json=none).json()["cards"] == []


def test_feedback_is_stored(client):
    fb = {"feedback": [{"card": "c1", "outcome": "accepted", "acceptedSuggestions": [{"id": "s1"}],
                        "outcomeTimestamp": "2021-12-11T10:05:31Z"}]}
    r = client.post("/cds-services/mgaki-order-sign/feedback", json=fb)
    assert r.status_code == 200 and r.json() == {"stored": 1}
    with client.app.state.engine.connect() as con:
        rows = con.execute(sa.text("SELECT service, card, outcome, accepted FROM cds_feedback")).all()
    assert rows == [("mgaki-order-sign", "c1", "accepted", '["s1"]')]


def test_malformed_cds_input_is_4xx_with_a_message(client):
    url = "/cds-services/mgaki-patient-view"
    r = client.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "json" in r.text.lower()
    req = hook_request("general_low_cheungpasitporn")
    del req["prefetch"]["patient"]
    r = client.post(url, json=req)
    assert r.status_code == 412 and "prefetch 'patient' missing" in r.json()["error"]  # no fhirServer to ask
    req = hook_request("general_low_cheungpasitporn")
    req["prefetch"]["observations"]["entry"][0]["resource"]["valueQuantity"]["unit"] = "furlongs"
    req["prefetch"]["observations"]["entry"][0]["resource"]["valueQuantity"]["code"] = "furlongs"
    r = client.post(url, json=req)
    assert r.status_code == 400 and "not usable" in r.json()["error"]
    r = client.post(url, json={**hook_request("general_low_cheungpasitporn"), "hook": "order-sign"})
    assert r.status_code == 400 and "answers the 'patient-view' hook" in r.json()["error"]
    assert client.post("/cds-services/nope", json=hook_request("general_low_cheungpasitporn")).status_code == 400
    r = client.post("/cds-services/mgaki-order-sign", json=hook_request("general_low_cheungpasitporn", "order-sign"))
    assert r.status_code == 400 and "draftOrders" in r.json()["error"]
    bad_fb = {"feedback": [{"card": "c1", "outcome": "accepted", "outcomeTimestamp": "x"}]}
    assert client.post("/cds-services/mgaki-order-sign/feedback", json=bad_fb).status_code == 422


def test_cds_calls_are_audited(client):
    client.post("/cds-services/mgaki-patient-view", json=hook_request("general_low_cheungpasitporn"))
    with client.app.state.engine.connect() as con:
        rows = con.execute(sa.text("SELECT actor, action, endpoint, patient_id FROM audit")).all()
    assert rows == [("unauthenticated-cds-client Practitioner/u1", "read", "cds:mgaki-patient-view", "p1")]


def test_openapi_documents_the_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/cds-services", "/cds-services/{service_id}", "/fhir", "/fhir/$import-ndjson", "/alerts",
            "/patients/{patient_id}/alerts"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_patient_view_reads_medications_named_by_included_medication_resources(client) -> None:  # type: ignore[no-untyped-def]
    """Prefetch asks `_include=...:medication`: drugs named by reference read like concepts (same cards)."""
    plain = hook_request("renal_wasting_24h_diuretics")
    by_ref = copy.deepcopy(plain)
    for key in ("medicationRequests", "medicationAdministrations"):
        entries = by_ref["prefetch"][key]["entry"]
        for i, e in enumerate(list(entries)):
            res = e["resource"]
            med = {"resourceType": "Medication", "id": f"{key}-{i}", "code": res.pop("medicationCodeableConcept")}
            res["medicationReference"] = {"reference": f"Medication/{med['id']}"}
            entries.append({"resource": med, "search": {"mode": "include"}})
    assert any(e["resource"]["resourceType"] == "Medication" for e in by_ref["prefetch"]["medicationRequests"]["entry"])
    cards = [client.post("/cds-services/mgaki-patient-view", json=r).json()["cards"] for r in (plain, by_ref)]
    strip = [[{k: v for k, v in c.items() if k != "uuid"} for c in cs] for cs in cards]
    assert strip[0] == strip[1] and "diuretic" in json.dumps(strip[0]).lower()
