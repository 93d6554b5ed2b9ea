"""Overload is answered, not suffered: in-flight cap -> 503 with Retry-After, a gone client gets no work,
a SQLite lock timeout -> 503 (never a 500), replays refused across connections, and the pure ASGI logger."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import mgaki.service.app as service_app
from conftest import READER, auth, hook_request, make_config
from mgaki.service import create_app
from mgaki.service.cds.models import CdsResponse
from mgaki.service.persistence.db import make_engine, upgrade
from mgaki.service.security import AuthError, CdsCaller, record_jti

URL = "/cds-services/mgaki-patient-view"


def test_in_flight_cap_sheds_with_503_and_retry_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cap 1: while one call is being assessed, the others get a 503 at once (not queued, not a 500)."""
    entered, release = threading.Event(), threading.Event()
    real = service_app.call_service

    def slow_call(*args: Any, **kw: Any) -> CdsResponse:
        entered.set()
        assert release.wait(30)
        return real(*args, **kw)

    monkeypatch.setattr(service_app, "call_service", slow_call)
    app = create_app(make_config(tmp_path, cds_max_in_flight=1, retry_after_s=2))
    body = hook_request("general_low_cheungpasitporn")

    async def scenario() -> tuple[httpx.Response, list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            first = asyncio.create_task(c.post(URL, json=body))
            while not entered.is_set():
                await asyncio.sleep(0.01)
            shed = await asyncio.gather(*(c.post(URL, json=body) for _ in range(3)))
            release.set()
            done = await first
            entered.clear()
            after = await c.post(URL, json=body)  # the slot was given back
            return done, shed, after

    done, shed, after = asyncio.run(scenario())
    assert done.status_code == 200 and after.status_code == 200, (done.text, after.text)
    for r in shed:
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert "overloaded" in r.json()["error"] and "1 CDS calls in progress" in r.json()["error"]
    with app.state.engine.connect() as con:  # only the admitted calls read data, so only they are audited
        assert con.execute(sa.text("SELECT count(*) FROM audit")).scalar_one() == 2


def _scope() -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": URL, "raw_path": URL.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"t"), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}


@pytest.mark.parametrize("messages", [
    [{"type": "http.disconnect"}],  # gone while the body was being read
    [{"type": "http.request", "body": b"{}", "more_body": False}, {"type": "http.disconnect"}],  # gone after
])
def test_no_work_for_a_client_that_has_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            messages: list[dict[str, Any]]) -> None:
    calls: list[object] = []
    monkeypatch.setattr(service_app, "call_service", lambda *a, **k: calls.append(a))
    app = create_app(make_config(tmp_path))
    if len(messages) == 2:
        messages[0]["body"] = json.dumps(hook_request("general_low_cheungpasitporn")).encode()
    queue = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(_scope(), receive, send))
    assert calls == []
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    with app.state.engine.connect() as con:
        assert con.execute(sa.text("SELECT count(*) FROM audit")).scalar_one() == 0


def test_sqlite_lock_timeout_is_503_not_500(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, sqlite_busy_timeout_s=0.2, retry_after_s=3)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as client:
        holder = sqlite3.connect(cfg.data_dir / "mgaki.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holding SQLite's write lock
        try:
            r = client.post(URL, json=hook_request("general_low_cheungpasitporn"))
            assert r.status_code == 503 and r.headers["retry-after"] == "3", r.text
            assert "database busy" in r.json()["error"]
            r = client.get("/alerts", headers=auth(READER))  # its audit row cannot be written either
            assert r.status_code == 503
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert client.post(URL, json=hook_request("general_low_cheungpasitporn")).status_code == 200


def test_other_database_errors_stay_500(tmp_path: Path) -> None:
    """Only a lock timeout is overload; a broken database is still an internal error (message not leaked)."""
    cfg = make_config(tmp_path)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as client:
        with client.app.state.engine.begin() as con:
            con.execute(sa.text("DROP TABLE audit"))
        r = client.post(URL, json=hook_request("general_low_cheungpasitporn"))
        assert r.status_code == 500 and r.json() == {"error": "internal error"}


def test_jti_replay_refused_across_connections(tmp_path: Path) -> None:
    """Two engines (as two worker processes would hold): the (iss, jti) key lets exactly one record win."""
    db = f"sqlite:///{tmp_path / 'j.db'}"
    a, b = make_engine(db), make_engine(db)
    upgrade(a)
    cfg = make_config(tmp_path)
    caller = CdsCaller("https://ehr.example", "jti-1", datetime(2100, 1, 1, tzinfo=UTC).replace(tzinfo=None))
    with a.begin() as con:
        record_jti(con, cfg, caller)
    with pytest.raises(AuthError, match="replay"), b.begin() as con:
        record_jti(con, cfg, caller)
    with b.connect() as con:
        assert con.execute(sa.text("SELECT count(*) FROM cds_jti")).scalar_one() == 1


def test_request_log_is_pure_asgi_and_names_templates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=service_app.log.name)
    app = create_app(make_config(tmp_path))
    assert any(m.cls is service_app.RequestLog for m in app.user_middleware)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.get("/patients/MRN-4711/alerts", headers=auth(READER))
        client.post(URL, content=b"{oops", headers={"content-type": "application/json"})
        client.get("/nowhere/MRN-4711")
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == service_app.log.name)
    assert "GET /patients/{patient_id}/alerts -> 200" in text
    assert "POST /cds-services/{service_id} -> 422" in text
    assert "GET <unmatched> -> 404" in text
    assert "MRN-4711" not in text and "oops" not in text


def test_cds_body_errors_name_the_problem_as_fastapi_did(client: TestClient) -> None:
    """The CDS call decodes its own body (pydantic-core); the 422s keep FastAPI's shape and name the field."""
    req = hook_request("general_low_cheungpasitporn")
    del req["hookInstance"]
    r = client.post(URL, json=req)
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert (err["loc"], err["msg"], err["type"]) == (["body", "hookInstance"], "Field required", "missing")
    r = client.post(URL, content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    assert r.json()["detail"][0]["input"] == {}  # the raw bytes are not echoed back
    r = client.post(URL, json={**hook_request("general_low_cheungpasitporn"), "context": []})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "context"]


@pytest.mark.parametrize("threads", [1, 3])
def test_cds_calls_computed_at_most_cds_threads_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         threads: int) -> None:
    """cds_threads 1 (default): admitted calls are computed one after another, never two sharing the GIL."""
    lock = threading.Lock()
    running, peak = [0], [0]
    real = service_app.call_service

    def tracked(*args: Any, **kw: Any) -> CdsResponse:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            threading.Event().wait(0.2)  # long enough for the other calls to arrive meanwhile
            return real(*args, **kw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(service_app, "call_service", tracked)
    app = create_app(make_config(tmp_path, cds_threads=threads, cds_max_in_flight=8))
    body = hook_request("general_low_cheungpasitporn")

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await asyncio.gather(*(c.post(URL, json=body) for _ in range(4)))

    assert [r.status_code for r in asyncio.run(scenario())] == [200] * 4
    assert peak[0] == (1 if threads == 1 else 3)
