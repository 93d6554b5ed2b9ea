"""The error statuses each operation can answer, written into the OpenAPI document (issue 16 point 9).

FastAPI documents 200 and 422 only; a client generated from the document, or a conformance checker,
must also know the refusals. Every status here is one the service really sends (tested against real
calls in tests/service/test_openapi_statuses.py):

- 400 bad input (malformed body, NUL in the path, query or body, an unknown CDS service), 401 missing or
  bad credentials, 403 a role or a patient refused, 413 a body over its limit, 503 overload or a busy
  database (with ``Retry-After``);
- 404 a patient the service holds nothing for (dashboard); 409 ingested data that conflicts with what is
  stored (a resource whose patient changed); 412 prefetch the CDS service needs and cannot fetch,
  502 the EHR's FHIR server failing;
- at the edge (``service/limits.py``): 408 headers or body not received in time, 429 a client over its
  connection cap (both on every operation under ``mgaki serve``), 415 an ingest body of another media type
  or encoding.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STATUS_TEXT", "document_statuses", "statuses_for"]

STATUS_TEXT = {
    "400": "Bad request: the body, path or query is malformed or not accepted (the message names the problem)",
    "401": "Missing or invalid credentials (bearer token, or the CDS Hooks JWT)",
    "403": "The credentials lack the role, or the patient, this call needs",
    "404": "The service holds no data for this patient",
    "408": "The request's headers or body did not arrive in time (the connection is closed)",
    "409": "The data conflict with what is stored (e.g. a resource that now names another patient)",
    "412": "Prefetch the CDS service needs is missing and cannot be fetched from the FHIR server",
    "413": "The request body is larger than this endpoint accepts",
    "415": "The body's media type or encoding is not accepted here (the message names what is)",
    "429": "Too many open connections from this client",
    "502": "The EHR's FHIR server failed while fetching prefetch",
    "503": "Overloaded or the database busy: retry after the Retry-After header's seconds",
}

# {"error": "..."}, or a FHIR OperationOutcome on the ingest endpoints
_ERROR_SCHEMA = {"type": "object"}


def statuses_for(path: str, method: str) -> tuple[str, ...]:
    """The error statuses ``method path`` can answer, besides 200 and FastAPI's 422."""
    edge = {"408", "429"}  # header/body timeout, connection cap: any request under `mgaki serve`
    if path in ("/health", "/cds-services") and method == "get":
        return tuple(sorted({"400", "503"} | edge))  # no credentials: a NUL in the query, or the database down
    out = {"400", "401", "403", "503"} | edge
    if method in ("post", "put"):
        out.add("413")
    if path.startswith("/dashboard/patients/{patient_id}"):
        out.add("404")
    if path in ("/fhir", "/fhir/$import-ndjson"):
        out.update({"409", "415"})
    if path == "/cds-services/{service_id}":
        out.update({"412", "502"})
        out.discard("403")  # a CDS client has no role: its JWT is accepted or refused (401)
    if path == "/cds-services/{service_id}/feedback":
        out.discard("403")
    return tuple(sorted(out))


def document_statuses(doc: dict[str, Any]) -> dict[str, Any]:
    """Add each operation's error statuses (``statuses_for``) to an OpenAPI document, in place."""
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            for code in statuses_for(path, method):
                op["responses"].setdefault(code, {
                    "description": STATUS_TEXT[code],
                    "content": {"application/json": {"schema": _ERROR_SCHEMA}}})
    return doc
