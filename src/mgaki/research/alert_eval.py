"""Do the alerts help? Outcomes after every alert and the silent-vs-live comparison (issue 17 points 3-4).

``outcomes`` follows each alert in the data mgaki already ingests (the event store and its surveillance
results): lab-to-action minutes (the first Mg dose, the end of a running Mg infusion for a high Mg, the next
Mg result for a monitoring alert, or the next result of an analyte the specimen rules check for a
``suspect_specimen`` alert), Mg back in range (or out of range) within 24 h, AKI progression, dialysis and
death within 14 days. The definitions and windows are knowledge data (``evaluation.yaml``).

``evaluate`` summarises them: alert burden per 100 patient-days and per encounter, the positive predictive value
of each kind for the outcome it exists to prevent, and the live arm against the silent arm (risk difference and
ratio with 95% CIs; lab-to-action as Kaplan-Meier medians and a log-rank test, censored at the window or the end
of the stay). The unit of comparison is a patient's first alert of a kind (alerts of one patient are not
independent); with ward-level allocation the CIs ignore clustering, and the result says so.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from mgaki.events import EventStore
from mgaki.knowledge import KnowledgeBase
from mgaki.research.alert_trial import AlertPolicy, MemoryLedger, assign_mode
from mgaki.surveillance.pipeline import ResultTables, reads_results, result_files, result_sql
from mgaki.units import convert

__all__ = ["ALERT_COLUMNS", "ALPHA", "Comparison", "care_units", "evaluate", "exposure", "km_median", "logrank",
           "outcomes", "rate_ratio", "retrospective_alerts", "risk_difference", "run", "summarise_feedback", "wilson"]

ALPHA = 0.05
Z = float(stats.norm.ppf(1 - ALPHA / 2))
# the alerts table outcomes() reads: the service database's rows (mode: live | silent), or a cohort's
ALERT_COLUMNS = ("alert_id", "subject_id", "encounter_id", "kind", "time", "severity", "value", "mode")


def _results(store: EventStore, name: str) -> str | None:
    """A FROM source for a surveillance output (every bucket), or None when surveillance has not run yet."""
    return result_sql(store.root / "results", name)


def care_units(store: EventStore, pairs: pa.Table) -> dict[tuple[str, Any], str]:
    """``icu`` when (subject_id, time) falls inside an ICU stay, else ``ward``."""
    if pairs.num_rows == 0:
        return {}
    con = store.connect(("encounters",))
    try:
        con.register("p", pairs.select(["subject_id", "time"]))
        rows = con.execute("""
            SELECT p.subject_id, p.time, bool_or(e.kind = 'icu') AS icu FROM p
            LEFT JOIN encounters e ON e.subject_id = p.subject_id AND e.kind = 'icu'
              AND e.start <= p.time AND (e."end" IS NULL OR e."end" >= p.time)
            GROUP BY ALL""").fetchall()
    finally:
        con.close()
    return {(s, t): ("icu" if icu else "ward") for s, t, icu in rows}


@reads_results  # a background fold may replace a result file under the read
def outcomes(store: EventStore, kb: KnowledgeBase, alerts: pa.Table) -> pa.Table:
    """One row per alert: its arm, the lab-to-action time (minutes, with an event flag) and each binary
    outcome of ``evaluation.yaml`` (True, False)."""
    ev = kb.evaluation
    out_def = {o.id: o for o in ev.outcomes}
    action = {a.kind: a.action for a in ev.alerts}
    rng = kb.magnesium.reference_range
    mg_lo, mg_hi = (convert(x, "magnesium", rng.unit, "mg/dL") for x in (rng.low, rng.high))
    wins = {k: int(o.window_hours * 3600) for k, o in out_def.items()}
    rep_analytes = ", ".join(f"'{a}'" for a in kb.surveillance.specimen.analytes)  # a repeat alert's analytes
    con = store.connect(("events", "medications", "encounters"))
    try:
        con.register("alerts_in", alerts.select(list(ALERT_COLUMNS)))
        con.register("actions", pa.table({"kind": list(action), "action": list(action.values())}))
        stage_src = _results(store, "aki_stage_changes")
        stages = (f"SELECT subject_id, encounter_id, time, stage FROM {stage_src}" if stage_src else
                  "SELECT NULL::VARCHAR subject_id, NULL::VARCHAR encounter_id, NULL::TIMESTAMP time, "
                  "NULL::INTEGER stage WHERE FALSE")
        sql = f"""
        WITH a AS (
          SELECT al.*, coalesce(ac.action, 'review') AS base_action,
                 CASE WHEN coalesce(ac.action, 'review') = 'dose' AND al.kind LIKE 'mg_%' AND al.value > {mg_hi}
                      THEN 'hold' ELSE coalesce(ac.action, 'review') END AS action
          FROM alerts_in al LEFT JOIN actions ac ON ac.kind = al.kind),
        enc AS (SELECT subject_id, encounter_id, min(start) AS start,
                       CASE WHEN bool_and("end" IS NULL) THEN NULL ELSE max("end") END AS stop
                FROM encounters WHERE parent_id IS NULL GROUP BY ALL),
        last_data AS (SELECT subject_id, max(time) AS t FROM events GROUP BY subject_id),
        mg AS (SELECT subject_id, time, numeric_value AS v FROM events WHERE analyte = 'magnesium'
                                                                     AND numeric_value IS NOT NULL),
        doses AS (SELECT subject_id, start, "end" FROM medications WHERE mg_mmol IS NOT NULL AND mg_mmol > 0
                                                                      AND start IS NOT NULL),
        rep AS (SELECT subject_id, time FROM events WHERE analyte IN ({rep_analytes})
                                                     AND numeric_value IS NOT NULL),
        st AS ({stages}),
        joined AS (
          SELECT a.alert_id,
            min(d.start) FILTER (WHERE d.start > a.time
                                  AND d.start <= a.time + to_seconds({wins['lab_to_action']})) AS first_dose,
            min(d."end") FILTER (WHERE d.start <= a.time AND d."end" > a.time
                                  AND d."end" <= a.time + to_seconds({wins['lab_to_action']})) AS hold_at
          FROM a LEFT JOIN doses d ON d.subject_id = a.subject_id GROUP BY a.alert_id),
        mgj AS (
          SELECT a.alert_id,
            min(m.time) FILTER (WHERE m.time > a.time) AS next_mg,
            arg_min(m.v, m.time) FILTER (WHERE m.time > a.time) AS next_mg_v,
            bool_or(m.v >= {mg_lo} AND m.v <= {mg_hi}) FILTER (
              WHERE m.time > a.time AND m.time <= a.time + to_seconds({wins['mg_in_range_24h']})) AS in_range,
            bool_or(m.v < {mg_lo} OR m.v > {mg_hi}) FILTER (
              WHERE m.time > a.time AND m.time <= a.time + to_seconds({wins['mg_out_of_range_24h']})) AS out_range
          FROM a LEFT JOIN mg m ON m.subject_id = a.subject_id GROUP BY a.alert_id),
        repj AS (
          SELECT a.alert_id, min(r.time) FILTER (WHERE r.time > a.time) AS next_rep
          FROM a LEFT JOIN rep r ON r.subject_id = a.subject_id GROUP BY a.alert_id),
        stj AS (
          SELECT a.alert_id,
            coalesce(arg_max(s.stage, s.time) FILTER (WHERE s.time <= a.time), 0) AS stage_at,
            max(s.stage) FILTER (WHERE s.time > a.time
                                  AND s.time <= a.time + to_seconds({wins['aki_progression']})) AS stage_after
          FROM a LEFT JOIN st s ON s.subject_id = a.subject_id
                              AND s.encounter_id IS NOT DISTINCT FROM a.encounter_id
          GROUP BY a.alert_id),
        hard AS (
          SELECT a.alert_id,
            bool_or(e.analyte = 'rrt' AND e.time > a.time
                    AND e.time <= a.time + to_seconds({wins['rrt']})) AS rrt,
            bool_or(e.analyte = 'death' AND e.time > a.time
                    AND e.time <= a.time + to_seconds({wins['death']})) AS death
          FROM a LEFT JOIN (SELECT subject_id, analyte, time FROM events WHERE analyte IN ('rrt', 'death')) e
            ON e.subject_id = a.subject_id GROUP BY a.alert_id)
        SELECT a.alert_id, a.subject_id, a.encounter_id, a.kind, a.time, a.mode, a.action,
          CASE a.action WHEN 'dose' THEN j.first_dose WHEN 'hold' THEN j.hold_at
               WHEN 'measure' THEN CASE WHEN mgj.next_mg <= a.time + to_seconds({wins['lab_to_action']})
                                        THEN mgj.next_mg END
               WHEN 'repeat' THEN CASE WHEN repj.next_rep <= a.time + to_seconds({wins['lab_to_action']})
                                       THEN repj.next_rep END END AS action_at,
          least(a.time + to_seconds({wins['lab_to_action']}),
                greatest(a.time, coalesce(enc.stop, ld.t, a.time + to_seconds({wins['lab_to_action']}))))
            AS censor_at,
          coalesce(mgj.in_range, FALSE) AS mg_in_range_24h,
          CASE WHEN a.action = 'measure' THEN coalesce(mgj.next_mg <= a.time + to_seconds(
                                                  {wins['mg_out_of_range_24h']})
                                                AND (mgj.next_mg_v < {mg_lo} OR mgj.next_mg_v > {mg_hi}), FALSE)
               ELSE coalesce(mgj.out_range, FALSE) END AS mg_out_of_range_24h,
          coalesce(stj.stage_after > stj.stage_at, FALSE) AS aki_progression,
          coalesce(hard.rrt, FALSE) AS rrt, coalesce(hard.death, FALSE) AS death
        FROM a JOIN joined j USING (alert_id) JOIN mgj USING (alert_id) JOIN repj USING (alert_id)
          JOIN stj USING (alert_id)
          JOIN hard USING (alert_id)
          LEFT JOIN enc ON enc.subject_id = a.subject_id AND enc.encounter_id = a.encounter_id
          LEFT JOIN last_data ld ON ld.subject_id = a.subject_id
        ORDER BY a.time, a.alert_id"""
        tab = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    t0 = tab["time"].to_numpy(zero_copy_only=False)
    act = tab["action_at"].to_numpy(zero_copy_only=False)
    cen = tab["censor_at"].to_numpy(zero_copy_only=False)
    acted = ~np.isnat(act)
    end = np.where(acted, act, cen)
    minutes = (end - t0).astype("timedelta64[s]").astype(float) / 60.0
    reviewed = np.array([a == "review" for a in tab["action"].to_pylist()], dtype=bool)
    minutes[reviewed] = np.nan  # a review alert asks for no action the data can see
    tab = tab.append_column("lab_to_action_min", pa.array(np.round(minutes, 1), pa.float64(),
                                                          mask=np.isnan(minutes)))
    return tab.append_column("acted", pa.array(acted & ~reviewed))


# --- statistics ---------------------------------------------------------------------------------


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + Z * Z / n
    mid = (p + Z * Z / (2 * n)) / den
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def risk_difference(k1: int, n1: int, k0: int, n0: int) -> tuple[float, float, float]:
    """p1 - p0 with Newcombe's hybrid score interval (method 10)."""
    if n1 == 0 or n0 == 0:
        return (math.nan, math.nan, math.nan)
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = wilson(k1, n1)
    l0, u0 = wilson(k0, n0)
    d = p1 - p0
    return (d, d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2))


