"""The FastAPI application: CDS Hooks, FHIR ingest, alerts; audit and authentication.

No ``from __future__ import annotations`` here: FastAPI resolves the endpoints' annotations,
which name dependencies defined inside ``create_app``.

Logging policy (SPEC, no PHI in logs): the request log names the route template
(``/patients/{patient_id}/alerts``), never the filled-in path, body or a patient id;
error details that may name a resource go to the caller, not to the log.
"""


import asyncio
import json
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import mgaki
from mgaki.errors import InputError, MgakiError
from mgaki.events.locks import FileLock
from mgaki.events.store import IdentityConflictError
from mgaki.service.cds.hooks import SERVICES, CdsInputError, call_service, discovery
from mgaki.service.cds.models import CdsRequest, CdsResponse, FeedbackRequest
from mgaki.service.config import Role, ServiceConfig
from mgaki.service.dashboard.routes import install_dashboard
from mgaki.service.ingest.ingestor import Ingestor, check_bundle, check_ndjson, parse_json, subjects_of
from mgaki.service.limits import (
    GUARD_STATE,
    BodyLimit,
    ConnectionGuard,
    EdgeError,
    check_media_type,
    decode_body,
    edge_response,
)
from mgaki.service.persistence.db import (
    MAX_OFFSET,
    alerts,
    append_audit,
    audit_row,
    cds_feedback,
    column_overflow,
    make_engine,
    private_dir,
    record_read,
    upgrade,
    utcnow,
    write_audit,
    writer,
)
from mgaki.service.persistence.ids import ID_MAX, find_nul, id_problem
from mgaki.service.persistence.workflow import AlertState, WorkflowError, alert_states, live_only, record_action
from mgaki.service.security import (
    AuthError,
    CdsCaller,
    Principal,
    allowed_patients,
    check_bearer,
    check_cds_jwt,
    check_patient,
    outside_scope,
    purge_due,
    purge_jti,
    record_jti,
    scope_refusal,
)
from mgaki.service.statuses import document_statuses
from mgaki.service.supervision import SUPERVISOR_ENV, die_with_parent

__all__ = ["CONFIG_ENV", "AlertActionBody", "RequestLog", "app_from_env", "create_app", "log"]

log = logging.getLogger("mgaki.service")
_MAX_LIMIT = 1000


_ID_MAX = ID_MAX  # a patient id is at most this long (persistence/ids.py); longer ones are refused (422)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _outcome(status: int, where: str, problem: str) -> JSONResponse:
    """A FHIR OperationOutcome for the ingest endpoints."""
    return JSONResponse({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": f"{where}: {problem}", "expression": [where]}]},
        status_code=status)


CONFIG_ENV = "MGAKI_SERVE_CONFIG_JSON"  # the resolved config handed by `mgaki serve` to its worker processes
_CLIENT_GONE = 499  # logged (nginx's "client closed request") for a call whose client left before the work

_FHIR_JSON = ("application/fhir+json", "application/json")
_FHIR_NDJSON = ("application/fhir+ndjson", "application/ndjson", "application/x-ndjson")

# The CDS call decodes its own body (below); the OpenAPI document still names the model, as FastAPI would.
_CDS_BODY = {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/CdsRequest"}}},
                             "required": True}}
# Feedback too: its JWT is checked from the headers before its body is read (FastAPI reads a model body first).
_FEEDBACK_BODY = {"requestBody": {"content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/FeedbackRequest"}}}, "required": True}}


