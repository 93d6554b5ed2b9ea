"""`mgaki assess`: the plan carries the predicted course; overshoot in failing kidneys is a finding."""

from __future__ import annotations

import mgaki
from mgaki.synth.fhir import BundleBuilder as B


def _eclampsia(scr: float):  # type: ignore[no-untyped-def]
    b = (B("female", "1994-01-01").obs("weight", 50, "kg", 0).obs("creatinine", scr, "mg/dL", 0)
         .obs("magnesium", 2.0, "mg/dL", 0).build())
    return mgaki.assess(b, ("eclampsia",))


def test_plan_has_prediction_and_no_overshoot_with_normal_kidneys():
    a = _eclampsia(0.6)
    p = a.plan.prediction
    assert p is not None and p.model == "ucsf_2002_2cpt"
    assert p.baseline_mg_dl == 2.0
    assert 4.0 < p.peak_mg_dl < 8.5  # 4 g load + 1 g/h for 24 h reaches the therapeutic range, no further
    assert p.toxicity_mg_dl > 8.5  # the toxicity level above the eclampsia range is used
    assert not p.overshoot
    assert "pk_overshoot_risk" not in [f.code for f in a.findings]


def test_overshoot_finding_when_kidneys_fail():
    a = _eclampsia(4.0)  # CrCl about 16 mL/min
    p = a.plan.prediction
    assert p is not None and p.overshoot and p.p_peak_above_toxicity is not None
    assert p.p_peak_above_toxicity > 0.05
    f = next(f for f in a.findings if f.code == "pk_overshoot_risk")
    assert f.severity == "warning"
    assert any("1105" in e.source for e in f.evidence)  # the PK model is cited


def test_no_prediction_when_magnesium_is_held():
    b = B().obs("creatinine", 1.0, "mg/dL", 0).obs("magnesium", 3.4, "mg/dL", 0).build()
    assert mgaki.assess(b).plan.prediction is None
