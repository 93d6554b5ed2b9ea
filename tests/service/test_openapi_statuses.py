"""The OpenAPI document lists the error statuses the API really returns (issue 16 point 9).

Each status is provoked on a real call and must be documented for that operation; 409 and 413 (answered by
the ingest conflict check and the body limits) are checked as documented on the operations that answer them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from conftest import READER, WRITER, auth, hook_request, make_config
from mgaki.service import create_app


def _documented(doc: dict[str, Any], path: str, method: str) -> set[str]:
    return set(doc["paths"][path][method]["responses"])


def test_every_status_the_api_returns_is_in_the_openapi_document(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, sqlite_busy_timeout_s=0.2)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        doc = c.get("/openapi.json").json()
        no_prefetch = hook_request("general_low_cheungpasitporn")
        no_prefetch["prefetch"] = {}
        calls: list[tuple[str, str, int, Any]] = [
            ("/fhir", "post", 400, lambda: c.post("/fhir", content=b"{not json",
                                                  headers={**auth(WRITER), "Content-Type": "application/fhir+json"})),
            ("/fhir", "post", 415, lambda: c.post("/fhir", content=b"{}", headers={**auth(WRITER),
                                                                                    "Content-Type": "text/plain"})),
            ("/health", "get", 400, lambda: c.get("/health?x=%00")),
            ("/alerts", "get", 401, lambda: c.get("/alerts")),
            ("/alerts", "get", 403, lambda: c.get("/alerts", headers=auth(WRITER))),
            ("/fhir", "post", 403, lambda: c.post("/fhir", json={}, headers=auth(READER))),
            ("/patients/{patient_id}/alerts", "get", 422,
             lambda: c.get("/patients/" + "p" * 65 + "/alerts", headers=auth(READER))),
            ("/dashboard/patients/{patient_id}/timeline", "get", 404,
             lambda: c.get("/dashboard/patients/nobody/timeline", headers=auth(READER))),
            ("/cds-services/{service_id}", "post", 400,
             lambda: c.post("/cds-services/unknown", json=hook_request("general_low_cheungpasitporn"))),
            ("/cds-services/{service_id}", "post", 412,
             lambda: c.post("/cds-services/mgaki-patient-view", json=no_prefetch)),
        ]
        for path, method, want, call in calls:
            got = call().status_code
            assert got == want, (path, method, got)
            assert str(want) in _documented(doc, path, method), (path, method, want)
        # 503: SQLite's write lock held elsewhere past the busy timeout (every call writes its audit row)
        holder = sqlite3.connect(cfg.data_dir / "mgaki.db", isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            r = c.get("/alerts", headers=auth(READER))
            assert r.status_code == 503 and r.headers["retry-after"]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert "503" in _documented(doc, "/alerts", "get")
    for path in ("/fhir", "/fhir/$import-ndjson"):
        assert {"400", "401", "403", "408", "409", "413", "415", "429", "503"} <= _documented(doc, path, "post")
    assert {"400", "401", "412", "413", "502", "503"} <= _documented(doc, "/cds-services/{service_id}", "post")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path.startswith("/dashboard/patients/{patient_id}"):
                assert "404" in op["responses"], (path, method)
            if method == "post":
                assert "413" in op["responses"], (path, method)
