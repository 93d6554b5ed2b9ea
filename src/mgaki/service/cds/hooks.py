"""CDS Hooks services: discovery, patient-view, order-select and order-sign, built on ``mgaki.assess``.

The cards carry what the engine found, each with its sources (citation and DOI),
so the EHR shows why, not only what. The order hooks share one check of the draft
MedicationRequests: a MgSO4 order against the engine's hold and renal-adjustment rules
(suggestions editing that order); an order of a Mg-lowering class (drugs.yaml ``classes``)
against the serum Mg; a drug that opens a regimen context (cisplatin) against its
preload regimen (a suggestion creating the MgSO4 order). Missing prefetch is fetched
from the client's ``fhirServer`` (``fhir_fetch``).
"""

from __future__ import annotations

import copy
import re
import uuid
from functools import cache
from typing import Any

import mgaki
from mgaki.adapters.fhir import medication_concept, medication_index
from mgaki.errors import InputError, MgakiError, UnitError
from mgaki.events.normalize import drug_regex
from mgaki.knowledge import KnowledgeBase, load
from mgaki.knowledge.schema import Drug, DrugClass
from mgaki.result import Assessment, Dose, Evidence, Finding
from mgaki.service.cds.fhir_fetch import FetchSettings, FhirFetchError, fetch_prefetch, render
from mgaki.service.cds.models import (
    SUMMARY_MAX,
    Action,
    Card,
    CdsRequest,
    CdsResponse,
    Coding,
    Link,
    ServiceDefinition,
    Source,
    Suggestion,
)
from mgaki.service.config import ServiceConfig
from mgaki.units import display, dose_in_unit, dose_unit, rate_unit, salt_amounts, unit_kind

__all__ = [
    "MGSO4",
    "ORDER_SELECT",
    "ORDER_SIGN",
    "PATIENT_VIEW",
    "RXNORM",
    "SERVICES",
    "CdsInputError",
    "bundle_from_prefetch",
    "call_service",
    "discovery",
    "order_hook",
    "override_reasons",
    "patient_view",
    "resolve_prefetch",
]

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
MGSO4 = "magnesium sulfate"  # drugs.yaml ingredient whose orders order-sign checks
PATIENT_VIEW = "mgaki-patient-view"
ORDER_SIGN = "mgaki-order-sign"
ORDER_SELECT = "mgaki-order-select"
SOURCE_LABEL = "mgaki"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


