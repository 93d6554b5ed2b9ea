"""Per-patient token limits: check_patient on patient endpoints (403, audited), GET /alerts filtered, admin sees all."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from conftest import READER, auth, make_config
from mgaki.service import create_app
from mgaki.service.config import load_config
from mgaki.service.persistence.db import alerts
from mgaki.service.security import AuthError, Principal, check_patient

WARD = "ward-a-token-0123456789"
ADMIN = "admin-token-0123456789"


@pytest.fixture
def lclient(tmp_path):
    cfg = make_config(tmp_path, tokens=[
        {"name": "ward-a", "token": WARD, "roles": ["reader"], "patients": ["p1", "p3"]},
        {"name": "nurse-station", "token": READER, "roles": ["reader"]},
        {"name": "root", "token": ADMIN, "roles": ["admin"], "patients": ["p1"]},  # admin: the limit is ignored
    ])
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        t = datetime(2024, 3, 1, 8, tzinfo=UTC).replace(tzinfo=None)  # the table stores naive UTC
        with c.app.state.engine.begin() as con:
            con.execute(sa.insert(alerts), [
                {"subject_id": s, "kind": "hypomagnesemia", "time": t, "severity": "warning", "emitted_at": t}
                for s in ("p1", "p2", "p3", "p2")])
        yield c


def subjects(r) -> list[str]:
    assert r.status_code == 200, r.text
    return sorted(a["subject_id"] for a in r.json()["alerts"])


def test_patient_endpoint_allowed_and_forbidden_is_audited(lclient):
    assert subjects(lclient.get("/patients/p1/alerts", headers=auth(WARD))) == ["p1"]
    r = lclient.get("/patients/p2/alerts", headers=auth(WARD))
    assert r.status_code == 403 and "not allowed this patient" in r.json()["error"]
    with lclient.app.state.engine.connect() as con:
        rows = con.execute(sa.text("SELECT actor, action, endpoint, patient_id FROM audit ORDER BY id")).all()
    assert rows == [("ward-a", "read", "GET /patients/{patient_id}/alerts", "p1"),
                    ("ward-a", "denied", "GET /patients/{patient_id}/alerts", "p2")]


def test_alert_list_is_filtered_to_the_allowed_patients(lclient):
    assert subjects(lclient.get("/alerts", headers=auth(WARD))) == ["p1", "p3"]
    assert subjects(lclient.get("/alerts", headers=auth(READER))) == ["p1", "p2", "p2", "p3"]
    assert subjects(lclient.get("/alerts", headers=auth(ADMIN))) == ["p1", "p2", "p2", "p3"]
    assert subjects(lclient.get("/patients/p2/alerts", headers=auth(ADMIN))) == ["p2", "p2"]


def test_check_patient_function():
    check_patient(Principal("any", frozenset({"reader"})), "p9")  # no limit: allowed
    limited = Principal("ward", frozenset({"reader"}), frozenset({"p1"}))
    check_patient(limited, "p1")
    with pytest.raises(AuthError) as exc:
        check_patient(limited, "p9")
    assert (exc.value.status, exc.value.actor, exc.value.patient_id) == (403, "ward", "p9")


def test_patient_limits_from_the_environment():
    cfg = load_config(env={"MGAKI_TOKENS": '[{"name": "w", "token": "' + WARD + '", "roles": ["reader"], '
                                           '"patients": ["p1"]}]'})
    assert cfg.tokens[0].patients == ["p1"]
