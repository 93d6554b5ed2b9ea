"""Statistics of the study: band odds ratios, restricted cubic spline, ROC/Youden, Table 1.

Well-kept libraries do the fitting (statsmodels, scikit-learn, tableone; the
time-varying Cox model is mgaki.research.cox); this module builds their design
matrices from the cohort frame, applies complete-case analysis (rows missing the outcome or a covariate are
left out, and counted), and turns a fit that cannot be estimated (empty band,
separation, singular design) into a row that says so instead of a crash or a
silent NaN.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from numpy.typing import NDArray
from scipy import stats as sps

from mgaki.research._config import Band

__all__ = ["BandFit", "RocResult", "SplineResult", "band_odds_ratios", "design", "format_p", "ipcw_weights",
           "rcs_basis", "roc_youden", "spline_curve", "table_one"]

F = NDArray[np.float64]
_NUMERIC = ("age", "egfr", "admission_creatinine", "mg_at_t0")
# a CI reaching past OR e^50 is a separated fit, not an estimate (float overflow guard, not a clinical number)
_MAX_LOG_OR = 50.0
_BINARY = ("icu", "nephrotoxic")


def design(df: pd.DataFrame, covariates: tuple[str, ...]) -> tuple[pd.DataFrame, list[str]]:
    """Covariate columns for a regression: numeric as is, sex as 'female', context as dummies vs 'none'.

    Columns that are constant in ``df`` are dropped (they cannot be estimated); the
    second value names them so the report can say so.
    """
    cols: dict[str, pd.Series] = {}
    for c in covariates:
        if c in _NUMERIC:
            cols[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        elif c in _BINARY:
            cols[c] = df[c].astype(float)
        elif c == "sex":
            cols["female"] = (df["sex"] == "female").astype(float).where(df["sex"].notna())
        elif c == "context":
            levels = sorted(set(df["context"].dropna()))
            ref = "none" if "none" in levels else (levels[0] if levels else None)
            for lv in levels:
                if lv != ref:
                    cols[f"context[{lv}]"] = (df["context"] == lv).astype(float)
    out = pd.DataFrame(cols, index=df.index)
    dropped = [c for c in out.columns if out[c].nunique(dropna=True) < 2]
    return out.drop(columns=dropped), dropped


@dataclass
class BandFit:
    """Per-band ORs of one model (crude or adjusted) and what it used."""

    table: pd.DataFrame  # band, n, events, or, lo, hi, p, note
    n_used: int
    n_missing: int
    adjusted_for: list[str]
    notes: list[str] = field(default_factory=list)


def _fit_logit(y: pd.Series, x: pd.DataFrame, weights: pd.Series | None = None) -> tuple[Any, list[str]]:
    """A statsmodels Logit fit, its warnings collected as notes (never raised, never lost).

    With ``weights`` (inverse probability of censoring): a weighted binomial GLM with robust (HC0) errors;
    ``mle_retvals`` is filled so callers read convergence the same way.
    """
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        xc = sm.add_constant(x, has_constant="add")
        if weights is None:
            res = sm.Logit(y.astype(float), xc).fit(disp=0, method="newton", maxiter=100)
        else:
            res = sm.GLM(y.astype(float), xc, family=sm.families.Binomial(),
                         var_weights=weights.to_numpy(float)).fit(cov_type="HC0", maxiter=100)
            res.mle_retvals = {"converged": bool(res.converged)}
    return res, [f"{type(w.message).__name__}: {w.message}" for w in caught]


def band_odds_ratios(df: pd.DataFrame, outcome: str, bs: tuple[Band, ...], covariates: tuple[str, ...] = (),
                     ci: float = 0.95, min_events: int = 1, weights: pd.Series | None = None) -> BandFit:
    """Logistic regression of the outcome on admission-Mg band (reference = the study's), plus covariates.

    Fewer than ``min_events`` events (or non-events) in the model: every row says "not estimable" and
    why. ``weights`` (aligned with ``df``; NaN = left out): inverse-probability-of-censoring weights, for
    an outcome whose status some admissions never reveal (weighted GLM, robust errors).
    """
    ref = next(b.label for b in bs if b.reference)
    cov, dropped = design(df, covariates)
    need = pd.concat([df[[outcome, "mg_band"]], cov], axis=1)
    if weights is not None:
        need = need.assign(_w=weights)
    ok = need.notna().all(axis=1)
    d = need[ok]
    y = d[outcome].astype(float)
    counts = d.groupby("mg_band", observed=False)[outcome].agg(["size", "sum"])
    fit_ok = {b.label for b in bs if 0 < counts.loc[b.label, "sum"] < counts.loc[b.label, "size"]}
    present = [b.label for b in bs if not b.reference and b.label in fit_ok]
    keep = d["mg_band"].isin(fit_ok | {ref})  # a band without events (or all events) cannot be estimated
    n_missing = int((~ok).sum())
    d, y = d[keep], y[keep]
    x = pd.DataFrame({f"band[{lb}]": (d["mg_band"] == lb).astype(float) for lb in present}, index=d.index)
    x = pd.concat([x, cov.loc[d.index]], axis=1)
    notes = [f"covariate {c} is constant in this cohort: left out" for c in dropped]
    notes += [f"band {b.label} left out of the model: {int(counts.loc[b.label, 'size'])} patients, "
              f"{int(counts.loc[b.label, 'sum'])} events" for b in bs if b.label not in fit_ok and not b.reference
              and counts.loc[b.label, "size"] > 0]
    rows = []
    z = sps.norm.ppf(0.5 + ci / 2)
    n_ev, n_non = int(y.sum()), int((1 - y).sum())
    terms = x.shape[1]
    try:
        if counts.loc[ref, "size"] == 0:
            raise ValueError(f"the reference band {ref} is empty")
        if min(n_ev, n_non) < min_events:
            raise _TooFew(f"{n_ev} events and {n_non} non-events (minimum {min_events} each)")
        if terms and n_ev < 10 * terms:
            notes.append(f"warning: {n_ev} events for {terms} model terms (fewer than 10 events per variable): "
                         "estimates may be biased and unstable")
        res, warns = _fit_logit(y, x, d["_w"] if weights is not None else None)
        notes += warns
        params, bse, pv = res.params, res.bse, res.pvalues
        if not res.mle_retvals.get("converged", True):
            notes.append("the fit did not converge (small or separated data): estimates not shown")
            params = bse = pv = pd.Series(dtype=float)
    except _TooFew as exc:
        notes.append(f"not estimable: {exc}")
        params = bse = pv = pd.Series(dtype=float)
    except Exception as exc:  # any fitting failure becomes a stated "not estimable"
        notes.append(f"not estimable: {type(exc).__name__}: {exc}")
        params = bse = pv = pd.Series(dtype=float)
    for b in bs:
        n, ev = int(counts.loc[b.label, "size"]), int(counts.loc[b.label, "sum"])
        key = f"band[{b.label}]"
        if b.reference:
            rows.append({"band": b.label, "n": n, "events": ev, "or": 1.0, "lo": np.nan, "hi": np.nan,
                         "p": np.nan, "note": "reference"})
        elif key in params and np.isfinite(bse[key]) and abs(params[key]) + z * bse[key] < _MAX_LOG_OR:
            rows.append({"band": b.label, "n": n, "events": ev, "or": float(np.exp(params[key])),
                         "lo": float(np.exp(params[key] - z * bse[key])),
                         "hi": float(np.exp(params[key] + z * bse[key])), "p": float(pv[key]), "note": ""})
        else:
            why = "no patients" if n == 0 else ("no events or all events" if ev in (0, n) else "not estimable")
            if min(n_ev, n_non) < min_events:
                why = f"not estimable: {n_ev} events in the model (minimum {min_events})"
            rows.append({"band": b.label, "n": n, "events": ev, "or": np.nan, "lo": np.nan, "hi": np.nan,
                         "p": np.nan, "note": why})
    return BandFit(pd.DataFrame(rows), len(d), n_missing, list(cov.columns), notes)


class _TooFew(ValueError):
    """An analysis with fewer events than the study's minimum."""


def ipcw_weights(df: pd.DataFrame, outcome: str, threshold_hours: float) -> tuple[pd.Series, str]:
    """Inverse-probability-of-censoring weights for "AKI lasting >= threshold" outcomes (akd_7d, aki_over_48h).

    An AKI admission reveals its status when the episode recovers before the threshold (0) or lasts
    until it (1); one discharged (or ending) before the threshold and unrecovered is censored at its
    duration. The censoring distribution G is Kaplan-Meier over the AKI admissions' durations (censoring
    as the event); each admission with a known status weighs 1/G(min(duration, threshold)-), the censored
    ones are left out (NaN), admissions without AKI weigh 1 (status known: 0). Assumes censoring
    independent of the outcome given nothing (no covariates), stated in the report.
    """
    from mgaki.research.survival import cumulative_incidence

    aki = df["aki"].astype(bool).to_numpy()
    dur = df["aki_duration_hours"].to_numpy(float)
    known = df[outcome].notna().to_numpy()
    w = np.where(aki, np.nan, 1.0)
    if not aki.any():
        return pd.Series(w, index=df.index), "no AKI admissions"
    t = np.minimum(dur[aki], threshold_hours)
    censored = ~known[aki]
    times, cif = cumulative_incidence(t, censored.astype(np.int64), (1,))
    g = 1.0 - cif[1]  # probability of not being censored by each time
    prev = np.searchsorted(times, t, side="left") - 1  # G just before the admission's own time
    g_minus = np.where(prev >= 0, g[np.clip(prev, 0, None)], 1.0)
    w[aki] = np.where(censored, np.nan, 1.0 / np.maximum(g_minus, 1e-12))
    n_c = int(censored.sum())
    return pd.Series(w, index=df.index), (f"{outcome}: {n_c} of {int(aki.sum())} AKI admissions ended before "
                                          f"{threshold_hours:g} h with the episode unrecovered (status unknown): "
                                          "censored, the others weighted by the inverse probability of "
                                          "remaining uncensored (Kaplan-Meier)")


def rcs_basis(x: F, knots: F) -> F:
    """Harrell's restricted cubic spline terms (k-2 columns; linear beyond the outer knots), scaled by span^2."""
    k = knots.size
    t = knots
    norm = (t[-1] - t[0]) ** 2

    def pos3(v: F) -> F:
        out: F = np.maximum(v, 0.0) ** 3
        return out

    cols = [(pos3(x - t[j]) - pos3(x - t[k - 2]) * (t[k - 1] - t[j]) / (t[k - 1] - t[k - 2])
             + pos3(x - t[k - 1]) * (t[k - 2] - t[j]) / (t[k - 1] - t[k - 2])) / norm for j in range(k - 2)]
    return np.column_stack(cols)


@dataclass
class SplineResult:
    curve: pd.DataFrame  # mg, or, lo, hi (vs the reference Mg)
    knots: list[float]
    reference_mg: float
    lr_stat: float
    lr_df: int
    p_nonlinear: float
    n_used: int
    notes: list[str] = field(default_factory=list)


def spline_curve(df: pd.DataFrame, outcome: str, quantiles: tuple[float, ...], reference_mg: float,
                 covariates: tuple[str, ...] = (), ci: float = 0.95, points: int = 101) -> SplineResult:
    """Mg vs log-odds as a restricted cubic spline; LR test of the spline terms (non-linearity) vs linear Mg."""
    cov, dropped = design(df, covariates)
    need = pd.concat([df[[outcome, "admission_mg"]], cov], axis=1)
    ok = need.notna().all(axis=1)
    d = need[ok]
    x = d["admission_mg"].to_numpy(float)
    y = d[outcome].astype(float)
    knots = np.unique(np.quantile(x, quantiles)) if x.size else np.zeros(0)
    notes = [f"covariate {c} is constant in this cohort: left out" for c in dropped]
    if knots.size < 3:
        return SplineResult(pd.DataFrame(columns=["mg", "or", "lo", "hi"]), knots.tolist(), reference_mg,
                            np.nan, 0, np.nan, int(ok.sum()), [*notes, "too few distinct Mg values for a spline"])
    if knots.size < len(quantiles):
        notes.append(f"tied quantiles: {knots.size} distinct knots instead of {len(quantiles)}")
    basis = rcs_basis(x, knots)
    names = [f"rcs{j + 1}" for j in range(basis.shape[1])]
    lin = pd.concat([pd.DataFrame({"mg": x}, index=d.index), cov[ok]], axis=1)
    full = pd.concat([lin, pd.DataFrame(basis, columns=names, index=d.index)], axis=1)
    try:
        r_lin, w1 = _fit_logit(y, lin)
        r_full, w2 = _fit_logit(y, full)
    except Exception as exc:
        return SplineResult(pd.DataFrame(columns=["mg", "or", "lo", "hi"]), knots.tolist(), reference_mg,
                            np.nan, 0, np.nan, int(ok.sum()), [*notes, f"spline not estimable: {exc}"])
    if not (r_lin.mle_retvals.get("converged", True) and r_full.mle_retvals.get("converged", True)):
        return SplineResult(pd.DataFrame(columns=["mg", "or", "lo", "hi"]), knots.tolist(), reference_mg,
                            np.nan, 0, np.nan, int(ok.sum()), [*notes, "spline fit did not converge"])
    lr = float(2 * (r_full.llf - r_lin.llf))
    dof = len(names)
    grid = np.linspace(float(np.quantile(x, 0.01)), float(np.quantile(x, 0.99)), points)
    g = np.column_stack([grid, rcs_basis(grid, knots)])
    g0 = np.column_stack([[reference_mg], rcs_basis(np.array([reference_mg]), knots)])
    diff = g - g0
    terms = ["mg", *names]
    beta = r_full.params[terms].to_numpy()
    cov_b = r_full.cov_params().loc[terms, terms].to_numpy()
    logor = diff @ beta
    se = np.sqrt(np.einsum("ij,jk,ik->i", diff, cov_b, diff))
    z = sps.norm.ppf(0.5 + ci / 2)
    with np.errstate(over="ignore"):
        curve = pd.DataFrame({"mg": grid, "or": np.exp(logor), "lo": np.exp(logor - z * se),
                              "hi": np.exp(logor + z * se)})
    return SplineResult(curve, knots.tolist(), reference_mg, lr, dof, float(sps.chi2.sf(lr, dof)), int(ok.sum()),
                        [*notes, *w1, *w2])


@dataclass
class RocResult:
    name: str
    direction: str  # 'low' (lower value = positive) or 'high'
    curve: pd.DataFrame  # fpr, tpr
    auc: float
    auc_ci: tuple[float, float]
    cutoff: float
    cutoff_ci: tuple[float, float]
    sensitivity: float
    sensitivity_ci: tuple[float, float]
    specificity: float
    specificity_ci: tuple[float, float]
    n: int
    events: int


def _youden(y: NDArray[Any], s: F) -> tuple[float, float, float, float]:
    """(AUC, best threshold, sensitivity, specificity) for 'positive when score >= threshold' (ties grouped)."""
    fpr, tpr, thr = _roc(y, s)
    i = 1 + int(np.argmax((tpr - fpr)[1:]))  # point 0 (nobody positive) has no finite cut-off
    return float(np.trapezoid(tpr, fpr)), float(thr[i]), float(tpr[i]), float(1 - fpr[i])


def _roc(y: NDArray[Any], s: F) -> tuple[F, F, F]:
    """ROC points at every distinct score (as sklearn.metrics.roc_curve without dropping points), in numpy."""
    order = np.argsort(-s, kind="stable")
    ss, yy = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ss) != 0), ss.size - 1]
    tp = np.cumsum(yy)[last]
    fp = (last + 1) - tp
    pos, neg = max(int(yy.sum()), 1), max(int(yy.size - yy.sum()), 1)
    tpr: F = np.r_[0.0, tp / pos]
    fpr: F = np.r_[0.0, fp / neg]
    thr: F = np.r_[np.inf, ss[last]]
    return fpr, tpr, thr


