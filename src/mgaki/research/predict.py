"""Combined-biomarker prediction (SPEC C10): AKI in the next 48 h from Mg trajectory, creatinine kinetics, labs.

Landmark design: one prediction time per admission day (24 h, 48 h, ... after
admission start) while the admission is open and AKI-free; every feature is built
from values measured at or before that time, in one DuckDB query over all
landmarks (no per-patient loop). Patients, not rows, are split into train and
test, and the bootstrap resamples test patients, because one patient's
landmarks are correlated. Every model set is compared with the creatinine-only
baseline of the same learner (ΔAUROC with a patient-level bootstrap CI).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from mgaki.errors import InputError
from mgaki.research._config import StudyConfig
from mgaki.research.provenance import versions

__all__ = ["FEATURES", "FEATURE_DOC", "MODEL_FORMAT", "MODEL_SETS", "LoadedModel", "ModelFit", "PredictionResult",
           "build_landmarks", "load_model", "model_card", "run_prediction", "save_models", "weighted_auc"]

F = NDArray[np.float64]
_H = 3600.0
_LABS = ("creatinine", "magnesium", "potassium", "phosphate", "calcium", "albumin")

# what each feature means (model card); values are canonical units (units.yaml) at or before the landmark
FEATURE_DOC: dict[str, str] = {
    "age": "age at admission, years", "female": "1 if female", "hours": "hours since admission start",
    "cr_last": "last creatinine", "cr_first": "first creatinine of the admission",
    "cr_min": "lowest creatinine of the admission so far", "cr_ratio_min": "last / lowest creatinine so far",
    "cr_rise_window": "last creatinine - lowest in the trend window", "cr_slope": "creatinine slope in the trend "
    "window, per 24 h (least squares)",
    "mg_last": "last Mg", "mg_first": "first Mg of the admission", "mg_min": "lowest Mg so far",
    "mg_change": "last Mg - first Mg", "mg_fall_window": "last Mg - highest Mg in the trend window",
    "mg_slope": "Mg slope in the trend window, per 24 h (least squares)",
    "potassium_last": "last potassium", "phosphate_last": "last phosphate", "calcium_last": "last total calcium",
    "albumin_last": "last albumin",
}
_BASE = ("age", "female", "hours", "cr_last", "cr_first", "cr_min", "cr_ratio_min", "cr_rise_window", "cr_slope")
_MG = ("mg_last", "mg_first", "mg_min", "mg_change", "mg_fall_window", "mg_slope")
_OTHER = ("potassium_last", "phosphate_last", "calcium_last", "albumin_last")
MODEL_SETS: dict[str, tuple[str, ...]] = {
    "creatinine": _BASE,  # the baseline every other set is compared with
    "creatinine+mg": _BASE + _MG,
    "combined": _BASE + _MG + _OTHER,
}
FEATURES = MODEL_SETS["combined"]
# layout of a saved model file; bump it when the dict save_models writes changes, so load_model refuses old files
MODEL_FORMAT = 1
LEARNERS = ("logistic", "gbm")
BASELINE = "creatinine"


@dataclass
class ModelFit:
    model_set: str
    learner: str
    features: tuple[str, ...]
    estimator: Any
    auroc: float
    auroc_ci: tuple[float, float]
    auprc: float
    brier: float
    roc: pd.DataFrame  # fpr, tpr (test set)
    calibration: pd.DataFrame  # predicted, observed, n (reliability curve, equal-count bins)
    delta_auroc: float | None = None  # vs the creatinine-only baseline of the same learner
    delta_ci: tuple[float, float] | None = None
    calibration_slope: float = float("nan")  # logistic recalibration: y ~ logit(p); 1 = ideal
    calibration_intercept: float = float("nan")  # calibration-in-the-large: y ~ offset(logit(p)); 0 = ideal
    decision: pd.DataFrame = field(default_factory=pd.DataFrame)  # threshold, net_benefit, treat_all


@dataclass
class PredictionResult:
    fits: list[ModelFit]
    n_landmarks: int
    n_admissions: int
    n_patients: int
    train_patients: int
    test_patients: int
    train_rows: int
    test_rows: int
    events_train: int
    events_test: int
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    interpretable: bool = True  # False: too few test patients/events, or a baseline that does not discriminate

    def table(self) -> pd.DataFrame:
        """The comparison table of the report: one row per model set and learner."""
        return pd.DataFrame([{
            "model": f.model_set, "learner": f.learner, "features": len(f.features), "AUROC": f.auroc,
            "AUROC CI": f"{f.auroc_ci[0]:.3f}-{f.auroc_ci[1]:.3f}", "AUPRC": f.auprc, "Brier": f.brier,
            "calibration slope": f.calibration_slope, "calibration intercept": f.calibration_intercept,
            "dAUROC vs creatinine": f.delta_auroc if f.delta_auroc is not None else float("nan"),
            "dAUROC CI": (f"{f.delta_ci[0]:.3f}-{f.delta_ci[1]:.3f}" if self.interpretable else "not interpreted")
            if f.delta_ci else ""} for f in self.fits])

    def fit(self, model_set: str, learner: str) -> ModelFit:
        for f in self.fits:
            if f.model_set == model_set and f.learner == learner:
                return f
        raise KeyError(f"no fitted model {model_set!r}/{learner!r}")

    def summary(self) -> dict[str, Any]:
        return {"n_landmarks": self.n_landmarks, "n_admissions": self.n_admissions, "n_patients": self.n_patients,
                "train_patients": self.train_patients, "test_patients": self.test_patients,
                "train_rows": self.train_rows, "test_rows": self.test_rows, "events_train": self.events_train,
                "events_test": self.events_test, "notes": self.notes, "interpretable": self.interpretable,
                "models": [{"model_set": f.model_set, "learner": f.learner, "auroc": f.auroc,
                            "auroc_ci": list(f.auroc_ci), "auprc": f.auprc, "brier": f.brier,
                            "calibration_slope": f.calibration_slope,
                            "calibration_intercept": f.calibration_intercept,
                            "delta_auroc": f.delta_auroc, "delta_ci": list(f.delta_ci) if f.delta_ci else None}
                           for f in self.fits]}


# --- landmarks and features ------------------------------------------------------------------------------

def build_landmarks(con: duckdb.DuckDBPyConnection, cohort: pd.DataFrame, config: StudyConfig) -> pd.DataFrame:
    """One row per (admission, prediction time) with its features (data at or before it) and the 48-h label."""
    step, horizon = config.landmark_step_hours, config.prediction_horizon_hours
    stay = cohort["stay_hours"].to_numpy(float)
    onset = cohort["aki_onset_hours"].to_numpy(float)  # NaN = no AKI in the admission
    open_until = np.fmin(stay, onset)  # the landmark must be before discharge and before any AKI
    n_lm = np.clip(np.ceil(open_until / step) - 1, 0, np.floor(config.landmark_max_days * 24 / step))
    n_lm = np.nan_to_num(n_lm).astype(np.int64)
    idx = np.repeat(np.arange(len(cohort)), n_lm)
    k = np.arange(idx.size) - np.repeat(np.cumsum(n_lm) - n_lm, n_lm) + 1
    t = k * step
    y = (onset[idx] > t) & (onset[idx] <= t + horizon)  # NaN onset compares False: no AKI
    keys = pd.DataFrame({"id": np.arange(len(cohort)), "subject_id": cohort["subject_id"].to_numpy(),
                         "start": cohort["start"].to_numpy(), "last_h": np.nan_to_num(n_lm * step)})
    lm = pd.DataFrame({"lm": np.arange(idx.size), "id": idx, "t": t})
    con.register("pred_keys", keys)
    con.register("pred_lm", lm)
    w = config.trend_window_hours
    analytes = ", ".join(f"'{a}'" for a in _LABS)

    def agg(a: str, short: str) -> str:
        f = f"FILTER (WHERE ev.analyte = '{a}')"
        fw = f"FILTER (WHERE ev.analyte = '{a}' AND ev.h >= l.t - {w!r})"
        return (f"arg_max(ev.v, ev.h) {f} AS {short}_last, arg_min(ev.v, ev.h) {f} AS {short}_first, "
                f"min(ev.v) {f} AS {short}_min, min(ev.v) {fw} AS {short}_min_w, max(ev.v) {fw} AS {short}_max_w, "
                f"regr_slope(ev.v, ev.h) {fw} * 24 AS {short}_slope")

    try:
        feats = con.sql(f"""
          WITH ev AS (
            SELECT k.id, e.analyte, (epoch(e.time) - epoch(k.start)) / {_H} AS h, e.numeric_value AS v
            FROM pred_keys k JOIN events e ON e.subject_id = k.subject_id
            WHERE e.analyte IN ({analytes}) AND e.numeric_value IS NOT NULL
              AND e.time >= k.start AND (epoch(e.time) - epoch(k.start)) / {_H} <= k.last_h)
          SELECT l.lm, {agg('creatinine', 'cr')}, {agg('magnesium', 'mg')},
            arg_max(ev.v, ev.h) FILTER (WHERE ev.analyte = 'potassium') AS potassium_last,
            arg_max(ev.v, ev.h) FILTER (WHERE ev.analyte = 'phosphate') AS phosphate_last,
            arg_max(ev.v, ev.h) FILTER (WHERE ev.analyte = 'calcium') AS calcium_last,
            arg_max(ev.v, ev.h) FILTER (WHERE ev.analyte = 'albumin') AS albumin_last
          FROM pred_lm l LEFT JOIN ev ON ev.id = l.id AND ev.h <= l.t
          GROUP BY l.lm ORDER BY l.lm""").df()
    finally:
        con.unregister("pred_keys")
        con.unregister("pred_lm")
    out = pd.DataFrame({
        "subject_id": cohort["subject_id"].to_numpy()[idx], "encounter_id": cohort["encounter_id"].to_numpy()[idx],
        "hours": t.astype(float), "age": cohort["age"].to_numpy(float)[idx],
        "female": (cohort["sex"].to_numpy() == "female").astype(float)[idx], "y": y.astype(np.int8)})
    for c in feats.columns.drop("lm"):
        out[c] = feats[c].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["cr_ratio_min"] = out["cr_last"] / out["cr_min"]
    out["cr_rise_window"] = out["cr_last"] - out["cr_min_w"]
    out["mg_change"] = out["mg_last"] - out["mg_first"]
    out["mg_fall_window"] = out["mg_last"] - out["mg_max_w"]
    return out


# --- metrics ------------------------------------------------------------------------------------------

def weighted_auc(score: F, y: NDArray[Any], weights: F | None = None) -> float:
    """AUROC with case weights (ties count one half): the bootstrap's workhorse, checked against scikit-learn."""
    _, inv = np.unique(score, return_inverse=True)
    return _auc_groups(inv, int(inv.max()) + 1 if inv.size else 0, y.astype(float),
                       np.ones(y.size) if weights is None else weights)


