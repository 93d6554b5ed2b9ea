"""POST /fhir by resource identity and version: resend, update, entered-in-error, across a restart."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import READER, WRITER, auth, make_config
from mgaki.errors import InputError
from mgaki.events import EventStore
from mgaki.service import create_app, load_config


def _bundle(value: float, version: str, status: str = "final") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-01-01"}},
        {"resource": {"resourceType": "Encounter", "id": "e1", "status": "in-progress", "class": {"code": "IMP"},
                      "subject": {"reference": "Patient/p1"}, "period": {"start": "2024-03-01T06:00:00Z"}}},
        {"resource": {"resourceType": "Observation", "id": "mg-1", "meta": {"versionId": version}, "status": status,
                      "code": {"coding": [{"system": "http://loinc.org", "code": "19123-9"}]},
                      "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
                      "effectiveDateTime": "2024-03-01T08:00:00Z",
                      "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                        "code": "mg/dL"}}}]}


def _mg(store: EventStore) -> list[tuple[str, float]]:
    return [(r["source"], r["numeric_value"]) for r in store.read("events").to_pylist()]


def test_fhir_versions_resend_update_void_and_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path)
    store = EventStore(cfg.data_dir / "events")
    with TestClient(create_app(cfg)) as c:
        r = c.post("/fhir", json=_bundle(1.0, "1"), headers=auth(WRITER)).json()
        assert r["added"]["events"] == 1 and r["new_alerts"] >= 1
        again = c.post("/fhir", json=_bundle(1.0, "1"), headers=auth(WRITER)).json()
        assert sum(again["added"].values()) == 0 and again["superseded"] == 0
        upd = c.post("/fhir", json=_bundle(2.0, "2"), headers=auth(WRITER)).json()
        assert upd["added"]["events"] == 1 and upd["superseded"] == 1
        assert _mg(store) == [("Observation/mg-1/_history/2", 2.0)]
    with TestClient(create_app(cfg)) as c:  # a restarted service
        assert sum(c.post("/fhir", json=_bundle(2.0, "2"), headers=auth(WRITER)).json()["added"].values()) == 0
        stale = c.post("/fhir", json=_bundle(1.0, "1"), headers=auth(WRITER)).json()
        assert stale["added"]["events"] == 0 and _mg(store) == [("Observation/mg-1/_history/2", 2.0)]
        void = c.post("/fhir", json=_bundle(2.0, "3", status="entered-in-error"), headers=auth(WRITER)).json()
        assert void["superseded"] == 1 and void["quarantined"] == 1
        assert _mg(store) == []
        # the alert emitted for version 1 stays in the log (it was shown); the results are recomputed
        assert c.get("/alerts", headers=auth(READER)).status_code == 200


def test_mllp_port_from_environment_and_checked() -> None:
    assert load_config(env={"MGAKI_MLLP_PORT": "2575"}).mllp_port == 2575
    assert load_config(env={}).mllp_port is None  # off unless configured
    with pytest.raises(InputError, match="mllp_port"):
        load_config(env={"MGAKI_MLLP_PORT": "70000"})
