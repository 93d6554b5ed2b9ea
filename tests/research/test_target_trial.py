"""Target-trial emulation of Mg repletion: the naive comparison is biased, the emulation recovers the plant.

`generate(..., plant_repletion=True)` plants IV MgSO4 after a low admission Mg with a probability that
rises with severity (sepsis, low eGFR, the Mg deficit, age) and an AKI risk that rises with the same
severity and is multiplied by the planted risk ratio (0.6) under treatment. The naive comparison (dose
within the grace period or not) is pulled towards harm; the clone-censor-weight emulation with IPW from
pre-time-zero covariates recovers the planted ratio, balances the covariates, and finds no effect on the
negative-control outcome (low albumin, confounded but not caused by treatment). A second cohort plants
no effect (risk ratio 1): the emulation's CI contains 1.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mgaki.events import EventStore
from mgaki.research import StudyConfig
from mgaki.research.target_trial import _propensity, emulate, extract_trial
from mgaki.surveillance import run
from mgaki.synth import generate, load_params

PLANTED_RR = load_params().planted_repletion.risk_ratio  # type: ignore[union-attr]
CFG = StudyConfig(target_trial={"bootstrap_reps": 100})


@dataclass
class Trial:
    frame: pd.DataFrame
    truth: pd.DataFrame


def _trial(n: int, seed: int, risk_ratio: float | None = None) -> Trial:
    params = load_params()
    if risk_ratio is not None:
        pr = params.planted_repletion
        assert pr is not None
        params = params.model_copy(update={"planted_repletion": pr.model_copy(update={"risk_ratio": risk_ratio})})
    c = generate(n, seed=seed, plant_repletion=True, params=params)
    with tempfile.TemporaryDirectory() as d:
        store = EventStore(Path(d))
        store.append(c.tables)
        eps = run(store, outputs=("aki_episodes_out",)).tables["aki_episodes"]
        con = store.connect()
        try:
            frame = extract_trial(con, eps, CFG)
        finally:
            con.close()
    return Trial(frame, c.truth.to_pandas())


@pytest.fixture(scope="module")
def planted() -> Trial:
    return _trial(6000, 3)


def test_eligibility_time_zero_and_treatment_are_the_planted_ones(planted: Trial) -> None:
    f = planted.frame.set_index("encounter_id")
    truth = planted.truth.set_index("encounter_id")
    eligible = truth.index[truth["repletion_eligible"]]
    assert set(f.index[f["eligible"]]) == set(eligible) and len(eligible) > 3000
    treated = f.loc[eligible, "tx_h"].fillna(np.inf) <= CFG.target_trial.grace_hours
    assert (treated == truth.loc[eligible, "repletion_treated"]).all()
    # time zero is the first (low) Mg, after the first creatinine: every eligible admission has its eGFR
    assert f.loc[eligible, "egfr"].notna().all() and (f.loc[eligible, "mg_at_t0"] < 1.7).all()
    # planted AKI within the follow-up is what surveillance sees after time zero
    aki = f.loc[eligible, "aki_h"].notna() & (f.loc[eligible, "aki_h"] <= 24 * CFG.target_trial.follow_up_days)
    assert (aki == truth.loc[eligible, "aki"]).mean() > 0.99


def test_naive_is_biased_and_the_emulation_recovers_the_planted_effect(planted: Trial) -> None:
    r = emulate(planted.frame, CFG)
    assert r.estimable and r.n_used == r.n_eligible
    aki = r.emulation[0]
    naive = r.naive[0]
    assert aki.outcome == naive.outcome == "aki"
    assert aki.rr_ci[0] <= PLANTED_RR <= aki.rr_ci[1], aki
    assert naive.rr_ci[0] > PLANTED_RR, naive  # confounding by indication hides most of the benefit
    assert naive.rr - aki.rr > 0.15
    # covariates measured before time zero are balanced by the weights
    b = r.balance.set_index("covariate")
    assert b["smd_before"].abs().max() > 0.3 and (b["smd_after"].abs() < 0.1).all(), b
    # the negative control is confounded like AKI, untouched by treatment: naive not null, emulation null
    nc = next(x for x in r.emulation if x.outcome == "negative_control")
    nc_naive = next(x for x in r.naive if x.outcome == "negative_control")
    assert nc.rr_ci[0] <= 1.0 <= nc.rr_ci[1] and nc_naive.rr_ci[0] > 1.1
    assert r.e_value == pytest.approx(1 / aki.rr + np.sqrt(1 / aki.rr * (1 / aki.rr - 1)))
    assert list(r.protocol["component"]) == ["Eligibility criteria", "Treatment strategies", "Assignment procedures",
                                             "Follow-up period", "Outcome", "Causal contrast", "Analysis plan"]
    # overlap weights target another population; with one planted ratio for everyone they agree
    o = emulate(planted.frame, StudyConfig(target_trial={"bootstrap_reps": 50, "weighting": "overlap"}))
    assert o.emulation[0].rr_ci[0] <= PLANTED_RR <= o.emulation[0].rr_ci[1]


def test_no_planted_effect_gives_a_ci_containing_one() -> None:
    r = emulate(_trial(4000, 8, risk_ratio=1.0).frame, CFG)
    aki = r.emulation[0]
    assert aki.rr_ci[0] <= 1.0 <= aki.rr_ci[1], aki


def test_subgroups_too_small_say_why(planted: Trial) -> None:
    r = emulate(planted.frame.head(40), CFG)
    assert not r.estimable and r.notes[-1].startswith("not estimable: ")
    r = emulate(planted.frame, CFG, population="cisplatin", min_events=10_000)
    assert not r.estimable and "minimum 10000" in r.notes[-1]


def test_numpy_propensity_equals_statsmodels(planted: Trial) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    y = rng.random(500) < 1 / (1 + np.exp(-(x @ np.array([0.5, -1.0, 0.2]) + 0.3)))
    ref = sm.Logit(y.astype(float), sm.add_constant(x)).fit(disp=0)
    assert np.allclose(_propensity(x, y), ref.predict(sm.add_constant(x)), atol=1e-9)


def test_default_generation_is_unchanged_by_the_option() -> None:
    a, b = generate(300, seed=1), generate(300, seed=1, plant_repletion=False)
    assert a.tables["events"].equals(b.tables["events"]) and a.truth.equals(b.truth)
    assert a.tables["medications"].equals(b.tables["medications"])
    assert "repletion_treated" not in a.truth.column_names
    with pytest.raises(ValueError, match="cannot be combined"):
        generate(10, plant_repletion=True, plant_mg_aki=True)
