"""Paediatric patients, eclampsia's therapeutic range, intraoperative duration, general-inpatient evidence."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

import mgaki
from mgaki.engine import kidney as kd
from mgaki.engine.repletion import PlanRequest, plan_repletion
from mgaki.engine.risk import match_evidence
from mgaki.synth.fhir import BundleBuilder as B

HEIGHT = "8302-2"
T0 = datetime(2024, 3, 1, 8, tzinfo=UTC)
CHEUNG = "cheungpasitporn_2015"


def codes(a):
    return [f.code for f in a.findings]


# --- 2. paediatric ------------------------------------------------------------------------

def test_schwartz_bedside_worked_numbers(kb):
    # Schwartz 2009: eGFR = 0.413 x height (cm) / SCr (mg/dL)
    assert kd.schwartz_bedside(kb, 0.5, 128) == pytest.approx(105.728)
    assert kd.schwartz_bedside(kb, 1.7, 140) == pytest.approx(34.01, abs=0.01)


def test_pediatric_egfr_criterion_only_during_aki(kb):
    rise = [(T0, 0.6), (T0 + timedelta(hours=36), 1.7)]  # x2.83: stage 2; Schwartz(140 cm) 34.0 < 35
    assert kd.stage_creatinine(kb, rise)[-1].stage == 2
    peds = kd.stage_creatinine(kb, rise, pediatric_height_cm=140)[-1]
    assert peds.stage == 3 and "Schwartz" in (peds.criterion or "")
    # a stable low eGFR (CKD) without an AKI criterion is not AKI stage 3
    stable = [(T0, 1.7), (T0 + timedelta(hours=36), 1.7)]
    assert kd.stage_creatinine(kb, stable, pediatric_height_cm=140)[-1].stage == 0
    # Schwartz 0.413 x 160 / 1.7 = 38.9 >= 35: stays stage 2
    assert kd.stage_creatinine(kb, rise, pediatric_height_cm=160)[-1].stage == 2


def test_child_without_height_gets_no_adult_egfr():
    b = B(sex="female", birth="2012-06-01").obs("weight", 40, "kg").obs("creatinine", 0.6, "mg/dL") \
        .obs("magnesium", 1.3, "mg/dL").build()
    a = mgaki.assess(b)
    assert a.kidney.egfr is None and a.kidney.crcl is None
    assert "CKD-EPI 2021 not used" in (a.kidney.egfr_note or "")
    f = next(f for f in a.findings if f.code == "pediatric_adjustment")
    assert "no height recorded" in f.message
    assert {e.doi for e in f.evidence} >= {"10.1038/kisup.2012.1", "10.1681/ASN.2008030287"}
    assert a.plan.action == "none" and not a.plan.doses
    # the same values in an adult: CKD-EPI, CrCl and the Vanderbilt dose
    adult = mgaki.assess(B(sex="female", birth="1962-06-01").obs("weight", 40, "kg")
                         .obs("creatinine", 0.6, "mg/dL").obs("magnesium", 1.3, "mg/dL").build())
    assert adult.kidney.egfr is not None and adult.plan.regimen_id == "vanderbilt-im"
    assert "pediatric_adjustment" not in codes(adult)


def test_child_is_not_given_adult_emergency_doses():
    b = B(birth="2015-01-01").obs("creatinine", 0.4, "mg/dL").obs("qtc", 560, "ms").obs("magnesium", 1.5, "mg/dL")
    a = mgaki.assess(b.build(), ["torsades-arrest"])
    assert a.plan.regimen_id is None and a.plan.action == "none"


def test_a_sourced_pediatric_nomogram_would_be_used(kb):
    """The mechanism: a nomogram marked pediatric is chosen for a child (weight-based dose)."""
    adult = kb.nomogram("vanderbilt-im")
    peds = adult.model_copy(update={
        "id": "test-peds", "population": "pediatric",
        "tiers": tuple(t.model_copy(update={"steps": (t.steps[0].model_copy(update={
            "amount": 50, "amount_max": None, "amount_unit": "mg/kg"}),)}) for t in adult.tiers)})
    regs = kb.regimens.model_copy(update={"nomograms": (*kb.regimens.nomograms, peds)})
    kb2 = dataclasses.replace(kb, regimens=regs)
    out = plan_repletion(kb2, PlanRequest(mg_mg_dl=1.3, weight_kg=20, pediatric=True), "low")
    assert out.plan.regimen_id == "test-peds"
    assert out.plan.doses[0].g_mgso4 == pytest.approx(1.0)  # 50 mg/kg x 20 kg
    none = plan_repletion(kb, PlanRequest(mg_mg_dl=1.3, weight_kg=20, pediatric=True), "low")
    assert none.plan.regimen_id is None and "No paediatric nomogram" in (none.plan.regimen or "")


# --- 3. eclampsia therapeutic range -----------------------------------------------------------

@pytest.mark.parametrize("mg,held", [(4.0, False), (6.0, False), (8.4, False), (8.6, True), (11.0, True)])
def test_eclampsia_hold_only_above_therapeutic_range(kb, mg, held):
    # 2.0-3.5 mmol/L x 2.4305 = 4.861-8.507 mg/dL
    out = plan_repletion(kb, PlanRequest(mg_mg_dl=mg, contexts=frozenset({"eclampsia"})), "high")
    assert bool(out.holds) is held
    assert out.plan.action == ("hold" if held else "emergency")


def test_eclampsia_in_range_keeps_toxicity_findings():
    a = mgaki.assess(B(birth="1994-06-01").obs("creatinine", 0.7, "mg/dL").obs("magnesium", 7.0, "mg/dL").build(),
                     ["eclampsia"])
    # 7.0 mg/dL = 5.76 mEq/L > 5: hypotension/ECG level, inside the range: reported, not held
    assert "hold_magnesium" not in codes(a)
    nm = next(f for f in a.findings if f.code == "neuromuscular_risk")
    assert nm.severity == "warning" and "hypotension" in nm.message.lower()
    # the same value without the eclampsia context is held and critical
    b = mgaki.assess(B(birth="1994-06-01").obs("creatinine", 0.7, "mg/dL").obs("magnesium", 7.0, "mg/dL").build())
    assert "hold_magnesium" in codes(b)
    assert next(f for f in b.findings if f.code == "neuromuscular_risk").severity == "critical"


def test_vanco_target_still_works(kb):
    ctx = frozenset({"vanco-pip-tazo"})
    assert not plan_repletion(kb, PlanRequest(mg_mg_dl=2.7, contexts=ctx), "high").holds
    assert plan_repletion(kb, PlanRequest(mg_mg_dl=3.1, contexts=ctx), "high").holds


# --- 4. perioperative infusion only during the operation ----------------------------------

@pytest.mark.parametrize("hours,total", [(None, 3.5 + 1.05 * 4), (2.0, 3.5 + 1.05 * 2), (30.0, 3.5 + 1.05 * 24)])
def test_perioperative_total_counts_the_operation_only(kb, hours, total):
    out = plan_repletion(kb, PlanRequest(mg_mg_dl=2.0, contexts=frozenset({"perioperative"}), weight_kg=70,
                                         operation_hours=hours), "normal")
    assert out.plan.regimen_id == "perioperative-oh-2019"
    assert out.plan.total_g_mgso4_24h == pytest.approx(total, abs=0.01)
    assert out.plan.doses[1].duration_h == (hours or 4.0)


def test_operation_hours_reaches_the_api_and_cli(tmp_path):
    b = B(sex="male", birth="1965-01-01").obs("weight", 70, "kg").obs("creatinine", 0.9, "mg/dL") \
        .obs("magnesium", 2.0, "mg/dL").build()
    assert mgaki.assess(b, ["perioperative"], operation_hours=3).plan.total_g_mgso4_24h == pytest.approx(6.65)
    p = tmp_path / "b.json"
    p.write_text(json.dumps(b))
    r = subprocess.run([sys.executable, "-m", "mgaki", "assess", str(p), "-c", "perioperative", "-f", "json",
                        "--operation-hours", "2"], capture_output=True, text=True, check=True)
    assert json.loads(r.stdout)["plan"]["total_g_mgso4_24h"] == pytest.approx(5.6)


def test_continuous_infusions_without_duration_still_run_all_day(kb):
    # torsades with a pulse: 1 g then 0.5 g/h with no stop time -> 1 + 12 = 13 g
    out = plan_repletion(kb, PlanRequest(mg_mg_dl=1.9, contexts=frozenset({"torsades"})), "normal")
    assert out.plan.total_g_mgso4_24h == pytest.approx(13.0)


# --- 5. general-inpatient evidence ------------------------------------------------------------

def _ids(matches):
    return [m.study.id for m in matches]


@pytest.mark.parametrize("contexts,age,applies", [
    ((), 60, True),                      # no context: a general inpatient
    (("cisplatin",), 60, True),          # no study of its own: the general population applies
    (("sepsis", "perioperative"), 60, True),
    (("icu",), 60, False),               # a population-specific study wins
    (("eclampsia",), 30, False),         # Mg given as a drug
    (("torsades",), 60, False),
    ((), 10, False),                     # adults only
    ((), None, True),                    # age unknown: applied (hospitalised adults are the default)
])
def test_general_bands_scope(kb, contexts, age, applies):
    matches, skipped = match_evidence(kb, frozenset(contexts), {"magnesium": [(T0, 1.3)]}, False, age)
    assert (CHEUNG in _ids(matches)) is applies
    if not applies and not ({"icu"} & set(contexts)):
        assert CHEUNG in [s.id for s, _ in skipped]


@pytest.mark.parametrize(("mg", "unit", "grade", "severity"), [(1.1, "mg/dL", 2, "warning"),
                                                             (0.8, "mg/dL", 3, "critical"),
                                                             (0.45, "mmol/L", 2, "warning")])
def test_neuromuscular_risk_of_a_low_mg_is_rated_by_its_grade(mg, unit, grade, severity):
    # a real-patient review found Mg 1.1 mg/dL (CTCAE grade 2, no symptoms, no ECG) rated critical ("act now")
    a = mgaki.assess(B(birth="1960-06-01").obs("creatinine", 0.9, "mg/dL").obs("magnesium", mg, unit).build())
    assert a.magnesium.grade == grade
    nm = next(f for f in a.findings if f.code == "neuromuscular_risk")
    assert nm.severity == severity == next(f for f in a.findings if f.code == "hypomagnesemia").severity
    assert "risk of tremor" in nm.message


@pytest.mark.parametrize(("mg", "unit", "shown"), [(1.3, "mg/dL", "Serum Mg 1.3 mg/dL (0.53 mmol/L): low"),
                                                   (0.55, "mmol/L", "Serum Mg 0.55 mmol/L (1.34 mg/dL): low"),
                                                   (1.1, "meq/L", "Serum Mg 1.1 meq/L (1.34 mg/dL, 0.55 mmol/L)")])
def test_the_mg_finding_names_each_unit_once(mg, unit, shown):
    a = mgaki.assess(B(birth="1960-06-01").obs("creatinine", 0.9, "mg/dL").obs("magnesium", mg, unit).build())
    msg = next(f for f in a.findings if f.code == "hypomagnesemia").message
    assert msg.startswith(shown), msg
