"""`mgaki assess`: the plan carries the predicted course with its population caveat, target attainment and
harm by context; in AKI and on dialysis it never shows a NaN or a 0% risk from missing kidney function."""

from __future__ import annotations

import math

import mgaki
from mgaki.synth.fhir import BundleBuilder as B

POPULATION = "pregnant and post-partum women with pre-eclampsia"


def _eclampsia(scr: float, weight: float = 75.0):  # type: ignore[no-untyped-def]
    b = (B("female", "1994-01-01").obs("weight", weight, "kg", 0).obs("creatinine", scr, "mg/dL", 0)
         .obs("magnesium", 2.0, "mg/dL", 0).build())
    return mgaki.assess(b, ("eclampsia",))


def _finite_or_none(*xs: float | None) -> bool:
    return all(x is None or math.isfinite(x) for x in xs)


def test_eclampsia_plan_is_judged_against_the_therapeutic_range_not_the_repletion_toxicity_level():
    a = _eclampsia(0.6)
    p = a.plan.prediction
    assert p is not None and p.model == "du_2019_2cpt" and POPULATION in p.population
    assert p.baseline_mg_dl == 2.0
    assert p.context == "eclampsia"
    assert p.target_mg_dl == (4.861, 8.507)  # 2.0-3.5 mmol/L
    assert p.toxicity_id == "pk_harm_eclampsia" and p.toxicity_mg_dl == 8.507
    assert 4.0 < p.peak_mg_dl < 8.5
    # Zuspan's lower end (4 g + 1 g/h) rarely reaches 2 mmol/L by 4 h (Sibai 1981: 98% below on 1 g/h)
    assert p.p_target is not None and p.p_target < 0.2
    assert not p.overshoot and p.p_harm_upper_95 is not None and p.p_harm_upper_95 > 0
    assert "pk_overshoot_risk" not in [f.code for f in a.findings]


def test_light_woman_is_outside_the_studied_weights_and_says_so():
    p = _eclampsia(0.6, weight=50.0).plan.prediction
    assert p is not None
    assert any("weight 50 kg outside the studied 57-157" in n for n in p.notes)


def test_overshoot_finding_when_kidneys_fail():
    a = _eclampsia(4.0)  # beyond Du's studied creatinine (2.1): extrapolated with widened uncertainty
    p = a.plan.prediction
    assert p is not None and p.overshoot and p.p_peak_above_toxicity is not None
    assert p.p_peak_above_toxicity > 0.05
    assert any("creatinine 4 mg/dL outside the studied 0.4-2.1" in n for n in p.notes)
    f = next(f for f in a.findings if f.code == "pk_overshoot_risk")
    assert f.severity == "warning" and POPULATION in f.message
    assert any("jcph.1328" in (e.doi or "") or "J Clin Pharmacol" in e.source for e in f.evidence)


def test_aki_prediction_follows_the_kinetic_egfr_and_names_the_population():
    rising = (B("male", "1960-01-01").obs("weight", 80, "kg", 0)
              .series("creatinine", "mg/dL", [(-48, 1.0), (-24, 1.6), (0, 2.2)]).obs("magnesium", 1.3, "mg/dL", 0)
              .build())
    a = mgaki.assess(rising)
    p = a.plan.prediction
    assert a.kidney.aki_stage >= 1 and p is not None
    assert POPULATION in p.population
    assert any("not pregnant" in n for n in p.notes)
    # the kinetic eGFR's steady-state creatinine (about 3.2 mg/dL), not the lagging 2.2, sets clearance
    assert any("serum creatinine 3.1667 mg/dL outside the studied" in n for n in p.notes)
    assert _finite_or_none(p.peak_mg_dl, p.p_peak_above_toxicity, p.p_target, p.trough_mg_dl)
    assert p.p_harm_upper_95 is not None and p.p_harm_upper_95 > 0  # never a bare 0%
    # the same plan judged on the measured creatinine alone (no course) clears more Mg: a lower trough
    from mgaki.engine.repletion import predict_plan
    from mgaki.knowledge import load
    from mgaki.record import KidneyState

    kidney = KidneyState(egfr=a.kidney.egfr, crcl=a.kidney.crcl, aki_stage=0, creatinine_mg_dl=2.2)
    q, why = predict_plan(load(), a.plan.model_copy(update={"prediction": None}), 1.3, 80.0, kidney, age=64.0)
    assert why is None and q is not None and p.trough_mg_dl > q.trough_mg_dl


def test_aki_with_kinetic_egfr_zero_gets_a_reason_not_a_number():
    b = (B("male", "1960-01-01").obs("weight", 80, "kg", 0).series("creatinine", "mg/dL", [(-24, 1.0), (0, 2.5)])
         .obs("magnesium", 1.3, "mg/dL", 0).build())
    a = mgaki.assess(b)
    assert a.plan.prediction is None
    why = a.plan.prediction_unavailable
    assert why is not None and "kinetic eGFR 0" in why and POPULATION in why
    f = next(f for f in a.findings if f.code == "pk_prediction_unavailable")
    assert "Check serum Mg" in f.message


def test_dialysis_patient_gets_an_upper_bound_with_the_caveat():
    b = (B("female", "1994-01-01").obs("weight", 75, "kg", 0).obs("creatinine", 5.0, "mg/dL", 0)
         .obs("magnesium", 2.0, "mg/dL", 0).rrt(-10).build())
    a = mgaki.assess(b, ("eclampsia",))
    p = a.plan.prediction
    assert p is not None and POPULATION in p.population
    assert any("no dialytic Mg removal is assumed" in n for n in p.notes)
    assert p.p_peak_above_toxicity is not None and p.p_peak_above_toxicity > 0.5 and p.overshoot
    assert _finite_or_none(p.peak_mg_dl, p.p_target)


def test_no_prediction_when_magnesium_is_held():
    b = B().obs("creatinine", 1.0, "mg/dL", 0).obs("magnesium", 3.4, "mg/dL", 0).build()
    a = mgaki.assess(b)
    assert a.plan.prediction is None and a.plan.prediction_unavailable is None