def _auc_groups(inv: NDArray[Any], g: int, y: F, w: F) -> float:
    return _auc_split(inv, g, w * y, w * (1.0 - y))


def _auc_split(inv: NDArray[Any], g: int, w_pos: F, w_neg: F) -> float:
    """AUROC from the case weights of positives and negatives, grouped by distinct score (index ``inv``)."""
    pos = np.bincount(inv, weights=w_pos, minlength=g)
    neg = np.bincount(inv, weights=w_neg, minlength=g)
    p, n = pos.sum(), neg.sum()
    if p == 0 or n == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    # elementwise product and sum, not `pos @ ...`: a 1-D dot goes through the multi-threaded BLAS, whose
    # spin-waiting made each call ~13x slower on a busy 2-core machine (the bootstrap makes thousands)
    return float(np.sum(pos * (below + 0.5 * neg)) / (p * n))


def _bootstrap(scores: dict[tuple[str, str], F], y: F, groups: NDArray[Any], reps: int, seed: int
               ) -> dict[tuple[str, str], F]:
    """AUROC of every model on the same patient-level resamples (test patients drawn with replacement)."""
    _, pid = np.unique(groups, return_inverse=True)
    n_p = int(pid.max()) + 1
    prepared = {}
    for key, s in scores.items():
        _, inv = np.unique(s, return_inverse=True)
        prepared[key] = (inv, int(inv.max()) + 1)
    rng = np.random.default_rng(seed)
    out = {key: np.empty(reps) for key in scores}
    for r in range(reps):  # a loop over resamples; each is vectorised over all rows
        w = np.bincount(rng.integers(0, n_p, n_p), minlength=n_p)[pid].astype(float)
        w_pos, w_neg = w * y, w * (1.0 - y)  # shared by every model of this resample
        for key, (inv, g) in prepared.items():
            out[key][r] = _auc_split(inv, g, w_pos, w_neg)
    return out


