"""C8: renal adjustment and hold findings cite the rules that produced them."""

from __future__ import annotations

import mgaki
from mgaki.synth.fhir import BundleBuilder as B


def test_renal_dose_adjustment_cites_the_renal_rule_not_kdigo(kb):
    # 80-year-old, 50 kg, SCr 2.5 mg/dL: CrCl = 60 x 50 / (72 x 2.5) x 0.85 = 14 mL/min
    b = (B("female", "1944-01-01").obs("weight", 50, "kg", 0)
         .obs("creatinine", 2.5, "mg/dL", 0).obs("magnesium", 1.2, "mg/dL", 0).build())
    a = mgaki.assess(b)
    f = next(f for f in a.findings if f.code == "renal_dose_adjustment")
    cited = {e.source for e in f.evidence}
    assert kb.renal_rule("reduce_low_clearance").source.citation in cited
    assert kb.threshold("kdigo_abs_rise").source.citation not in cited


def test_hold_cites_the_hold_rule(kb):
    b = B().obs("creatinine", 1.0, "mg/dL", 0).obs("magnesium", 3.4, "mg/dL", 0).build()
    f = next(f for f in mgaki.assess(b).findings if f.code == "hold_magnesium")
    assert [e.source for e in f.evidence] == [kb.renal_rule("hold_hypermagnesemia").source.citation]
