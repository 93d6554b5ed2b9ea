"""Pieces of the study checked against independent implementations and hand-made cases."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from mgaki.errors import KnowledgeError
from mgaki.research import StudyConfig, bands, load_config
from mgaki.research.cohort import band_case_sql
from mgaki.research.stats import band_odds_ratios, rcs_basis, roc_youden


def test_bands_are_the_studys_six_with_its_reference_and_edges() -> None:
    bs = bands("cheungpasitporn_2015")
    assert [b.label for b in bs] == ["<1.5", "1.5-1.7", "1.7-1.9", "1.9-2.1", "2.1-2.3", ">2.3"]
    assert [b.label for b in bs if b.reference] == ["1.9-2.1"]
    x = [1.49, 1.5, 1.69, 1.7, 2.09, 2.1, 2.3, 2.31]
    got = duckdb.sql(f"SELECT {band_case_sql('v', bs)} AS b FROM (SELECT unnest({x}) AS v)").df()["b"].tolist()
    assert got == ["<1.5", "1.5-1.7", "1.5-1.7", "1.7-1.9", "1.9-2.1", "2.1-2.3", "2.1-2.3", ">2.3"]
    with pytest.raises(KnowledgeError, match="no exposure_bands"):
        bands("ribeiro_2022")


def test_config_defaults_come_from_cited_files_and_overrides_are_checked(tmp_path: Path) -> None:
    c = StudyConfig()
    assert (c.admission_window_hours, c.persistent_aki_hours, c.akd_days, c.min_age_years) == (24, 48, 7, 18)
    assert c.knot_quantiles() == (0.05, 0.35, 0.65, 0.95)
    f = tmp_path / "c.yaml"
    f.write_text("admission_window_hours: 6\nspline_knots: 3\n")
    c2 = load_config(f)
    assert c2.admission_window_hours == 6 and c2.knot_quantiles() == (0.10, 0.50, 0.90)
    f.write_text("window: 6\n")
    with pytest.raises(KnowledgeError, match="window"):
        load_config(f)
    f.write_text("primary_outcome: akd_7d\noutcomes: [aki]\n")
    with pytest.raises(KnowledgeError, match="primary_outcome"):
        load_config(f)


def test_rcs_basis_is_linear_beyond_the_outer_knots_and_zero_below_the_first() -> None:
    knots = np.array([1.2, 1.8, 2.1, 2.6])
    x = np.linspace(0.5, 4.0, 400)
    b = rcs_basis(x, knots)
    assert b.shape == (400, 2)
    assert np.allclose(b[x <= 1.2], 0.0)
    right = x > 2.6
    second = np.diff(b[right], n=2, axis=0)
    assert np.allclose(second, 0.0, atol=1e-12)  # linear tail: restricted
    assert not np.allclose(np.diff(b[(x > 1.3) & (x < 2.5)], n=2, axis=0), 0.0)


def test_roc_matches_scikit_learn_and_the_youden_cutoff_is_the_best_split() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.3
    mg = np.round(np.where(y, rng.normal(1.8, 0.3, 2000), rng.normal(2.05, 0.25, 2000)), 1)
    r = roc_youden("mg", y.astype(int), mg, "low", reps=200, seed=1)
    assert r.auc == pytest.approx(roc_auc_score(y, -mg), abs=1e-12)
    fpr, tpr, thr = roc_curve(y, -mg)
    i = int(np.argmax(tpr - fpr))
    assert r.cutoff == pytest.approx(-thr[i]) and r.sensitivity == pytest.approx(tpr[i])
    assert r.specificity == pytest.approx(1 - fpr[i])
    assert r.sensitivity == pytest.approx(((mg <= r.cutoff) & y).sum() / y.sum())
    assert r.auc_ci[0] < r.auc < r.auc_ci[1] and r.auc_ci[1] - r.auc_ci[0] < 0.1


def test_band_ors_equal_the_2x2_odds_ratio_and_empty_bands_say_why() -> None:
    bs = bands("cheungpasitporn_2015")
    # reference 1.9-2.1: 20/100 events; <1.5: 30/60; >2.3: 0/5 (not estimable); others empty
    rows = ([("1.9-2.1", 1)] * 20 + [("1.9-2.1", 0)] * 80 + [("<1.5", 1)] * 30 + [("<1.5", 0)] * 30
            + [(">2.3", 0)] * 5)
    df = pd.DataFrame(rows, columns=["mg_band", "aki"])
    df["mg_band"] = pd.Categorical(df["mg_band"], categories=[b.label for b in bs], ordered=True)
    fit = band_odds_ratios(df, "aki", bs)
    t = fit.table.set_index("band")
    assert t.loc["<1.5", "or"] == pytest.approx((30 / 30) / (20 / 80))
    se = np.sqrt(1 / 30 + 1 / 30 + 1 / 20 + 1 / 80)  # Woolf
    assert t.loc["<1.5", "lo"] == pytest.approx(4.0 * np.exp(-1.959964 * se), rel=1e-5)
    assert t.loc[">2.3", "note"] == "no events or all events" and np.isnan(t.loc[">2.3", "or"])
    assert t.loc["1.5-1.7", "note"] == "no patients"
    assert fit.n_used == 160 and any("band >2.3 left out" in n for n in fit.notes)