def _ci(a: F, level: float) -> tuple[float, float]:
    a = a[np.isfinite(a)]
    q = (1 - level) / 2
    return float(np.quantile(a, q)), float(np.quantile(a, 1 - q))


def _estimator(learner: str, config: StudyConfig) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if learner == "logistic":  # median imputation with missingness indicators; scaled for a stable fit
        return make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                             StandardScaler(), LogisticRegression(max_iter=2000))
    return HistGradientBoostingClassifier(max_iter=config.gbm_max_iter, early_stopping=False,
                                          random_state=config.seed)  # missing values handled natively


def _thin_roc(y: NDArray[Any], p: F, points: int = 201) -> pd.DataFrame:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    grid = np.linspace(0.0, 1.0, points)
    return pd.DataFrame({"fpr": grid, "tpr": np.interp(grid, fpr, tpr)})


def _fit_all(lm: pd.DataFrame, tr: NDArray[Any], te: NDArray[Any], ytr: NDArray[Any], yte: NDArray[Any],
             config: StudyConfig, res: PredictionResult, scores: dict[tuple[str, str], F]) -> None:
    """Every learner x feature set: fit on train patients, score test patients, reliability curve."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    for learner in config.prediction_learners:
        for name, feats in MODEL_SETS.items():
            est = _estimator(learner, config)
            est.fit(lm[list(feats)].to_numpy(float)[tr], ytr)
            p = est.predict_proba(lm[list(feats)].to_numpy(float)[te])[:, 1]
            scores[(name, learner)] = p
            obs, pred = calibration_curve(yte, p, n_bins=config.calibration_bins, strategy="quantile")
            slope, icpt = _recalibration(yte, p)
            res.fits.append(ModelFit(
                name, learner, feats, est, float(roc_auc_score(yte, p)), (float("nan"), float("nan")),
                float(average_precision_score(yte, p)), float(brier_score_loss(yte, p)), _thin_roc(yte, p),
                pd.DataFrame({"predicted": pred, "observed": obs}), calibration_slope=slope,
                calibration_intercept=icpt, decision=decision_curve(yte, p)))


def _judge(res: PredictionResult, config: StudyConfig) -> None:
    """No claim the data cannot carry: too few test patients or events, or a baseline at chance, make the
    comparison descriptive only (the report says why)."""
    why = []
    if res.test_patients < config.min_test_patients:
        why.append(f"{res.test_patients} test patients (minimum {config.min_test_patients})")
    if min(res.events_test, res.test_rows - res.events_test) < config.min_events:
        why.append(f"{res.events_test} test landmarks with AKI (minimum {config.min_events})")
    for f in res.fits:
        if f.model_set == BASELINE and (f.auroc < 0.5 or f.auroc_ci[0] <= 0.5):
            why.append(f"the creatinine-only baseline ({f.learner}) does not discriminate (AUROC {f.auroc:.3f}, "
                       f"CI {f.auroc_ci[0]:.3f}-{f.auroc_ci[1]:.3f}): a ΔAUROC over it is no gain over a working "
                       "baseline")
    if why:
        res.interpretable = False
        res.notes.append("descriptive only, no significance claimed: " + "; ".join(why))


def run_prediction(con: duckdb.DuckDBPyConnection, cohort: pd.DataFrame, config: StudyConfig) -> PredictionResult:
    """Landmarks, a patient-level train/test split, six fits (3 feature sets x 2 learners) and their metrics."""
    from sklearn.model_selection import GroupShuffleSplit

    lm = build_landmarks(con, cohort, config)
    groups = lm["subject_id"].to_numpy()
    y = lm["y"].to_numpy(int)
    n_subj = len(np.unique(groups))
    base: dict[str, Any] = dict(n_landmarks=len(lm), n_admissions=int(lm["encounter_id"].nunique()), n_patients=n_subj,
                config={k: getattr(config, k) for k in ("prediction_horizon_hours", "landmark_step_hours",
                                                        "landmark_max_days", "trend_window_hours", "test_share",
                                                        "gbm_max_iter", "bootstrap_reps", "seed",
                                                        "prediction_learners")})
    if n_subj < 4 or y.sum() < 2 or (1 - y).sum() < 2:
        return PredictionResult([], train_patients=0, test_patients=0, train_rows=0, test_rows=0, events_train=0,
                                events_test=0, notes=[f"prediction not estimable: {len(lm)} landmarks, {int(y.sum())} "
                                                      "with AKI in the horizon"], **base)
    split = GroupShuffleSplit(n_splits=1, test_size=config.test_share, random_state=config.seed)
    tr, te = next(split.split(lm, y, groups))
    ytr, yte = y[tr], y[te]
    res = PredictionResult([], train_patients=len(np.unique(groups[tr])), test_patients=len(np.unique(groups[te])),
                           train_rows=len(tr), test_rows=len(te), events_train=int(ytr.sum()),
                           events_test=int(yte.sum()), **base)
    if min(ytr.sum(), yte.sum(), (1 - ytr).sum(), (1 - yte).sum()) < 1:
        res.notes.append("prediction not estimable: train or test set has a single class")
        return res
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    scores: dict[tuple[str, str], F] = {}
    with threadpool_limits(limits=config.prediction_threads):  # OpenMP/BLAS spin-waits on a busy machine
        _fit_all(lm, tr, te, ytr, yte, config, res, scores)
        boot = _bootstrap(scores, yte.astype(float), groups[te], config.bootstrap_reps, config.seed)
    for f in res.fits:
        key = (f.model_set, f.learner)
        f.auroc_ci = _ci(boot[key], config.ci_level)
        if f.model_set != BASELINE:
            ref = (BASELINE, f.learner)
            f.delta_auroc = f.auroc - res.fit(BASELINE, f.learner).auroc
            f.delta_ci = _ci(boot[key] - boot[ref], config.ci_level)
    _judge(res, config)
    res.notes.append(
        f"Landmarks every {config.landmark_step_hours:g} h of an open, AKI-free admission (up to "
        f"{config.landmark_max_days:g} days); label = AKI onset within {config.prediction_horizon_hours:g} h; "
        f"features from values at or before the landmark. Patient-level split ({config.test_share:g} of patients "
        f"held out, seed {config.seed}); CIs: percentile bootstrap over test patients ({config.bootstrap_reps} "
        "resamples, the same resamples for every model). Logistic regression imputes medians with missingness "
        "indicators; gradient boosting handles missing values natively.")
    return res


def _recalibration(y: NDArray[Any], p: F) -> tuple[float, float]:
    """(calibration slope, calibration-in-the-large) of predicted risks on observed outcomes (Cox 1958)."""
    import statsmodels.api as sm

    lp = np.log(np.clip(p, 1e-9, 1 - 1e-9) / np.clip(1 - p, 1e-9, 1))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # a separated test set shows as a non-finite slope, not as a warning
        try:
            slope = sm.GLM(y.astype(float), sm.add_constant(lp), family=sm.families.Binomial()).fit().params[1]
            icpt = sm.GLM(y.astype(float), np.ones((y.size, 1)), family=sm.families.Binomial(),
                          offset=lp).fit().params[0]
        except (ValueError, np.linalg.LinAlgError):
            return float("nan"), float("nan")
    return float(slope), float(icpt)


def decision_curve(y: NDArray[Any], p: F, thresholds: F | None = None) -> pd.DataFrame:
    """Net benefit of acting on the model at each risk threshold, beside treating everyone (Vickers 2006)."""
    pt = np.linspace(0.01, 0.5, 50) if thresholds is None else thresholds
    n = max(y.size, 1)
    yy = y.astype(bool)
    act = p[None, :] >= pt[:, None]
    tp = (act & yy[None, :]).sum(axis=1) / n
    fp = (act & ~yy[None, :]).sum(axis=1) / n
    odds = pt / (1 - pt)
    prev = yy.mean() if y.size else 0.0
    return pd.DataFrame({"threshold": pt, "net_benefit": tp - fp * odds, "treat_all": prev - (1 - prev) * odds})


# --- persistence and the model card ----------------------------------------------------------------------

def save_models(res: PredictionResult, out: Path) -> dict[str, Path]:
    """Each fitted model as joblib (estimator, feature list, versions, horizon) plus model_card.{json,md}."""
    import joblib  # type: ignore[import-untyped]

    out.mkdir(parents=True, exist_ok=True)
    vers = versions()
    paths: dict[str, Path] = {}
    for f in res.fits:
        path = out / f"{f.model_set.replace('+', '_')}-{f.learner}.joblib"
        joblib.dump({"format": "mgaki-aki-model", "format_version": MODEL_FORMAT, "estimator": f.estimator,
                     "features": list(f.features), "feature_doc": {k: FEATURE_DOC[k] for k in f.features},
                     "model_set": f.model_set, "learner": f.learner,
                     "horizon_hours": res.config["prediction_horizon_hours"], "versions": vers}, path)
        paths[f"{f.model_set}/{f.learner}"] = path
    card = model_card(res, vers)
    paths["card_json"] = out / "model_card.json"
    paths["card_json"].write_text(json.dumps(card, indent=1, default=str) + "\n", encoding="utf-8")
    paths["card_md"] = out / "model_card.md"
    paths["card_md"].write_text(_card_markdown(card), encoding="utf-8")
    return paths


def model_card(res: PredictionResult, vers: dict[str, str] | None = None) -> dict[str, Any]:
    """Data, features, intended use, metrics and limits of the fitted models (Mitchell et al. 2019 headings)."""
    return {
        "name": "mgaki combined-biomarker AKI-in-48-h models",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "intended_use": "Research: does dynamic magnesium add to creatinine for predicting AKI in the next "
                        f"{res.config['prediction_horizon_hours']:g} h in this cohort? Not validated for clinical "
                        "decisions; re-fit and re-evaluate before any use on another population.",
        "data": {"admissions": res.n_admissions, "patients": res.n_patients, "landmarks": res.n_landmarks,
                 "train": {"patients": res.train_patients, "rows": res.train_rows, "events": res.events_train},
                 "test": {"patients": res.test_patients, "rows": res.test_rows, "events": res.events_test},
                 "cohort": "mgaki study cohort (docs/research.md#cohort); landmarks as in docs/research.md#prediction"},
        "design": res.config,
        "features": {name: {k: FEATURE_DOC[k] for k in feats} for name, feats in MODEL_SETS.items()},
        "metrics": res.summary()["models"],
        "limits": [
            "Internal validation only (one patient-level split of one cohort); no external or temporal validation.",
            "Landmarks of one patient are correlated: CIs come from a patient-level bootstrap of the test set.",
            "Labels come from KDIGO creatinine/urine-output AKI as mgaki surveillance detects it; unmeasured "
            "creatinine means undetected AKI.",
            "Measurement frequency can carry information (sicker patients are sampled more often); features use "
            "values, not counts, but missingness remains visible to the models.",
            "Calibration is assessed on the test set of the same cohort; recalibrate before use elsewhere.",
            *res.notes,
        ],
        "versions": vers or versions(),
    }


def _card_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Model card: {card['name']}", "", f"Created {card['created']}.", "", "## Intended use", "",
             card["intended_use"], "", "## Data", "", "```json", json.dumps(card["data"], indent=1), "```", "",
             "## Design", "", "```json", json.dumps(card["design"], indent=1), "```", "", "## Features", ""]
    for name, feats in card["features"].items():
        lines.append(f"- **{name}**: " + "; ".join(f"`{k}` {v}" for k, v in feats.items()))
    lines += ["", "## Metrics (test set)", "",
              "| model | learner | AUROC (CI) | AUPRC | Brier | ΔAUROC vs creatinine (CI) |",
              "|---|---|---|---|---|---|"]
    for m in card["metrics"]:
        d = "" if m["delta_auroc"] is None else \
            f"{m['delta_auroc']:.3f} ({m['delta_ci'][0]:.3f} to {m['delta_ci'][1]:.3f})"
        lines.append(f"| {m['model_set']} | {m['learner']} | {m['auroc']:.3f} ({m['auroc_ci'][0]:.3f}-"
                     f"{m['auroc_ci'][1]:.3f}) | {m['auprc']:.3f} | {m['brier']:.4f} | {d} |")
    lines += ["", "## Limits", "", *(f"- {x}" for x in card["limits"]), "", "## Versions", "",
              *(f"- {k}: {v}" for k, v in card["versions"].items()), ""]
    return "\n".join(lines)


@dataclass
class LoadedModel:
    """A saved C10 model: score rows of landmark features (build_landmarks' columns, canonical units)."""

    estimator: Any
    features: list[str]
    feature_doc: dict[str, str]
    model_set: str
    learner: str
    horizon_hours: float
    versions: dict[str, str]

    def predict_proba(self, frame: pd.DataFrame) -> F:
        """Risk of AKI within the horizon for each row; missing values are allowed (NaN), missing columns are not."""
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise InputError("model", f"feature column(s) {missing} missing from the input")
        try:
            x = frame[self.features].to_numpy(float)
        except (TypeError, ValueError) as exc:
            raise InputError("model", f"feature columns must be numeric: {exc}") from None
        out: F = self.estimator.predict_proba(x)[:, 1]
        return out


def load_model(path: Path | str) -> LoadedModel:
    """A model file written by save_models (`mgaki study` writes them to <out>/models/).

    Refused with an InputError naming the reason: not an mgaki model file, another
    model-file format version (MODEL_FORMAT), or another scikit-learn version than
    the one that trained it (pickled estimators are not portable across versions).
    joblib unpickles: load only files you produced or trust.
    """
    import joblib
    import sklearn

    path = Path(path)
    try:
        b = joblib.load(path)
    except (OSError, EOFError, ValueError, KeyError, IndexError) as exc:
        raise InputError(str(path), f"cannot load the model: {type(exc).__name__}: {exc}") from exc
    if not isinstance(b, dict) or b.get("format") != "mgaki-aki-model":
        raise InputError(str(path), "not an mgaki AKI model file (save_models / mgaki study writes them)")
    if b.get("format_version") != MODEL_FORMAT:
        raise InputError(str(path), f"model file format version {b.get('format_version')!r}, this mgaki reads "
                                    f"version {MODEL_FORMAT}: re-fit the model with this mgaki (mgaki study)")
    trained = b["versions"].get("scikit-learn")
    if trained != sklearn.__version__:
        raise InputError(str(path), f"trained with scikit-learn {trained}, this is {sklearn.__version__}: re-fit")
    return LoadedModel(b["estimator"], list(b["features"]), dict(b["feature_doc"]), b["model_set"], b["learner"],
                       float(b["horizon_hours"]), dict(b["versions"]))