def roc_youden(name: str, y: NDArray[Any], value: F, direction: str = "high", reps: int = 500, seed: int = 0,
               ci: float = 0.95) -> RocResult:
    """ROC of one predictor with the Youden cut-off and percentile-bootstrap CIs (patients resampled)."""
    y = np.asarray(y, int)
    sign = -1.0 if direction == "low" else 1.0
    s = sign * np.asarray(value, float)
    if y.min() == y.max():
        raise ValueError(f"ROC {name}: the outcome has a single class")
    auc, thr, sens, spec = _youden(y, s)
    fpr, tpr, _ = _roc(y, s)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(reps):  # resamples, not patients: each one is vectorised inside scikit-learn
        idx = rng.integers(0, y.size, y.size)
        if y[idx].min() != y[idx].max():
            boot.append(_youden(y[idx], s[idx]))
    b = np.array(boot) if boot else np.full((1, 4), np.nan)
    a = (1 - ci) / 2 * 100

    def pct(col: int, scale: float = 1.0) -> tuple[float, float]:
        lo, hi = np.percentile(b[:, col] * scale, [a, 100 - a])
        return (float(min(lo, hi)), float(max(lo, hi)))

    return RocResult(name, direction, pd.DataFrame({"fpr": fpr, "tpr": tpr}), auc, pct(0), sign * thr,
                     pct(1, sign), sens, pct(2), spec, pct(3), int(y.size), int(y.sum()))


