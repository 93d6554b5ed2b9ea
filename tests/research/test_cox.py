"""Time-varying Cox: the fast path (change-point intervals + vectorised Efron fit) equals lifelines on the
per-measurement table, and finds the planted Mg fall before AKI (and nothing under the null)."""

from __future__ import annotations

import tempfile
import warnings
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
from lifelines import CoxTimeVaryingFitter

from mgaki.events import EventStore
from mgaki.research import StudyConfig, build_cohort, connect_tables
from mgaki.research.cox import PER_UNIT, change_point_intervals, cox_time_varying, efron_cox, mg_state_columns
from mgaki.research.stats import design
from mgaki.surveillance import run
from mgaki.synth import generate

COVS = ("age", "sex", "egfr", "icu", "context", "nephrotoxic")
LOW, HIGH = 1.7, 2.5  # magnesium.yaml reference range in mg/dL (the pipeline reads it from the knowledge base)


def _lifelines(d: pd.DataFrame) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lifelines' own convergence/variance notices
        f = CoxTimeVaryingFitter(penalizer=0.0).fit(d, id_col="id", event_col="event", start_col="start",
                                                    stop_col="stop")
    return f.summary


def _cohort(n: int, seed: int, **plant: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    c = generate(n, seed=seed, **plant)
    with tempfile.TemporaryDirectory() as d:
        store = EventStore(Path(d))
        store.append(c.tables)
        res = run(store)
    co = build_cohort(connect_tables(c.tables), res.tables, StudyConfig())
    return co.time_varying, co.frame


def test_efron_fit_equals_lifelines_with_ties_and_events_at_interval_boundaries() -> None:
    rng = np.random.default_rng(4)
    rows = []
    for i in range(300):  # integer times: many tied events, and other rows' boundaries fall on event times
        cuts = np.unique(rng.integers(1, 30, rng.integers(1, 4)))
        edges = np.r_[0, cuts, 30]
        x1, x2 = rng.normal(), rng.integers(0, 2)
        end = int(rng.integers(2, 31))
        for a, b in pairwise(edges):
            if a >= end:
                break
            z = float(rng.integers(0, 2))
            rows.append({"id": i, "start": float(a), "stop": float(min(b, end)), "x1": x1, "x2": float(x2),
                         "z": z, "event": False})
        rows[-1]["event"] = bool(rng.random() < 0.4 + 0.2 * rows[-1]["z"])
    d = pd.DataFrame(rows)
    ours = efron_cox(d["start"].to_numpy(), d["stop"].to_numpy(), d["event"].to_numpy(),
                     d[["x1", "x2", "z"]].to_numpy())
    ref = _lifelines(d[["id", "start", "stop", "event", "x1", "x2", "z"]])
    assert ours.converged and d.groupby("stop")["event"].sum().max() >= 3  # ties really happen
    np.testing.assert_allclose(ours.params, ref["coef"].to_numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.se, ref["se(coef)"].to_numpy(), rtol=1e-6)


def test_change_point_table_gives_the_same_estimates_as_the_per_measurement_table() -> None:
    tv, frame = _cohort(1500, 7, plant_mg_aki=True)  # planted high Mg: both states carry events
    fast, notes = cox_time_varying(tv, frame, LOW, HIGH, COVS)
    cp = change_point_intervals(tv, LOW, HIGH)
    assert 0 < len(cp) < len(tv) / 2  # far fewer intervals than measurements
    assert np.allclose(cp.groupby("id")["stop"].max(), tv.groupby("id")["stop"].max())
    # the straightforward construction: one interval per Mg measurement, lifelines on all of it
    cov, _ = design(frame, COVS)
    full = tv.assign(**mg_state_columns(tv["mg"].to_numpy(float), LOW, HIGH)).drop(columns="mg")
    full = pd.concat([full.reset_index(drop=True),
                      pd.DataFrame(cov.to_numpy(float)[tv["id"].to_numpy()], columns=cov.columns)], axis=1)
    full = full[["id", "start", "stop", "event", *fast["term"]]].dropna()
    ref = _lifelines(full)
    t = fast.set_index("term")
    assert set(t.index) >= {"mg_low", "mg_high", "age", "egfr"}, notes
    # HRs are reported per a meaningful unit (age per 10 years, eGFR per 10 mL/min): HR^(1/unit) is lifelines'
    unit = np.array([PER_UNIT.get(k, (1.0, ""))[0] for k in t.index])
    np.testing.assert_allclose(np.log(t["hr"]) / unit, ref.loc[t.index, "coef"], rtol=1e-5)
    lo_col = next(c for c in ref.columns if c.startswith("coef lower"))
    np.testing.assert_allclose(np.log(t["lo"]) / unit, ref.loc[t.index, lo_col], rtol=1e-5)
    assert t.loc["age", "meaning"].endswith("per 10 years")


def test_planted_mg_fall_before_aki_is_a_hazard_and_the_null_is_not() -> None:
    tv, frame = _cohort(2500, 3, plant_mg_predictive=True)
    sig, notes = cox_time_varying(tv, frame, LOW, HIGH, COVS)
    low = sig.set_index("term").loc["mg_low"]
    assert low["lo"] > 2.0, (low.to_dict(), notes)  # 80% of AKI admissions fall below range first
    tv0, frame0 = _cohort(2500, 3, plant_mg_predictive=False)
    null, notes0 = cox_time_varying(tv0, frame0, LOW, HIGH, COVS)
    low0 = null.set_index("term").loc["mg_low"]
    assert low0["lo"] <= 1.0 <= low0["hi"], (low0.to_dict(), notes0)


def test_a_state_without_events_is_left_out_with_a_note() -> None:
    rng = np.random.default_rng(2)
    n = 200
    mg = rng.uniform(1.4, 2.3, n)
    mg[:10] = 2.8  # above the range, never followed by AKI
    ev = np.where(mg < LOW, rng.random(n) < 0.6, rng.random(n) < 0.3) & (mg < 2.5)
    tv = pd.DataFrame({"id": np.arange(n), "start": 0.0, "stop": rng.uniform(5, 100, n), "mg": mg, "event": ev})
    frame = pd.DataFrame({"age": rng.normal(60, 10, n)})
    out, notes = cox_time_varying(tv, frame, LOW, HIGH, ("age",))
    assert any("mg_high has no AKI events" in x for x in notes)
    assert list(out["term"]) == ["mg_low", "age"] and np.isfinite(out["hr"]).all()
    assert out.set_index("term").loc["mg_low", "lo"] > 1.0


def test_a_continuous_distance_without_events_away_from_zero_is_left_out_with_a_note() -> None:
    # the MIMIC-subset case: no AKI ever follows a Mg above the range, so "distance above" has all its events
    # at 0 (its lowest value): the partial likelihood rises without bound; left out, not "not estimable"
    rng = np.random.default_rng(3)
    n = 200
    mg = rng.uniform(1.4, 2.3, n)
    mg[:10] = rng.uniform(2.6, 3.0, 10)
    ev = np.where(mg < LOW, rng.random(n) < 0.6, rng.random(n) < 0.3) & (mg < 2.5)
    tv = pd.DataFrame({"id": np.arange(n), "start": 0.0, "stop": rng.uniform(5, 100, n), "mg": mg, "event": ev})
    frame = pd.DataFrame({"age": rng.normal(60, 10, n)})
    out, notes = cox_time_varying(tv, frame, LOW, HIGH, ("age",), continuous_mg=True)
    assert any("mg_above has no AKI events away from its lowest or highest value" in x for x in notes)
    assert list(out["term"]) == ["mg_below", "age"] and np.isfinite(out["hr"]).all()
    assert out.set_index("term").loc["mg_below", "hr"] > 1.0  # per 0.1 mg/dL below the range
