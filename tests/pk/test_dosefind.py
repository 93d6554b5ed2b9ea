"""Dose finder: reaches the target within the labelled limits of regimens.yaml, and flags overshoot risk."""

from __future__ import annotations

import numpy as np
import pytest

from mgaki.engine.repletion import KidneyState
from mgaki.errors import InputError
from mgaki.knowledge import load
from mgaki.pk import Covariates, Regimen, check_limits, find_dose, loading_maintenance, population, renal_cap_rule


def _limits_ok(d: object) -> dict[str, tuple[float, float, bool]]:
    return {c.limit_id: (c.value, c.limit, c.ok) for c in d.limits}  # type: ignore[attr-defined]


def test_reaches_target_within_rate_and_daily_limits() -> None:
    pop = population(covariates=Covariates(weight_kg=70, creatinine_mg_dl=0.8), baseline_mg_dl=1.4)
    d = find_dose(pop, 2.0, 2.5)
    lim = _limits_ok(d)
    assert lim["iv_rate_max_repletion"][0] <= 2.0 and lim["daily_max_label"][0] <= 40.0
    assert all(ok for _, _, ok in lim.values())
    assert d.time_in_range >= 0.9
    window = d.prediction.times_h >= 6.0
    assert np.all(d.prediction.typical_mg_dl[window] >= 2.0 - 1e-9)
    assert d.prediction.peak_mg_dl <= 2.5 + 1e-9
    assert not d.overshoot


def test_severe_renal_impairment_respects_20g_in_48h_and_needs_less_drug() -> None:
    kb = load()
    normal = find_dose(population(covariates=Covariates(70, creatinine_mg_dl=0.8), baseline_mg_dl=1.6), 2.8, 3.2,
                       horizon_h=48)
    renal = find_dose(population(covariates=Covariates(70, creatinine_mg_dl=4.0), baseline_mg_dl=1.6), 2.8, 3.2,
                      horizon_h=48,
                      severe_renal=True)
    lim = _limits_ok(renal)
    assert lim["severe_renal_max_48h"][0] <= kb.limit("severe_renal_max_48h").value
    assert sum(renal.regimen.g_mgso4()) < sum(normal.regimen.g_mgso4())


def test_uk_daily_maximum_is_used_for_uk() -> None:
    d = find_dose(population(covariates=Covariates(70, creatinine_mg_dl=0.5), baseline_mg_dl=1.0), 5.0, 8.0,
                  jurisdiction="uk",
                  emergency=True)
    lim = _limits_ok(d)
    assert "daily_max_uk" in lim and lim["daily_max_uk"][0] <= 28.0


def test_overshoot_flag_when_risk_of_toxic_peak_is_high() -> None:
    # eclampsia-like target in anuric-range kidneys: the next toxicity level above the target is used
    pop = population(covariates=Covariates(60, creatinine_mg_dl=4.0, pregnant=True), baseline_mg_dl=2.0)
    d = find_dose(pop, 4.9, 8.5, emergency=True, severe_renal=True)
    assert d.toxicity_id == "mg_toxicity_cardiac_above"  # 8 mEq/L = 9.7 mg/dL, above the 8.5 target
    assert d.toxicity_mg_dl == pytest.approx(8.0 * 1.2153, rel=1e-3)
    # with the eclampsia context the harm level is where toxicity begins (3.5 mmol/L), not a level above it
    ecl = find_dose(pop, 4.9, 8.5, emergency=True, severe_renal=True, context="eclampsia")
    assert ecl.toxicity_id == "pk_harm_eclampsia" and ecl.toxicity_mg_dl == pytest.approx(3.5 * 2.4305, rel=1e-3)
    assert ecl.p_peak_above_toxicity >= d.p_peak_above_toxicity and ecl.p_target is not None
    # a target right under the toxicity level of the default model: overshoot risk > 5%
    risky = find_dose(population(covariates=Covariates(70, creatinine_mg_dl=2.0), baseline_mg_dl=1.8), 4.4, 4.8)
    assert risky.toxicity_id == "mg_toxicity_reflexes_decrease_above"
    assert risky.p_peak_above_toxicity > risky.overshoot_threshold
    assert risky.overshoot


