"""The dashboard: a JSON API for one patient's course and the pages that show it (issue 4.5, 6.5).

API (bearer token, reader role; an audit row per call, like every endpoint of the service):

- ``GET  /dashboard/patients``                             the list, alerts counted and ranked
- ``GET  /dashboard/patients/{id}/timeline``               series, doses, AKI bands, ranges, alerts
- ``GET  /dashboard/patients/{id}/assessment``             ``mgaki.assess`` on the stored record
- ``POST /dashboard/patients/{id}/dose-plan``              ``mgaki.pk`` prediction for a regimen/target
- ``GET  /dashboard/evaluation``                           ``mgaki evaluate`` on the service's data

Alert actions (acknowledge, snooze, assign, resolve, reopen) are ``POST /alerts/{id}/{action}`` (app.py);
the timeline records who saw which alert.

Pages: ``/ui/`` (list) and ``/ui/patients/{id}``: static HTML and JS (vendored Vega), no patient
data in the page itself; the page asks once for a bearer token, keeps it in ``sessionStorage``
(this tab only, gone when it closes) and sends it on every API call (docs/service.md).

Every access to one patient's data goes through ``authorize_patient``, and the list through
``visible_patients``: today the reader role is all they check; per-patient limits plug in there.
"""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

import mgaki
from mgaki.knowledge import KnowledgeBase, load
from mgaki.research.alert_eval import run
from mgaki.research.alert_report import clean, inline_images, render_fragment
from mgaki.result import Assessment
from mgaki.service.dashboard.charts import clinician_text, dose_chart, link_of, timeline_chart, words_for_ids
from mgaki.service.dashboard.dose_plan import PatientInputs, PlanRequest, plan_dose
from mgaki.service.dashboard.patient_data import (
    SEVERITIES,
    ListQuery,
    Scope,
    SortKey,
    data_dir_store,
    dose_history,
    patient_exists,
    patient_list,
    record_from_store,
    reference_ranges,
    timeline,
)
from mgaki.service.persistence.db import MAX_OFFSET, alerts, write_audit
from mgaki.service.persistence.ids import ID_MAX
from mgaki.service.persistence.workflow import (
    AlertState,
    alert_states,
    evaluation_alerts,
    feedback_counts,
    live_only,
    record_seen,
)
from mgaki.service.security import AuthError, Principal, allowed_patients, check_bearer, check_patient

__all__ = ["STATIC", "VENDOR", "authorize_patient", "install_dashboard", "router", "visible_patients"]

STATIC = FsPath(__file__).parent / "static"
VENDOR = ("vendor/vega-6.4.0.min.js", "vendor/vega-lite-6.4.1.min.js", "vendor/vega-embed-7.3.0.min.js")
# Vega compiles its expressions with Function(): 'unsafe-eval' is needed; nothing else leaves the origin.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

router = APIRouter()


def reader(request: Request) -> Principal:
    return check_bearer(request.app.state.cfg, request.headers.get("authorization"), "reader")


Reader = Annotated[Principal, Depends(reader)]
PatientId = Annotated[str, Path(max_length=ID_MAX)]  # longer ids are never stored (persistence/ids.py): 422


def authorize_patient(principal: Principal, patient_id: str) -> None:
    """The one gate for a patient's data: the reader role and the token's patient limit
    (``security.check_patient``: 403, audited as denied). Every dashboard endpoint that reads a
    patient calls this first, before looking the patient up, so ids cannot be probed."""
    if "reader" not in principal.roles and "admin" not in principal.roles:
        raise AuthError(f"token {principal.name!r} may not read patient data", 403)
    check_patient(principal, patient_id)


def visible_patients(principal: Principal) -> frozenset[str] | None:
    """The patients the list may show this caller (None: every patient): the token's patient limit."""
    return allowed_patients(principal)


def _audit(request: Request, who: Principal, endpoint: str, patient_id: str | None, detail: str | None) -> None:
    write_audit(request.app.state.engine, who.name, "read", endpoint, [patient_id], detail)


def _kb() -> KnowledgeBase:
    return load()


def _patient(request: Request, who: Principal, patient_id: str) -> JSONResponse | None:
    """Authorise, then a 404 answer if the service holds nothing for this patient."""
    authorize_patient(who, patient_id)
    if not patient_exists(data_dir_store(request.app.state.cfg.data_dir), request.app.state.engine, patient_id):
        # audited too: who looked for which patient, even one the service does not hold
        route = getattr(request.scope.get("route"), "path", "<unmatched>")
        write_audit(request.app.state.engine, who.name, "not-found", f"{request.method} {route}", [patient_id],
                    "404 no data for this patient")
        return JSONResponse({"error": "no data for this patient"}, status_code=404)
    return None


# --- API ----------------------------------------------------------------------------------------


