"""Missing prefetch fetched from the client's fhirServer: a real HTTP FHIR stub (uvicorn in a thread) that
checks the bearer token and pages its searches; its failures must become 412/502 answers, never 500."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from conftest import bundle, free_port, hook_request, make_config
from mgaki.service import create_app
from mgaki.service.cds.models import CdsResponse
from mgaki.service.config import load_config

TOKEN = "fhir-access-token-42"
VIGNETTE = "general_low_cheungpasitporn"


def _stub(seen: list[tuple[str, str | None]]) -> FastAPI:
    res = [e["resource"] for e in bundle(VIGNETTE)["entry"]]
    app = FastAPI()

    def searchset(entries: list[dict[str, Any]], nxt: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                               "entry": [{"resource": r} for r in entries]}
        if nxt:
            out["link"] = [{"relation": "self", "url": "x"}, {"relation": "next", "url": nxt}]
        return out

    @app.middleware("http")
    async def token(request: Request, call_next: Any) -> Any:
        seen.append((request.url.path + ("?" + request.url.query if request.url.query else ""),
                     request.headers.get("authorization")))
        if request.url.path.startswith("/fhir/") and request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
        return await call_next(request)

    @app.get("/fhir/Patient/{pid}")
    def patient(pid: str) -> Any:
        p = next(r for r in res if r["resourceType"] == "Patient")
        return p if pid == p["id"] else JSONResponse({"resourceType": "OperationOutcome"}, status_code=404)

    @app.get("/fhir/Observation")
    def observations(request: Request, page: int = 1) -> Any:
        obs = [r for r in res if r["resourceType"] == "Observation"]
        if page == 1:  # one observation per page: the service must follow next links
            return searchset(obs[:1], f"{request.base_url}fhir/Observation?page=2")
        return searchset(obs[page - 1:page], f"{request.base_url}fhir/Observation?page={page + 1}"
                         if page < len(obs) else None)

    @app.get("/fhir/{rtype}")
    def other(rtype: str) -> Any:
        return searchset([r for r in res if r["resourceType"] == rtype])

    @app.get("/broken/{rest:path}")
    def broken(rest: str) -> Any:
        return JSONResponse({"error": "boom"}, status_code=503)

    @app.get("/endless/{rest:path}")
    def endless(request: Request, rest: str) -> Any:
        return searchset([], f"{request.base_url}endless/Observation?again=1")

    @app.get("/offsite/{rest:path}")
    def offsite(rest: str) -> Any:
        return searchset([], "http://elsewhere.example/fhir/Observation?page=2")

    @app.get("/slow/{rest:path}")
    def slow(rest: str) -> Any:
        time.sleep(3.0)  # well past the client timeout below, however loaded the machine
        return searchset([])

    @app.get("/garbage/{rest:path}")
    def garbage(rest: str) -> Any:
        return JSONResponse(["not", "fhir"])

    return app


@pytest.fixture(scope="module")
def fhir() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_stub(seen), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", ws="none", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)
    assert server.started, "FHIR stub did not start"
    yield f"http://127.0.0.1:{port}", seen
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def fclient(tmp_path, fhir):
    base = fhir[0]
    paths = ("fhir", "broken", "endless", "offsite", "slow", "garbage")
    cfg = make_config(tmp_path, fhir_servers=[f"{base}/{p}" for p in paths] + ["http://127.0.0.1:9/fhir"],
                      fhir_timeout_s=1.0, fhir_max_pages=5)  # 0.5 s timed out a quick stub on a loaded machine
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        yield c


def without_prefetch(server: str, token: str = TOKEN, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    req = hook_request(VIGNETTE)
    req["prefetch"] = {k: v for k, v in req["prefetch"].items() if k in keep}
    req["fhirServer"] = server
    req["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                "scope": "patient/*.read", "subject": "mgaki"}
    return req


def test_missing_prefetch_is_fetched_with_the_token_and_paged(fclient, fhir):
    base, seen = fhir
    seen.clear()
    r = fclient.post("/cds-services/mgaki-patient-view", json=without_prefetch(f"{base}/fhir"))
    assert r.status_code == 200, r.text
    fetched = CdsResponse.model_validate(r.json())
    local = CdsResponse.model_validate(fclient.post("/cds-services/mgaki-patient-view",
                                                    json=hook_request(VIGNETTE)).json())
    assert fetched.cards[0].summary == local.cards[0].summary  # same record, same advice
    assert fetched.cards[0].summary.startswith("Mg 1.40 mg/dL")  # the Mg came from page 2
    paths = [p for p, _ in seen]
    assert "/fhir/Patient/p1" in paths and "/fhir/Observation?page=2" in paths
    assert any(p.startswith("/fhir/MedicationAdministration?subject=p1") for p in paths)
    assert {a for _, a in seen} == {f"Bearer {TOKEN}"}


def test_only_missing_keys_are_fetched(fclient, fhir):
    base, seen = fhir
    seen.clear()
    r = fclient.post("/cds-services/mgaki-patient-view",
                     json=without_prefetch(f"{base}/fhir", keep=("patient", "observations")))
    assert r.status_code == 200, r.text
    assert sorted(p.split("?")[0] for p, _ in seen) == ["/fhir/MedicationAdministration", "/fhir/MedicationRequest"]


@pytest.mark.parametrize("server, token, status, msg", [
    ("/fhir", "wrong-token", 412, "refused the fhirAuthorization token"),
    ("/other", TOKEN, 412, "allow-list"),
    ("/broken", TOKEN, 502, "HTTP 503"),
    ("/endless", TOKEN, 412, "more than 5 pages"),
    ("/offsite", TOKEN, 502, "next link leaves"),
    ("/slow", TOKEN, 502, "timed out"),
    ("/garbage", TOKEN, 502, "no FHIR resource"),
])
def test_fhir_server_failures_are_clear_4xx_or_502(fclient, fhir, server, token, status, msg):
    r = fclient.post("/cds-services/mgaki-patient-view", json=without_prefetch(fhir[0] + server, token))
    assert r.status_code == status and msg in r.json()["error"], r.text


def test_unreachable_server_and_no_server(fclient):
    r = fclient.post("/cds-services/mgaki-patient-view", json=without_prefetch("http://127.0.0.1:9/fhir"))
    assert r.status_code == 502 and "unreachable" in r.json()["error"]
    req = hook_request(VIGNETTE)
    req["prefetch"]["observations"] = None
    r = fclient.post("/cds-services/mgaki-patient-view", json=req)
    assert r.status_code == 412 and "'observations' missing" in r.json()["error"]


def test_allow_list_from_the_environment():
    cfg = load_config(env={"MGAKI_FHIR_SERVERS": '["https://ehr.example.org/fhir"]'})
    assert cfg.fhir_servers == ["https://ehr.example.org/fhir"]
