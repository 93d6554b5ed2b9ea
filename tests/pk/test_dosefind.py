"""Dose finder: reaches the target within the labelled limits of regimens.yaml, and flags overshoot risk."""

from __future__ import annotations

import numpy as np
import pytest

from mgaki.errors import InputError
from mgaki.knowledge import load
from mgaki.pk import Covariates, Regimen, check_limits, find_dose, loading_maintenance, population


def _limits_ok(d: object) -> dict[str, tuple[float, float, bool]]:
    return {c.limit_id: (c.value, c.limit, c.ok) for c in d.limits}  # type: ignore[attr-defined]


def test_reaches_target_within_rate_and_daily_limits() -> None:
    pop = population(covariates=Covariates(weight_kg=70, crcl_ml_min=90), baseline_mg_dl=1.4)
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
    normal = find_dose(population(covariates=Covariates(70, 100), baseline_mg_dl=1.6), 2.8, 3.2, horizon_h=48)
    renal = find_dose(population(covariates=Covariates(70, 15), baseline_mg_dl=1.6), 2.8, 3.2, horizon_h=48,
                      severe_renal=True)
    lim = _limits_ok(renal)
    assert lim["severe_renal_max_48h"][0] <= kb.limit("severe_renal_max_48h").value
    assert sum(renal.regimen.g_mgso4()) < sum(normal.regimen.g_mgso4())


def test_uk_daily_maximum_is_used_for_uk() -> None:
    d = find_dose(population(covariates=Covariates(70, 150), baseline_mg_dl=1.0), 5.0, 8.0, jurisdiction="uk",
                  emergency=True)
    lim = _limits_ok(d)
    assert "daily_max_uk" in lim and lim["daily_max_uk"][0] <= 28.0


def test_overshoot_flag_when_risk_of_toxic_peak_is_high() -> None:
    # eclampsia-like target in anuric-range kidneys: the next toxicity level above the target is used
    pop = population(covariates=Covariates(55, 10), baseline_mg_dl=2.0)
    d = find_dose(pop, 4.9, 8.5, emergency=True, severe_renal=True)
    assert d.toxicity_id == "mg_toxicity_cardiac_above"  # 8 mEq/L = 9.7 mg/dL, above the 8.5 target
    assert d.toxicity_mg_dl == pytest.approx(8.0 * 1.2153, rel=1e-3)
    # a target right under the toxicity level of the default model: overshoot risk > 5%
    risky = find_dose(population(covariates=Covariates(70, 30), baseline_mg_dl=1.8), 4.4, 4.8)
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
