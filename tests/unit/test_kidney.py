"""C5: KDIGO staging, CKD-EPI 2021, Cockcroft-Gault, kinetic GFR with worked numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mgaki.engine import kidney as kd
from mgaki.knowledge import KnowledgeBase

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def h(x: float) -> datetime:
    return T0 + timedelta(hours=x)


def peak(kb, pts, **kw):
    st = kd.stage_creatinine(kb, [(h(t), v) for t, v in pts], **kw)
    return max(st, key=lambda s: s.stage)


def test_abs_rise_within_48h_is_stage1(kb):
    s = peak(kb, [(0, 1.0), (47, 1.3)])
    assert s.stage == 1 and "0.3" in s.criterion


def test_abs_rise_after_48h_is_not_aki(kb):
    # 0.3 rise over 49 h, ratio 1.3: no AKI (pyaki's forward fill would call it)
    assert peak(kb, [(0, 1.0), (49, 1.3)]).stage == 0


def test_ratio_stages_within_7_days(kb):
    assert peak(kb, [(0, 1.0), (100, 1.5)]).stage == 1
    assert peak(kb, [(0, 1.0), (100, 2.0)]).stage == 2
    assert peak(kb, [(0, 1.0), (100, 3.0)]).stage == 3


def test_ratio_outside_7_days_not_counted_by_the_kdigo_7day_rule(kb):
    assert peak(kb, [(0, 1.0), (169, 2.0)], rule="kdigo_7day").stage == 0


def test_nhs_rule_uses_the_median_8_to_365_days_only_without_a_recent_value(kb):
    # no value in the prior 7 days: RV2 = median of the older values (1.0) -> ratio 2.0
    s = peak(kb, [(0, 1.0), (169, 2.0)])
    assert s.stage == 2 and s.rule == "nhs_england" and "8-365" in s.reference_method and s.reference_n == 1
    # values of the prior 7 days (0.6 three days before admission) take precedence over an old low
    # median (0.4): the in-hospital 0.6s show no rise, so no false AKI
    pts = [(h(-24 * d), 0.4) for d in (30, 60, 90)] + [(h(x), v) for x, v in ((-72, 0.6), (0, 0.6), (48, 0.62))]
    inpatient = [x for x in kd.stage_creatinine(kb, pts) if x.time >= h(0)]
    assert [x.stage for x in inpatient] == [0, 0] and all("prior 7 days" in x.reference_method for x in inpatient)
    # the outpatient-median rule (before issue 13) calls the same values stage 1
    old_rule = [x for x in kd.stage_creatinine(kb, pts, rule="outpatient-median", admission=h(0)) if x.time >= h(0)]
    assert [x.stage for x in old_rule] == [1, 1] and old_rule[0].reference == 0.4


def test_supplied_baseline_used_without_prior_values(kb):
    s = peak(kb, [(0, 2.1)], baseline=1.0)
    assert s.stage == 2 and s.reference == 1.0 and "pre-admission" in s.reference_method


def test_four_mg_dl_only_within_aki(kb):
    # CKD patient stable at 4.2: not AKI (pyaki would give stage 3)
    assert peak(kb, [(0, 4.2), (24, 4.3)]).stage == 0
    # rise of 0.3 to >= 4.0 within 48 h: stage 3
    s = peak(kb, [(0, 3.8), (24, 4.1)])
    assert s.stage == 3 and "4.0" in s.criterion


def test_rrt_is_stage3(kb):
    s = peak(kb, [(0, 1.0), (24, 1.1)], rrt_times=[h(20)])
    assert s.stage == 3 and "renal replacement" in s.criterion


def test_urine_output_stages(kb):
    w = 70.0
    # 0.4 mL/kg/h charted hourly for 13 h -> stage 2 at >=12 h
    ev = [(h(i), 0.4 * w) for i in range(14)]
    st = kd.stage_urine_output(kb, ev, w)
    assert max(s.stage for s in st) == 2
    # 0.2 mL/kg/h for 25 h -> stage 3
    ev = [(h(i), 0.2 * w) for i in range(26)]
    assert max(s.stage for s in kd.stage_urine_output(kb, ev, w)) == 3
    # adequate output: stage 0
    ev = [(h(i), 1.0 * w) for i in range(26)]
    assert max(s.stage for s in kd.stage_urine_output(kb, ev, w)) == 0


def test_anuria_12h_is_stage3_not_missing(kb):
    ev = [(h(0), 50.0)] + [(h(i), 0.0) for i in range(1, 14)]
    st = kd.stage_urine_output(kb, ev, 70.0)
    assert st[-1].stage == 3 and "anuria" in st[-1].criterion


def test_uo_needs_full_window(kb):
    ev = [(h(i), 0.0 + 0.1) for i in range(4)]  # only 3 h charted
    assert all(s.stage == 0 for s in kd.stage_urine_output(kb, ev, 70.0))


def test_ckd_epi_2021_worked_values(kb):
    # Hand-computed from Inker 2021: male 50 y SCr 1.0 -> 91.7;
    # female 50 y SCr 0.7 -> 105.3; male 70 y SCr 2.0 -> 35.2
    assert kd.ckd_epi_2021(kb, 1.0, 50, female=False) == pytest.approx(91.7, abs=0.1)
    assert kd.ckd_epi_2021(kb, 0.7, 50, female=True) == pytest.approx(105.3, abs=0.1)
    assert kd.ckd_epi_2021(kb, 2.0, 70, female=False) == pytest.approx(35.2, abs=0.1)


def test_cockcroft_gault_worked_value(kb):
    # (140-60) x 72 / (72 x 1.0) = 80; female x0.85 = 68
    assert kd.cockcroft_gault(kb, 1.0, 60, 72, female=False) == pytest.approx(80.0)
    assert kd.cockcroft_gault(kb, 1.0, 60, 72, female=True) == pytest.approx(68.0)


def test_kinetic_egfr(kb):
    # stable creatinine: kinetic GFR equals baseline GFR scaled by SScr/mean
    assert kd.kinetic_egfr(kb, 1.0, 100.0, 1.0, 1.0, 24) == pytest.approx(100.0)
    # rising by the max rate per day: GFR ~ 0
    assert kd.kinetic_egfr(kb, 1.0, 100.0, 1.0, 2.5, 24) == pytest.approx(0.0, abs=1e-9)
    # rising half as fast: falls below the steady-state value
    k = kd.kinetic_egfr(kb, 1.0, 100.0, 1.0, 1.75, 24)
    assert k is not None and 0 < k < 100 / 1.375


def test_urine_window_between_chartings_is_seen_at_the_next_charting(kb: KnowledgeBase) -> None:
    """KDIGO: < 0.5 mL/kg/h for 6 h, any 6 h. Charted every 5 h (70 kg): no window ending at a charting is
    below 0.5, but (20 h, 26 h] holds 70 + 350/5 = 140 mL = 0.33 mL/kg/h; it is knowable at the 30-h charting."""
    vols = {5: 350.0, 10: 350.0, 15: 350.0, 20: 700.0, 25: 70.0, 30: 350.0}
    ev = [(T0, 0.0)] + [(T0 + timedelta(hours=h), v) for h, v in vols.items()]
    st = {round((s.time - T0).total_seconds() / 3600): s for s in kd.stage_urine_output(kb, ev, 70.0)}
    assert st[25].stage == 0 and st[25].rate_6h == pytest.approx(210 / 70 / 6)  # exactly 0.5: not below
    assert st[30].stage == 1 and st[30].rate_6h == pytest.approx(364 / 70 / 6)  # the rate shown ends at 30 h