class CdsInputError(Exception):
    """A hook request the service cannot use: answered ``status`` (400; 412 data unavailable; 502 bad FHIR server)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@cache
def _observation_query() -> str:
    kb = load()
    codes = sorted({f"{LOINC}|{c.code}" for c in kb.codes.observations if c.system == LOINC})
    return "Observation?subject={{context.patientId}}&code=" + ",".join(codes) + "&_count=1000"


def _prefetch() -> dict[str, str]:
    return {
        "patient": "Patient/{{context.patientId}}",
        "observations": _observation_query(),
        # _include: the Medication resources the orders may name their drug by (medicationReference)
        "medicationRequests": "MedicationRequest?subject={{context.patientId}}&_include=MedicationRequest:medication",
        "medicationAdministrations": "MedicationAdministration?subject={{context.patientId}}"
                                     "&_include=MedicationAdministration:medication",
    }


_ORDER_CHECKS = ("a draft IV magnesium sulfate order against the serum Mg level and kidney function (hold or "
                 "dose-adjustment suggestions); Mg-lowering drugs (PPI, diuretics, aminoglycosides, platinum and "
                 "others) against a low or unknown serum Mg; cisplatin against the Mg preload regimen")


def discovery() -> list[ServiceDefinition]:
    pf = _prefetch()
    return [
        ServiceDefinition(hook="patient-view", id=PATIENT_VIEW, title="mgaki magnesium and kidney summary",
                          description="Magnesium status, KDIGO AKI stage, causes and repletion plan, with sources.",
                          prefetch=pf),
        ServiceDefinition(hook="order-select", id=ORDER_SELECT, title="mgaki magnesium order check (selection)",
                          description=f"Checks the selected draft orders: {_ORDER_CHECKS}.", prefetch=pf),
        ServiceDefinition(hook="order-sign", id=ORDER_SIGN, title="mgaki magnesium order check (signing)",
                          description=f"Checks every draft order: {_ORDER_CHECKS}.", prefetch=pf),
    ]


SERVICES = {PATIENT_VIEW: "patient-view", ORDER_SELECT: "order-select", ORDER_SIGN: "order-sign"}


def _resources(value: Any, key: str) -> list[dict[str, Any]]:
    """A prefetch value: one resource, or a searchset Bundle of them."""
    if value is None:
        return []
    if not isinstance(value, dict) or "resourceType" not in value:
        raise CdsInputError(f"prefetch {key!r} is not a FHIR resource or Bundle")
    if value["resourceType"] != "Bundle":
        return [value]
    entries = value.get("entry") or []
    if not isinstance(entries, list):
        raise CdsInputError(f"prefetch {key!r}: Bundle.entry is not a list")
    out = []
    for i, e in enumerate(entries):
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(res, dict):
            raise CdsInputError(f"prefetch {key!r}: entry[{i}] has no resource")
        if res.get("resourceType") != "OperationOutcome":
            out.append(res)
    return out


def resolve_prefetch(req: CdsRequest, cfg: ServiceConfig | None = None) -> dict[str, Any]:
    """The advertised prefetch: what the client sent, the missing (absent or null) keys fetched from fhirServer."""
    templates = _prefetch()
    pf = {k: v for k, v in (req.prefetch or {}).items() if v is not None}
    missing = sorted(k for k in templates if k not in pf)
    if not missing:
        return pf
    if not req.fhirServer:
        raise CdsInputError(f"prefetch {', '.join(repr(k) for k in missing)} missing and the request has no "
                            "fhirServer to fetch it from", 412)
    if req.fhirAuthorization is not None and req.fhirAuthorization.token_type.lower() != "bearer":
        raise CdsInputError(f"fhirAuthorization.token_type {req.fhirAuthorization.token_type!r} is not Bearer")
    cfg = cfg or ServiceConfig()
    settings = FetchSettings(tuple(cfg.fhir_servers), cfg.fhir_timeout_s, cfg.fhir_max_pages)
    token = req.fhirAuthorization.access_token if req.fhirAuthorization else None
    try:
        queries = {k: render(templates[k], req.context) for k in missing}
        pf.update(fetch_prefetch(req.fhirServer, token, queries, settings))
    except FhirFetchError as exc:
        raise CdsInputError(exc.message, exc.status) from exc
    return pf


def bundle_from_prefetch(req: CdsRequest, cfg: ServiceConfig | None = None) -> dict[str, Any]:
    """One collection Bundle from the prefetched (or fetched) patient, observations and medications."""
    pid = req.context.get("patientId")
    if not isinstance(pid, str) or not pid:
        raise CdsInputError("context.patientId is required")
    pf = resolve_prefetch(req, cfg)
    patient = pf.get("patient")
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise CdsInputError("prefetch 'patient' is not a Patient resource")
    if patient.get("id") != pid:
        raise CdsInputError("prefetch 'patient' id does not match context.patientId")
    entries = [{"resource": patient}]
    for key in ("observations", "medicationRequests", "medicationAdministrations"):
        entries += [{"resource": r} for r in _resources(pf.get(key), key)]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _assess(req: CdsRequest, cfg: ServiceConfig | None, contexts: frozenset[str] = frozenset()) -> Assessment:
    bundle = bundle_from_prefetch(req, cfg)
    try:
        return mgaki.assess(bundle, contexts)
    except InputError as exc:
        raise CdsInputError(f"prefetch data not usable: {exc}") from exc
    except MgakiError as exc:
        raise CdsInputError(f"assessment failed on the prefetch data: {exc}") from exc


def _url(ev: Evidence) -> str | None:
    if ev.doi:
        return f"https://doi.org/{ev.doi}"
    if ev.document and ev.document.startswith(("http://", "https://")):
        return ev.document
    return None


def _short(text: str, limit: int = SUMMARY_MAX - 1) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _links(evidence: list[Evidence]) -> list[Link]:
    seen: dict[str, Link] = {}
    for ev in evidence:
        u = _url(ev)
        if u and u not in seen:
            seen[u] = Link(label=_short(ev.source, 100), url=u, type="absolute")
    return list(seen.values())


def _source(evidence: list[Evidence]) -> Source:
    for ev in evidence:
        u = _url(ev)
        if u:
            return Source(label=_short(ev.source, 100), url=u)
    if evidence:
        return Source(label=_short(evidence[0].source, 100))
    return Source(label=SOURCE_LABEL)


def _detail(f: Finding, disclaimer: str) -> str:
    refs = "\n".join(f"- {ev.source}" + (f" (doi:{ev.doi})" if ev.doi else "") for ev in f.evidence)
    return f"{f.message}\n\n**Sources**\n{refs}\n\n_{disclaimer}_" if refs else f"{f.message}\n\n_{disclaimer}_"


def _finding_card(f: Finding, a: Assessment) -> Card:
    return Card(uuid=str(uuid.uuid4()), summary=_short(f.message), detail=_detail(f, a.disclaimer),
                indicator=f.severity, source=_source(f.evidence), links=_links(f.evidence) or None)


_RANK = {"info": 0, "warning": 1, "critical": 2}


def _summary_card(a: Assessment) -> Card:
    parts = []
    if a.magnesium is not None:
        m = a.magnesium
        parts.append(f"Mg {m.value_mg_dl:.2f} mg/dL ({m.value_mmol_l:.2f} mmol/L) {m.status}"
                     + (f", grade {m.grade}" if m.grade else ""))
    else:
        parts.append("No serum Mg")
    k = a.kidney
    parts.append(f"KDIGO AKI stage {k.aki_stage}" if k.aki_stage else "no KDIGO AKI")
    if k.egfr is not None:
        parts.append(f"eGFR {k.egfr:.0f}")
    worst = max((f.severity for f in a.findings), key=_RANK.__getitem__, default="info")
    plan = a.plan
    lines = [f"- **{f.code}** ({f.severity}): {f.message}" for f in a.findings]
    if plan.regimen:
        lines.append(f"\n**Plan**: {plan.regimen}" + (f"; recheck: {plan.recheck}" if plan.recheck else ""))
    evidence = [ev for f in a.findings for ev in f.evidence] + list(plan.evidence)
    return Card(uuid=str(uuid.uuid4()), summary=_short("; ".join(parts)),
                detail="\n".join([*lines, f"\n_{a.disclaimer}_"]), indicator=worst,
                source=Source(label=f"mgaki {mgaki.__version__} (knowledge {a.knowledge_version})"),
                links=_links(evidence) or None)


def patient_view(req: CdsRequest, cfg: ServiceConfig | None = None) -> CdsResponse:
    """A summary card plus one card per warning or critical finding."""
    a = _assess(req, cfg)
    cards = [_summary_card(a)] + [_finding_card(f, a) for f in a.findings if f.severity != "info"]
    return CdsResponse(cards=cards)


# --- order-select / order-sign ------------------------------------------------------------------


@cache
def _drug_re(kb: KnowledgeBase) -> re.Pattern[str]:
    return re.compile(drug_regex(kb))


@cache
def _class_patterns(kb: KnowledgeBase) -> tuple[tuple[re.Pattern[str], DrugClass], ...]:
    return tuple((re.compile(f"(?:^|[^a-z])(?:{c.name_pattern})(?:[^a-z]|$)"), c)
                 for c in kb.drugs.classes if c.name_pattern)


def _order_texts(res: dict[str, Any], medications: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(RxNorm codes, lower-case names) of a MedicationRequest's drug (concept, or its referenced Medication)."""
    concept = medication_concept(res, medications)
    if concept is None:
        return [], []
    codes, texts = [], [str(concept.get("text") or "")]
    codings = concept.get("coding")
    for c in codings if isinstance(codings, list) else []:
        if not isinstance(c, dict):
            continue
        if c.get("system") == RXNORM and c.get("code"):
            codes.append(str(c["code"]))
        texts.append(str(c.get("display") or ""))
    return codes, [t.lower() for t in texts if t]


