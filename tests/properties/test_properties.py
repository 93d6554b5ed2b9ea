"""Hypothesis properties: unit round trips, KDIGO monotonicity, order independence."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mgaki
from mgaki.engine import kidney as kd
from mgaki.knowledge import load
from mgaki.synth.fhir import BundleBuilder as B
from mgaki.units import convert

KB = load()
T0 = datetime(2024, 1, 1, tzinfo=UTC)
MG_UNITS = ["mg/dL", "mmol/L", "meq/L"]
CR_UNITS = ["mg/dL", "umol/L", "mmol/L"]

values = st.floats(min_value=0.01, max_value=1e4, allow_nan=False, allow_infinity=False)


@given(values, st.sampled_from(MG_UNITS), st.sampled_from(MG_UNITS))
def test_mg_round_trip(v, a, b):
    assert convert(convert(v, "magnesium", a, b), "magnesium", b, a) == pytest.approx(v, rel=1e-12)


@given(values, st.sampled_from(CR_UNITS), st.sampled_from(CR_UNITS), st.sampled_from(CR_UNITS))
def test_creatinine_conversion_is_transitive(v, a, b, c):
    direct = convert(v, "creatinine", a, c)
    via = convert(convert(v, "creatinine", a, b), "creatinine", b, c)
    assert via == pytest.approx(direct, rel=1e-12)


series = st.lists(st.tuples(st.integers(0, 400), st.floats(0.3, 12.0)), min_size=1, max_size=12,
                  unique_by=lambda p: p[0])


def peak_stage(points, baseline=None):
    st_ = kd.stage_creatinine(KB, [(T0 + timedelta(hours=h), v) for h, v in points], baseline)
    return max(s.stage for s in st_)


@given(series, st.data())
def test_higher_creatinine_never_lowers_the_stage_at_that_time(points, data):
    i = data.draw(st.integers(0, len(points) - 1))
    bump = data.draw(st.floats(0.0, 5.0))
    raised = list(points)
    raised[i] = (raised[i][0], raised[i][1] + bump)
    t = T0 + timedelta(hours=points[i][0])
    before = {s.time: s.stage for s in kd.stage_creatinine(KB, [(T0 + timedelta(hours=h), v) for h, v in points])}
    after = {s.time: s.stage for s in kd.stage_creatinine(KB, [(T0 + timedelta(hours=h), v) for h, v in raised])}
    assert after[t] >= before[t]


@given(series, st.floats(0.3, 3.0))
def test_a_lower_baseline_never_lowers_the_stage(points, baseline):
    assert peak_stage(points, baseline * 0.8) >= peak_stage(points, baseline)


@given(series, st.randoms(use_true_random=False))
def test_order_of_creatinine_never_changes_staging(points, rnd):
    shuffled = list(points)
    rnd.shuffle(shuffled)
    a = kd.stage_creatinine(KB, [(T0 + timedelta(hours=h), v) for h, v in points])
    b = kd.stage_creatinine(KB, [(T0 + timedelta(hours=h), v) for h, v in shuffled])
    assert a == b


uo = st.lists(st.floats(0.0, 200.0), min_size=2, max_size=40)


@given(uo, st.floats(30.0, 150.0), st.randoms(use_true_random=False))
def test_order_of_urine_output_never_changes_staging(vols, weight, rnd):
    ev = [(T0 + timedelta(hours=i), v) for i, v in enumerate(vols)]
    shuffled = list(ev)
    rnd.shuffle(shuffled)
    assert kd.stage_urine_output(KB, ev, weight) == kd.stage_urine_output(KB, shuffled, weight)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 200), st.floats(0.5, 4.0)), min_size=1, max_size=6,
                unique_by=lambda p: p[0]),
       st.lists(st.tuples(st.integers(0, 200), st.floats(0.6, 5.0)), min_size=1, max_size=6,
                unique_by=lambda p: p[0]),
       st.integers(0, 2**32 - 1))
def test_bundle_entry_order_never_changes_the_assessment(mgs, crs, seed):
    b = B().obs("weight", 70, "kg", 0).obs("potassium", 3.2, "mmol/L", 10)
    for h, v in mgs:
        b.obs("magnesium", v, "mg/dL", h)
    for h, v in crs:
        b.obs("creatinine", v, "mg/dL", h)
    b.med("furosemide", "4603")
    bundle = b.build()
    a1 = mgaki.assess(bundle, ["icu"])
    entries = bundle["entry"][1:]
    random.Random(seed).shuffle(entries)
    bundle["entry"][1:] = entries
    a2 = mgaki.assess(bundle, ["icu"])
    assert a1.model_dump() == a2.model_dump()
