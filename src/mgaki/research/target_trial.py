"""Target-trial emulation of magnesium repletion: does IV MgSO4 for hypomagnesaemia prevent AKI?

The protocol (``protocol``): eligible are adult hospital admissions with a serum Mg below the reference
range, AKI-free, not on RRT and with no IV MgSO4 in the washout before it; time zero is that first low
value. Strategies: "repletion" (IV MgSO4 started within the grace period) versus "no repletion" (none
started within it). Each admission is cloned into both arms (clone-censor-weight): a clone is censored
when its admission deviates from the arm's strategy (arm "repletion": no dose by the end of the grace
period; arm "no repletion": a dose within it), and the uncensored clones are weighted by the inverse
probability of following the strategy (or by overlap weights), from a logistic model of "dose within the
grace period" on covariates measured before time zero. Outcomes over ``follow_up_days``: AKI (death
competing), Mg back in range (death competing), death, and a negative-control outcome (low albumin,
which repletion cannot cause). Risks are weighted Aalen-Johansen cumulative incidences; confidence
intervals come from a bootstrap of admissions with the propensity model re-fitted each time. Balance:
standardised mean differences before and after weighting. The naive comparison (dose within the grace
period or not, unweighted) is reported beside it, and the E-value of the AKI risk ratio.

Validated on synthetic cohorts with a planted effect and planted confounding by indication
(`generate(..., plant_repletion=True)`, tests/research/test_target_trial.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from mgaki.events.schema import DEATH
from mgaki.knowledge import KnowledgeBase, load
from mgaki.research._config import StudyConfig, TargetTrialConfig
from mgaki.research.cohort import ADMISSIONS_SQL, _egfr_sql, _lit
from mgaki.research.survival import cumulative_incidence, e_value, risk_at
from mgaki.surveillance.dialect import DUCKDB
from mgaki.units import convert

__all__ = ["OUTCOMES", "TrialResult", "emulate", "extract_trial", "protocol", "smd"]

F = NDArray[np.float64]
_H = 3600.0
# outcome -> (column of hours after time zero, label); death competes with every outcome but death
OUTCOMES = {"aki": "AKI", "mg_normal": "Mg back in the reference range", "death": "death",
            "negative_control": "negative control: low albumin"}


def extract_trial(con: duckdb.DuckDBPyConnection, aki_episodes: Any, config: StudyConfig,
                  kb: KnowledgeBase | None = None) -> pd.DataFrame:
    """One row per eligible admission: covariates at time zero and every time (hours after time zero).

    ``con`` holds the canonical tables as views; ``aki_episodes`` is surveillance's table (Arrow) of the
    outcome definition in use. Times are NaN when the event does not happen.
    """
    kb = kb or load()
    tt = config.target_trial
    d = DUCKDB
    ep = d.epoch_exact
    rr = kb.magnesium.reference_range
    low = convert(rr.low, "magnesium", rr.unit, "mg/dL")
    nc = tt.negative_control
    nc_below = convert(nc.below, nc.analyte, nc.unit, kb.analyte(nc.analyte).canonical_unit)
    nephro = sorted({x.ingredient for x in kb.drugs.drugs if x.nephrotoxic})
    drugs = ", ".join(_lit(x) for x in tt.treatment_drugs)
    routes = [r for r in tt.treatment_routes if r is not None]
    route_ok = " OR ".join([*(f"m.route = {_lit(r)}" for r in routes),
                            *(["m.route IS NULL"] if None in tt.treatment_routes else [])]) or "false"
    tx = f"m.drug IN ({drugs}) AND ({route_ok})"

    def h(col: str) -> str:
        return f"({ep(col)} - {ep('k.t0')}) / {_H!r}"

    def within(col: str, hours: float) -> str:
        return f"{ep(col)} BETWEEN {ep('k.t0')} - {hours * _H!r} AND {ep('k.t0')}"

    con.register("trial_aki", aki_episodes)
    try:
        sql = f"""
        WITH adm AS ({ADMISSIONS_SQL}),
        ev AS (SELECT a.subject_id, a.encounter_id, e.time, e.analyte, e.numeric_value AS v
               FROM adm a JOIN events e ON e.subject_id = a.subject_id
                 AND e.time BETWEEN a.start AND coalesce(a."end", e.time)),
        lowmg AS (SELECT subject_id, encounter_id, time AS t0, v AS mg_at_t0 FROM (
                    SELECT *, row_number() OVER (PARTITION BY subject_id, encounter_id ORDER BY time, v) AS rn
                    FROM ev WHERE analyte = 'magnesium' AND v < {low!r}) x WHERE rn = 1),
        k AS (SELECT a.*, l.t0, l.mg_at_t0 FROM adm a JOIN lowmg l USING (subject_id, encounter_id)),
        subj AS (SELECT subject_id, min(sex) AS sex, min(birth_year) AS birth_year FROM subjects GROUP BY 1),
        base AS (
          SELECT k.subject_id, k.encounter_id, k.start, k.t0, k.mg_at_t0, s.sex,
            CAST(year(k.start) - s.birth_year AS DOUBLE) AS age,
            (SELECT arg_max(e.v, e.time) FROM ev e WHERE e.subject_id = k.subject_id
               AND e.encounter_id = k.encounter_id AND e.analyte = 'creatinine'
               AND {within('e.time', config.lookback_creatinine_hours)}) AS admission_creatinine,
            EXISTS (SELECT 1 FROM encounters i WHERE i.subject_id = k.subject_id AND i.kind = 'icu'
               AND i.start <= k.t0 AND {ep('coalesce(i."end", k.t0)')} >= {ep('k.t0')}
                   - {config.lookback_icu_hours * _H!r}) AS icu,
            coalesce((SELECT arg_min(c.context, c.time) FROM contexts c WHERE c.subject_id = k.subject_id
               AND c.context <> 'icu' AND {within('c.time', config.lookback_context_hours)}), 'none') AS context,
            EXISTS (SELECT 1 FROM medications m WHERE m.subject_id = k.subject_id
               AND m.drug IN ({', '.join(_lit(x) for x in nephro) or "''"})
               AND m.start <= k.t0 AND {ep('coalesce(m."end", k.t0)')} >= {ep('k.t0')}
                   - {config.lookback_nephrotoxic_hours * _H!r}) AS nephrotoxic,
            EXISTS (SELECT 1 FROM medications m WHERE m.subject_id = k.subject_id AND {tx}
               AND {ep('m.start')} >= {ep('k.t0')} - {tt.washout_hours * _H!r} AND m.start < k.t0) AS prior_mg,
            EXISTS (SELECT 1 FROM trial_aki x WHERE x.subject_id = k.subject_id
               AND x.encounter_id = k.encounter_id AND x.onset <= k.t0) AS aki_before,
            EXISTS (SELECT 1 FROM events r WHERE r.subject_id = k.subject_id AND r.analyte = 'rrt'
               AND r.time <= k.t0 AND {ep('r.time')} >= {ep('k.start')}
                   - {config.rrt_prior_days * 86400.0!r}) AS rrt_before,
            (SELECT min({h('m.start')}) FROM medications m WHERE m.subject_id = k.subject_id AND {tx}
               AND m.start >= k.t0) AS tx_h,
            (SELECT min({h('x.onset')}) FROM trial_aki x WHERE x.subject_id = k.subject_id
               AND x.encounter_id = k.encounter_id AND x.onset > k.t0) AS aki_h,
            (SELECT min({h('e.time')}) FROM events e WHERE e.subject_id = k.subject_id
               AND e.analyte = '{DEATH}' AND e.time >= k.t0) AS death_h,
            (SELECT min({h('e.time')}) FROM ev e WHERE e.subject_id = k.subject_id
               AND e.encounter_id = k.encounter_id AND e.analyte = 'magnesium' AND e.v >= {low!r}
               AND e.time > k.t0) AS mg_normal_h,
            (SELECT min({h('e.time')}) FROM ev e WHERE e.subject_id = k.subject_id
               AND e.encounter_id = k.encounter_id AND e.analyte = {_lit(nc.analyte)} AND e.v < {nc_below!r}
               AND e.time > k.t0) AS negative_control_h,
            CASE WHEN k."end" IS NULL THEN NULL ELSE {h('k."end"')} END AS end_h,
            EXISTS (SELECT 1 FROM contexts c WHERE c.subject_id = k.subject_id AND c.context = 'cardiac-surgery'
               AND c.time BETWEEN k.start AND coalesce(k."end", c.time)) AS pop_cardiac_surgery,
            EXISTS (SELECT 1 FROM contexts c WHERE c.subject_id = k.subject_id AND c.context = 'cisplatin'
               AND c.time BETWEEN k.start AND coalesce(k."end", c.time)) AS pop_cisplatin
          FROM k LEFT JOIN subj s ON s.subject_id = k.subject_id)
        SELECT *, {_egfr_sql(kb, d)} AS egfr FROM base ORDER BY subject_id, t0, encounter_id"""
        out = con.sql(sql).df()
    finally:
        con.unregister("trial_aki")
    out["pop_icu"] = out["icu"]
    min_age = config.min_age_years if config.min_age_years is not None else -np.inf
    out["eligible"] = ((out["age"] >= min_age) & ~out["prior_mg"] & ~out["aki_before"] & ~out["rrt_before"]
                       & out["sex"].isin(["female", "male"]))
    return out


def protocol(config: StudyConfig, low_mg: float) -> pd.DataFrame:
    """The seven components of the target trial (Hernan & Robins 2016), as this emulation fills them."""
    tt = config.target_trial
    fu = tt.follow_up_days
    w = "inverse-probability" if tt.weighting == "ipw" else "overlap"
    rows = [
        ("Eligibility criteria", f"Hospital admissions of adults (age >= {config.min_age_years or 0:g}) with a serum "
         f"Mg < {low_mg:g} mg/dL; no AKI and no RRT before it; no IV MgSO4 in the {tt.washout_hours:g} h before "
         f"it. Subgroups: the review's populations ({', '.join(tt.populations)})."),
        ("Treatment strategies", f"(1) start IV MgSO4 ({', '.join(tt.treatment_drugs)}) within {tt.grace_hours:g} h "
         f"of the low value; (2) start none within {tt.grace_hours:g} h."),
        ("Assignment procedures", "Randomisation emulated: each admission is cloned into both arms; adjustment "
         f"for covariates measured before time zero ({', '.join(tt.covariates)}) by {w} weights."),
        ("Follow-up period", f"From time zero (the first low Mg) for {fu:g} days, or to discharge (censored), "
         "death or the outcome; clones are censored when they deviate from their arm's strategy."),
        ("Outcome", f"AKI (surveillance onset, definition '{config.outcome_definition}') within {fu:g} days; "
         f"secondary: Mg back >= {low_mg:g} mg/dL, death; negative control: {tt.negative_control.analyte} < "
         f"{tt.negative_control.below:g} {tt.negative_control.unit}."),
        ("Causal contrast", "Per-protocol effect (clone-censor-weight with a grace period): risk difference and "
         f"risk ratio at {fu:g} days."),
        ("Analysis plan", f"Weighted Aalen-Johansen cumulative incidence per arm (death competing); logistic "
         f"propensity of a dose within the grace period; weights truncated at the {tt.truncate_quantile:g}/"
         f"{1 - tt.truncate_quantile:g} quantiles (IPW); percentile bootstrap ({tt.bootstrap_reps} resamples of "
         "admissions, propensity re-fitted); balance by standardised mean differences; E-value; naive "
         "comparison shown for contrast."),
    ]
    return pd.DataFrame(rows, columns=["component", "specification"])


def smd(x: F, treated: NDArray[np.bool_], w: F | None = None) -> float:
    """Standardised mean difference (weighted means; pooled unweighted SD, so before/after are comparable)."""
    w = np.ones(x.size) if w is None else w
    a, b = treated, ~treated
    if a.sum() == 0 or b.sum() == 0:
        return float("nan")
    ma, mb = np.average(x[a], weights=w[a]), np.average(x[b], weights=w[b])
    sd = np.sqrt((x[a].var() + x[b].var()) / 2)
    return float((ma - mb) / sd) if sd > 0 else 0.0


@dataclass
class ArmRisks:
    outcome: str
    risk_treat: float
    risk_control: float
    rd: float
    rr: float
    rd_ci: tuple[float, float] = (float("nan"), float("nan"))
    rr_ci: tuple[float, float] = (float("nan"), float("nan"))
    events: int = 0
    note: str = ""


@dataclass
class TrialResult:
    population: str
    n_eligible: int
    n_treated: int
    n_used: int
    protocol: pd.DataFrame
    balance: pd.DataFrame  # covariate, smd_before, smd_after
    emulation: list[ArmRisks]
    naive: list[ArmRisks]
    e_value: float = float("nan")
    e_value_ci: float = float("nan")
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)  # time, arm, cif (AKI)
    weights: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    estimable: bool = True

    def table(self, which: str = "emulation") -> pd.DataFrame:
        rows = self.emulation if which == "emulation" else self.naive
        return pd.DataFrame([{"outcome": OUTCOMES[r.outcome], "events": r.events,
                              "risk, repletion": r.risk_treat, "risk, no repletion": r.risk_control,
                              "risk difference": r.rd, "RD CI": _ci(r.rd_ci), "risk ratio": r.rr,
                              "RR CI": _ci(r.rr_ci), "note": r.note} for r in rows])

    def summary(self) -> dict[str, Any]:
        return {"population": self.population, "n_eligible": self.n_eligible, "n_treated": self.n_treated,
                "n_used": self.n_used, "estimable": self.estimable, "e_value": _num(self.e_value),
                "e_value_ci": _num(self.e_value_ci), "weights": self.weights, "notes": self.notes,
                "emulation": [_risk_dict(r) for r in self.emulation], "naive": [_risk_dict(r) for r in self.naive],
                "balance": self.balance.to_dict("records")}


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _risk_dict(r: ArmRisks) -> dict[str, Any]:
    return {"outcome": r.outcome, "risk_treat": _num(r.risk_treat), "risk_control": _num(r.risk_control),
            "rd": _num(r.rd), "rr": _num(r.rr), "rd_ci": [_num(x) for x in r.rd_ci],
            "rr_ci": [_num(x) for x in r.rr_ci], "events": r.events, "note": r.note}


def _ci(c: tuple[float, float]) -> str:
    return "" if not np.isfinite(c[0]) else f"{c[0]:.3f} to {c[1]:.3f}"


def _design(frame: pd.DataFrame, covariates: tuple[str, ...]) -> tuple[pd.DataFrame, list[str]]:
    from mgaki.research.stats import design

    x, dropped = design(frame, tuple(c for c in covariates if c != "mg_at_t0"))
    if "mg_at_t0" in covariates:
        x.insert(0, "mg_at_t0", frame["mg_at_t0"].astype(float))
    return x, dropped


def _propensity(x: F, y: NDArray[np.bool_], max_iter: int = 50) -> F:
    """P(dose within the grace period | covariates): unpenalised logistic regression by Newton-Raphson.

    In numpy (the bootstrap re-fits it hundreds of times; statsmodels' rank check alone cost 20 ms a fit);
    tests/research/test_target_trial.py checks it against statsmodels' Logit.
    """
    mu, sd = x.mean(axis=0), x.std(axis=0)
    z = np.column_stack([np.ones(len(x)), (x - mu) / np.where(sd > 0, sd, 1.0)])
    yv = y.astype(float)
    beta = np.zeros(z.shape[1])
    for _ in range(max_iter):
        eta = np.clip(z @ beta, -30.0, 30.0)
        p = 1.0 / (1.0 + np.exp(-eta))
        grad = z.T @ (yv - p)
        hess = (z * (p * (1.0 - p))[:, None]).T @ z
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        beta += step
        if float(np.abs(step).max()) < 1e-10:
            break
    out: F = np.clip(1.0 / (1.0 + np.exp(-np.clip(z @ beta, -30.0, 30.0))), 1e-6, 1 - 1e-6)
    return out


def _arm_weights(p: F, treated: NDArray[np.bool_], tx: F, tt: TargetTrialConfig, arm: bool) -> tuple[F, F]:
    """One arm's clone weights, one column per hour of the grace period and one after it, and the breaks.

    Inverse probability of following the arm's strategy so far (Hernan 2018 clone-censor-weight): arm
    "repletion" censors only at the end of the grace period (weight 1 before, 1/p after); arm "no
    repletion" censors at each dose, so its clones weigh 1/(1 - p F(t)) in the grace period, F = share of
    the doses given by hour t among those given in it, and 1/(1 - p) after. Overlap weights multiply
    every weight by p(1 - p) (the population in equipoise); IPW weights are truncated at the quantiles.
    """
    grace = tt.grace_hours
    breaks = np.linspace(0.0, grace, max(int(np.ceil(grace)), 1) + 1)[1:]  # hourly periods, last at grace
    given = np.sort(np.nan_to_num(tx[treated], nan=np.inf))
    share = np.searchsorted(given, breaks, side="right") / max(given.size, 1)  # F at each period's end
    if arm:
        w = np.column_stack([np.ones((p.size, breaks.size)), 1.0 / p])
    else:
        w = np.column_stack([1.0 / (1.0 - p[:, None] * share[None, :]), 1.0 / (1.0 - p)])
    if tt.weighting == "overlap":
        w = w * (p * (1.0 - p))[:, None]
    else:
        lo, hi = np.quantile(w[:, -1], [tt.truncate_quantile, 1.0 - tt.truncate_quantile])
        w = np.clip(w, min(lo, 1.0), hi)
    return w, breaks


def _weights(p: F, treated: NDArray[np.bool_], tt: TargetTrialConfig) -> F:
    """Each admission's weight after the grace period in the arm its treatment follows (for balance)."""
    if tt.weighting == "overlap":
        return np.where(treated, 1.0 - p, p)
    w = np.where(treated, 1.0 / p, 1.0 / (1.0 - p))
    lo, hi = np.quantile(w, [tt.truncate_quantile, 1.0 - tt.truncate_quantile])
    return np.clip(w, lo, hi)


def _times(f: pd.DataFrame, outcome: str, horizon: float) -> tuple[F, NDArray[np.int64]]:
    """(time, cause) per admission for one outcome: 1 = the outcome, 2 = death first (competing), 0 = censored."""
    ev = f[f"{outcome}_h"].to_numpy(float)
    death = f["death_h"].to_numpy(float)
    end = f["end_h"].fillna(np.inf).to_numpy(float)
    if outcome == "death":
        death = np.full(len(f), np.inf)
    ev, death = np.nan_to_num(ev, nan=np.inf), np.nan_to_num(death, nan=np.inf)
    first = np.minimum.reduce([ev, death, end, np.full(len(f), horizon)])
    cause = np.where(ev <= first, 1, np.where(death <= first, 2, 0)).astype(np.int64)
    return first, cause


def _arm_risks(t: F, c: NDArray[np.int64], tx: F, p: F, treated: NDArray[np.bool_], tt: TargetTrialConfig,
               horizon: float) -> tuple[float, float]:
    """Clone-censor-weight risks at the horizon: (arm repletion, arm no repletion)."""
    out = []
    for arm in (True, False):
        ct, cc = _clone(t, c, tx, treated, tt.grace_hours, arm)
        w, breaks = _arm_weights(p, treated, tx, tt, arm)
        times, cif = cumulative_incidence(ct, cc, (1, 2), w, breaks)
        out.append(risk_at(times, cif[1], horizon))
    return out[0], out[1]


def _naive(t: F, c: NDArray[np.int64], treated: NDArray[np.bool_], horizon: float) -> tuple[float, float]:
    res = []
    for grp in (treated, ~treated):
        times, cif = cumulative_incidence(t[grp], c[grp])
        res.append(risk_at(times, cif[1], horizon))
    return res[0], res[1]


def emulate(frame: pd.DataFrame, config: StudyConfig, population: str = "hypomagnesaemia",
            min_events: int = 10, low_mg: float = 1.7) -> TrialResult:
    """The emulated trial on the eligible rows of ``extract_trial``'s frame (one population)."""
    tt = config.target_trial
    grace, horizon = tt.grace_hours, tt.follow_up_days * 24.0
    f = frame[frame["eligible"]].reset_index(drop=True)
    if population != "hypomagnesaemia":
        f = f[f[f"pop_{population.replace('-', '_')}"]].reset_index(drop=True)
    if f.empty:
        res = TrialResult(population, 0, 0, 0, protocol(config, low_mg),
                          pd.DataFrame(columns=["covariate", "smd_before", "smd_after"]), [], [], estimable=False)
        res.notes.append("not estimable: no eligible admissions in this population")
        return res
    x, dropped = _design(f, tt.covariates)
    ok = x.notna().all(axis=1).to_numpy()
    treated_all = (f["tx_h"].fillna(np.inf) <= grace).to_numpy()
    res = TrialResult(population, len(f), int(treated_all.sum()), int(ok.sum()), protocol(config, low_mg),
                      pd.DataFrame(columns=["covariate", "smd_before", "smd_after"]), [], [])
    res.notes += [f"covariate {c} is constant here: left out of the propensity model" for c in dropped]
    if (~ok).sum():
        res.notes.append(f"{int((~ok).sum())} eligible admissions left out for missing covariates (complete case)")
    f, x = f[ok].reset_index(drop=True), x[ok].reset_index(drop=True)
    treated = treated_all[ok]
    aki_t, aki_c = _times(f, "aki", horizon)
    n_events = int((aki_c == 1).sum())
    n_arm = (int(treated.sum()), int((~treated).sum()))
    why = None
    if min(n_arm) < min_events:
        why = f"{n_arm[0]} admissions with a dose within {grace:g} h and {n_arm[1]} without (minimum {min_events} each)"
    elif n_events < min_events:
        why = f"{n_events} AKI events within {tt.follow_up_days:g} days (minimum {min_events})"
    elif n_arm[0] < x.shape[1] * 10:
        res.notes.append(f"warning: {n_arm[0]} treated admissions for {x.shape[1]} propensity-model terms "
                         "(fewer than 10 per term): the weights may be unstable")
    if why:
        res.estimable = False
        res.notes.append(f"not estimable: {why}")
        return res
    xv = x.to_numpy(float)
    p = _propensity(xv, treated)
    w = _weights(p, treated, tt)
    res.weights = {"min": float(w.min()), "max": float(w.max()), "mean": float(w.mean()),
                   "propensity_min": float(p.min()), "propensity_max": float(p.max())}
    res.balance = pd.DataFrame([{"covariate": c, "smd_before": smd(xv[:, j], treated),
                                 "smd_after": smd(xv[:, j], treated, w)} for j, c in enumerate(x.columns)])
    rng = np.random.default_rng(config.seed)
    reps = []  # (rows, treated, weights) of each resample, shared by every outcome
    for _ in range(tt.bootstrap_reps):
        i = rng.integers(0, len(f), len(f))
        tb = treated[i]
        if tb.all() or not tb.any():
            continue
        reps.append((i, tb, _propensity(xv[i], tb)))
    tx = f["tx_h"].to_numpy(float)
    for outcome in OUTCOMES:
        col = f"{outcome}_h"
        t, c = _times(f, outcome, horizon)
        ev = int((c == 1).sum())
        a, b = _arm_risks(t, c, tx, p, treated, tt, horizon)
        na, nb = _naive(t, c, treated, horizon)
        boots = [_arm_risks(t[i], c[i], tx[i], pb, tb, tt, horizon) for i, tb, pb in reps]
        nboots = [_naive(t[i], c[i], tb, horizon) for i, tb, _ in reps]
        note = "" if ev >= min_events else f"few events ({ev} < {min_events}): imprecise"
        if f[col].isna().all() and outcome != "death":
            note = "no events"
        res.emulation.append(_risks(outcome, a, b, boots, config.ci_level, ev, note))
        res.naive.append(_risks(outcome, na, nb, nboots, config.ci_level, ev, note))
    prim = res.emulation[0]
    res.e_value = e_value(prim.rr)
    lo, hi = prim.rr_ci
    res.e_value_ci = 1.0 if lo <= 1.0 <= hi else e_value(hi if prim.rr < 1 else lo)
    res.curves = pd.concat([_arm_curve(aki_t, aki_c, tx, p, treated, tt, arm)
                            for arm in (True, False)], ignore_index=True)
    return res


def _clone(t: F, c: NDArray[np.int64], tx: F, treated: NDArray[np.bool_], grace: float,
           arm: bool) -> tuple[F, NDArray[np.int64]]:
    """One arm's clones: (time, cause), censored where the admission deviates from the arm's strategy."""
    tx = np.nan_to_num(tx, nan=np.inf)
    # arm "repletion" deviates without a dose by the end of the grace period (censored there unless an event
    # came first); arm "no repletion" deviates with a dose within it (censored at the dose)
    ct = np.where(~treated & (t > grace), grace, t) if arm else np.where(treated & (t > tx), tx, t)
    return ct, np.where(ct < t, 0, c)


def _arm_curve(t: F, c: NDArray[np.int64], tx: F, p: F, treated: NDArray[np.bool_], tt: TargetTrialConfig,
               arm: bool) -> pd.DataFrame:
    ct, cc = _clone(t, c, tx, treated, tt.grace_hours, arm)
    w, breaks = _arm_weights(p, treated, tx, tt, arm)
    tm, cif = cumulative_incidence(ct, cc, (1, 2), w, breaks)
    return pd.DataFrame({"hours": tm, "risk": cif[1], "arm": "repletion" if arm else "no repletion"})


def _risks(outcome: str, a: float, b: float, boots: list[tuple[float, float]], level: float, events: int,
           note: str) -> ArmRisks:
    rr = a / b if b > 0 else float("nan")
    if b == 0 and not note:
        note = "no events in the no-repletion arm: no risk ratio"
    r = ArmRisks(outcome, a, b, a - b, rr, events=events, note=note)
    if boots:
        arr = np.array(boots)
        q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
        r.rd_ci = tuple(float(v) for v in np.percentile(arr[:, 0] - arr[:, 1], q))  # type: ignore[assignment]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = arr[:, 0] / arr[:, 1]
        ratio = ratio[np.isfinite(ratio)]
        if ratio.size:
            r.rr_ci = tuple(float(v) for v in np.percentile(ratio, q))  # type: ignore[assignment]
    return r
