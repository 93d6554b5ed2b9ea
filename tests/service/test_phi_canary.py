"""No PHI in any log record (issue 16 point 5), on SQLite and PostgreSQL, through a real uvicorn server.

A unique canary string is sent as a patient id, a name, a user, a card, a token, a query value and an HL7
field through every endpoint, on success and on the failure paths: 400, 401, 403, 404, 422, NUL, and 500s
from a database that refuses writes. Every log record of every logger (uvicorn's, SQLAlchemy's at INFO,
the service's), formatted with its traceback, must be free of it. Before: on PostgreSQL every 500 from a
database error logged a traceback with the SQL parameters; SQLAlchemy's own log carried them on both.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from hl7.client import MLLPClient

from conftest import READER, WRITER, bundle, free_port, hook_request, make_config, refuse_inserts
from mgaki.service import create_app
from mgaki.service.ingest.hl7 import Result, oru_r01, read_ack

CANARY = f"CANARY{uuid.uuid4().hex[:12]}"
LIMITED = "limited-token-0123456789"
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def served(tmp_path, database_url: str | None) -> Iterator[tuple[str, int, Any]]:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, database_url=database_url, mllp_port=0,
                      tokens=[{"name": "ward", "token": READER, "roles": ["reader"]},
                              {"name": "feed", "token": WRITER, "roles": ["writer"]},
                              {"name": "one-bed", "token": LIMITED, "roles": ["reader"], "patients": ["someone"]}])
    app = create_app(cfg)
    port = free_port()
    # log_config=None: uvicorn's records propagate to the root logger, where the test captures them
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="debug",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app.state.mllp.port, app.state.engine
    finally:
        server.should_exit = True
        thread.join(60)


def _bundle(pid: str = CANARY) -> dict[str, Any]:
    b = bundle("general_low_cheungpasitporn")
    b["type"] = "batch"
    b = json.loads(json.dumps(b).replace('"Patient/p1"', f'"Patient/{pid}"'))
    b["entry"][0]["resource"].update(id=pid, name=[{"family": CANARY, "given": [CANARY]}],
                                     identifier=[{"system": "urn:mrn", "value": CANARY}])
    for e in b["entry"][1:]:
        e["resource"]["id"] += pid
    b["entry"].append({"resource": {"resourceType": "Encounter", "id": f"e{pid}", "status": "in-progress",
                                    "subject": {"reference": f"Patient/{pid}"},
                                    "period": {"start": "2024-02-29T08:00:00+00:00"}}})
    return b


def _text(record: logging.LogRecord) -> str:
    return logging.Formatter("%(name)s %(levelname)s %(message)s").format(record)  # with the traceback, if any


def test_the_canary_reaches_no_log_record(served: tuple[str, int, Any], caplog: pytest.LogCaptureFixture) -> None:
    base, mllp_port, engine = served
    caplog.set_level(logging.DEBUG)  # every logger at DEBUG
    caplog.set_level(logging.INFO, logger="sqlalchemy")  # and SQLAlchemy's statement log on, as an operator might
    rd, wr, lim = ({"Authorization": f"Bearer {t}"} for t in (READER, WRITER, LIMITED))
    cds = hook_request("general_low_cheungpasitporn")
    cds["context"].update(patientId=CANARY, userId=f"Practitioner/{CANARY}")
    cds["hookInstance"] = CANARY
    cds["prefetch"]["patient"].update(id=CANARY, name=[{"family": CANARY}])
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=base, timeout=60) as c:
        def call(name: str, method: str, path: str, **kw: Any) -> None:
            statuses[name] = c.request(method, path, **kw).status_code

        call("fhir", "POST", "/fhir", json=_bundle(), headers=wr)
        nd = "\n".join(json.dumps(e["resource"]) for e in _bundle()["entry"]).replace(CANARY, CANARY + "n")
        call("ndjson", "POST", "/fhir/$import-ndjson", content=nd,
             headers={**wr, "Content-Type": "application/fhir+ndjson"})
        call("cds", "POST", "/cds-services/mgaki-patient-view", json=cds)
        call("feedback", "POST", "/cds-services/mgaki-patient-view/feedback", json={"feedback": [
            {"card": CANARY, "outcome": "overridden", "outcomeTimestamp": "2024-03-01T08:00:00Z",
             "overrideReason": {"reason": {"code": CANARY}, "userComment": CANARY}}]})
        call("alerts", "GET", f"/alerts?kind={CANARY}", headers=rd)
        call("patient_alerts", "GET", f"/patients/{CANARY}/alerts", headers=rd)
        call("list", "GET", f"/dashboard/patients?q={CANARY}", headers=rd)
        call("timeline", "GET", f"/dashboard/patients/{CANARY}/timeline", headers=rd)
        call("assessment", "GET", f"/dashboard/patients/{CANARY}/assessment", headers=rd)
        call("plan", "POST", f"/dashboard/patients/{CANARY}/dose-plan", json={"loading_g": 2}, headers=rd)
        # failure paths
        call("404", "GET", f"/dashboard/patients/{CANARY}x/timeline", headers=rd)
        call("401", "GET", f"/patients/{CANARY}/alerts", headers={"Authorization": f"Bearer {CANARY}"})
        call("403", "GET", f"/patients/{CANARY}/alerts", headers=lim)
        call("400", "POST", "/fhir", content=f'{{"resourceType": "{CANARY}"',
             headers={**wr, "Content-Type": "application/fhir+json"})
        call("422", "GET", f"/alerts?limit={CANARY}", headers=rd)
        call("nul", "GET", f"/patients/{CANARY}%00/alerts", headers=rd)
        call("cds_422", "POST", "/cds-services/mgaki-patient-view", content=json.dumps({"hook": CANARY}))
        with MLLPClient("127.0.0.1", mllp_port) as mllp:
            msg = oru_r01(CANARY, [Result("19123-9", 1.0, "mg/dL", T0)], visit=CANARY, admitted=T0,
                          control_id=CANARY, sending_app=CANARY)
            statuses["hl7"] = 200 if read_ack(mllp.send_message(msg)).code == "AA" else 0
            statuses["hl7_nul"] = 400 if read_ack(mllp.send_message(msg.replace("|F|", "|F\x00|"))).code == "AE" \
                else 0
        # and the database refuses writes: 500s
        refuse_inserts(engine, "audit")  # every endpoint that audits now fails: 500s
        call("500_alerts", "GET", f"/patients/{CANARY}/alerts", headers=rd)
        call("500_cds", "POST", "/cds-services/mgaki-patient-view", json=cds)
        call("500_timeline", "GET", f"/dashboard/patients/{CANARY}/timeline", headers=rd)
        call("500_fhir", "POST", "/fhir", json=_bundle(CANARY + "b"), headers=wr)
        call("after_500", "GET", "/health")  # the same keep-alive connection still answers
    assert statuses == {
        "fhir": 200, "ndjson": 200, "cds": 200, "feedback": 200, "alerts": 200, "patient_alerts": 200, "list": 200,
        "timeline": 200, "assessment": 200, "plan": 200, "404": 404, "401": 401, "403": 403, "400": 400, "422": 422,
        "nul": 400, "cds_422": 422, "hl7": 200, "hl7_nul": 400, "500_alerts": 500, "500_cds": 500,
        "500_timeline": 500, "500_fhir": 500, "after_500": 200}
    # not ours: the test's own clients; and uvicorn's access log, which `mgaki serve` turns off (access_log=False:
    # uvicorn then emits nothing) but which pytest's capture handler, attached to every logger, turns back on
    others = ("httpx", "httpcore", "hl7.client", "uvicorn.access")
    records = [r for r in caplog.records if not r.name.startswith(others)]
    texts = [_text(r) for r in records]
    assert any(t.startswith("sqlalchemy.engine") for t in texts)  # SQLAlchemy's statement log was on
    assert any("internal error" in t and "GET /patients/{patient_id}/alerts" in t for t in texts)  # class + route
    leaks = [t[:300] for t in texts if CANARY in t]
    assert not leaks, leaks