def rate_ratio(k1: int, n1: int, k0: int, n0: int) -> tuple[float, float, float, float]:
    """Risk ratio p1/p0 with the log (Katz) interval and the two-sided p of the chi-square test
    (0.5 added to every cell when one is empty)."""
    if n1 == 0 or n0 == 0:
        return (math.nan, math.nan, math.nan, math.nan)
    a, b, c, d = float(k1), float(n1 - k1), float(k0), float(n0 - k0)
    if 0 in (a, c):
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
    rr = (a / (a + b)) / (c / (c + d))
    se = math.sqrt(1 / a - 1 / (a + b) + 1 / c - 1 / (c + d))
    table = np.array([[k1, n1 - k1], [k0, n0 - k0]])
    p = 1.0 if (table.sum(axis=0) == 0).any() else float(stats.chi2_contingency(table, correction=False)[1])
    return (rr, rr * math.exp(-Z * se), rr * math.exp(Z * se), p)


def km_median(t: np.ndarray, event: np.ndarray) -> tuple[float, float, float]:
    """Kaplan-Meier median time with a 95% CI (Brookmeyer-Crowley via the log-log band); NaN when the curve
    does not reach 0.5."""
    if len(t) == 0:
        return (math.nan, math.nan, math.nan)
    data = stats.CensoredData(uncensored=t[event], right=t[~event])
    res = stats.ecdf(data)
    sf = res.sf
    q = sf.quantiles
    p = sf.probabilities

    def first_below(curve: np.ndarray) -> float:
        idx = np.nonzero(curve <= 0.5)[0]
        return float(q[idx[0]]) if len(idx) else math.nan

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            # scipy warns where the band is undefined (survival 0 or 1): those points are not used here
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = sf.confidence_interval(1 - ALPHA, method="log-log")
        low, high = np.nan_to_num(ci.low.probabilities, nan=1.0), np.nan_to_num(ci.high.probabilities, nan=1.0)
        lo, hi = first_below(low), first_below(high)
    except (ValueError, ZeroDivisionError, FloatingPointError):
        lo = hi = math.nan
    return (first_below(p), lo, hi)


