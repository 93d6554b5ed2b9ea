"""Issue 13.1 at the bedside: a patient on maintenance dialysis gets no KDIGO stage, no eGFR/CrCl dosing
and the dialysis hold rule; AKI treated with RRT in hospital in a non-ESKD patient stays stage 3."""

from __future__ import annotations

from typing import Any

import pytest

from mgaki import assess
from mgaki.synth.fhir import BundleBuilder

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
STATUS = "ESKD on maintenance dialysis: KDIGO AKI staging not applicable"


def _condition(b: BundleBuilder, system: str, code: str, clinical: str | None = "active",
               verification: str | None = None) -> None:
    res: dict[str, Any] = {"resourceType": "Condition", "id": f"cond-{code}", "subject": {"reference": "Patient/p1"},
                           "code": {"coding": [{"system": system, "code": code}]}}
    if clinical:
        res["clinicalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                             "code": clinical}]}
    if verification:
        res["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]}
    b.entries.append({"resource": res})


def _dialysis_patient(system: str = SNOMED, code: str = "105502003", **kw: Any) -> BundleBuilder:
    """Creatinine as it swings between haemodialysis sessions (4.1 -> 7.9 -> 3.9 -> 8.2 mg/dL), low Mg."""
    b = BundleBuilder("male", "1950-02-01")
    b.encounter(0, icu=False, eid="adm1")
    b.series("creatinine", "mg/dL", [(0, 7.9), (20, 4.1), (44, 7.9), (48, 3.9), (68, 8.2)])
    b.obs("magnesium", 1.3, "mg/dL", 68).obs("weight", 70, "kg", 0)
    _condition(b, system, code, **kw)
    return b


@pytest.mark.parametrize(("system", "code"), [(SNOMED, "105502003"), (SNOMED, "46177005"),
                                             (ICD10CM, "N18.6"), (ICD10CM, "Z99.2"), (ICD10CM, "Z992"),
                                             ("http://hl7.org/fhir/sid/icd-9-cm", "V45.11")])
def test_dialysis_condition_gives_the_status_and_no_stage(system: str, code: str) -> None:
    a = assess(_dialysis_patient(system, code).build())
    k = a.kidney
    assert k is not None
    assert k.status == STATUS and k.aki_stage == 0 and k.current_stage == 0
    assert k.egfr is None and k.crcl is None and k.kinetic_egfr is None
    assert any("cond-" in r for r in k.maintenance_dialysis)
    codes = {f.code for f in a.findings}
    assert "aki" not in codes and "renal_dose_adjustment" not in codes and "mg_aki_risk" not in codes
    assert "maintenance_dialysis" in codes
    # Mg plan: the dialysis hold rule, not a nomogram dose scaled by an eGFR of 8
    assert a.plan is not None and a.plan.action == "hold" and not a.plan.doses
    hold = next(f for f in a.findings if f.code == "hold_magnesium")
    assert "dialysis" in hold.message


def test_without_the_condition_the_same_creatinine_is_aki_stage_3() -> None:
    b = _dialysis_patient()
    b.entries = [e for e in b.entries if e["resource"]["resourceType"] != "Condition"]
    a = assess(b.build())
    assert a.kidney is not None and a.kidney.status is None and a.kidney.aki_stage == 3


@pytest.mark.parametrize(("clinical", "verification"), [("resolved", None), ("inactive", None),
                                                        ("active", "refuted"), ("active", "entered-in-error")])
def test_resolved_or_refuted_condition_does_not_count(clinical: str, verification: str | None) -> None:
    a = assess(_dialysis_patient(clinical=clinical, verification=verification).build())
    assert a.kidney is not None and a.kidney.status is None


def test_context_flag_and_option_give_the_status() -> None:
    b = _dialysis_patient()
    b.entries = [e for e in b.entries if e["resource"]["resourceType"] != "Condition"]
    assert assess(b.build(), ["maintenance_dialysis"]).kidney.status == STATUS  # type: ignore[union-attr]
    b.context("maintenance_dialysis", 0)
    assert assess(b.build()).kidney.status == STATUS  # type: ignore[union-attr]


def test_outpatient_dialysis_before_admission_counts_inpatient_aki_rrt_does_not() -> None:
    # a session 3 days before admission, outside any stay: outpatient maintenance dialysis
    b = BundleBuilder("male", "1950-02-01")
    b.encounter(0, icu=False, eid="adm1")
    b.series("creatinine", "mg/dL", [(0, 1.0), (30, 2.1), (50, 3.4)])
    b.rrt(-72)
    a = assess(b.build())
    assert a.kidney is not None and a.kidney.status == STATUS
    assert any("outside hospital before admission" in r for r in a.kidney.maintenance_dialysis)
    # AKI-RRT started in hospital in a patient not on dialysis: stage 3, as KDIGO says
    c = BundleBuilder("male", "1950-02-01")
    c.encounter(0, icu=False, eid="adm1")
    c.series("creatinine", "mg/dL", [(0, 1.0), (30, 2.1), (50, 3.4)])
    c.rrt(52)
    k = assess(c.build()).kidney
    assert k is not None and k.status is None and k.aki_stage == 3 and k.rrt


def test_rrt_long_before_admission_is_not_maintenance_dialysis() -> None:
    b = BundleBuilder("male", "1950-02-01")
    b.encounter(0, icu=False, eid="adm1")
    b.series("creatinine", "mg/dL", [(0, 1.0), (30, 1.1)])
    b.rrt(-24 * 200)  # 200 days before: outside the 90-day look-back
    assert assess(b.build()).kidney.status is None  # type: ignore[union-attr]


def test_text_report_states_the_status() -> None:
    import json
    import tempfile
    from pathlib import Path

    from typer.testing import CliRunner

    from mgaki.cli import app

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "b.json"
        p.write_text(json.dumps(_dialysis_patient().build()))
        out = CliRunner().invoke(app, ["assess", str(p)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "KDIGO AKI staging not applicable" in out.output and "KDIGO stage" not in out.output