def test_check_limits_catches_a_fast_infusion_and_a_large_daily_total() -> None:
    fast = Regimen.dose(6, "g", 0, 1.0)  # 6 g/h
    res = {c.limit_id: c for c in check_limits(fast, ("iv_rate_max_repletion", "iv_rate_max_label"))}
    assert not res["iv_rate_max_repletion"].ok and res["iv_rate_max_label"].ok  # 9 g/h label limit
    big = loading_maintenance(6, 0.5, 2, 24)  # 6 + 47 g
    (daily,) = check_limits(big, ("daily_max_label",))
    assert not daily.ok and daily.value == pytest.approx(6 + 2 * 23.5, abs=0.3)
    assert check_limits(Regimen.dose(2, "g", 0, 0.0), ("iv_rate_max_repletion",))[0].ok is False  # a push


def test_bad_target_is_rejected() -> None:
    with pytest.raises(InputError):
        find_dose(population(), 2.5, 2.0)


CAP = "severe_renal_max_48h"


@pytest.mark.parametrize(("kidney", "why"), [(KidneyState(crcl=20.0), "CrCl 20 < 30"),
                                             (KidneyState(egfr=25.0, crcl=60.0), "eGFR 25 < 30"),
                                             (KidneyState(egfr=80.0, aki_stage=2), "AKI stage 2 >= 2")])
@pytest.mark.parametrize(("target", "horizon"), [((2.8, 3.2), 24.0), ((4.0, 5.0), 24.0), ((2.0, 2.5), 12.0),
                                                 ((4.0, 5.0), 48.0)])
def test_kidney_function_meeting_the_cap_rule_never_gets_a_plan_above_20g_in_48h(
        kidney: KidneyState, why: str, target: tuple[float, float], horizon: float) -> None:
    kb = load()
    cap = kb.limit(CAP).value
    # CL is not scaled here (no creatinine given), so the search wants a lot of drug: only the cap stops it
    pop = population(covariates=Covariates(weight_kg=70), baseline_mg_dl=1.6)
    d = find_dose(pop, *target, horizon_h=horizon, kidney=kidney)
    assert d.renal_cap is not None and d.renal_cap.rule_id == "cap_severe_renal" and why in d.renal_cap.reason
    assert d.renal_cap.ok and d.renal_cap.limit_g == cap and d.renal_cap.window_h == 48.0
    # the plan as given, and the plan continued unchanged to 48 h, both stay within the cap
    assert _limits_ok(d)[CAP][0] <= cap + 1e-9 and _limits_ok(d)[CAP][2]
    given_48 = d.regimen.given_by(np.arange(0.0, 48.25, 0.25))
    assert given_48[-1] <= cap + 1e-9
    assert d.renal_cap.total_g >= given_48[-1] - 1e-9
    assert any("renal cap 20 g per 48 h" in n for n in d.notes)
    assert d.to_dict()["renal_cap"]["rule"] == "cap_severe_renal"  # type: ignore[index]


def test_the_cap_binds_the_dose_a_normal_kidney_would_get() -> None:
    # same PK (no creatinine given), different kidney state: the cap alone changes the plan
    pop = population(covariates=Covariates(weight_kg=70), baseline_mg_dl=1.6)
    free = find_dose(pop, 4.0, 5.0, kidney=KidneyState(egfr=95.0, crcl=100.0))
    capped = find_dose(pop, 4.0, 5.0, kidney=KidneyState(crcl=20.0))
    assert sum(free.regimen.g_mgso4()) > 20.0  # a normal kidney gets more in 24 h than the cap allows in 48 h
    assert sum(capped.regimen.g_mgso4()) < sum(free.regimen.g_mgso4())
    assert capped.time_in_range < free.time_in_range


@pytest.mark.parametrize("kidney", [None, KidneyState(egfr=95.0, crcl=100.0, aki_stage=0),
                                    KidneyState(egfr=30.0, crcl=30.0, aki_stage=1)])
def test_normal_or_moderate_kidney_function_is_unchanged(kidney: KidneyState | None) -> None:
    pop = population(covariates=Covariates(weight_kg=70, creatinine_mg_dl=0.8), baseline_mg_dl=1.4)
    d = find_dose(pop, 2.0, 2.5, kidney=kidney)
    ref = find_dose(pop, 2.0, 2.5)
    assert d.renal_cap is None and CAP not in _limits_ok(d)
    assert d.description == ref.description and d.regimen == ref.regimen


def test_cap_rule_is_read_from_the_knowledge_base() -> None:
    rule = load().renal_rule("cap_severe_renal")
    assert rule.limit_id == CAP and rule.clearance_below_ml_min == 30.0 and rule.aki_stage_at_least == 2
    assert renal_cap_rule(KidneyState(crcl=29.9)) is not None
    assert renal_cap_rule(KidneyState(crcl=30.0, egfr=30.0, aki_stage=1)) is None
    assert renal_cap_rule(None) is None
