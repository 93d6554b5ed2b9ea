"""Alerts clinicians act on (issue 17 points 1-2): the workflow, modes and the randomised rollout, on SQLite and
PostgreSQL; every action audited in the hash chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dashboard_patient import dashboard_bundle, discharged_bundle
from fastapi.testclient import TestClient

from conftest import READER, WRITER, auth, make_config
from mgaki.research.alert_trial import Allocation, AllocationSettings, arm_at, verify
from mgaki.service import create_app
from mgaki.service.persistence.db import alerts, allocations, utcnow, verify_audit
from mgaki.service.persistence.workflow import alert_states

LOW_AGAIN = {"creatinine": [(-10.0, 0.9), (20.0, 0.9)], "magnesium": [(0.0, 1.5), (30.0, 2.0), (36.0, 1.2)]}


def _client(tmp: Path, database_url: str | None, **kw: Any) -> TestClient:
    cfg = make_config(tmp, **({"database_url": database_url} if database_url else {}), **kw)
    return TestClient(create_app(cfg), raise_server_exceptions=False)


@pytest.fixture
def wf(tmp_path: Path, database_url: str | None) -> Iterator[TestClient]:
    with _client(tmp_path, database_url) as c:
        for b in (dashboard_bundle(), discharged_bundle()):
            assert c.post("/fhir", json=b, headers=auth(WRITER)).status_code == 200
        yield c


def _get(c: TestClient, path: str) -> Any:
    r = c.get(path, headers=auth(READER))
    assert r.status_code == 200, r.text
    return r.json()


def _act(c: TestClient, alert_id: int, action: str, **body: Any) -> Any:
    return c.post(f"/alerts/{alert_id}/{action}", json=body or None, headers=auth(READER))


def _ids(res: dict[str, Any]) -> list[str]:
    return [p["patient_id"] for p in res["patients"]]


def test_default_view_is_what_needs_action(wf: TestClient) -> None:
    """Closed encounters (the MIMIC demo) still show their open alerts by default; 'critical' finds them."""
    default = _get(wf, "/dashboard/patients?with_alerts=true")
    assert default["scope"] == "action" and set(_ids(default)) == {"dash1", "gone"}
    assert _ids(_get(wf, "/dashboard/patients?severity=critical")) == ["dash1"]
    gone = _get(wf, "/patients/gone/alerts")["alerts"]
    assert gone and all(a["state"]["status"] == "open" for a in gone)
    for a in gone:  # resolved: no longer needs action, but still listed under 'all'
        r = _act(wf, a["id"], "resolve", reason="replaced orally before discharge")
        assert r.status_code == 200 and r.json()["state"]["status"] == "resolved", r.text
    assert _ids(_get(wf, "/dashboard/patients?with_alerts=true")) == ["dash1"]
    assert "gone" in _ids(_get(wf, "/dashboard/patients?scope=all&with_alerts=true"))


def test_acknowledge_snooze_assign_resolve_audited(wf: TestClient) -> None:
    held = _get(wf, "/patients/dash1/alerts")["alerts"]
    a = held[0]["id"]
    r = _act(wf, a, "acknowledge")
    assert r.status_code == 200 and r.json()["state"]["status"] == "acknowledged"
    assert _act(wf, a, "acknowledge").status_code == 409  # nothing changes: refused, not logged twice
    r = _act(wf, a, "assign", assignee="Dr Renal (nephrology)")
    assert r.json()["state"]["assignee"] == "Dr Renal (nephrology)" and r.json()["state"]["status"] == "acknowledged"
    # a snooze needs a reason and an expiry in the future, at most a week ahead
    assert _act(wf, a, "snooze", until=(utcnow() + timedelta(hours=4)).isoformat()).status_code == 422
    assert _act(wf, a, "snooze", reason="waiting for repeat level",
                until=(utcnow() - timedelta(hours=1)).isoformat()).status_code == 422
    assert _act(wf, a, "snooze", reason="x", until=(utcnow() + timedelta(days=9)).isoformat()).status_code == 422
    assert _act(wf, a, "assign").status_code == 422
    until = utcnow() + timedelta(hours=4)
    r = _act(wf, a, "snooze", reason="waiting for repeat level", until=until.isoformat())
    st = r.json()["state"]
    assert r.status_code == 200 and st["status"] == "snoozed" and st["reason"] == "waiting for repeat level"
    assert _get(wf, "/alerts?status=snoozed")["alerts"][0]["id"] == a
    with wf.app.state.engine.connect() as con:  # type: ignore[attr-defined]
        # the snooze expires: the alert needs action again
        assert alert_states(con, [a], until + timedelta(seconds=1))[a].status == "open"
        assert alert_states(con, [a], until - timedelta(seconds=1))[a].status == "snoozed"
    r = _act(wf, a, "resolve", reason="Mg replaced")
    assert r.json()["state"]["status"] == "resolved"
    hist = [h["action"] for h in r.json()["state"]["history"]]
    assert hist == ["acknowledge", "assign", "snooze", "resolve"]
    assert _act(wf, a, "reopen").json()["state"]["status"] == "open"
    assert _act(wf, 10**6, "acknowledge").status_code == 404
    assert wf.post(f"/alerts/{a}/delete", headers=auth(READER)).status_code == 422
    assert wf.post(f"/alerts/{a}/acknowledge").status_code == 401
    # every action is in the audit chain, with the patient and the action; the chain holds
    with wf.app.state.engine.connect() as con:  # type: ignore[attr-defined]
        rows = con.execute(sa.text("SELECT actor, endpoint, patient_id, detail FROM audit "
                                   "WHERE action = 'write' AND endpoint LIKE 'POST /alerts/%' ORDER BY seq")).all()
    assert [r.endpoint.rsplit("/", 1)[1] for r in rows] == ["acknowledge", "assign", "snooze", "resolve", "reopen"]
    assert {r.patient_id for r in rows} == {"dash1"} and {r.actor for r in rows} == {"nurse-station"}
    assert "waiting for repeat level" in rows[2].detail
    assert verify_audit(wf.app.state.engine).ok  # type: ignore[attr-defined]
    # the action log is append-only, as the audit is
    with pytest.raises(sa.exc.DBAPIError), wf.app.state.engine.begin() as con:  # type: ignore[attr-defined]
        con.execute(sa.text("UPDATE alert_actions SET action = 'resolve'"))


def test_seen_by_is_recorded_once_per_person(wf: TestClient) -> None:
    _get(wf, "/dashboard/patients/dash1/timeline")
    _get(wf, "/dashboard/patients/dash1/timeline")
    held = _get(wf, "/patients/dash1/alerts")["alerts"]
    assert held and all([s["who"] for s in a["state"]["seen_by"]] == ["nurse-station"] for a in held)
    with wf.app.state.engine.connect() as con:  # type: ignore[attr-defined]
        seen = con.execute(sa.text("SELECT count(*) FROM audit WHERE action = 'seen'")).scalar_one()
    assert seen == 1  # one audit row for the patient at the first sighting, none at the second


def test_refires_only_on_new_information(wf: TestClient) -> None:
    first = _get(wf, "/patients/gone/alerts")["alerts"]
    for a in first:
        _act(wf, a["id"], "resolve", reason="done")
    # the same data again: nothing new, the resolved alert stays resolved
    assert wf.post("/fhir", json=discharged_bundle(), headers=auth(WRITER)).json()["new_alerts"] == 0
    again = _get(wf, "/patients/gone/alerts")["alerts"]
    assert [a["id"] for a in again] == [a["id"] for a in first]
    assert all(a["state"]["status"] == "resolved" for a in again)
    # a new low result after a normal one is new information: a new, open alert
    r = wf.post("/fhir", json=dashboard_bundle("gone", LOW_AGAIN, open_encounter=False, doses=False),
                headers=auth(WRITER))
    assert r.json()["new_alerts"] >= 1
    fresh = [a for a in _get(wf, "/patients/gone/alerts")["alerts"] if a["id"] not in {b["id"] for b in first}]
    assert fresh and all(a["state"]["status"] == "open" for a in fresh)
    assert any(a["kind"] == "mg_out_of_range" and a["value"] == 1.2 for a in fresh)


def test_token_limited_to_other_patients_cannot_act(tmp_path: Path) -> None:
    other = {"name": "ward-7", "token": "ward7-token-0123456789", "roles": ["reader"], "patients": ["calm"]}
    cfg = make_config(tmp_path, tokens=[*make_config(tmp_path).model_dump()["tokens"], other])
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        c.post("/fhir", json=dashboard_bundle(), headers=auth(WRITER))
        a = c.get("/patients/dash1/alerts", headers=auth(READER)).json()["alerts"][0]["id"]
        r = c.post(f"/alerts/{a}/acknowledge", headers=auth(other["token"]))
        assert r.status_code == 404  # not revealed
        # the evaluation covers every patient: refused to a token limited to some
        assert c.get("/dashboard/evaluation", headers=auth(other["token"])).status_code == 403
        assert c.get("/dashboard/evaluation", headers=auth(READER)).status_code == 200


def test_silent_mode_is_stored_never_shown(tmp_path: Path, database_url: str | None) -> None:
    with _client(tmp_path, database_url, alerts={"modes": {"mg_falling": "silent", "no_mg_48h": "off"}}) as c:
        r = c.post("/fhir", json=dashboard_bundle(), headers=auth(WRITER))
        with c.app.state.engine.connect() as con:  # type: ignore[attr-defined]
            stored = con.execute(sa.select(alerts.c.id, alerts.c.kind, alerts.c.mode)).all()
        silent = [s for s in stored if s.kind == "mg_falling"]
        assert silent and all(s.mode == "silent" for s in silent)
        assert all(s.mode == "live" for s in stored if s.kind not in ("mg_falling", "no_mg_48h"))
        assert r.json()["new_alerts"] == sum(s.mode == "live" for s in stored)  # silent ones are not counted
        shown = {a["kind"] for a in c.get("/patients/dash1/alerts", headers=auth(READER)).json()["alerts"]}
        assert "mg_falling" not in shown and shown
        assert "mg_falling" not in {a["kind"] for a in c.get("/alerts", headers=auth(READER)).json()["alerts"]}
        tl = c.get("/dashboard/patients/dash1/timeline", headers=auth(READER)).json()
        assert "mg_falling" not in {a["kind"] for a in tl["alerts"]}
        assert c.post(f"/alerts/{silent[0].id}/acknowledge", headers=auth(READER)).status_code == 404


def test_randomised_rollout_recorded_reproducible(tmp_path: Path, database_url: str | None) -> None:
    settings = {"unit": "patient", "seed": 99, "block_size": 2, "label": "mg-trial"}
    with _client(tmp_path, database_url, alerts={"default": "randomised", "allocation": settings}) as c:
        for i in range(6):
            c.post("/fhir", json=dashboard_bundle(f"r{i}"), headers=auth(WRITER))
        c.post("/fhir", json=dashboard_bundle("r0"), headers=auth(WRITER))  # again: no second allocation
        eng = c.app.state.engine  # type: ignore[attr-defined]
        with eng.connect() as con:
            allocs = con.execute(sa.select(allocations).order_by(allocations.c.id)).all()
            stored = con.execute(sa.select(alerts.c.subject_id, alerts.c.mode, alerts.c.allocation_id)).all()
            audited = con.execute(sa.text("SELECT count(*) FROM audit WHERE action = 'allocate'")).scalar_one()
    assert sorted(a.unit_id for a in allocs) == [f"r{i}" for i in range(6)] and audited == 6
    s = AllocationSettings(**settings)
    assert {a.policy for a in allocs} == {s.policy_id()}
    # balanced in blocks of 2 within the stratum; every arm re-derived from the seed
    assert sorted(a.arm for a in allocs) == ["live"] * 3 + ["silent"] * 3
    assert verify(s, [Allocation(a.unit, a.unit_id, a.stratum, a.seq, a.arm) for a in allocs]) == []
    by_id = {a.id: a for a in allocs}
    for row in stored:  # each alert carries its patient's arm as its mode
        assert by_id[row.allocation_id].unit_id == row.subject_id and by_id[row.allocation_id].arm == row.mode
    # the first eligibility is recorded: the first alert's kind and time
    assert all(a.first_kind and a.first_time for a in allocs)
    # tampering is found: an arm that the seed does not give
    bad = allocs[0]
    flipped = "live" if bad.arm == "silent" else "silent"
    assert verify(s, [Allocation(bad.unit, bad.unit_id, bad.stratum, bad.seq, flipped)])


def test_allocation_lists_are_seeded_blocks() -> None:
    s = AllocationSettings(seed=5, block_size=4)
    arms = [arm_at(s, "care_unit=icu", i) for i in range(1, 41)]
    assert arms == [arm_at(AllocationSettings(seed=5, block_size=4), "care_unit=icu", i) for i in range(1, 41)]
    for b in range(10):  # every block of 4 holds 2 of each arm
        assert sorted(arms[4 * b:4 * b + 4]) == ["live", "live", "silent", "silent"]
    assert arms != [arm_at(AllocationSettings(seed=6, block_size=4), "care_unit=icu", i) for i in range(1, 41)]
    assert arms != [arm_at(s, "care_unit=ward", i) for i in range(1, 41)]  # strata have their own lists
    with pytest.raises(ValueError, match="multiple"):
        AllocationSettings(block_size=3)


def test_unknown_kind_in_modes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown alert kind"):
        make_config(tmp_path, alerts={"modes": {"mg_low_typo": "silent"}})
    with pytest.raises(ValueError, match="time zone"):
        make_config(tmp_path, timezone="Mars/Olympus")


def test_override_reasons_offered_and_counted(tmp_path: Path) -> None:
    """Point 5: the cards offer the coded override reasons; the EHR's feedback is stored and counted in the
    evaluation (CDS Hooks 2.0 feedback)."""
    from conftest import hook_request
    from mgaki.knowledge import load

    ev = load().evaluation
    with _client(tmp_path, None) as c:
        cards = c.post("/cds-services/mgaki-patient-view", json=hook_request("general_low_cheungpasitporn")).json()
        assert cards["cards"]
        for card in cards["cards"]:
            assert [r["code"] for r in card["overrideReasons"]] == [r.code for r in ev.override_reasons]
            assert {r["system"] for r in card["overrideReasons"]} == {ev.override_system}
        reason = cards["cards"][0]["overrideReasons"][1]
        fb = {"feedback": [
            {"card": cards["cards"][0]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-12-06T09:00:00Z",
             "overrideReason": {"reason": reason, "userComment": "level due at 14:00"}},
            {"card": "c2", "outcome": "overridden", "outcomeTimestamp": "2026-12-06T09:01:00Z",
             "overrideReason": {"reason": reason}},
            {"card": "c3", "outcome": "accepted", "outcomeTimestamp": "2026-12-06T09:02:00Z",
             "acceptedSuggestions": [{"id": "s1"}]}]}
        assert c.post("/cds-services/mgaki-patient-view/feedback", json=fb).json() == {"stored": 3}
        res = c.get("/dashboard/evaluation", headers=auth(READER)).json()
        assert res["result"]["feedback"]["services"] == [
            {"service": "mgaki-patient-view", "accepted": 1, "overridden": 2}]
        assert res["result"]["feedback"]["override_reasons"] == [
            {"code": reason["code"], "display": reason["display"], "n": 2}]
        assert "CDS Hooks feedback" in res["html"] and reason["display"] in res["html"]


def test_evaluate_cli_on_the_service_data(tmp_path: Path) -> None:
    """`mgaki evaluate --config`: the service's own database (modes, allocations) and event store."""
    import yaml
    from typer.testing import CliRunner

    from mgaki.cli import app

    settings = {"default": "randomised", "allocation": {"seed": 3, "block_size": 2}}
    with _client(tmp_path, None, alerts=settings) as c:
        for i in range(4):
            c.post("/fhir", json=dashboard_bundle(f"e{i}"), headers=auth(WRITER))
        cfg = c.app.state.cfg  # type: ignore[attr-defined]
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(cfg.data_dir), "alerts": settings}))
    r = CliRunner().invoke(app, ["evaluate", "--config", str(path), "-o", str(tmp_path / "ev"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["alerts"] > 0 and 0 < res["alerts_shown"] < res["alerts"]  # both arms present
    assert any(c["n_live"] and c["n_silent"] for c in res["comparisons"])
    assert res["feedback"] == {"services": [], "override_reasons": []}
    assert (tmp_path / "ev" / "evaluation.html").is_file()


def test_seen_marks_wait_for_the_write_lock_while_others_write(tmp_path: Path) -> None:
    """``record_seen`` (and ``record_action``) read, then write. On SQLite a plain BEGIN takes a read snapshot
    first, and when another connection commits before the write the upgrade fails at once with "database is
    locked" (no busy wait): the patient page, which marks its alerts seen while the feed and the other panels'
    audit rows commit, answered 503 (CI, on a loaded machine). They begin IMMEDIATE now, as every other writer:
    300 seen marks beside a stream of audit writes all succeed (273 of 300 failed before)."""
    import threading

    from mgaki.service.persistence.db import make_engine, upgrade, write_audit
    from mgaki.service.persistence.workflow import record_seen

    eng = make_engine(f"sqlite:///{tmp_path / 'service.db'}")
    upgrade(eng)
    stop = threading.Event()

    def audit_stream() -> None:
        while not stop.is_set():
            write_audit(eng, "lab-feed", "write", "POST /fhir", ["p2"])

    writer = threading.Thread(target=audit_stream)
    writer.start()
    try:
        firsts = sum(record_seen(eng, f"nurse{i}", [(1, "p1")]) for i in range(300))
    finally:
        stop.set()
        writer.join()
        eng.dispose()
    assert firsts == 300
