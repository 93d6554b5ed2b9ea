"""The FastAPI application: CDS Hooks, FHIR ingest, alerts; audit and authentication.

No ``from __future__ import annotations`` here: FastAPI resolves the endpoints' annotations,
which name dependencies defined inside ``create_app``.

Logging policy (SPEC, no PHI in logs): the request log names the route template
(``/patients/{patient_id}/alerts``), never the filled-in path, body or a patient id;
error details that may name a resource go to the caller, not to the log.
"""


import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response

import mgaki
from mgaki.errors import InputError, MgakiError
from mgaki.service.cds import SERVICES, CdsInputError, call_service, discovery
from mgaki.service.cds_models import CdsRequest, CdsResponse, FeedbackRequest
from mgaki.service.config import Role, ServiceConfig
from mgaki.service.dashboard import install_dashboard
from mgaki.service.db import (
    MAX_OFFSET,
    alerts,
    audit,
    cds_feedback,
    column_width,
    make_engine,
    upgrade,
    utcnow,
    write_audit,
)
from mgaki.service.ingest import Ingestor, check_bundle, check_ndjson
from mgaki.service.security import AuthError, Principal, allowed_patients, check_bearer, check_patient, verify_cds_jwt

__all__ = ["create_app", "log"]

log = logging.getLogger("mgaki.service")
_MAX_LIMIT = 1000