class AlertActionBody(BaseModel):
    """What an alert action carries: a snooze's reason and expiry, an assign's assignee, any action's reason."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=500)
    until: datetime | None = None  # snooze expiry (UTC when no offset is given)
    assignee: str | None = Field(default=None, max_length=200)


class RequestLog:
    """Pure ASGI request logger: method, route template, status, milliseconds (no path, body or patient id).

    Pure ASGI rather than ``@app.middleware("http")``: no second task and response stream per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # unless a response starts
        started = False

        async def send_status(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            if "\x00" in scope["path"] or b"%00" in scope["query_string"] or b"\x00" in scope["query_string"]:
                await _error(400, "the path or query contains a NUL character (%00)")(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        except Exception as exc:
            # to the server, which would log it and close the connection; the class and the route only
            log.error("internal error %s in %s %s", type(exc).__name__, scope["method"], _template(scope))
            if not started:
                await _error(500, "internal error")(scope, receive, send_status)
        finally:
            log.info("%s %s -> %d in %.1f ms", scope["method"], _template(scope), status,
                     (time.perf_counter() - t0) * 1e3)


def _template(scope: Scope) -> str:
    """The route template of a request (``/patients/{patient_id}/alerts``): never the path, which holds ids."""
    return getattr(scope.get("route"), "path", "<unmatched>")


def _body_error(err: Any) -> dict[str, Any]:
    """A pydantic error of the CDS body as FastAPI reports one: located under "body", raw bytes not echoed."""
    out = {**err, "loc": ("body", *err["loc"])}
    if isinstance(out.get("input"), bytes):  # not JSON (or not UTF-8): the message names it, the bytes are noise
        out["input"] = {}
    return out


def _has_body(request: Request) -> bool:
    """The request announces a body (a length above 0, or chunked)."""
    length = request.headers.get("content-length")
    return (length is not None and length.strip() not in ("", "0")) or "transfer-encoding" in request.headers


def _db_busy(exc: BaseException) -> bool:
    """SQLite's write lock not obtained within the busy timeout (or the connection pool exhausted)."""
    if isinstance(exc, sa.exc.TimeoutError):
        return True
    orig = getattr(exc, "orig", None)
    return isinstance(orig, sqlite3.OperationalError) and ("locked" in str(orig) or "busy" in str(orig))


def _cds_request_schemas() -> dict[str, Any]:
    """``CdsRequest`` and the models it names, exactly as FastAPI documents a body parameter of that type."""
    probe = FastAPI()

    @probe.post("/")
    def _body(body: CdsRequest) -> None:  # documented, never called
        del body

    @probe.post("/feedback")
    def _feedback(body: FeedbackRequest) -> None:  # documented, never called
        del body

    schemas: dict[str, Any] = probe.openapi()["components"]["schemas"]
    return {k: v for k, v in schemas.items() if k not in ("HTTPValidationError", "ValidationError")}


def app_from_env() -> FastAPI:
    """uvicorn's factory for ``mgaki serve --workers N``: each worker builds the app from the resolved config
    and ends when its supervisor does (``supervision.die_with_parent``)."""
    if (parent := os.environ.get(SUPERVISOR_ENV)) is not None:
        die_with_parent(int(parent))
    return create_app(ServiceConfig.model_validate_json(os.environ[CONFIG_ENV]))


def prepare_database(cfg: ServiceConfig, engine: sa.Engine | None = None) -> None:
    """Run the migrations once however many processes start: under a file lock in the data folder."""
    private_dir(cfg.data_dir)
    own = engine is None
    eng = engine or make_engine(cfg.db_url(), cfg.sqlite_busy_timeout_s, cfg.sqlite_synchronous)
    try:
        with FileLock(cfg.data_dir / "migrate.lock"):
            upgrade(eng)
    finally:
        if own:
            eng.dispose()


def _log_to_stderr(level: str) -> None:
    """The "mgaki" loggers at ``level`` (config ``log_level``), to standard error; one handler per process."""
    root = logging.getLogger("mgaki")
    root.setLevel(level.upper())
    if not any(getattr(h, "_mgaki", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._mgaki = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def create_app(cfg: ServiceConfig) -> FastAPI:
    """An app bound to ``cfg``: migrations run now (once across processes), ``mgaki.warm_up`` at start-up."""
    if cfg.log_level is not None:
        _log_to_stderr(cfg.log_level)
    engine = make_engine(cfg.db_url(), cfg.sqlite_busy_timeout_s, cfg.sqlite_synchronous)
    prepare_database(cfg, engine)
    wr = writer(engine)  # every write transaction: on SQLite it takes the write lock at BEGIN
    ingestor = Ingestor(cfg.data_dir, wr, cfg.surveil_on_ingest, cfg.hl7_surveillance_delay_s,
                        cfg.identity_per_source, cfg.alerts, run_process=cfg.surveillance_process)
    in_flight = [0]  # CDS calls admitted in this worker (event-loop only: no lock needed)
    # CDS calls computed at once in this worker (cds_threads), the others waiting in arrival order
    cds_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = \
        weakref.WeakKeyDictionary()

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        if cfg.warm_up:
            mgaki.warm_up()
        listener = None
        if cfg.mllp_port is not None:  # HL7 v2 over MLLP, same process and store (service/ingest/mllp.py)
            from mgaki.service.ingest.mllp import MllpListener, tls_context

            tls = tls_context(cfg.mllp_tls_cert, cfg.mllp_tls_key, cfg.mllp_tls_client_ca) \
                if cfg.mllp_tls_cert is not None and cfg.mllp_tls_key is not None else None
            listener = MllpListener(ingestor, cfg.mllp_host or cfg.host, cfg.mllp_port, reuse_port=cfg.workers > 1,
                                    tls=tls, idle_timeout_s=cfg.mllp_idle_timeout_s,
                                    senders=cfg.mllp_senders())
            if cfg.mllp_ack_after == "journal":  # journaled messages of an ended process are stored first
                from mgaki.service.ingest.feed import Hl7Feed

                listener.feed = Hl7Feed(ingestor)
                await run_in_threadpool(listener.feed.start)
            await listener.start()
        app_.state.mllp = listener
        app_.state.ingestor = ingestor
        ingestor.catch_up()  # data an earlier process stored and did not surveil (killed in between)
        log.info("mgaki service ready (database %s)", engine.dialect.name)
        # read by the HTTP protocol of `mgaki serve` (service/limits.py): header timeout, connections per client
        yield {GUARD_STATE: ConnectionGuard(cfg.header_timeout_s, cfg.max_connections_per_client)}
        if listener is not None:
            await listener.stop()
            if listener.feed is not None:  # what it journaled is stored before the process ends
                await run_in_threadpool(listener.feed.stop)
        await run_in_threadpool(ingestor.stop)  # a requested surveillance run finishes first
        engine.dispose()

    app = FastAPI(title="mgaki service", version=mgaki.__version__, lifespan=lifespan,
                  description="CDS Hooks 2.0 and FHIR R4 ingest for magnesium disorders and AKI. "
                              "Supports and does not replace clinical judgement.")
    app.state.engine = engine
    app.state.cfg = cfg

    app.add_middleware(BodyLimit, limits=cfg.body_limits, timeout_s=cfg.body_timeout_s)  # inside the log
    app.add_middleware(RequestLog)
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document plus the CDS request model the CDS call decodes itself (``_CDS_BODY``)."""
        if app.openapi_schema is None:
            doc = base_openapi()
            doc.setdefault("components", {}).setdefault("schemas", {}).update(_cds_request_schemas())
            doc["components"]["schemas"] = dict(sorted(doc["components"]["schemas"].items()))
            document_statuses(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def _unavailable(message: str) -> JSONResponse:
        resp = _error(503, message)
        resp.headers["Retry-After"] = str(cfg.retry_after_s)
        return resp

    def _busy() -> JSONResponse:
        return _unavailable(f"database busy (write lock not obtained within {cfg.sqlite_busy_timeout_s:g} s); "
                            f"retry after {cfg.retry_after_s} s")

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.TimeoutError)
    async def _db(_r: Request, exc: Exception) -> JSONResponse:
        if _db_busy(exc):  # overload, not a fault: the client may retry
            return _busy()
        log.error("internal error %s in %s %s", type(exc).__name__, _r.method, _template(_r.scope))
        return _error(500, "internal error")

    @app.exception_handler(sa.exc.SQLAlchemyError)
    async def _db_other(r: Request, exc: Exception) -> JSONResponse:
        """Every other database error: the class and the route logged, never the statement's text or values."""
        log.error("internal error %s in %s %s", type(exc).__name__, r.method, _template(r.scope))
        return _error(500, "internal error")

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> JSONResponse:
        # every refusal is audited as a denied attempt: a 401 (no or bad credentials), a 403 (a role or a patient
        # refused, check_patient), with the patient the path names
        pid = exc.patient_id or request.path_params.get("patient_id")
        try:  # in a thread: a wait for SQLite's write lock must not stop the event loop
            await run_in_threadpool(_audit, exc.actor or ("unauthenticated" if exc.status == 401 else "unknown"),
                                    "denied", f"{request.method} {_template(request.scope)}", pid,
                                    f"{exc.status} {exc.message}")
        except (sa.exc.OperationalError, sa.exc.TimeoutError) as db_exc:
            if not _db_busy(db_exc):
                raise
            return _busy()
        resp = _error(exc.status, exc.message)
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        if _has_body(request):  # refused before its body was read: close rather than read it to the end
            resp.headers["Connection"] = "close"
        return resp

    @app.exception_handler(EdgeError)
    async def _edge(request: Request, exc: EdgeError) -> JSONResponse:
        return edge_response(request.url.path, exc.status_code, exc.message)

    @app.exception_handler(CdsInputError)
    async def _cds_bad(_r: Request, exc: CdsInputError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(IdentityConflictError)
    async def _conflict(_r: Request, exc: IdentityConflictError) -> JSONResponse:
        # a resource id that comes back naming another patient: refused whole, one issue per record
        return JSONResponse({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "conflict", "diagnostics": f"{c.identity}: {c.problem}: refused, nothing "
             "was stored (no data moves between patients; docs/service.md#identity)", "expression": [c.identity]}
            for c in exc.conflicts]}, status_code=409)

    @app.exception_handler(InputError)
    async def _bad(_r: Request, exc: InputError) -> JSONResponse:
        return _outcome(400, exc.where, exc.problem)

    @app.exception_handler(MgakiError)
    async def _mg(_r: Request, exc: MgakiError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def _internal(_r: Request, exc: Exception) -> JSONResponse:
        # the message may carry data: not logged
        log.error("internal error %s in %s %s", type(exc).__name__, _r.method, _template(_r.scope))
        return _error(500, "internal error")

    def _audit(actor: str, action: str, endpoint: str, patient_id: str | None, detail: str | None = None) -> None:
        write_audit(engine, actor, action, endpoint, [patient_id], detail)

    def need(role: Role) -> Callable[[Request], Principal]:
        def dep(request: Request) -> Principal:
            return check_bearer(cfg, request.headers.get("authorization"), role)
        return dep

    def cds_caller(request: Request) -> str:
        """The verified CDS client (feedback): JWT checked and its jti logged in a transaction of its own."""
        if not cfg.cds_require_jwt:
            return "unauthenticated-cds-client"
        caller = check_cds_jwt(cfg, request.headers.get("authorization"), cfg.audiences(request.url.path))
        with wr.begin() as con:
            record_jti(con, cfg, caller)
        return caller.iss

    # --- CDS Hooks -----------------------------------------------------------------------------

    @app.get("/cds-services", tags=["cds-hooks"])
    def cds_discovery() -> dict[str, Any]:
        """CDS Hooks discovery: the services and their prefetch templates."""
        return {"services": [s.model_dump(exclude_none=True) for s in discovery()]}

    def cds_admit(service_id: str, raw: bytes, caller: CdsCaller | None) -> CdsRequest:
        """A CDS call's admission, in a worker thread (its JWT verified already): decode, checks, jti + audit
        (one commit).

        Mostly a wait on the database (its commit): it runs outside the one-at-a-time limiter of the cards
        (``cds_cards``), so another call's cards are computed meanwhile (issue 16 point 10)."""
        try:
            body = CdsRequest.model_validate_json(raw)  # pydantic-core parses and validates in one pass
        except ValidationError as exc:
            raise RequestValidationError([_body_error(e) for e in exc.errors(include_url=False)]) from None
        hook = SERVICES.get(service_id)
        if hook is None:
            raise CdsInputError(f"unknown CDS service {service_id!r}; known: {', '.join(SERVICES)}")
        if body.hook != hook:
            raise CdsInputError(f"service {service_id!r} answers the {hook!r} hook, not {body.hook!r}")
        if b"\\u0000" in raw and (where := find_nul(json.loads(raw))) is not None:  # searched only if present
            raise CdsInputError(f"{where}: contains a NUL character (U+0000)")
        pid = body.context.get("patientId")
        if isinstance(pid, str) and (problem := id_problem(pid, "context.patientId")) is not None:
            raise CdsInputError(problem)
        user = body.context.get("userId")
        who = caller.iss if caller else "unauthenticated-cds-client"
        row = audit_row(f"{who} {user}" if isinstance(user, str) else who, "read", f"cds:{service_id}",
                        pid if isinstance(pid, str) else None, f"hookInstance {body.hookInstance}")
        if caller is not None and purge_due():  # expired jti rows, at most once a minute per process
            with wr.begin() as con:
                purge_jti(con, cfg)
        # the jti and the audit row commit together, before any data is read (one statement on PostgreSQL)
        if not record_read(wr, row, (caller.iss, caller.jti, caller.exp) if caller is not None else None):
            raise AuthError("JWT jti already used (replay)")
        return body

    def cds_cards(service_id: str, body: CdsRequest) -> Response:
        """The cards of an admitted call (CPU: the engine), one call at a time per worker (``cds_threads``)."""
        cards = call_service(service_id, body, cfg)
        return Response(cards.model_dump_json(exclude_none=True), media_type="application/json")

    @app.post("/cds-services/{service_id}", tags=["cds-hooks"], response_model=CdsResponse,
              response_model_exclude_none=True, openapi_extra=_CDS_BODY)
    async def cds_call(service_id: str, request: Request) -> Response:
        """Call a CDS service (patient-view, order-select or order-sign)."""
        caller = None
        if cfg.cds_require_jwt:  # from the headers, before a slot or the body: no credentials, nothing held
            caller = await anyio.to_thread.run_sync(  # a thread: a key may have to be fetched from the JWKS URL
                check_cds_jwt, cfg, request.headers.get("authorization"), cfg.audiences(request.url.path))
        if in_flight[0] >= cfg.cds_max_in_flight:  # shed at once: a fast 503 leaves the admitted calls served
            return _unavailable(f"service overloaded: {in_flight[0]} CDS calls in progress in this worker; "
                                f"retry after {cfg.retry_after_s} s")
        in_flight[0] += 1
        try:
            try:
                raw = await request.body()
            except ClientDisconnect:
                return Response(status_code=_CLIENT_GONE)
            if await request.is_disconnected():  # the client has gone: no card would be seen
                return Response(status_code=_CLIENT_GONE)
            loop = asyncio.get_running_loop()  # anyio makes a limiter on a loop; tests run the app on several
            limiter = cds_limiters.get(loop) or cds_limiters.setdefault(loop, anyio.CapacityLimiter(cfg.cds_threads))
            body = await anyio.to_thread.run_sync(cds_admit, service_id, raw, caller)
            return await anyio.to_thread.run_sync(cds_cards, service_id, body, limiter=limiter)
        finally:
            in_flight[0] -= 1

    @app.post("/cds-services/{service_id}/feedback", tags=["cds-hooks"], openapi_extra=_FEEDBACK_BODY)
    async def cds_feedback_post(service_id: str, request: Request,
                                caller: Annotated[str, Depends(cds_caller)]) -> dict[str, int]:
        """CDS Hooks feedback: accepted suggestions and overrides, stored for review."""
        raw = await request.body()  # after the JWT (the dependency): no credentials, no body read
        try:
            body = FeedbackRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError([_body_error(e) for e in exc.errors(include_url=False)]) from None
        return await run_in_threadpool(store_feedback, service_id, body, caller)

    def store_feedback(service_id: str, body: FeedbackRequest, caller: str) -> dict[str, int]:
        if service_id not in SERVICES:
            raise CdsInputError(f"unknown CDS service {service_id!r}")
        rows = [{"at": utcnow(), "service": service_id, "card": f.card, "outcome": f.outcome,
                 "accepted": json.dumps([s.id for s in f.acceptedSuggestions or []]),
                 "override_code": f.overrideReason.reason.code if f.overrideReason and f.overrideReason.reason
                 else None, "outcome_at": f.outcomeTimestamp} for f in body.feedback]
        if (where := find_nul(body.model_dump(mode="json"))) is not None:
            raise CdsInputError(f"{where}: contains a NUL character (U+0000)")
        for i, row in enumerate(rows):  # what the columns cannot hold is refused, on every database
            if (problem := column_overflow(cds_feedback, row)) is not None:
                raise CdsInputError(f"feedback[{i}]: {problem}")
        with wr.begin() as con:  # the feedback and its audit row commit together
            if rows:
                con.execute(sa.insert(cds_feedback), rows)
            append_audit(con, [audit_row(caller, "write", "POST /cds-services/{service_id}/feedback", None,
                                         f"{service_id}: {len(rows)} feedback item(s)")])
        return {"stored": len(rows)}

    # --- FHIR ingest ---------------------------------------------------------------------------

    def _ingest_response(principal: Principal, endpoint: str, payload: bytes, suffix: str) -> dict[str, Any]:
        raw = ingestor.read(payload, suffix)
        refused = outside_scope(principal, subjects_of(raw))
        if refused:  # a token limited to some patients writes only theirs: the whole request is refused, audited
            write_audit(engine, principal.name, "denied", endpoint, refused, "write outside the token's patients")
            raise scope_refusal(principal, refused)
        res = ingestor.ingest_raw(raw, fhir_ids=True)
        write_audit(engine, principal.name, "write", endpoint, res.subjects)
        return {"received": res.received, "added": res.added, "superseded": res.superseded,
                "quarantined": res.quarantined,
                "quarantine_reasons": res.quarantine_reasons, "subjects": len(res.subjects),
                "new_alerts": res.new_alerts}

    @app.post("/fhir", tags=["ingest"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/fhir+json": {"schema": {"type": "object"}}, "application/json": {"schema": {"type": "object"}}}}})
    async def fhir_bundle(request: Request, who: Annotated[Principal, Depends(need("writer"))]) -> dict[str, Any]:
        """Ingest a FHIR R4 Bundle (batch, transaction or collection); idempotent."""
        check_media_type(request, _FHIR_JSON)  # credentials (the dependency), then the type, then the body
        payload = await request.body()
        encoding = request.headers.get("content-encoding")

        def work() -> dict[str, Any]:  # in a thread: inflating and parsing a large Bundle would stop the loop
            data = decode_body(encoding, payload, cfg.body_limits.fhir)
            check_bundle(parse_json(data))
            return _ingest_response(who, "POST /fhir", data, ".json")

        return await run_in_threadpool(work)

    @app.post("/fhir/$import-ndjson", tags=["ingest"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/fhir+ndjson": {"schema": {"type": "string"}}}}})
    async def fhir_ndjson(request: Request, who: Annotated[Principal, Depends(need("writer"))]) -> dict[str, Any]:
        """Ingest newline-delimited FHIR resources (Bulk Data format); idempotent."""
        check_media_type(request, _FHIR_NDJSON)
        payload = await request.body()
        encoding = request.headers.get("content-encoding")

        def work() -> dict[str, Any]:
            data = decode_body(encoding, payload, cfg.body_limits.ndjson)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError("body", "not UTF-8 text") from exc
            check_ndjson(text)
            return _ingest_response(who, "POST /fhir/$import-ndjson", data, ".ndjson")

        return await run_in_threadpool(work)

    # --- alerts --------------------------------------------------------------------------------

    def _alerts(where: list[sa.ColumnElement[bool]], limit: int, offset: int,
                status: str | None = None) -> list[dict[str, Any]]:
        """Live alerts (silent and suppressed ones are never shown), newest first, each with its workflow state."""
        q = sa.select(alerts).where(live_only(), *where).order_by(alerts.c.time.desc(), alerts.c.id)
        with engine.connect() as con:
            if status is None:
                rows = con.execute(q.limit(limit).offset(offset)).mappings().all()
                states = alert_states(con, [r["id"] for r in rows])
            else:  # the state is folded from the action log: filtered here, then paged
                every = con.execute(q).mappings().all()
                states = alert_states(con, [r["id"] for r in every])
                rows = [r for r in every if states.get(r["id"], AlertState()).status == status][offset:offset + limit]
        out = []
        for r in rows:
            item = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()
                    if k not in ("mode", "allocation_id")}
            item["state"] = states.get(r["id"], AlertState()).as_json()
            out.append(item)
        return out

    @app.get("/alerts", tags=["alerts"])
    def list_alerts(who: Annotated[Principal, Depends(need("reader"))],
                    severity: Annotated[str | None, Query(pattern="^(info|warning|critical)$")] = None,
                    kind: str | None = None,
                    status: Annotated[str | None, Query(pattern="^(open|acknowledged|snoozed|resolved)$")] = None,
                    limit: Annotated[int, Query(ge=1, le=_MAX_LIMIT)] = 100,
                    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict[str, Any]:
        """Live alerts raised by surveillance, newest first, with their workflow state (``status`` filters)."""
        where = []
        if severity:
            where.append(alerts.c.severity == severity)
        if kind:
            where.append(alerts.c.kind == kind)
        allowed = allowed_patients(who)
        if allowed is not None:
            where.append(alerts.c.subject_id.in_(sorted(allowed)))
        rows = _alerts(where, limit, offset, status)
        # one row per patient whose alerts were returned (none returned: one row without a patient)
        shown = sorted({r["subject_id"] for r in rows})
        write_audit(engine, who.name, "read", "GET /alerts", shown or [None], f"{len(rows)} alerts")
        return {"alerts": rows}

    @app.get("/patients/{patient_id}/alerts", tags=["alerts"])
    def patient_alerts(patient_id: Annotated[str, Path(max_length=_ID_MAX)],
                       who: Annotated[Principal, Depends(need("reader"))],
                       limit: Annotated[int, Query(ge=1, le=_MAX_LIMIT)] = 100,
                       offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict[str, Any]:
        """One patient's live alerts, newest first, with their workflow state."""
        check_patient(who, patient_id)
        rows = _alerts([alerts.c.subject_id == patient_id], limit, offset)
        _audit(who.name, "read", "GET /patients/{patient_id}/alerts", patient_id, f"{len(rows)} alerts")
        return {"patient_id": patient_id, "alerts": rows}

    @app.post("/alerts/{alert_id}/{action}", tags=["alerts"], response_model=None)
    def alert_action(alert_id: Annotated[int, Path(ge=1, le=MAX_OFFSET)],
                     action: Literal["acknowledge", "snooze", "assign", "resolve", "reopen"],
                     who: Annotated[Principal, Depends(need("reader"))],
                     body: AlertActionBody | None = None) -> dict[str, Any] | JSONResponse:
        """Act on a live alert: acknowledge, snooze (reason and expiry), assign (to whom), resolve, reopen.

        Appended to the alert's action log with an audit row in one transaction; the answer is the new state.
        """
        b = body or AlertActionBody()
        try:
            st = record_action(engine, alert_id, who.name, action, reason=b.reason, until=b.until,
                               assignee=b.assignee, allowed=allowed_patients(who))
        except WorkflowError as exc:
            return _error(exc.status, exc.message)
        return {"alert_id": alert_id, "state": st.as_json()}

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        with engine.connect() as con:
            con.execute(sa.text("SELECT 1"))
        return {"status": "ok", "version": mgaki.__version__}

    install_dashboard(app)  # /dashboard/* API and /ui/ pages (service/dashboard/routes.py)
    return app