def logrank(t1: np.ndarray, e1: np.ndarray, t0: np.ndarray, e0: np.ndarray) -> float:
    """Two-sided log-rank p of two right-censored samples (NaN when either is empty or nothing happened)."""
    if len(t1) == 0 or len(t0) == 0 or not (e1.any() or e0.any()):
        return math.nan
    x = stats.CensoredData(uncensored=t1[e1], right=t1[~e1])
    y = stats.CensoredData(uncensored=t0[e0], right=t0[~e0])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # no variance (one time in both arms): no test, NaN
        p = float(stats.logrank(x, y).pvalue)
    return p if math.isfinite(p) else math.nan


@dataclass(frozen=True)
class Comparison:
    """Live against silent for one alert kind (or all kinds), first alert per patient."""

    kind: str
    n_live: int
    n_silent: int
    binary: list[dict[str, Any]]
    lab_to_action: dict[str, Any] | None


def _first_per_patient(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for r in sorted(rows, key=lambda r: (r["time"], r["alert_id"])):
        key = (r["subject_id"], r["kind"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _compare(kind: str, rows: list[dict[str, Any]], binary_ids: list[str], labels: dict[str, str]) -> Comparison:
    """Live against silent, first alert of the kind per patient."""
    first = _first_per_patient(rows)
    live = [r for r in first if r["mode"] == "live"]
    silent = [r for r in first if r["mode"] == "silent"]
    binary = []
    for o in binary_ids:
        k1, k0 = sum(bool(r[o]) for r in live), sum(bool(r[o]) for r in silent)
        rd = risk_difference(k1, len(live), k0, len(silent))
        rr = rate_ratio(k1, len(live), k0, len(silent))
        binary.append({"outcome": o, "label": labels[o], "live": [k1, len(live)], "silent": [k0, len(silent)],
                       "risk_live": k1 / len(live) if live else math.nan,
                       "risk_silent": k0 / len(silent) if silent else math.nan,
                       "rd": rd[0], "rd_low": rd[1], "rd_high": rd[2], "rr": rr[0], "rr_low": rr[1],
                       "rr_high": rr[2], "p": rr[3]})
    timed_live = [r for r in live if r["lab_to_action_min"] is not None]
    timed_silent = [r for r in silent if r["lab_to_action_min"] is not None]
    lab: dict[str, Any] | None = None
    if timed_live or timed_silent:
        arrays = {}
        for arm, rs in (("live", timed_live), ("silent", timed_silent)):
            arrays[arm] = (np.array([r["lab_to_action_min"] for r in rs], float),
                           np.array([bool(r["acted"]) for r in rs], bool))
        meds = {arm: km_median(*arrays[arm]) for arm in arrays}
        p = logrank(*arrays["live"], *arrays["silent"])
        lab = {"n": {arm: len(arrays[arm][0]) for arm in arrays},
               "acted": {arm: int(arrays[arm][1].sum()) for arm in arrays},
               "median_min": {arm: meds[arm][0] for arm in meds},
               "median_ci": {arm: [meds[arm][1], meds[arm][2]] for arm in meds},
               "p_logrank": p,
               "minutes": {arm: [[float(t), bool(e)] for t, e in zip(*arrays[arm], strict=True)] for arm in arrays}}
        lab["significant"] = bool(not math.isnan(p) and p < ALPHA)
        lab["live_sooner"] = bool(lab["significant"] and
                                  _sooner(meds["live"][0], meds["silent"][0], arrays["live"], arrays["silent"]))
    return Comparison(kind, len(live), len(silent), binary, lab)


def _sooner(m1: float, m0: float, a1: tuple[np.ndarray, np.ndarray], a0: tuple[np.ndarray, np.ndarray]) -> bool:
    """The live arm acts sooner: a shorter median, or (medians not reached) a larger share acting."""
    if not math.isnan(m1) and not math.isnan(m0):
        return m1 < m0
    if not math.isnan(m1):
        return True
    return bool(a1[1].mean() > a0[1].mean()) if len(a1[1]) and len(a0[1]) else False


def evaluate(tab: pa.Table, kb: KnowledgeBase, patient_days: float, encounters: int,
             allocation_unit: str | None = None) -> dict[str, Any]:
    """Burden, PPV and the live-vs-silent comparison from ``outcomes``' table (rows of mode off excluded)."""
    ev = kb.evaluation
    labels: dict[str, str] = {o.id: o.label for o in ev.outcomes}
    kinds = {a.kind: a for a in ev.alerts}
    binary_ids: list[str] = [o.id for o in ev.outcomes if o.kind == "binary"]
    rows = [r for r in tab.to_pylist() if r["mode"] in ("live", "silent")]
    burden, ppv, comparisons = [], [], []
    for kind in sorted({r["kind"] for r in rows}):
        rs = [r for r in rows if r["kind"] == kind]
        live = [r for r in rs if r["mode"] == "live"]
        target = kinds[kind].target if kind in kinds else None
        burden.append({"kind": kind, "label": kinds[kind].label if kind in kinds else kind, "alerts": len(rs),
                       "shown": len(live), "silent": len(rs) - len(live),
                       "per_100_patient_days": 100 * len(rs) / patient_days if patient_days else math.nan,
                       "shown_per_100_patient_days": 100 * len(live) / patient_days if patient_days else math.nan,
                       "per_encounter": len(rs) / encounters if encounters else math.nan})
        if target is not None:
            entry = {"kind": kind, "label": kinds[kind].label, "target": target, "target_label": labels[target]}
            for arm, sub in (("all", rs), ("silent", [r for r in rs if r["mode"] == "silent"]), ("live", live)):
                k = sum(bool(r[target]) for r in sub)
                lo, hi = wilson(k, len(sub))
                entry[arm] = {"k": k, "n": len(sub), "ppv": k / len(sub) if sub else math.nan, "low": lo, "high": hi}
            ppv.append(entry)
        comparisons.append(_compare(kind, rs, binary_ids, labels))
    warnings = []
    if allocation_unit == "ward":
        warnings.append("Ward-level allocation: the intervals treat patients as independent and are too narrow; "
                        "analyse by ward (cluster) before drawing conclusions.")
    if not any(c.n_live and c.n_silent for c in comparisons):
        warnings.append("No alert kind has both a live and a silent arm: the comparison needs a silent or "
                        "randomised mode (docs/evaluation.md#modes).")
    return {"patient_days": patient_days, "encounters": encounters, "alerts": len(rows),
            "alerts_shown": sum(r["mode"] == "live" for r in rows), "burden": burden, "ppv": ppv,
            "comparisons": [c.__dict__ for c in comparisons], "warnings": warnings,
            "outcomes": [o.model_dump(mode="json") for o in ev.outcomes],
            "trials": [t.model_dump(mode="json") for t in ev.trials], "alpha": ALPHA}


def exposure(store: EventStore) -> tuple[float, int]:
    """Patient-days (hospital encounters, open ones to the patient's last data) and the number of encounters."""
    con = store.connect(("encounters", "events"))
    try:
        row = con.execute("""
            WITH enc AS (SELECT subject_id, encounter_id, min(start) AS start,
                                CASE WHEN bool_and("end" IS NULL) THEN NULL ELSE max("end") END AS stop
                         FROM encounters WHERE parent_id IS NULL AND start IS NOT NULL GROUP BY ALL),
                 ld AS (SELECT subject_id, max(time) AS t FROM events GROUP BY subject_id)
            SELECT coalesce(sum(greatest(epoch(coalesce(e.stop, ld.t, e.start)) - epoch(e.start), 0)), 0) / 86400.0,
                   count(*)
            FROM enc e LEFT JOIN ld USING (subject_id)""").fetchall()[0]
    finally:
        con.close()
    return float(row[0]), int(row[1])


def retrospective_alerts(store: EventStore, policy: AlertPolicy) -> pa.Table:
    """A cohort's surveillance alerts (the alert log, ``results/alerts/``) with the mode ``policy`` gives each,
    allocated in time order as the service would have: a retrospective shadow run (no alert was shown to anyone)."""
    root = store.root / "results"
    if result_files(root, "alerts") is None:
        raise FileNotFoundError(f"{root / 'alerts'} not found: run `mgaki surveil` on the store first")
    tab = ResultTables(root)["alerts"].sort_by([("time", "ascending"), ("subject_id", "ascending"),
                                               ("kind", "ascending")])
    units = care_units(store, tab.select(["subject_id", "time"])) if policy.randomised() else {}
    ledger = MemoryLedger()
    modes = [assign_mode(policy, ledger, r["subject_id"], r["kind"],
                         units.get((r["subject_id"], r["time"]), "ward"))[0]
             for r in tab.select(["subject_id", "kind", "time"]).to_pylist()]
    tab = tab.append_column("alert_id", pa.array(range(1, tab.num_rows + 1), pa.int64()))
    return tab.append_column("mode", pa.array(modes, pa.string()))


def run(store: EventStore, kb: KnowledgeBase, alerts: pa.Table, allocation_unit: str | None = None,
        feedback: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], pa.Table]:
    """``outcomes`` then ``evaluate`` over the store's exposure: the result and the per-alert table.
    ``feedback``: CDS Hooks feedback counts (service, outcome, override_code, n), summarised with the reasons'
    names."""
    tab = outcomes(store, kb, alerts.filter(pc.is_in(alerts["mode"], pa.array(["live", "silent"]))))
    days, n_enc = exposure(store)
    res = evaluate(tab, kb, days, n_enc, allocation_unit)
    if feedback is not None:
        res["feedback"] = summarise_feedback(kb, feedback)
    return res, tab


def summarise_feedback(kb: KnowledgeBase, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Cards accepted and overridden per CDS service, and the override reasons by count (coded reasons named
    from evaluation.yaml; a code the cards never offered is kept, marked as not offered)."""
    names = {r.code: r.display for r in kb.evaluation.override_reasons}
    by_service: dict[str, dict[str, int]] = {}
    reasons: dict[str, int] = {}
    for r in rows:
        s = by_service.setdefault(r["service"], {"accepted": 0, "overridden": 0})
        s[r["outcome"]] = s.get(r["outcome"], 0) + int(r["n"])
        if r["outcome"] == "overridden":
            code = r["override_code"] or "(no reason given)"
            reasons[code] = reasons.get(code, 0) + int(r["n"])
    return {"services": [{"service": k, **v} for k, v in sorted(by_service.items())],
            "override_reasons": [{"code": c, "display": names.get(c, "not one of the offered reasons"
                                                                if c != "(no reason given)" else c), "n": n}
                                 for c, n in sorted(reasons.items(), key=lambda x: (-x[1], x[0]))]}