_ID_MAX = column_width(audit.c.patient_id)  # longer ids cannot be audited (PostgreSQL enforces VARCHAR lengths)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _outcome(status: int, where: str, problem: str) -> JSONResponse:
    """A FHIR OperationOutcome for the ingest endpoints."""
    return JSONResponse({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": f"{where}: {problem}", "expression": [where]}]},
        status_code=status)


def create_app(cfg: ServiceConfig) -> FastAPI:
    """An app bound to ``cfg``: migrations run now, ``mgaki.warm_up`` at start-up."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url())
    upgrade(engine)
    ingestor = Ingestor(cfg.data_dir, engine, cfg.surveil_on_ingest)

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[None]:
        if cfg.warm_up:
            mgaki.warm_up()
        listener = None
        if cfg.mllp_port is not None:  # HL7 v2 over MLLP, same process and store (service/mllp.py)
            from mgaki.service.mllp import MllpListener

            listener = MllpListener(ingestor, cfg.mllp_host or cfg.host, cfg.mllp_port)
            await listener.start()
        app_.state.mllp = listener
        log.info("mgaki service ready (database %s)", engine.dialect.name)
        yield
        if listener is not None:
            await listener.stop()
        engine.dispose()

    app = FastAPI(title="mgaki service", version=mgaki.__version__, lifespan=lifespan,
                  description="CDS Hooks 2.0 and FHIR R4 ingest for magnesium disorders and AKI. "
                              "Supports and does not replace clinical judgement.")
    app.state.engine = engine
    app.state.cfg = cfg

    @app.middleware("http")
    async def _log_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "<unmatched>")
        log.info("%s %s -> %d in %.1f ms", request.method, template, response.status_code,
                 (time.perf_counter() - t0) * 1e3)
        return response

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> JSONResponse:
        if exc.patient_id is not None:  # a refused patient (check_patient): audited as a denied attempt
            route = getattr(request.scope.get("route"), "path", "<unmatched>")
            _audit(exc.actor or "unknown", "denied", f"{request.method} {route}", exc.patient_id, exc.message)
        resp = _error(exc.status, exc.message)
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(CdsInputError)
    async def _cds_bad(_r: Request, exc: CdsInputError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(InputError)
    async def _bad(_r: Request, exc: InputError) -> JSONResponse:
        return _outcome(400, exc.where, exc.problem)

    @app.exception_handler(MgakiError)
    async def _mg(_r: Request, exc: MgakiError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def _internal(_r: Request, exc: Exception) -> JSONResponse:
        log.error("internal error %s", type(exc).__name__)  # the message may carry data: not logged
        return _error(500, "internal error")

    def _audit(actor: str, action: str, endpoint: str, patient_id: str | None, detail: str | None = None) -> None:
        write_audit(engine, actor, action, endpoint, patient_id, detail)

    def need(role: Role) -> Callable[[Request], Principal]:
        def dep(request: Request) -> Principal:
            return check_bearer(cfg, request.headers.get("authorization"), role)
        return dep

    def cds_caller(request: Request) -> str:
        if not cfg.cds_require_jwt:
            return "unauthenticated-cds-client"
        base = cfg.public_base_url.rstrip("/") + request.url.path if cfg.public_base_url \
            else str(request.url).split("?")[0]
        return verify_cds_jwt(cfg, engine, request.headers.get("authorization"), base)

    # --- CDS Hooks -----------------------------------------------------------------------------

    @app.get("/cds-services", tags=["cds-hooks"])
    def cds_discovery() -> dict[str, Any]:
        """CDS Hooks discovery: the services and their prefetch templates."""
        return {"services": [s.model_dump(exclude_none=True) for s in discovery()]}

    @app.post("/cds-services/{service_id}", tags=["cds-hooks"], response_model=CdsResponse,
              response_model_exclude_none=True)
    def cds_call(service_id: str, body: CdsRequest, caller: Annotated[str, Depends(cds_caller)]) -> CdsResponse:
        """Call a CDS service (patient-view, order-select or order-sign)."""
        hook = SERVICES.get(service_id)
        if hook is None:
            raise CdsInputError(f"unknown CDS service {service_id!r}; known: {', '.join(SERVICES)}")
        if body.hook != hook:
            raise CdsInputError(f"service {service_id!r} answers the {hook!r} hook, not {body.hook!r}")
        pid = body.context.get("patientId")
        if isinstance(pid, str) and len(pid) > _ID_MAX:
            raise CdsInputError(f"context.patientId is longer than {_ID_MAX} characters")
        user = body.context.get("userId")
        _audit(f"{caller} {user}" if isinstance(user, str) else caller, "read", f"cds:{service_id}",
               pid if isinstance(pid, str) else None, f"hookInstance {body.hookInstance}")
        return call_service(service_id, body, cfg)

    @app.post("/cds-services/{service_id}/feedback", tags=["cds-hooks"])
    def cds_feedback_post(service_id: str, body: FeedbackRequest,
                          caller: Annotated[str, Depends(cds_caller)]) -> dict[str, int]:
        """CDS Hooks feedback: accepted suggestions and overrides, stored for review."""
        if service_id not in SERVICES:
            raise CdsInputError(f"unknown CDS service {service_id!r}")
        rows = [{"at": utcnow(), "service": service_id, "card": f.card, "outcome": f.outcome,
                 "accepted": json.dumps([s.id for s in f.acceptedSuggestions or []]),
                 "override_code": f.overrideReason.reason.code if f.overrideReason and f.overrideReason.reason
                 else None, "outcome_at": f.outcomeTimestamp} for f in body.feedback]
        with engine.begin() as con:
            if rows:
                con.execute(sa.insert(cds_feedback), rows)
        return {"stored": len(rows)}

    # --- FHIR ingest ---------------------------------------------------------------------------

    def _ingest_response(principal: Principal, endpoint: str, payload: bytes, suffix: str) -> dict[str, Any]:
        res = ingestor.ingest(payload, suffix)
        with engine.begin() as con:
            rows = [{"at": utcnow(), "actor": principal.name, "action": "write", "endpoint": endpoint,
                     "patient_id": s, "detail": None} for s in res.subjects]
            if rows:
                con.execute(sa.insert(audit), rows)
        return {"received": res.received, "added": res.added, "superseded": res.superseded,
                "quarantined": res.quarantined,
                "quarantine_reasons": res.quarantine_reasons, "subjects": len(res.subjects),
                "new_alerts": res.new_alerts}

    @app.post("/fhir", tags=["ingest"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/fhir+json": {"schema": {"type": "object"}}, "application/json": {"schema": {"type": "object"}}}}})
    async def fhir_bundle(request: Request, who: Annotated[Principal, Depends(need("writer"))]) -> dict[str, Any]:
        """Ingest a FHIR R4 Bundle (batch, transaction or collection); idempotent."""
        payload = await request.body()
        try:
            body = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError("body", f"not JSON: {exc}") from exc
        check_bundle(body)
        return _ingest_response(who, "POST /fhir", payload, ".json")

    @app.post("/fhir/$import-ndjson", tags=["ingest"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/fhir+ndjson": {"schema": {"type": "string"}}}}})
    async def fhir_ndjson(request: Request, who: Annotated[Principal, Depends(need("writer"))]) -> dict[str, Any]:
        """Ingest newline-delimited FHIR resources (Bulk Data format); idempotent."""
        payload = await request.body()
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("body", "not UTF-8 text") from exc
        check_ndjson(text)
        return _ingest_response(who, "POST /fhir/$import-ndjson", payload, ".ndjson")

    # --- alerts --------------------------------------------------------------------------------

    def _alerts(where: list[sa.ColumnElement[bool]], limit: int, offset: int) -> list[dict[str, Any]]:
        q = sa.select(alerts).where(*where).order_by(alerts.c.time.desc(), alerts.c.id).limit(limit).offset(offset)
        with engine.connect() as con:
            rows = con.execute(q).mappings().all()
        return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in rows]

    @app.get("/alerts", tags=["alerts"])
    def list_alerts(who: Annotated[Principal, Depends(need("reader"))],
                    severity: Annotated[str | None, Query(pattern="^(info|warning|critical)$")] = None,
                    kind: str | None = None, limit: Annotated[int, Query(ge=1, le=_MAX_LIMIT)] = 100,
                    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict[str, Any]:
        """Alerts raised by surveillance, newest first."""
        where = []
        if severity:
            where.append(alerts.c.severity == severity)
        if kind:
            where.append(alerts.c.kind == kind)
        allowed = allowed_patients(who)
        if allowed is not None:
            where.append(alerts.c.subject_id.in_(sorted(allowed)))
        rows = _alerts(where, limit, offset)
        _audit(who.name, "read", "GET /alerts", None, f"{len(rows)} alerts")
        return {"alerts": rows}

    @app.get("/patients/{patient_id}/alerts", tags=["alerts"])
    def patient_alerts(patient_id: Annotated[str, Path(max_length=_ID_MAX)],
                       who: Annotated[Principal, Depends(need("reader"))],
                       limit: Annotated[int, Query(ge=1, le=_MAX_LIMIT)] = 100,
                       offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict[str, Any]:
        """One patient's alerts, newest first."""
        check_patient(who, patient_id)
        rows = _alerts([alerts.c.subject_id == patient_id], limit, offset)
        _audit(who.name, "read", "GET /patients/{patient_id}/alerts", patient_id, f"{len(rows)} alerts")
        return {"patient_id": patient_id, "alerts": rows}

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        with engine.connect() as con:
            con.execute(sa.text("SELECT 1"))
        return {"status": "ok", "version": mgaki.__version__}

    install_dashboard(app)  # /dashboard/* API and /ui/ pages (service/dashboard.py)
    return app
