"""CDS Hooks services: discovery, patient-view and order-sign, built on ``mgaki.assess``.

The cards carry what the engine found, each with its sources (citation and DOI),
so the EHR shows why, not only what. order-sign checks a draft MgSO4 order against
the engine's hold and renal-adjustment rules and suggests editing that order.
"""

from __future__ import annotations

import re
import uuid
from functools import cache
from typing import Any

import mgaki
from mgaki.errors import InputError, MgakiError
from mgaki.events.normalize import drug_regex
from mgaki.knowledge import KnowledgeBase, load
from mgaki.result import Assessment, Evidence, Finding
from mgaki.service.cds_models import (
    SUMMARY_MAX,
    Action,
    Card,
    CdsRequest,
    CdsResponse,
    Link,
    ServiceDefinition,
    Source,
    Suggestion,
)
from mgaki.units import salt_amounts

__all__ = ["MGSO4", "PATIENT_VIEW", "RXNORM", "SERVICES", "CdsInputError", "bundle_from_prefetch", "discovery",
           "order_sign", "patient_view"]

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
MGSO4 = "magnesium sulfate"  # drugs.yaml ingredient whose orders order-sign checks
PATIENT_VIEW = "mgaki-patient-view"
ORDER_SIGN = "mgaki-order-sign"
SOURCE_LABEL = "mgaki"
LOINC = "http://loinc.org"
_DOSE_UNITS = {"g": ("g", 1.0), "mg": ("g", 1e-3), "mmol": ("mmol", 1.0), "meq": ("meq", 1.0)}


class CdsInputError(Exception):
    """A hook request the service cannot use: answered 400 with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@cache
def _observation_query() -> str:
    kb = load()
    codes = sorted({f"{LOINC}|{c.code}" for c in kb.codes.observations if c.system == LOINC})
    return "Observation?subject={{context.patientId}}&code=" + ",".join(codes) + "&_count=1000"


def _prefetch() -> dict[str, str]:
    return {
        "patient": "Patient/{{context.patientId}}",
        "observations": _observation_query(),
        "medicationRequests": "MedicationRequest?subject={{context.patientId}}",
        "medicationAdministrations": "MedicationAdministration?subject={{context.patientId}}",
    }


def discovery() -> list[ServiceDefinition]:
    pf = _prefetch()
    return [
        ServiceDefinition(hook="patient-view", id=PATIENT_VIEW, title="mgaki magnesium and kidney summary",
                          description="Magnesium status, KDIGO AKI stage, causes and repletion plan, with sources.",
                          prefetch=pf),
        ServiceDefinition(hook="order-sign", id=ORDER_SIGN, title="mgaki magnesium sulfate order check",
                          description="Checks a draft IV magnesium sulfate order against the serum Mg level and "
                                      "kidney function: hold or dose-adjustment suggestions.", prefetch=pf),
    ]


SERVICES = {PATIENT_VIEW: "patient-view", ORDER_SIGN: "order-sign"}


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


def bundle_from_prefetch(req: CdsRequest) -> dict[str, Any]:
    """One collection Bundle from the prefetched patient, observations and medications."""
    pid = req.context.get("patientId")
    if not isinstance(pid, str) or not pid:
        raise CdsInputError("context.patientId is required")
    pf = req.prefetch or {}
    patient = pf.get("patient")
    if patient is None:
        raise CdsInputError("prefetch 'patient' is missing (this service needs the prefetch templates it "
                            "advertises; fetching from fhirServer is not supported yet)")
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise CdsInputError("prefetch 'patient' is not a Patient resource")
    if patient.get("id") != pid:
        raise CdsInputError("prefetch 'patient' id does not match context.patientId")
    entries = [{"resource": patient}]
    for key in ("observations", "medicationRequests", "medicationAdministrations"):
        entries += [{"resource": r} for r in _resources(pf.get(key), key)]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _assess(req: CdsRequest) -> Assessment:
    bundle = bundle_from_prefetch(req)
    try:
        return mgaki.assess(bundle)
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


def patient_view(req: CdsRequest) -> CdsResponse:
    """A summary card plus one card per warning or critical finding."""
    a = _assess(req)
    cards = [_summary_card(a)] + [_finding_card(f, a) for f in a.findings if f.severity != "info"]
    return CdsResponse(cards=cards)


# --- order-sign ---------------------------------------------------------------------------------


@cache
def _drug_re(kb: KnowledgeBase) -> re.Pattern[str]:
    return re.compile(drug_regex(kb))


def _is_mgso4(kb: KnowledgeBase, res: dict[str, Any]) -> bool:
    concept = res.get("medicationCodeableConcept") or {}
    if not isinstance(concept, dict):
        return False
    texts = [concept.get("text") or ""]
    for c in concept.get("coding") or []:
        if not isinstance(c, dict):
            continue
        if c.get("system") == RXNORM and c.get("code"):
            d = kb.drug(f"rxcui:{c['code']}")
            if d is not None:
                return d.ingredient == MGSO4
        texts.append(c.get("display") or "")
    for t in texts:
        m = _drug_re(kb).search(str(t).lower())
        if m:
            d = kb.drug(m.group(1))
            return d is not None and d.ingredient == MGSO4
    return False


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
    unit = str(q.get("code") or q.get("unit") or "").strip().lower()
    if unit not in _DOSE_UNITS:
        raise CdsInputError(f"{where}: magnesium dose unit {q.get('unit')!r} not understood (use g, mg, mmol, mEq)")
    try:
        amount = float(q["value"])
    except (TypeError, ValueError) as exc:
        raise CdsInputError(f"{where}: dose value is not a number") from exc
    u, f = _DOSE_UNITS[unit]
    return salt_amounts(amount * f, u)["g_mgso4"]


def _with_dose(res: dict[str, Any], g: float) -> dict[str, Any]:
    """A copy of the draft order with its first dose set to ``g`` grams of MgSO4 heptahydrate."""
    import copy

    out = copy.deepcopy(res)
    di = out.setdefault("dosageInstruction", [{}])
    if not di:
        di.append({})
    dr = di[0].setdefault("doseAndRate", [{}])
    if not dr:
        dr.append({})
    dr[0]["doseQuantity"] = {"value": round(g, 2), "unit": "g", "system": "http://unitsofmeasure.org", "code": "g"}
    return out


def order_sign(req: CdsRequest) -> CdsResponse:
    """Cards for each draft MgSO4 MedicationRequest the engine says to hold or to reduce."""
    kb = load()
    draft = req.context.get("draftOrders")
    if not isinstance(draft, dict) or draft.get("resourceType") != "Bundle":
        raise CdsInputError("context.draftOrders must be a FHIR Bundle")
    orders = [r for r in _resources(draft, "draftOrders")
              if r.get("resourceType") == "MedicationRequest" and _is_mgso4(kb, r)]
    if not orders:
        return CdsResponse(cards=[])
    a = _assess(req)
    by_code = {f.code: f for f in a.findings}
    cards: list[Card] = []
    for res in orders:
        rid = f"MedicationRequest/{res.get('id', '')}"
        if not res.get("id"):
            raise CdsInputError("draft MedicationRequest without id: cannot suggest an edit to it")
        hold = by_code.get("hold_magnesium")
        adj = by_code.get("renal_dose_adjustment")
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
    return CdsResponse(cards=cards)