# readable Table 1 labels (tableone's rename) and decimals per variable
_LABELS = {"age": "Age, years", "sex": "Sex", "admission_creatinine": "Admission creatinine, mg/dL",
           "egfr": "Admission eGFR, mL/min/1.73 m2", "admission_mg": "Admission Mg, mg/dL",
           "twa_mg": "Time-weighted mean Mg, mg/dL (whole stay)", "icu": "In ICU at the index time",
           "context": "Clinical context before the index time", "nephrotoxic": "Nephrotoxic drug before the index time",
           "icu_any": "ICU stay during the admission", "aki": "AKI (primary definition)", "death": "In-hospital death"}


def table_one(df: pd.DataFrame, groupby: str = "mg_band") -> tuple[str, pd.DataFrame]:
    """Table 1 by admission-Mg band (tableone): readable labels, Mg to 2 decimals (the bands are 0.1-0.2 mg/dL
    wide), missing values counted, not imputed; HTML and the frame."""
    from tableone import TableOne

    d = df.copy()
    yes_no = {True: "yes", False: "no"}
    for c in ("icu", "nephrotoxic", "icu_any", "aki", "death"):
        d[c] = d[c].astype("boolean").map(yes_no).astype("object")
    d["sex"] = d["sex"].astype("object")
    order = [str(x) for x in df[groupby].cat.categories] if hasattr(df[groupby], "cat") else None
    d[groupby] = d[groupby].astype("object")
    cols = ["age", "sex", "admission_creatinine", "egfr", "admission_mg", "twa_mg", "icu", "context", "nephrotoxic",
            "icu_any", "aki", "death"]
    present = [b for b in (order or sorted(d[groupby].dropna().unique())) if (d[groupby] == b).any()]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # tableone's own pandas deprecation notices are not our results
        t = TableOne(d[[*cols, groupby]], columns=cols,
                     categorical=["sex", "icu", "context", "nephrotoxic", "icu_any", "aki", "death"], groupby=groupby,
                     nonnormal=["admission_creatinine", "egfr", "twa_mg"], missing=True, pval=False,
                     order={groupby: present}, rename={k: v for k, v in _LABELS.items() if k in cols},
                     decimals={"admission_mg": 2, "twa_mg": 2, "admission_creatinine": 2, "age": 1, "egfr": 0})
        html, frame = t.to_html(), t.tableone
    return html, frame


