"""Time-varying Cox model of time to AKI with the current Mg state, fast enough for 100k admissions.

lifelines' ``CoxTimeVaryingFitter`` recomputes every risk set from all rows at
every event time (rows x event times per Newton step): at 100k admissions it did
not finish in 18 minutes. The same partial likelihood is computed here from
sorted cumulative sums over the distinct event times (rows + event times per
step), and the counting-process table only breaks where the Mg *state*
changes, not at every measurement. Both steps leave the estimate unchanged:
merging contiguous intervals with equal covariates does not change any risk
set, and the likelihood is lifelines' own (Efron ties, model-based variance).
tests/research/test_cox.py checks the fast path against lifelines on the
per-measurement table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import stats as sps

__all__ = ["CoxFit", "change_point_intervals", "cox_time_varying", "efron_cox", "mg_state_columns"]

F = NDArray[np.float64]
Idx = NDArray[np.intp]
_EMPTY = ("term", "hr", "lo", "hi", "p")
_MAX_LOG_HR = 20.0  # a CI reaching past HR e^20 is a separated fit, not an estimate (overflow guard)


def mg_state_columns(mg: F, low: float, high: float) -> dict[str, F]:
    """The time-dependent covariates: current Mg below / above the reference range (1 or 0)."""
    return {"mg_low": (mg < low).astype(float), "mg_high": (mg > high).astype(float)}


def change_point_intervals(tv: pd.DataFrame, low: float, high: float,
                           later: pd.DataFrame | None = None) -> pd.DataFrame:
    """(id, start, stop, event, mg_low, mg_high[, <later columns>]) with one interval per run of equal state.

    ``tv`` is the per-measurement table (each Mg value holds until the next one), sorted by id and start
    with contiguous intervals. ``later`` (one row per id, indexed by id) gives, per column, the hour an
    exposure starts after the index time (NaN = never): the intervals are split there and the column is
    0 before, 1 from then on (a time-varying covariate). A new interval starts only where the id or the
    state changes. Vectorised: splits by a sort of all boundaries, run boundaries from numpy diffs.
    """
    if later is not None and len(later.columns) and len(tv):
        tv = _split(tv, later)
    ids = tv["id"].to_numpy(np.int64)
    st = mg_state_columns(tv["mg"].to_numpy(float), low, high)
    for c in list(later.columns) if later is not None else []:
        t_on = later[c].reindex(ids).to_numpy(float)  # type: ignore[index]
        st[c] = (tv["start"].to_numpy(float) >= t_on).astype(float)  # NaN (never) compares False
    n = ids.size
    if n == 0:
        return pd.DataFrame({"id": ids, "start": np.zeros(0), "stop": np.zeros(0), "event": np.zeros(0, bool),
                             **{k: np.zeros(0) for k in st}})
    state = np.column_stack(list(st.values()))
    first = np.r_[True, (ids[1:] != ids[:-1]) | (state[1:] != state[:-1]).any(axis=1)]
    begin = np.flatnonzero(first)
    end = np.r_[begin[1:] - 1, n - 1]
    return pd.DataFrame({"id": ids[begin], "start": tv["start"].to_numpy(float)[begin],
                         "stop": tv["stop"].to_numpy(float)[end], "event": tv["event"].to_numpy(bool)[end],
                         **{k: v[begin] for k, v in st.items()}})


def _split(tv: pd.DataFrame, later: pd.DataFrame) -> pd.DataFrame:
    """The intervals of ``tv`` cut at every start time of ``later`` that falls strictly inside one."""
    pts = later.stack().rename("t").reset_index().rename(columns={"level_0": "id"})[["id", "t"]]
    pts = pts[np.isfinite(pts["t"].to_numpy(float))]
    row = np.arange(len(tv))
    right = tv.assign(row=row)[["id", "start", "stop", "row"]].sort_values("start")
    cuts = pd.merge_asof(pts.sort_values("t"), right,
                         left_on="t", right_on="start", by="id", direction="backward")
    cuts = cuts[(cuts["t"] > cuts["start"]) & (cuts["t"] < cuts["stop"])]
    if cuts.empty:
        return tv
    starts = pd.DataFrame({"row": np.r_[row, cuts["row"].to_numpy(np.int64)],
                           "start": np.r_[tv["start"].to_numpy(float), cuts["t"].to_numpy(float)]})
    starts = starts.drop_duplicates().sort_values(["row", "start"], kind="stable").reset_index(drop=True)
    r = starts["row"].to_numpy(np.int64)
    nxt = np.r_[starts["start"].to_numpy(float)[1:], np.nan]
    last = np.r_[r[1:] != r[:-1], True]
    stop = np.where(last, tv["stop"].to_numpy(float)[r], nxt)
    return pd.DataFrame({"id": tv["id"].to_numpy()[r], "start": starts["start"].to_numpy(float), "stop": stop,
                         "mg": tv["mg"].to_numpy(float)[r], "event": tv["event"].to_numpy(bool)[r] & last})


@dataclass
class CoxFit:
    params: F
    se: F
    loglik: float
    iterations: int
    converged: bool


def efron_cox(start: F, stop: F, event: NDArray[np.bool_], x: F, max_iter: int = 50, tol: float = 1e-9) -> CoxFit:
    """Cox partial likelihood for (start, stop] data, Efron ties, Newton with step halving.

    A row is at risk at event time t when start < t <= stop. Risk-set sums at the
    D distinct event times come from bincounts of each row's first and one-past-last
    event-time index, cumulated: no loop over rows or event times.
    """
    p = x.shape[1]
    xc = x - x.mean(axis=0)  # centring changes no estimate, only keeps exp() in range
    times = np.unique(stop[event])
    d_n = times.size
    lo = np.searchsorted(times, start, "right")  # first event time > start
    hi = np.searchsorted(times, stop, "right")  # one past the last event time <= stop
    keep = hi > lo  # rows never at risk at an event time add nothing
    lo, hi, xr = lo[keep], hi[keep], xc[keep]
    dk = np.searchsorted(times, stop[event])  # event time index of each death
    xd = xc[event]
    deaths = np.bincount(dk, minlength=d_n)
    slot_k = np.repeat(np.arange(d_n), deaths)  # Efron: one slot per death at its time
    slot_f = (np.arange(slot_k.size) - np.repeat(np.cumsum(deaths) - deaths, deaths)) / deaths[slot_k]
    pairs = [(a, b) for a in range(p) for b in range(a, p)]

    def risk_sums(v: F, idx_lo: Idx, idx_hi: Idx) -> F:
        """sum of v over the rows at risk, at every event time (rows: idx_lo <= k < idx_hi)."""
        diff = np.bincount(idx_lo, v, d_n + 1) - np.bincount(idx_hi, v, d_n + 1)
        out: F = np.cumsum(diff)[:d_n]
        return out

    def death_sums(v: F) -> F:
        out: F = np.bincount(dk, v, d_n).astype(float)
        return out

    def evaluate(beta: F) -> tuple[float, F, F]:
        eta_r, eta_d = xr @ beta, xd @ beta
        c = float(max(eta_r.max(initial=0.0), eta_d.max(initial=0.0)))
        w_r, w_d = np.exp(eta_r - c), np.exp(eta_d - c)
        s0 = risk_sums(w_r, lo, hi)[slot_k] - slot_f * death_sums(w_d)[slot_k]
        s1 = np.column_stack([risk_sums(w_r * xr[:, j], lo, hi)[slot_k]
                              - slot_f * death_sums(w_d * xd[:, j])[slot_k] for j in range(p)])
        s2 = np.zeros((slot_k.size, p, p))
        for a, b in pairs:
            v = risk_sums(w_r * xr[:, a] * xr[:, b], lo, hi)[slot_k] - slot_f * death_sums(
                w_d * xd[:, a] * xd[:, b])[slot_k]
            s2[:, a, b] = s2[:, b, a] = v
        ll = float((eta_d - c).sum() - np.log(s0).sum())
        m1 = s1 / s0[:, None]
        grad: F = xd.sum(axis=0) - m1.sum(axis=0)
        hess: F = -(s2 / s0[:, None, None]).sum(axis=0) + m1.T @ m1
        return ll, grad, hess

    beta = np.zeros(p)
    ll, grad, hess = evaluate(beta)
    converged = False
    it = 0
    while it < max_iter:  # Newton iterations (a handful), each vectorised over all rows
        it += 1
        step = np.linalg.solve(-hess, grad)
        for _ in range(30):  # halve the step until the likelihood does not fall
            new = beta + step
            ll_new, g_new, h_new = evaluate(new)
            if np.isfinite(ll_new) and ll_new >= ll - 1e-12 * abs(ll):
                break
            step = step / 2
        done = abs(ll_new - ll) <= tol * (abs(ll) + 1.0) and float(np.abs(step).max()) < 1e-6
        beta, ll, grad, hess = new, ll_new, g_new, h_new
        if done:
            converged = True
            break
    var = np.diag(np.linalg.inv(-hess))
    if not (np.isfinite(var).all() and (var > 0).all()):  # a flat or non-concave likelihood: no estimate
        raise np.linalg.LinAlgError("the information matrix is not positive definite")
    return CoxFit(beta, np.sqrt(var), ll, it, converged)


# continuous terms are reported per a clinically meaningful unit (the fit itself is per 1 unit)
PER_UNIT: dict[str, tuple[float, str]] = {
    "age": (10.0, "per 10 years"), "egfr": (10.0, "per 10 mL/min/1.73 m2"),
    "admission_creatinine": (0.1, "per 0.1 mg/dL"), "mg_below": (0.1, "per 0.1 mg/dL below the range"),
    "mg_above": (0.1, "per 0.1 mg/dL above the range"),
}
_LABEL = {"mg_low": "current Mg below the range (1/0)", "mg_high": "current Mg above the range (1/0)",
          "icu_tv": "in ICU since the index time (time-varying)",
          "nephrotoxic_tv": "nephrotoxic drug started after the index time (time-varying)",
          "context_tv": "new clinical context after the index time (time-varying)",
          "mg_below": "current Mg below the range,", "mg_above": "current Mg above the range,",
          "icu": "in ICU at the index time", "nephrotoxic": "nephrotoxic drug before the index time",
          "female": "female sex", "age": "age,", "egfr": "admission eGFR,",
          "admission_creatinine": "admission creatinine,"}


def cox_time_varying(tv: pd.DataFrame, cohort: pd.DataFrame, low: float, high: float,
                     covariates: tuple[str, ...] = (), ci: float = 0.95, later: pd.DataFrame | None = None,
                     continuous_mg: bool = False, min_events: int = 1) -> tuple[pd.DataFrame, list[str]]:
    """Time to AKI with current Mg below/above the reference range (time-dependent) plus baseline covariates.

    ``later`` adds exposures that start after the index time as time-varying 0/1 terms (see
    change_point_intervals). ``continuous_mg`` replaces the two 0/1 states by the current Mg's distance
    below and above the range (mg/dL, linear: a U allowed), reported per 0.1 mg/dL. The table has the
    term, its meaning and unit, and HR, CI and p per that unit. A 0/1 term without events in one of its
    levels has no finite estimate (its likelihood keeps rising): it is left out and the notes say so; so is a
    continuous term whose events all sit at its lowest or highest value (e.g. no event while Mg is above range).
    """
    from mgaki.research.stats import design

    empty = pd.DataFrame(columns=["term", "meaning", *_EMPTY[1:]])
    if tv.empty or not tv["event"].any():
        return empty, ["not estimable: no AKI events in the time-varying table"]
    cov, dropped = design(cohort, covariates)
    notes = [f"covariate {c} is constant in this cohort: left out" for c in dropped]
    if continuous_mg:
        mg = tv["mg"].to_numpy(float)
        d = tv.assign(mg_below=np.maximum(low - mg, 0.0), mg_above=np.maximum(mg - high, 0.0))
        d = d[["id", "start", "stop", "event", "mg_below", "mg_above"]].reset_index(drop=True)
        if later is not None and len(later.columns):
            notes.append("time-varying exposures are in the state model only")
        mg_terms = ["mg_below", "mg_above"]
    else:
        d = change_point_intervals(tv, low, high, later)
        mg_terms = ["mg_low", "mg_high", *(list(later.columns) if later is not None else [])]
    xcov = cov.to_numpy(float)[d["id"].to_numpy()]
    x = pd.concat([d[mg_terms].reset_index(drop=True), pd.DataFrame(xcov, columns=cov.columns)], axis=1)
    ok = x.notna().all(axis=1).to_numpy()
    n_left = len(np.unique(d["id"].to_numpy()[~ok]))
    if n_left:
        notes.append(f"{n_left} admissions left out of the Cox model for missing covariates (complete case)")
    d, x = d[ok].reset_index(drop=True), x[ok].reset_index(drop=True)
    ev = d["event"].to_numpy(bool)
    if int(ev.sum()) < min_events:
        return empty, [*notes, f"not estimable: {int(ev.sum())} AKI events (minimum {min_events})"]
    keep = []
    for c in x.columns:
        v = x[c].to_numpy(float)
        if np.unique(v).size < 2:
            notes.append(f"{c} does not vary among the intervals: left out")
        elif (v[ev] == v.min()).all() or (v[ev] == v.max()).all():
            # every event at the term's lowest (or highest) value: each event has the extreme value of its
            # risk set, so the partial likelihood keeps rising (monotone likelihood, no finite HR)
            notes.append(f"{c} has no AKI events away from its lowest or highest value (no finite hazard ratio): "
                         "left out")
        else:
            keep.append(c)
    if not ev.any() or not keep:
        return empty, [*notes, "not estimable: no events or no estimable term"]
    if ev.sum() < 10 * len(keep):
        notes.append(f"warning: {int(ev.sum())} events for {len(keep)} terms (fewer than 10 per term): "
                     "estimates may be unstable")
    x = x[keep]
    try:
        fit = efron_cox(d["start"].to_numpy(float), d["stop"].to_numpy(float), ev, x.to_numpy(float))
    except np.linalg.LinAlgError as exc:
        return empty, [*notes, f"not estimable: {exc}"]
    if not fit.converged:
        return empty, [*notes, f"not estimable: the fit did not converge in {fit.iterations} iterations"]
    z = sps.norm.ppf(0.5 + ci / 2)
    unit = np.array([PER_UNIT.get(k, (1.0, ""))[0] for k in keep])
    b, se = fit.params * unit, fit.se * unit
    wild = np.abs(b) + z * se > _MAX_LOG_HR  # a separated or flat term: no finite estimate to show
    with np.errstate(over="ignore"):
        out = pd.DataFrame({"term": keep,
                            "meaning": [" ".join(filter(None, (_LABEL.get(k, k), PER_UNIT.get(k, (1, ""))[1])))
                                        for k in keep],
                            "hr": np.where(wild, np.nan, np.exp(b)), "lo": np.where(wild, np.nan, np.exp(b - z * se)),
                            "hi": np.where(wild, np.nan, np.exp(b + z * se)),
                            "p": np.where(wild, np.nan, 2 * sps.norm.sf(np.abs(fit.params / fit.se)))})
    notes += [f"{k}: not estimable (confidence interval beyond HR e^{_MAX_LOG_HR:g}: too few data)"
              for k, w in zip(keep, wild, strict=True) if w]
    notes.append(f"{len(d)} intervals of {int(d['id'].nunique())} admissions, "
                 f"{int(ev.sum())} AKI events; Efron ties, model-based standard errors; follow-up from the index "
                 "time (delayed entry)")
    return out, notes


def competing_times(frame: pd.DataFrame) -> tuple[F, NDArray[np.int64]]:
    """Hours from the index time to the first of AKI (cause 1), death (cause 2) or discharge (0, censored)."""
    idx = frame["index_hours"].to_numpy(float)
    aki = np.nan_to_num(frame["aki_onset_hours"].to_numpy(float), nan=np.inf) - idx
    death = np.nan_to_num(frame["death_hours"].to_numpy(float), nan=np.inf) - idx
    end = frame["stay_hours"].to_numpy(float) - idx
    t = np.minimum.reduce([aki, death, end])
    cause = np.where(aki <= t, 1, np.where(death <= t, 2, 0)).astype(np.int64)
    return np.maximum(t, 0.0), cause


def cause_specific(frame: pd.DataFrame, bands: tuple[object, ...], covariates: tuple[str, ...], ci: float = 0.95,
                   min_events: int = 10) -> tuple[pd.DataFrame, list[str]]:
    """Cause-specific hazard ratios by admission-Mg band for AKI and for death before AKI (each cause's Cox
    model censors the other), from the index time, adjusted for the covariates (complete case)."""
    from mgaki.research.stats import design

    t, cause = competing_times(frame)
    ref = next(b.label for b in bands if b.reference)  # type: ignore[attr-defined]
    labels = [b.label for b in bands if not b.reference]  # type: ignore[attr-defined]
    cov, _ = design(frame, covariates)
    dummies = pd.DataFrame({f"band[{lb}]": (frame["mg_band"] == lb).astype(float) for lb in labels},
                           index=frame.index)
    x = pd.concat([dummies, cov], axis=1)
    ok = x.notna().all(axis=1).to_numpy() & frame["mg_band"].notna().to_numpy()
    rows, notes = [], []
    z = sps.norm.ppf(0.5 + ci / 2)
    for k, name in ((1, "AKI"), (2, "death before AKI")):
        ev = (cause == k) & ok
        n_ev = int(ev.sum())
        keep = [c for c in x.columns if x.loc[ok, c].nunique() > 1
                and not (c.startswith("band[") and ev[(x[c] == 1).to_numpy() & ok].sum() == 0)]
        why = None
        if n_ev < min_events:
            why = f"not estimable: {n_ev} events (minimum {min_events})"
        else:
            try:
                fit = efron_cox(np.zeros(int(ok.sum())), t[ok], ev[ok], x.loc[ok, keep].to_numpy(float))
                if not fit.converged:
                    why = "not estimable: the fit did not converge"
            except np.linalg.LinAlgError as exc:
                why = f"not estimable: {exc}"
        for lb in labels:
            term = f"band[{lb}]"
            row = {"cause": name, "band": lb, "events": int(ev[(frame["mg_band"] == lb).to_numpy()].sum()),
                   "hr": np.nan, "lo": np.nan, "hi": np.nan, "p": np.nan, "note": why or ""}
            if why is None and term in keep:
                j = keep.index(term)
                b, se = fit.params[j], fit.se[j]
                row.update(hr=float(np.exp(b)), lo=float(np.exp(b - z * se)), hi=float(np.exp(b + z * se)),
                           p=float(2 * sps.norm.sf(abs(b / se))))
            elif why is None:
                row["note"] = "no events in this band"
            rows.append(row)
        if n_ev and n_ev < 10 * max(len(keep), 1):
            notes.append(f"{name}: {n_ev} events for {len(keep)} terms (fewer than 10 per term)")
    notes.append(f"reference band {ref}; time from the index time; discharge alive censors; "
                 f"{int((~ok).sum())} admissions left out for missing covariates")
    return pd.DataFrame(rows), notes