@router.get("/dashboard/patients", tags=["dashboard"])
def list_patients(request: Request, who: Reader,
                  scope: Annotated[Scope, Query(
                      description="action: alerts that need action (not acknowledged, snoozed or resolved); "
                                  "active: alerts of encounters still open; all: every alert")] = "action",
                  severity: Annotated[Literal["info", "warning", "critical"] | None, Query(
                      description="only patients with an alert of at least this severity")] = None,
                  kind: Annotated[str | None, Query(max_length=50)] = None,
                  q: Annotated[str | None, Query(max_length=200, description="patient id contains")] = None,
                  with_alerts: bool = False,
                  sort: SortKey = "severity",
                  order: Literal["asc", "desc"] = "desc",
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict[str, Any]:
    """Patients with their counted alerts, highest severity, latest Mg and creatinine; sortable, filterable."""
    res = patient_list(data_dir_store(request.app.state.cfg.data_dir), request.app.state.engine,
                       ListQuery(scope=scope, severity=severity, kind=kind, q=q, with_alerts=with_alerts, sort=sort,
                                 descending=order == "desc", limit=limit, offset=offset,
                                 only=visible_patients(who)))
    # one row per patient listed (the ids returned), one without a patient if none was
    shown = [p["patient_id"] for p in res["patients"]]
    write_audit(request.app.state.engine, who.name, "read", "GET /dashboard/patients", shown or [None],
                f"{len(shown)} patients listed")
    res["severities"] = list(SEVERITIES)
    res["timezone"] = request.app.state.cfg.timezone
    res["alert_labels"] = {a.kind: a.label for a in _kb().evaluation.alerts}
    res["reference_ranges"] = reference_ranges(_kb(), ("magnesium", "creatinine"))
    return res


@router.get("/dashboard/patients/{patient_id}/timeline", tags=["dashboard"], response_model=None)
def patient_timeline(request: Request, patient_id: PatientId, who: Reader) -> dict[str, Any] | JSONResponse:
    """Mg, creatinine, K, Ca, urine output, Mg doses, AKI stage bands, reference ranges and alerts."""
    if (missing := _patient(request, who, patient_id)) is not None:
        return missing
    kb = _kb()
    tl = timeline(data_dir_store(request.app.state.cfg.data_dir), kb, patient_id)
    q = sa.select(alerts).where(alerts.c.subject_id == patient_id, live_only()).order_by(
        alerts.c.time.desc(), alerts.c.id)
    engine = request.app.state.engine
    with engine.connect() as con:
        rows = con.execute(q).mappings().all()
    record_seen(engine, who.name, [(r["id"], patient_id) for r in rows])  # "seen by": who was shown which alert
    with engine.connect() as con:
        states = alert_states(con, [r["id"] for r in rows])
    labels = {a.kind: a.label for a in kb.evaluation.alerts}
    tl["alerts"] = [{**{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()
                        if k not in ("mode", "allocation_id")},
                     "label": labels.get(r["kind"], r["kind"]), "detail": words_for_ids(r["detail"]),
                     "state": states.get(r["id"], AlertState()).as_json()} for r in rows]
    tl["timezone"] = request.app.state.cfg.timezone
    tl["vega_lite"] = timeline_chart(tl)
    _audit(request, who, "GET /dashboard/patients/{patient_id}/timeline", patient_id, None)
    return tl


def _assessment(request: Request, patient_id: str) -> tuple[Any, Assessment]:
    record = record_from_store(data_dir_store(request.app.state.cfg.data_dir), _kb(), patient_id)
    return record, mgaki.assess(record)


def _sources(a: Assessment) -> list[dict[str, Any]]:
    """Every distinct source the findings and the plan cite, with a working link when there is a DOI or URL, and
    without the project's internal notes."""
    seen: dict[str, dict[str, Any]] = {}
    for ev in [e for f in a.findings for e in f.evidence] + list(a.plan.evidence):
        key = ev.doi or ev.document or ev.source
        if key not in seen:
            link, note = link_of(ev.document)
            url = f"https://doi.org/{ev.doi}" if ev.doi else link
            citation = clinician_text(ev.source) or ev.source
            seen[key] = {"citation": citation + (f" ({note})" if note and link else ""), "doi": ev.doi,
                         "document": link or clinician_text(note), "url": url, "verification": ev.verification}
    return list(seen.values())


def _for_clinicians(assessment: dict[str, Any]) -> dict[str, Any]:
    """The assessment's evidence with working links and without internal notes (the JSON of mgaki assess keeps
    them: they are the provenance of each number)."""
    def fix(ev: dict[str, Any]) -> dict[str, Any]:
        link, note = link_of(ev.get("document"))
        return {**ev, "source": clinician_text(ev.get("source")) or ev.get("source"),
                "document": link or clinician_text(note), "document_note": note if link else None}

    out = dict(assessment)
    out["findings"] = [{**f, "evidence": [fix(e) for e in f["evidence"]]} for f in assessment["findings"]]
    if out.get("plan"):
        out["plan"] = {**out["plan"], "evidence": [fix(e) for e in out["plan"].get("evidence", [])]}
    return out


@router.get("/dashboard/patients/{patient_id}/assessment", tags=["dashboard"], response_model=None)
def patient_assessment(request: Request, patient_id: PatientId, who: Reader) -> dict[str, Any] | JSONResponse:
    """The bedside engine on the patient's stored data: findings with their evidence, the plan, sources."""
    if (missing := _patient(request, who, patient_id)) is not None:
        return missing
    _, a = _assessment(request, patient_id)
    _audit(request, who, "GET /dashboard/patients/{patient_id}/assessment", patient_id, f"{len(a.findings)} findings")
    return {"assessment": _for_clinicians(a.model_dump(mode="json")), "sources": _sources(a)}


@router.post("/dashboard/patients/{patient_id}/dose-plan", tags=["dashboard"], response_model=None)
def dose_plan(request: Request, patient_id: PatientId, body: PlanRequest, who: Reader) -> dict[str, Any] | JSONResponse:
    """Predicted serum Mg (typical, band) for a regimen or a target range; limits and overshoot risk.

    Individualised with ``mgaki.pk.fit_map`` when the patient has IV MgSO4 doses and Mg levels after them.
    """
    if (missing := _patient(request, who, patient_id)) is not None:
        return missing
    record, a = _assessment(request, patient_id)
    store = data_dir_store(request.app.state.cfg.data_dir)
    mg = record.latest("magnesium")
    weight = record.latest("weight")
    k = a.kidney
    pt = PatientInputs(now=record.as_of(), latest_mg_mg_dl=mg.value if mg else None,
                       weight_kg=weight.value if weight else None, crcl_ml_min=k.crcl or k.egfr,
                       crcl_note=(k.crcl_note if k.crcl else k.egfr_note) if (k.crcl or k.egfr) else None,
                       severe_renal=any(f.code == "renal_dose_adjustment" for f in a.findings),
                       history=dose_history(record, store, patient_id),
                       creatinine=tuple((m.time, m.value) for m in record.series("creatinine")),
                       aki_stage=k.aki_stage, rrt=k.rrt,
                       age_years=record.age_years(record.as_of()) if record.as_of() else None,
                       contexts=frozenset(a.contexts))
    plan = plan_dose(body, pt, _kb())
    plan["vega_lite"] = dose_chart(plan)
    _audit(request, who, "POST /dashboard/patients/{patient_id}/dose-plan", patient_id,
           f"{body.mode}; overshoot {plan['overshoot']}")
    return plan


@router.get("/dashboard/evaluation", tags=["dashboard"])
def evaluation(request: Request, who: Reader) -> dict[str, Any]:
    """``mgaki evaluate`` on the service's data: burden, PPV, live against silent (docs/evaluation.md).

    Aggregates only (no patient is named); the report's HTML body, its charts inline, and the numbers."""
    if "reader" not in who.roles and "admin" not in who.roles:
        raise AuthError(f"token {who.name!r} may not read patient data", 403)
    cfg = request.app.state.cfg
    if visible_patients(who) is not None:  # a token limited to some patients sees no cohort-wide figures
        raise AuthError(f"token {who.name!r} is limited to some patients: the evaluation covers every patient", 403)
    kb = _kb()
    policy = cfg.alerts
    res, _ = run(data_dir_store(cfg.data_dir), kb, evaluation_alerts(request.app.state.engine),
                 policy.allocation.unit if policy.randomised() else None, feedback_counts(request.app.state.engine))
    modes = ", ".join(f"{a.label}: {policy.mode(a.kind)}" for a in kb.evaluation.alerts)
    source = f"Service data; modes: {modes}" + (
        f"; allocation by {policy.allocation.unit}, seed {policy.allocation.seed}, label "
        f"{policy.allocation.label}" if policy.randomised() else "")
    body = render_fragment(res, inline_images(res), source)
    write_audit(request.app.state.engine, who.name, "read", "GET /dashboard/evaluation", [None],
                f"{res['alerts']} alerts evaluated")
    return {"html": body, "result": clean(res)}


# --- pages --------------------------------------------------------------------------------------


def _page(name: str) -> Response:
    resp = FileResponse(STATIC / name, media_type="text/html")
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


@router.get("/ui", include_in_schema=False)
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/ui/", include_in_schema=False)
def ui_list() -> Response:
    return _page("list.html")


@router.get("/ui/evaluation", include_in_schema=False)
def ui_evaluation() -> Response:
    return _page("evaluation.html")


@router.get("/ui/patients/{patient_id}", include_in_schema=False)
def ui_patient(patient_id: str) -> Response:
    """The page is the same for every patient (no data in it); its script reads the id from the URL."""
    return _page("patient.html")


def install_dashboard(app: FastAPI) -> None:
    """Add the dashboard's API, pages and static files (vendored Vega) to the service app."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="dashboard-static")
