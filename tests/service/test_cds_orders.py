"""order-select and order-sign: Mg-lowering drug cards, the cisplatin preload suggestion, selections."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

import mgaki
from conftest import bundle, hook_request, mgso4_order
from mgaki.knowledge import load
from mgaki.service.cds.models import CdsResponse

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def drug_order(oid: str, text: str, rxcui: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": text}
    if rxcui:
        concept["coding"] = [{"system": RXNORM, "code": rxcui, "display": text}]
    return {"resourceType": "MedicationRequest", "id": oid, "status": "draft", "intent": "order",
            "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": concept}


def call(client, vignette: str, draft: list[dict[str, Any]], hook: str = "order-sign",
         selections: list[str] | None = None, drop_mg: bool = False) -> CdsResponse:
    req = hook_request(vignette, hook, draft=draft)
    if selections is not None:
        req["context"]["selections"] = selections
    if drop_mg:
        obs = req["prefetch"]["observations"]
        obs["entry"] = [e for e in obs["entry"] if e["resource"]["code"]["coding"][0]["code"] != "19123-9"]
    r = client.post(f"/cds-services/mgaki-{hook}", json=req)
    assert r.status_code == 200, r.text
    return CdsResponse.model_validate(r.json())


@pytest.mark.parametrize("order, cls_id", [
    (drug_order("o1", "furosemide 40 mg IV", "4603"), "loop_diuretic"),
    (drug_order("o1", "Pantoprazole 40 mg PO"), "proton_pump_inhibitor"),
    (drug_order("o1", "ilaprazole 10 mg"), "proton_pump_inhibitor"),  # by the class's name pattern
    (drug_order("o1", "hydrochlorothiazide 25 mg", "5487"), "thiazide_diuretic"),
    (drug_order("o1", "bendroflumethiazide 2.5 mg"), "thiazide_diuretic"),
    (drug_order("o1", "gentamicin 5 mg/kg IV", "4413"), "aminoglycoside"),
    (drug_order("o1", "tacrolimus 1 mg"), "calcineurin_inhibitor"),
])
def test_mg_lowering_drug_in_low_mg_warns_with_reason_and_source(client, order, cls_id):
    cls = next(c for c in load().drugs.classes if c.id == cls_id)
    expected = mgaki.assess(bundle("general_low_cheungpasitporn"))
    cards = call(client, "general_low_cheungpasitporn", [order]).cards
    assert len(cards) == 1
    card = cards[0]
    assert card.indicator == "warning"
    assert f"low serum Mg {expected.magnesium.value_mg_dl:.2f} mg/dL" in card.summary
    assert cls.label in card.summary
    assert card.detail.startswith(cls.reason)
    assert card.source.url == f"https://doi.org/{cls.source.doi}"
    assert card.source.url in {lk.url for lk in card.links}


@pytest.mark.parametrize("vignette", ["general_normal_no_action", "hypermg_mild_hold"])
def test_no_card_when_mg_is_not_low(client, vignette):
    draft = [drug_order("o1", "furosemide 40 mg", "4603"), drug_order("o2", "omeprazole 20 mg", "7646")]
    assert call(client, vignette, draft).cards == []


def test_unrelated_and_lookalike_orders_draw_no_card(client):
    draft = [drug_order("o1", "aripiprazole 10 mg"), drug_order("o2", "acetaminophen 500 mg")]
    assert call(client, "general_low_cheungpasitporn", draft).cards == []


def test_unknown_mg_gives_one_info_card_suggesting_a_level(client):
    draft = [drug_order("o1", "furosemide 40 mg", "4603"), drug_order("o2", "pantoprazole 40 mg")]
    cards = call(client, "general_low_cheungpasitporn", draft, drop_mg=True).cards
    assert len(cards) == 1
    card = cards[0]
    assert card.indicator == "info" and card.summary.startswith("No serum Mg on record")
    assert "furosemide" in card.summary and "pantoprazole" in card.summary
    action = card.suggestions[0].actions[0]
    assert action.type == "create"
    sr = ServiceRequest.model_validate(action.resource)  # a valid FHIR R4(B) ServiceRequest
    code = load().codes.orderables[0]
    assert (sr.code.coding[0].system, sr.code.coding[0].code) == (code.system, code.code) == \
        ("http://loinc.org", "19123-9")
    assert sr.subject.reference == "Patient/p1"


def test_cisplatin_with_normal_mg_suggests_the_preload_order(client):
    regimen = load().regimen("cisplatin-pragmatic-2022")
    step = regimen.steps[0]
    cards = call(client, "cisplatin_preload_normal_mg", [drug_order("c1", "cisplatin 40 mg/m2", "2555")]).cards
    assert len(cards) == 1
    card = cards[0]
    assert card.indicator == "info" and card.summary.startswith("Mg preload before cisplatin")
    assert card.source.url == f"https://doi.org/{regimen.source.doi}" == "https://doi.org/10.1016/j.esmoop.2021.100351"
    assert card.selectionBehavior == "at-most-one"
    action = card.suggestions[0].actions[0]
    assert action.type == "create"
    mr = MedicationRequest.model_validate(action.resource)  # a valid FHIR R4(B) MedicationRequest
    assert mr.medicationCodeableConcept.coding[0].code == load().drug("magnesium sulfate").rxcui
    dose = mr.dosageInstruction[0].doseAndRate[0].doseQuantity
    assert (float(dose.value), dose.code) == (step.amount, step.amount_unit) == (16.0, "meq")
    assert float(mr.dosageInstruction[0].timing.repeat.duration) == step.duration_h
    assert mr.subject.reference == "Patient/p1" and mr.status == "draft"
    # the created order is itself a MgSO4 order the hooks understand: drafted with cisplatin, no second card
    again = call(client, "cisplatin_preload_normal_mg",
                 [drug_order("c1", "cisplatin 40 mg/m2", "2555"), {**action.resource, "id": "mg1"}]).cards
    assert again == []


def test_cisplatin_preload_follows_the_engines_renal_adjustment(client):
    req = hook_request("crcl_lt30_halved", "order-sign", draft=[drug_order("c1", "cisplatin", "2555")])
    for e in req["prefetch"]["observations"]["entry"]:
        if e["resource"]["code"]["coding"][0]["code"] == "19123-9":
            e["resource"]["valueQuantity"]["value"] = 2.0  # normal Mg, CrCl < 30
    b = {"resourceType": "Bundle", "type": "collection",
         "entry": [{"resource": r} for k in ("observations", "medicationRequests") for r in
                   [x["resource"] for x in req["prefetch"][k]["entry"]]] + [{"resource": req["prefetch"]["patient"]}]}
    planned = mgaki.assess(b, ["cisplatin"]).plan
    assert planned.adjustments  # the engine halves the preload for CrCl < 30
    card = CdsResponse.model_validate(client.post("/cds-services/mgaki-order-sign", json=req).json()).cards[0]
    dose = card.suggestions[0].actions[0].resource["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
    assert dose["value"] == planned.doses[0].meq == load().regimen("cisplatin-pragmatic-2022").steps[0].amount / 2
    assert "Adjusted: " + planned.adjustments[0] in card.detail


def test_cisplatin_with_low_mg_warns_and_does_not_preload(client):
    cards = call(client, "general_low_cheungpasitporn", [drug_order("c1", "cisplatin 70 mg/m2", "2555")]).cards
    assert [c.summary.split(" (")[0] for c in cards] == ["cisplatin"]
    assert "platinum chemotherapy" in cards[0].summary and cards[0].indicator == "warning"
    assert "mgaki plan" in cards[0].detail  # the repletion plan is said on the card


def test_cisplatin_with_high_mg_says_why_no_preload(client):
    cards = call(client, "hypermg_mild_hold", [drug_order("c1", "cisplatin", "2555")]).cards
    assert len(cards) == 1
    assert cards[0].summary == "No Mg preload before cisplatin: hold magnesium" and not cards[0].suggestions


def test_order_select_checks_only_the_selected_orders(client):
    draft = [drug_order("o1", "furosemide 40 mg", "4603"), drug_order("o2", "pantoprazole 40 mg")]
    cards = call(client, "general_low_cheungpasitporn", draft, "order-select",
                 selections=["MedicationRequest/o2"]).cards
    assert len(cards) == 1 and cards[0].summary.startswith("pantoprazole")
    both = call(client, "general_low_cheungpasitporn", draft, "order-select",
                selections=["MedicationRequest/o1", "MedicationRequest/o2"]).cards
    assert sorted(c.summary.split(" ")[0] for c in both) == ["furosemide", "pantoprazole"]
    # the same MgSO4 hold check as order-sign
    hold = call(client, "hypermg_mild_hold", [mgso4_order(2.0)], "order-select",
                selections=["MedicationRequest/draft-mg"]).cards
    assert hold[0].suggestions[0].actions[0].type == "delete"


def test_order_select_needs_selections(client):
    req = hook_request("general_low_cheungpasitporn", "order-select", draft=[drug_order("o1", "furosemide")])
    r = client.post("/cds-services/mgaki-order-select", json=req)
    assert r.status_code == 400 and "context.selections" in r.json()["error"]
    r = client.post("/cds-services/mgaki-order-select", json={**req, "hook": "order-sign"})
    assert r.status_code == 400 and "answers the 'order-select' hook" in r.json()["error"]


def test_discovery_lists_order_select_with_prefetch(client):
    services = {s["id"]: s for s in client.get("/cds-services").json()["services"]}
    assert services["mgaki-order-select"]["hook"] == "order-select"
    assert services["mgaki-order-select"]["prefetch"] == services["mgaki-order-sign"]["prefetch"]
    assert services["mgaki-order-select"]["prefetch"]["patient"] == "Patient/{{context.patientId}}"


def _by_reference(order: dict[str, Any], contained: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The same order naming its drug through a Medication: contained ('#id') or a resource of the bundle."""
    med = {"resourceType": "Medication", "id": f"med-{order['id']}", "code": order.pop("medicationCodeableConcept")}
    if contained:
        order.update(contained=[med], medicationReference={"reference": f"#{med['id']}"})
        return order, None
    order["medicationReference"] = {"reference": f"Medication/{med['id']}"}
    return order, med


@pytest.mark.parametrize("contained", [True, False])
def test_orders_naming_their_drug_by_medication_reference_are_checked(client, contained):
    """EHRs often send the drug as a (contained) Medication: the same cards as with a medicationCodeableConcept."""
    order, med = _by_reference(drug_order("o1", "furosemide 40 mg IV", "4603"), contained)
    cards = call(client, "general_low_cheungpasitporn", [order, *([med] if med else [])]).cards
    assert len(cards) == 1 and cards[0].indicator == "warning" and "loop diuretic" in cards[0].summary.lower()
    cis, cis_med = _by_reference(drug_order("c1", "cisplatin 40 mg/m2", "2555"), contained)
    cards = call(client, "cisplatin_preload_normal_mg", [cis, *([cis_med] if cis_med else [])]).cards
    assert [c.summary.startswith("Mg preload before cisplatin") for c in cards] == [True]
    # a reference to a Medication the request does not carry names no drug: no card, no error
    lost, _ = _by_reference(drug_order("o2", "furosemide 40 mg IV", "4603"), contained=False)
    assert call(client, "general_low_cheungpasitporn", [lost]).cards == []
