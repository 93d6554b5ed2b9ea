"""The study recovers a planted U-shaped Mg-AKI association (synth planted_mg_aki) within its CIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from mgaki.research import StudyConfig, build_cohort, connect_tables
from mgaki.research.stats import band_odds_ratios, spline_curve
from mgaki.synth import generate, load_params

PLANTED = {b.label: b.odds_ratio for b in load_params().planted_mg_aki.bands}  # type: ignore[union-attr]


def test_default_generation_is_unchanged_by_the_option() -> None:
    a, b = generate(300, seed=1), generate(300, seed=1, plant_mg_aki=False)
    assert a.tables["events"].equals(b.tables["events"]) and a.truth.equals(b.truth)
    assert "mg_band_planted" not in a.truth.column_names


def test_planted_cohort_bands_and_aki_are_what_the_study_measures(planted) -> None:  # type: ignore[no-untyped-def]
    co = build_cohort(connect_tables(planted.tables), planted.results)
    truth = planted.truth.to_pandas().set_index("encounter_id")
    m = co.frame.set_index("encounter_id").join(truth[["mg_band_planted", "aki"]], rsuffix="_truth")
    assert len(m) > 11_000
    assert (m["mg_band"].astype(str) == m["mg_band_planted"]).all()  # no band misclassified by rounding
    assert (m["aki"].astype(bool) == m["aki_truth"]).all()  # surveillance finds exactly the planted AKI
    assert set(m["mg_band"].astype(str)) == set(PLANTED)


def test_adjusted_band_ors_recover_the_planted_u_shape(planted) -> None:  # type: ignore[no-untyped-def]
    co = build_cohort(connect_tables(planted.tables), planted.results)
    fit = band_odds_ratios(co.frame, "aki", co.bands, ("context", "nephrotoxic"))
    assert fit.notes == [] and fit.n_missing == 0
    t = fit.table.set_index("band")
    for band, true_or in PLANTED.items():
        if band == "1.9-2.1":
            assert t.loc[band, "or"] == 1.0 and t.loc[band, "note"] == "reference"
            continue
        assert t.loc[band, "lo"] <= true_or <= t.loc[band, "hi"], (band, true_or, t.loc[band].to_dict())
    # U shape: both extremes significantly above the reference
    assert t.loc["<1.5", "lo"] > 1.0 and t.loc[">2.3", "lo"] > 1.0
    # the same fit as statsmodels' formula API on the generator's truth columns (independent path), with the
    # covariates as measured before the index time (time zero): the cohort's, not the whole stay's
    tr = planted.truth.to_pandas().drop(columns=["context", "nephrotoxic"])
    tr = tr.merge(co.frame[["encounter_id", "context", "nephrotoxic"]], on="encounter_id")
    tr = tr.assign(aki=lambda d: d["aki"].astype(int), nephrotoxic=lambda d: d["nephrotoxic"].astype(int))
    ref = smf.logit("aki ~ C(mg_band_planted, Treatment('1.9-2.1')) + C(context, Treatment('none'))"
                    " + nephrotoxic", tr).fit(disp=0)
    for band in PLANTED:
        if band != "1.9-2.1":
            key = f"C(mg_band_planted, Treatment('1.9-2.1'))[T.{band}]"
            assert t.loc[band, "or"] == pytest.approx(np.exp(ref.params[key]), rel=1e-6)


def test_covariates_are_measured_before_the_index_time(planted) -> None:  # type: ignore[no-untyped-def]
    """Drugs and contexts that start after time zero are not baseline covariates but time-varying ones."""
    co = build_cohort(connect_tables(planted.tables), planted.results)
    f = co.frame.set_index("encounter_id")
    truth = planted.truth.to_pandas().set_index("encounter_id").loc[f.index]
    neph, ever = f["nephrotoxic"].astype(bool), truth["nephrotoxic"].astype(bool)
    assert not (neph & ~ever).any()  # baseline exposure only where the stay had one
    later = ever & ~neph  # started after the index time: the time-varying start is after it
    assert later.sum() > 500 and (f.loc[later, "nephrotoxic_later_hours"] > f.loc[later, "index_hours"]).all()
    # the planted contexts (surgery, contrast, cisplatin) happen hours after admission, after the index time
    ctx = truth["context"].isin(["cardiac-surgery", "contrast", "cisplatin"])
    assert (f.loc[ctx, "context"] == "none").mean() > 0.9 and f.loc[ctx, "context_later_hours"].notna().mean() > 0.9
    assert (f["index_hours"] >= f["mg_time"].sub(f["start"]).dt.total_seconds() / 3600 - 1e-9).all()


def test_crude_ors_and_spline_see_the_u_shape(planted) -> None:  # type: ignore[no-untyped-def]
    co = build_cohort(connect_tables(planted.tables), planted.results)
    crude = band_odds_ratios(co.frame, "aki", co.bands).table.set_index("band")
    assert crude.loc["<1.5", "or"] > 1.5 and crude.loc[">2.3", "or"] > 1.4
    cfg = StudyConfig()
    sp = spline_curve(co.frame, "aki", cfg.knot_quantiles(), 2.0, ("context", "nephrotoxic"))
    assert sp.p_nonlinear < 1e-6 and sp.lr_df == 2
    c = sp.curve
    at = pd.Series(c["or"].to_numpy(), index=c["mg"].to_numpy())
    assert at.iloc[0] > 1.5 and at.iloc[-1] > 1.5  # both ends above the reference Mg
    assert at[(at.index > 1.9) & (at.index < 2.1)].between(0.8, 1.25).all()
