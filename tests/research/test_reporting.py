"""Design and reporting pieces against known answers: IPCW for censored AKD, cause-specific hazards
(lifelines), minimum events, calibration slope/intercept, decision curves, p-value format, Table 1 by band."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter

from mgaki.research import StudyConfig, bands, build_cohort, connect_tables
from mgaki.research.cox import cause_specific, competing_times
from mgaki.research.predict import PredictionResult, _judge, _recalibration, decision_curve
from mgaki.research.stats import band_odds_ratios, format_p, ipcw_weights, table_one

BANDS = bands("cheungpasitporn_2015")


def test_ipcw_recovers_the_akd_share_that_complete_case_underestimates() -> None:
    """AKI episodes last Exp(mean 5 d); admissions end at an independent Uniform(1, 12) d: an episode still
    running at discharge before day 7 has unknown AKD status. The true P(duration >= 7 d) = exp(-7/5)."""
    rng = np.random.default_rng(0)
    n = 20_000
    dur = rng.exponential(5 * 24.0, n)
    stay = rng.uniform(24.0, 12 * 24.0, n)
    seen = np.minimum(dur, stay)
    recovered = dur <= stay
    akd = np.where(seen >= 168.0, True, np.where(recovered, False, np.nan))
    f = pd.DataFrame({"aki": True, "aki_duration_hours": seen, "akd_7d": pd.array(akd, dtype="boolean")})
    w, msg = ipcw_weights(f, "akd_7d", 168.0)
    known = f["akd_7d"].notna()
    assert w[~known].isna().all() and (w[known] >= 1).all() and "censored" in msg
    truth = np.exp(-7 / 5)
    cc = f.loc[known, "akd_7d"].astype(float).mean()
    ipcw = np.average(f.loc[known, "akd_7d"].astype(float), weights=w[known])
    assert cc < truth - 0.05  # complete case: long episodes are the ones censored
    assert ipcw == pytest.approx(truth, abs=0.015)


def test_min_events_makes_a_model_not_estimable_with_its_reason() -> None:
    rng = np.random.default_rng(1)
    n = 300
    f = pd.DataFrame({"aki": rng.random(n) < 0.02, "mg_band": pd.Categorical(
        rng.choice([b.label for b in BANDS], n), categories=[b.label for b in BANDS], ordered=True),
        "age": rng.normal(60, 10, n)})
    fit = band_odds_ratios(f, "aki", BANDS, ("age",), min_events=10)
    ev = int(f["aki"].sum())
    assert ev < 10 and any(x.startswith("not estimable: ") and "minimum 10" in x for x in fit.notes)
    est = fit.table[fit.table["note"] != "reference"]
    assert est["or"].isna().all() and est["note"].str.startswith("not estimable").all()
    # enough events: estimated, with an events-per-variable warning when there are fewer than 10 per term
    f["aki"] = rng.random(n) < 0.2
    fit = band_odds_ratios(f, "aki", BANDS, ("age",), min_events=10)
    assert fit.table["or"].notna().sum() >= 5 and any("events per variable" in x for x in fit.notes)


def test_cause_specific_hazards_equal_lifelines(planted) -> None:  # type: ignore[no-untyped-def]
    co = build_cohort(connect_tables(planted.tables), planted.results)
    f = co.frame
    table, notes = cause_specific(f, co.bands, ("age", "sex"), min_events=10)
    t, cause = competing_times(f)
    assert (cause == 1).sum() == f["aki"].sum() and (cause == 2).sum() > 0  # deaths before any AKI exist
    d = pd.DataFrame({f"b{i}": (f["mg_band"] == b.label).astype(float) for i, b in enumerate(co.bands)
                      if not b.reference}).assign(age=f["age"], female=(f["sex"] == "female").astype(float),
                                                  t=t, e=(cause == 1).astype(int))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = CoxPHFitter().fit(d, "t", "e")  # lifelines: Efron ties, like ours
    aki = table[table["cause"] == "AKI"].set_index("band")
    for i, b in enumerate(co.bands):
        if not b.reference:
            assert aki.loc[b.label, "hr"] == pytest.approx(float(np.exp(ref.params_[f"b{i}"])), rel=1e-5)
    assert set(table["cause"]) == {"AKI", "death before AKI"} and "reference band" in notes[-1]


def test_calibration_slope_intercept_and_decision_curve() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0.02, 0.6, 40_000)
    y = (rng.random(p.size) < p).astype(int)
    slope, icpt = _recalibration(y, p)
    assert slope == pytest.approx(1.0, abs=0.05) and icpt == pytest.approx(0.0, abs=0.03)
    slope2, _ = _recalibration(y, 1 / (1 + np.exp(-2 * np.log(p / (1 - p)))))  # overconfident: slope ~ 1/2
    assert slope2 == pytest.approx(0.5, abs=0.05)
    dc = decision_curve(y, y.astype(float))  # a perfect model: net benefit = prevalence at every threshold
    assert np.allclose(dc["net_benefit"], y.mean())
    prev = y.mean()
    assert np.allclose(dc["treat_all"], prev - (1 - prev) * dc["threshold"] / (1 - dc["threshold"]))


def test_no_significance_from_few_test_patients_or_a_baseline_at_chance() -> None:
    from mgaki.research.predict import ModelFit

    def fit(name: str, auc: float, ci: tuple[float, float]) -> ModelFit:
        return ModelFit(name, "logistic", (), None, auc, ci, 0.1, 0.1, pd.DataFrame(), pd.DataFrame())

    res = PredictionResult([fit("creatinine", 0.36, (0.2, 0.55)), fit("creatinine+mg", 0.48, (0.3, 0.7))],
                           100, 60, 60, 39, 21, 70, 30, 5, 4, {})
    _judge(res, StudyConfig())
    assert not res.interpretable
    why = res.notes[-1]
    assert "21 test patients (minimum 50)" in why and "does not discriminate (AUROC 0.360" in why
    assert (res.table()["dAUROC CI"].isin(["", "not interpreted"])).all()
    ok = PredictionResult([fit("creatinine", 0.8, (0.75, 0.85))], 1000, 500, 500, 350, 150, 700, 300, 60, 30, {})
    _judge(ok, StudyConfig())
    assert ok.interpretable and ok.notes == []


def test_p_values_are_never_zero() -> None:
    assert format_p(0.0) == "< 0.001" and format_p(1e-12) == "< 0.001" and format_p(0.0004) == "< 0.001"
    assert format_p(0.0421) == "0.042" and format_p(float("nan")) == "" and format_p(0.001) == "0.001"


def test_table_one_is_by_band_with_readable_labels(planted) -> None:  # type: ignore[no-untyped-def]
    co = build_cohort(connect_tables(planted.tables), planted.results)
    html, frame = table_one(co.frame)
    assert "Admission Mg, mg/dL" in html and "In ICU at the index time" in html and "admission_mg" not in html
    assert [c for c in frame.columns.get_level_values(1) if c in {b.label for b in co.bands}] == \
        [b.label for b in co.bands]
    mg = frame.loc[("Admission Mg, mg/dL, mean (SD)", "")]
    assert all(len(str(v).split(" ")[0].split(".")[1]) == 2 for v in mg.iloc[1:] if "." in str(v))
