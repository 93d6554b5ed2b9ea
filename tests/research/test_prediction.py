"""Combined-biomarker prediction (C10): landmarks without look-ahead, metrics, saved models, planted signal/null."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import mgaki.research
from mgaki.errors import InputError
from mgaki.events import EventStore
from mgaki.research import StudyConfig, build_cohort, connect_tables
from mgaki.research.predict import (
    FEATURES,
    MODEL_FORMAT,
    build_landmarks,
    load_model,
    run_prediction,
    save_models,
    weighted_auc,
)
from mgaki.surveillance import run
from mgaki.synth import generate

ROOT = Path(__file__).resolve().parents[2]
# 2,500 admissions give ~14k landmarks and ~250 AKI-in-48-h events: each planted test runs in < 30 s
N, SEED = 2_500, 3
FAST = StudyConfig(prediction_learners=("logistic",), bootstrap_reps=200, seed=SEED)


@dataclass
class Built:
    con: duckdb.DuckDBPyConnection
    frame: pd.DataFrame
    tables: dict[str, object]


def _build(mode: bool) -> Built:
    c = generate(N, seed=SEED, plant_mg_predictive=mode)
    with tempfile.TemporaryDirectory() as d:
        store = EventStore(Path(d))
        store.append(c.tables)
        res = run(store)
    con = connect_tables(c.tables)
    return Built(con, build_cohort(con, res.tables, FAST).frame, dict(c.tables))


@pytest.fixture(scope="module")
def signal() -> Built:
    return _build(True)


def test_weighted_auc_matches_scikit_learn_with_ties_and_weights() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # rounding makes ties
    w = rng.integers(0, 4, 500).astype(float)
    assert weighted_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert weighted_auc(s, y, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)


def test_landmark_features_use_only_earlier_values_and_labels_the_next_48_h(signal: Built) -> None:
    lm = build_landmarks(signal.con, signal.frame, FAST)
    f = signal.frame.set_index("encounter_id")
    onset = f.loc[lm["encounter_id"], "aki_onset_hours"].to_numpy()
    stay = f.loc[lm["encounter_id"], "stay_hours"].to_numpy()
    t = lm["hours"].to_numpy()
    assert len(lm) > 10_000 and (t % 24 == 0).all() and t.min() == 24
    assert not (onset <= t).any() and (t < stay).all()  # at risk: open and AKI-free at the landmark
    assert (lm["y"].to_numpy() == ((onset > t) & (onset <= t + 48))).all()
    # mg_last recomputed independently: the last Mg event at or before the landmark (pandas merge_asof)
    ev = signal.tables["events"].to_pandas()  # type: ignore[attr-defined]
    mg = ev[ev["analyte"] == "magnesium"][["subject_id", "time", "numeric_value"]]
    mg = mg.assign(time=mg["time"].astype("datetime64[us]")).sort_values("time")
    q = lm[["subject_id", "encounter_id", "hours", "mg_last"]].copy()
    q["time"] = f.loc[q["encounter_id"], "start"].to_numpy() + pd.to_timedelta(q["hours"], unit="h")
    q = q.assign(time=q["time"].astype("datetime64[us]")).sort_values("time")
    m = pd.merge_asof(q, mg, on="time", by="subject_id", direction="backward")
    assert np.allclose(m["mg_last"], m["numeric_value"], equal_nan=False)


def test_planted_falling_mg_adds_value_beyond_creatinine(signal: Built) -> None:
    res = run_prediction(signal.con, signal.frame, FAST)
    base, mg = res.fit("creatinine", "logistic"), res.fit("creatinine+mg", "logistic")
    assert res.events_test > 50 and res.train_patients + res.test_patients == res.n_patients
    assert mg.delta_ci is not None and mg.delta_ci[0] > 0.0  # the CI excludes 0
    assert mg.delta_auroc == pytest.approx(mg.auroc - base.auroc) and mg.delta_auroc > 0.05
    assert mg.auroc_ci[0] < mg.auroc < mg.auroc_ci[1]
    assert 0 < mg.brier < base.brier and mg.auprc > base.auprc
    cal = mg.calibration
    assert len(cal) >= 5 and float(np.abs(cal["predicted"] - cal["observed"]).max()) < 0.15


def test_null_mg_adds_nothing_beyond_creatinine() -> None:
    b = _build(False)
    res = run_prediction(b.con, b.frame, FAST)
    mg = res.fit("creatinine+mg", "logistic")
    assert res.events_test > 50
    assert mg.delta_ci is not None and mg.delta_ci[0] <= 0.0 <= mg.delta_ci[1]  # the CI includes 0
    assert abs(mg.delta_auroc or 1.0) < 0.02


def test_saved_models_reload_with_features_versions_and_card(signal: Built, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"prediction_learners": ("logistic", "gbm"), "gbm_max_iter": 30,
                                  "bootstrap_reps": 20})
    res = run_prediction(signal.con, signal.frame, cfg)
    assert len(res.fits) == 6
    paths = save_models(res, tmp_path)
    lm = build_landmarks(signal.con, signal.frame, cfg).head(200)
    for f in res.fits:
        m = load_model(paths[f"{f.model_set}/{f.learner}"])
        assert m.features == list(f.features) and m.horizon_hours == 48
        expect = f.estimator.predict_proba(lm[list(f.features)].to_numpy(float))[:, 1]
        assert np.array_equal(m.predict_proba(lm), expect)
    with pytest.raises(InputError, match="mg_slope"):
        load_model(paths["combined/gbm"]).predict_proba(lm.drop(columns=["mg_slope"]))
    # the public entry point, from a path string; the file carries its feature documentation
    m = mgaki.research.load_model(str(paths["creatinine+mg/logistic"]))
    assert m.feature_doc["mg_slope"].startswith("Mg slope") and set(m.feature_doc) == set(m.features)
    card = json.loads(paths["card_json"].read_text())
    assert set(card["features"]["combined"]) == set(FEATURES)
    assert {m["model_set"] for m in card["metrics"]} == {"creatinine", "creatinine+mg", "combined"}
    assert card["versions"]["scikit-learn"] == "1.9.1" and "Limits" in paths["card_md"].read_text()


def test_load_model_refuses_other_format_versions_other_sklearn_and_foreign_files(signal: Built,
                                                                                 tmp_path: Path) -> None:
    import joblib  # type: ignore[import-untyped]

    cfg = FAST.model_copy(update={"bootstrap_reps": 10})
    path = save_models(run_prediction(signal.con, signal.frame, cfg), tmp_path)["creatinine/logistic"]
    good = joblib.load(path)
    assert good["format_version"] == MODEL_FORMAT
    cases = [({**good, "format_version": MODEL_FORMAT + 1}, f"format version {MODEL_FORMAT + 1}.*re-fit"),
             ({k: v for k, v in good.items() if k != "format_version"}, "format version None"),
             ({**good, "versions": {**good["versions"], "scikit-learn": "0.24.2"}}, "scikit-learn 0.24.2"),
             ({"estimator": good["estimator"]}, "not an mgaki AKI model file"),
             ([1, 2, 3], "not an mgaki AKI model file")]
    for i, (bundle, why) in enumerate(cases):
        bad = tmp_path / f"bad{i}.joblib"
        joblib.dump(bundle, bad)
        with pytest.raises(InputError, match=why):
            mgaki.research.load_model(bad)
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="cannot load"):
        mgaki.research.load_model(tmp_path / "junk.joblib")
    with pytest.raises(InputError, match="cannot load"):
        mgaki.research.load_model(tmp_path / "absent.joblib")


def test_default_generator_unchanged_by_the_predictive_option() -> None:
    a, b = generate(200, seed=2), generate(200, seed=2, plant_mg_predictive=None)
    assert a.tables["events"].equals(b.tables["events"]) and "mg_fall_planted" not in a.truth.column_names
    with pytest.raises(ValueError, match="cannot be combined"):
        generate(10, plant_mg_aki=True, plant_mg_predictive=True)


def test_study_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "study.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study.py"), "--n", "300", "--reps", "10",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    cox, nocox = res["runs"]
    assert cox["cox"] and not nocox["cox"] and cox["n"] == 300
    for run_ in res["runs"]:
        names = [s["stage"] for s in run_["stages"]]
        assert names[:3] == ["generate (not study)", "ingest (store append)", "surveillance"]
        assert {"cohort", "cox", "prediction", "report + models"} <= set(names)
        assert all(s["seconds"] >= 0 and s["peak_rss_gb"] > 0 for s in run_["stages"])
        assert len(run_["prediction"]["models"]) == 6