def compare_included(admissions: pd.DataFrame) -> pd.DataFrame:
    """Included vs excluded admissions (STROBE): mean or share of each characteristic and the SMD."""
    inc = admissions["first_failed"].to_numpy() == 0
    rows = [{"characteristic": "admissions, n", "included": f"{int(inc.sum())}", "excluded": f"{int((~inc).sum())}",
             "SMD": np.nan}]
    spec = [("age", "age, years (mean)", False), ("sex", "female (%)", True),
            ("admission_mg_any", "first Mg of the admission, mg/dL (mean)", False),
            ("admission_creatinine", "admission creatinine, mg/dL (mean)", False),
            ("has_creatinine", "any creatinine (%)", True), ("icu_any", "ICU stay (%)", True),
            ("aki", "AKI (%)", True), ("death", "in-hospital death (%)", True),
            ("stay_hours", "length of stay, h (mean)", False)]
    for col, label, share in spec:
        v = (admissions[col] == "female") if col == "sex" else admissions[col]
        x = pd.to_numeric(v, errors="coerce").astype(float).to_numpy()
        a, b = x[inc & np.isfinite(x)], x[~inc & np.isfinite(x)]
        with np.errstate(all="ignore"):
            sd = np.sqrt((np.var(a) + np.var(b)) / 2) if a.size and b.size else np.nan
            diff = (a.mean() - b.mean()) / sd if a.size and b.size and sd > 0 else np.nan
        scale, nd = (100.0, 1) if share else (1.0, 2)
        rows.append({"characteristic": label, "included": f"{scale * a.mean():.{nd}f}" if a.size else "",
                     "excluded": f"{scale * b.mean():.{nd}f}" if b.size else "", "SMD": diff})
    return pd.DataFrame(rows)


def format_p(p: float) -> str:
    """A p-value as a reader expects it: 'p < 0.001' below 0.001, three decimals otherwise, '' if absent."""
    if p is None or not np.isfinite(p):
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def spline_score(df: pd.DataFrame, outcome: str, quantiles: tuple[float, ...]) -> tuple[F, NDArray[Any]]:
    """The crude restricted-cubic-spline logistic model's linear predictor of admission Mg (in-sample):
    a score that lets low and high Mg both count as risk, for a ROC of a U-shaped exposure."""
    ok = df[[outcome, "admission_mg"]].notna().all(axis=1).to_numpy()
    x = df.loc[ok, "admission_mg"].to_numpy(float)
    y = df.loc[ok, outcome].astype(float)
    knots = np.unique(np.quantile(x, quantiles))
    if knots.size < 3:
        raise ValueError("ROC of the spline score: too few distinct Mg values")
    z = pd.DataFrame(np.column_stack([x, rcs_basis(x, knots)]), index=y.index)
    res, _ = _fit_logit(y, z)
    out: F = np.asarray(res.fittedvalues, float)
    return out, ok