def _order_drug(kb: KnowledgeBase, res: dict[str, Any], medications: dict[str, dict[str, Any]],
                ) -> tuple[Drug | None, DrugClass | None, str]:
    """The knowledge-base drug an order names (RxCUI first, then name), its order-check class, and a label."""
    codes, texts = _order_texts(res, medications)
    drug = next((d for d in (kb.drug(f"rxcui:{c}") for c in codes) if d is not None), None)
    if drug is None:
        for t in texts:
            m = _drug_re(kb).search(t)
            if m:
                drug = kb.drug(m.group(1))
                break
    if drug is not None:
        return drug, kb.drug_class(drug.drug_class), drug.ingredient
    for pattern, cls in _class_patterns(kb):
        for t in texts:
            m = pattern.search(t)
            if m:
                return None, cls, m.group(0).strip(" -/,.;()")
    return None, None, texts[0] if texts else "order"


def _draft_orders(req: CdsRequest, hook: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The MedicationRequests to check: all drafts (order-sign) or the selected ones (order-select);
    and the Medication resources the draft bundle carries, by id (orders may name their drug by reference)."""
    draft = req.context.get("draftOrders")
    if not isinstance(draft, dict) or draft.get("resourceType") != "Bundle":
        raise CdsInputError("context.draftOrders must be a FHIR Bundle")
    resources = _resources(draft, "draftOrders")
    medications = medication_index(resources)
    meds = [r for r in resources if r.get("resourceType") == "MedicationRequest"]
    if hook == "order-select":
        sel = req.context.get("selections")
        if not isinstance(sel, list) or not all(isinstance(x, str) for x in sel):
            raise CdsInputError("context.selections must be a list of 'ResourceType/id' strings (order-select)")
        meds = [r for r in meds if f"MedicationRequest/{r.get('id')}" in set(sel)]
    return meds, medications


def _dose_quantity(res: dict[str, Any]) -> dict[str, Any] | None:
    try:
        q = res["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
    except (KeyError, IndexError, TypeError):
        return None
    return q if isinstance(q, dict) else None


def _draft_dose_g(res: dict[str, Any], where: str) -> float | None:
    q = _dose_quantity(res)
    if q is None or q.get("value") is None:
        return None
    unit = q.get("code") if q.get("code") and q.get("system") in (None, UCUM) else q.get("unit")
    try:
        amount = float(q["value"])
    except (TypeError, ValueError) as exc:
        raise CdsInputError(f"{where}: dose value is not a number") from exc
    try:
        return salt_amounts(amount, str(unit or ""), where=where)["g_mgso4"]
    except UnitError as exc:
        raise CdsInputError(str(exc)) from None


def _with_dose(res: dict[str, Any], g: float) -> dict[str, Any]:
    """A copy of the draft order with its first dose set to ``g`` grams of MgSO4 heptahydrate."""
    out = copy.deepcopy(res)
    di = out.get("dosageInstruction")
    if not isinstance(di, list) or not di or not isinstance(di[0], dict):
        di = out["dosageInstruction"] = [{}]
    dr = di[0].get("doseAndRate")
    if not isinstance(dr, list) or not dr or not isinstance(dr[0], dict):
        dr = di[0]["doseAndRate"] = [{}]
    dr[0]["doseQuantity"] = {"value": round(g, 2), "unit": "g", "system": UCUM, "code": "g"}
    return out


def _mgso4_cards(a: Assessment, orders: list[dict[str, Any]]) -> list[Card]:
    """Hold (suggest deleting the draft) or renal dose reduction (suggest updating it)."""
    by_code = {f.code: f for f in a.findings}
    hold, adj = by_code.get("hold_magnesium"), by_code.get("renal_dose_adjustment")
    cards: list[Card] = []
    for res in orders:
        rid = f"MedicationRequest/{res.get('id', '')}"
        if not res.get("id"):
            raise CdsInputError("draft MedicationRequest without id: cannot suggest an edit to it")
        if hold is not None:
            sug = Suggestion(label="Remove the draft magnesium sulfate order", uuid=str(uuid.uuid4()),
                             isRecommended=True,
                             actions=[Action(type="delete", description=f"Remove {rid} (hold magnesium)",
                                             resourceId=rid)])
            cards.append(Card(uuid=str(uuid.uuid4()), summary=_short(f"Hold magnesium sulfate: {hold.message}"),
                              detail=_detail(hold, a.disclaimer), indicator=hold.severity,
                              source=_source(hold.evidence), suggestions=[sug], selectionBehavior="at-most-one",
                              links=_links(hold.evidence) or None))
            continue
        if adj is None:
            continue
        planned = next((d for d in a.plan.doses if d.g_mgso4 is not None and not d.per_hour), None)
        ordered = _draft_dose_g(res, rid)
        cap = planned.g_mgso4 if planned is not None else None
        if cap is None or (ordered is not None and ordered <= cap + 1e-9):
            continue
        was = f"{ordered:.2f} g" if ordered is not None else "unspecified dose"
        sug = Suggestion(label=f"Change dose to {cap:g} g MgSO4", uuid=str(uuid.uuid4()), isRecommended=True,
                         actions=[Action(type="update", description=f"Set {rid} dose to {cap:g} g (was {was})",
                                         resource=_with_dose(res, cap))])
        cards.append(Card(uuid=str(uuid.uuid4()),
                          summary=_short(f"Reduce magnesium sulfate to {cap:g} g for kidney function"),
                          detail=_detail(adj, a.disclaimer), indicator=adj.severity, source=_source(adj.evidence),
                          suggestions=[sug], selectionBehavior="at-most-one", links=_links(adj.evidence) or None))
    return cards


def _refs(evidence: list[Evidence]) -> str:
    return "\n".join(f"- {ev.source}" + (f" (doi:{ev.doi})" if ev.doi else "") for ev in evidence)


def _plan_line(a: Assessment) -> str:
    if not a.plan.regimen:
        return ""
    return f"\n\n**mgaki plan**: {a.plan.regimen}" + (f"; recheck: {a.plan.recheck}" if a.plan.recheck else "")


def _patient_refs(req: CdsRequest) -> dict[str, Any]:
    pid = req.context.get("patientId")
    out: dict[str, Any] = {"subject": {"reference": f"Patient/{pid}"}}
    enc = req.context.get("encounterId")
    if isinstance(enc, str) and enc:
        out["encounter"] = {"reference": f"Encounter/{enc}"}
    return out


def _low_mg_card(a: Assessment, drug: Drug | None, cls: DrugClass, label: str) -> Card:
    m = a.magnesium
    assert m is not None
    hypo = next((f for f in a.findings if f.code == "hypomagnesemia"), None)
    evidence = list(dict.fromkeys([Evidence.of(cls.source)] + ([Evidence.of(drug.source)] if drug else [])
                                  + (list(hypo.evidence) if hypo else [])))
    what = f"**{label}** ({drug.drug_class}): {drug.mechanism}" if drug else f"**{label}** ({cls.label})"
    detail = (f"{cls.reason}\n\n{what}\n\nSerum Mg {m.reported} ({m.value_mg_dl:.2f} mg/dL, {m.value_mmol_l:.2f} "
              f"mmol/L) at {m.time}: low" + (f", CTCAE grade {m.grade}" if m.grade else "")
              + _plan_line(a) + f"\n\n**Sources**\n{_refs(evidence)}\n\n_{a.disclaimer}_")
    return Card(uuid=str(uuid.uuid4()),
                summary=_short(f"{label} ({cls.label}) ordered with low serum Mg {m.value_mg_dl:.2f} mg/dL"),
                detail=detail, indicator=hypo.severity if hypo else "warning", source=_source(evidence),
                links=_links(evidence) or None)


def _no_mg_card(kb: KnowledgeBase, a: Assessment, req: CdsRequest, hits: list[tuple[DrugClass, str]]) -> Card:
    """One info card for all Mg-lowering orders in a patient with no serum Mg: suggests ordering one."""
    names = ", ".join(dict.fromkeys(label for _, label in hits))
    evidence = list(dict.fromkeys(Evidence.of(c.source) for c, _ in hits))
    detail = (f"No serum magnesium in the record, and {names} can lower it "
              f"({', '.join(dict.fromkeys(c.label for c, _ in hits))}). Measure Mg before or soon after starting."
              f"\n\n**Sources**\n{_refs(evidence)}\n\n_{a.disclaimer}_")
    suggestions = []
    for code in kb.codes.orderables[:1]:
        sr = {"resourceType": "ServiceRequest", "id": str(uuid.uuid4()), "status": "draft", "intent": "order",
              "code": {"coding": [{"system": code.system, "code": code.code, "display": code.display}],
                       "text": code.display},
              **_patient_refs(req), "reasonCode": [{"text": f"Mg-lowering drug ordered: {names}"}]}
        sr = _checked(sr)
        suggestions.append(Suggestion(label=_short(f"Order {code.display}", 100), uuid=str(uuid.uuid4()),
                                      isRecommended=True,
                                      actions=[Action(type="create", description=f"Order {code.display}",
                                                      resource=sr)]))
    return Card(uuid=str(uuid.uuid4()), summary=_short(f"No serum Mg on record: {names} can lower Mg"),
                detail=detail, indicator="info", source=_source(evidence), links=_links(evidence) or None,
                suggestions=suggestions or None, selectionBehavior="at-most-one" if suggestions else None)


def _checked(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource a card creates, validated as FHIR R4 (R4B models) before it leaves: a bad one is our bug."""
    from fhir.resources.R4B import get_fhir_model_class

    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource


def _mg_dose_request(kb: KnowledgeBase, req: CdsRequest, dose: Dose, unit: str, reason: str,
                     note: str) -> dict[str, Any]:
    """A draft FHIR R4 MedicationRequest for one planned MgSO4 dose (amount in the regimen's own unit)."""
    mg = kb.drug(MGSO4)
    assert mg is not None
    # the regimen's own amount unit (a rate such as g/h is ordered as its amount unit, per hour)
    rate = rate_unit(unit)
    ucum = dose_unit(rate.amount if rate else unit)
    if unit_kind(ucum) in ("substance", "equivalent"):  # mmol or mEq of Mg
        value = dose_in_unit(dose.mmol, ucum)
    else:  # g of the salt; a per-kg dose is ordered as the g it comes to for this patient
        ucum, value = dose_unit("g"), dose.g_mgso4 or 0.0
    shown = display(ucum)
    timing: dict[str, Any] = {"count": dose.repeats}
    if dose.duration_h:
        timing.update(duration=dose.duration_h, durationUnit="h")
    if dose.interval_h:
        timing.update(period=dose.interval_h, periodUnit="h")
    coding = {"system": RXNORM, "code": mg.rxcui, "display": mg.ingredient} if mg.rxcui else None
    quantity = {"value": round(value, 2), "unit": shown, "system": UCUM, "code": ucum}
    dosage = {"text": dose.label + (f" ({dose.note})" if dose.note else ""), "route": {"text": dose.route},
              "timing": {"repeat": timing}, "doseAndRate": [{"doseQuantity": quantity}]}
    return _checked({
        "resourceType": "MedicationRequest", "id": str(uuid.uuid4()), "status": "draft", "intent": "order",
        "medicationCodeableConcept": {**({"coding": [coding]} if coding else {}), "text": mg.ingredient},
        **_patient_refs(req), "reasonCode": [{"text": reason}], "note": [{"text": note}],
        "dosageInstruction": [dosage]})


def _preload_card(kb: KnowledgeBase, a: Assessment, req: CdsRequest, drug: Drug) -> Card | None:
    """The drug's context regimen (cisplatin -> PRAGMATIC Mg preload) as a suggestion creating the MgSO4 order."""
    plan = a.plan
    if plan.action == "hold":
        hold = next((f for f in a.findings if f.code == "hold_magnesium"), None)
        why = hold.message if hold else (plan.regimen or "magnesium on hold")
        ev = list(hold.evidence) if hold else list(plan.evidence)
        return Card(uuid=str(uuid.uuid4()), summary=_short(f"No Mg preload before {drug.ingredient}: hold magnesium"),
                    detail=f"{why}\n\n**Sources**\n{_refs(ev)}\n\n_{a.disclaimer}_", indicator="info",
                    source=_source(ev), links=_links(ev) or None)
    regimen = next((r for r in kb.regimens.regimens if r.id == plan.regimen_id), None)  # or a nomogram id
    if regimen is None or drug.context not in regimen.contexts or regimen.purpose != "aki_prevention" or not plan.doses:
        return None  # e.g. low Mg: repletion by nomogram, said on the class card
    unit = regimen.steps[0].amount_unit
    reason = f"AKI prevention with {drug.ingredient}: {regimen.name}"
    creates = [Action(type="create", description=_short(f"Order {d.label} ({regimen.name})", 200),
                      resource=_mg_dose_request(kb, req, d, unit, reason, regimen.source.citation))
               for d in plan.doses]
    first = plan.doses[0]
    amount = (f"{first.meq:g} mEq Mg ({first.mmol:g} mmol; {first.g_mgso4:.2f} g MgSO4·7H2O)"
              if first.g_mgso4 is not None else first.label)
    lines = [f"**{regimen.name}**: {amount} IV" + (f" over {first.duration_h:g} h" if first.duration_h else "")
             + (f" ({first.note})" if first.note else ""), f"Evidence: {regimen.evidence_strength}."]
    lines += [x for x in (regimen.note, regimen.correction) if x]
    lines += [f"Adjusted: {x}" for x in plan.adjustments]
    ev = [Evidence.of(regimen.source)] + [e for e in plan.evidence if e.doi != regimen.source.doi]
    sug = Suggestion(label=_short(f"Order Mg preload: {amount}", 100), uuid=str(uuid.uuid4()), isRecommended=True,
                     actions=creates)
    return Card(uuid=str(uuid.uuid4()), summary=_short(f"Mg preload before {drug.ingredient}: {amount}"),
                detail="\n\n".join(lines) + f"\n\n**Sources**\n{_refs(ev)}\n\n_{a.disclaimer}_",
                indicator="info", source=_source(ev), links=_links(ev) or None, suggestions=[sug],
                selectionBehavior="at-most-one")


def order_hook(req: CdsRequest, hook: str, cfg: ServiceConfig | None = None) -> CdsResponse:
    """Cards for the draft MedicationRequests of order-select (the selected ones) or order-sign (all)."""
    kb = load()
    orders, medications = _draft_orders(req, hook)
    typed = [(res, *_order_drug(kb, res, medications)) for res in orders]
    mg_orders = [res for res, drug, _, _ in typed if drug is not None and drug.ingredient == MGSO4]
    classed = [(drug, cls, label) for _, drug, cls, label in typed if cls is not None]
    openers = list({drug.ingredient: drug for _, drug, _, _ in typed if drug is not None and drug.context}.values())
    if not (mg_orders or classed or openers):
        return CdsResponse(cards=[])
    a = _assess(req, cfg, frozenset(d.context for d in openers if d.context))
    cards = _mgso4_cards(a, mg_orders)
    status = a.magnesium.status if a.magnesium is not None else None
    if status == "low":
        cards += [_low_mg_card(a, drug, cls, label) for drug, cls, label in classed if "low" in cls.card_when]
    elif status is None:
        unknown = [(cls, label) for _, cls, label in classed if "unknown" in cls.card_when]
        if unknown:
            cards.append(_no_mg_card(kb, a, req, unknown))
    if not mg_orders:  # a MgSO4 order already drafted is the preload, checked above
        cards += [c for c in (_preload_card(kb, a, req, d) for d in openers) if c is not None]
    return CdsResponse(cards=cards)


def call_service(service_id: str, req: CdsRequest, cfg: ServiceConfig | None = None) -> CdsResponse:
    """Run the CDS service ``service_id`` on a hook request (checked against the hook it answers)."""
    hook = SERVICES.get(service_id)
    if hook is None:
        raise CdsInputError(f"unknown CDS service {service_id!r}; known: {', '.join(SERVICES)}")
    if req.hook != hook:
        raise CdsInputError(f"service {service_id!r} answers the {hook!r} hook, not {req.hook!r}")
    res = patient_view(req, cfg) if hook == "patient-view" else order_hook(req, hook, cfg)
    reasons = override_reasons()
    for card in res.cards:  # every card may be overridden with one of the coded reasons (CDS Hooks feedback)
        card.overrideReasons = list(reasons)
    return res


@cache
def override_reasons() -> tuple[Coding, ...]:
    """The coded override reasons the cards offer (knowledge data, evaluation.yaml); ``mgaki evaluate`` counts the
    ones clinicians send back in feedback."""
    ev = load().evaluation
    return tuple(Coding(system=ev.override_system, code=r.code, display=r.display) for r in ev.override_reasons)
