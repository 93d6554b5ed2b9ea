"""`mgaki study` as a function: surveillance outputs -> cohort -> statistics -> result (and report files).

Every stage is timed and reported to an optional progress callback, so the CLI
can draw a bar and the benchmark can print a per-stage table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from mgaki.events import EventStore
from mgaki.knowledge import KnowledgeBase, load
from mgaki.research import cox as coxmod
from mgaki.research import stats
from mgaki.research._config import StudyConfig
from mgaki.research.cohort import ALTERNATIVE, Engine, StudyCohort, build_cohort, connect_tables
from mgaki.research.predict import run_prediction, save_models
from mgaki.research.provenance import versions
from mgaki.research.results import StudyResult
from mgaki.units import convert

__all__ = ["STAGES", "StudyResult", "run_study", "study_store", "versions", "write_outputs"]

STAGES = ("surveillance", "cohort", "table1", "logistic", "spline", "roc", "cox", "competing", "prediction",
          "target_trial")
Progress = Callable[[str, int, int], None]


def study_store(store: EventStore, config: StudyConfig | None = None, progress: Progress | None = None,
                kb: KnowledgeBase | None = None, engine: Engine = "duckdb",
                spark_master: str = "local[*]") -> StudyResult:
    """The whole study over an event store: surveillance is computed fresh (full run) from its events.

    `engine="spark"` runs surveillance and the cohort stages on Spark (`spark_master`, local mode by
    default) from the store's Parquet files; the statistics after the cohort run here, as for DuckDB.
    """
    from mgaki.surveillance import URINE_ANALYTES, run

    kb = kb or load()
    if engine == "spark":
        return _study_spark(store, config, progress, kb, spark_master)
    t0 = time.perf_counter()
    res = run(store, kb=kb)
    alt = run(store, kb=kb, outputs=("aki_episodes_out",), exclude_analytes=URINE_ANALYTES)
    res.tables = {**res.tables, ALTERNATIVE: alt.tables["aki_episodes"]}
    took = time.perf_counter() - t0
    if progress:
        progress("surveillance", 1, len(STAGES))
    con = store.connect()
    try:
        out = run_study(con, dict(res.tables), config, progress, kb)
    finally:
        con.close()
    out.seconds = {"surveillance": took, **out.seconds}
    return out


def _study_spark(store: EventStore, config: StudyConfig | None, progress: Progress | None, kb: KnowledgeBase,
                 master: str) -> StudyResult:
    """Surveillance and cohort extraction on Spark; only the reduced cohort tables come to the driver."""
    import tempfile

    from mgaki.research.cohort import spark_tables
    from mgaki.surveillance import URINE_ANALYTES
    from mgaki.surveillance.spark import CANONICAL, run_spark, session

    config = config or StudyConfig()
    spark = session(master, app="mgaki-study")
    with tempfile.TemporaryDirectory() as scratch:
        files = store.visible_files((*CANONICAL, "subjects"), Path(scratch))
        t0 = time.perf_counter()
        res = run_spark({k: files[k] for k in CANONICAL}, spark, kb=kb,
                        outputs=("kdigo_creatinine", "aki_episodes_out", "mg_trajectory"))
        alt = run_spark({k: files[k] for k in CANONICAL}, spark, kb=kb, outputs=("aki_episodes_out",),
                        exclude_analytes=URINE_ANALYTES)
        res.tables = {**res.tables, ALTERNATIVE: alt.tables["aki_episodes"]}
        took = time.perf_counter() - t0
        if progress:
            progress("surveillance", 1, len(STAGES))
        t0 = time.perf_counter()
        spark_tables(spark, files)
        cohort = build_cohort(spark, dict(res.tables), config, kb, engine="spark")
    con = store.connect()
    try:
        out = run_study(con, dict(res.tables), config, progress, kb, cohort=cohort, cohort_started=t0)
    finally:
        con.close()
    out.seconds = {"surveillance": took, **out.seconds}
    return out


def run_study(con: duckdb.DuckDBPyConnection | dict[str, pa.Table], results: dict[str, pa.Table],
              config: StudyConfig | None = None, progress: Progress | None = None,
              kb: KnowledgeBase | None = None, cohort: StudyCohort | None = None,
              cohort_started: float | None = None) -> StudyResult:
    """Cohort and statistics from canonical tables (a DuckDB connection or Arrow tables) and surveillance outputs.

    A `cohort` already built (on Spark: `build_cohort(engine="spark")`, begun at `cohort_started`,
    a perf_counter reading) is analysed as given; `con` then serves the prediction's landmark features.
    """
    config = config or StudyConfig()
    kb = kb or load()
    if isinstance(con, dict):
        con = connect_tables(con)
    seconds: dict[str, float] = {}
    step = [1]

    def tick(name: str, t0: float) -> None:
        seconds[name] = time.perf_counter() - t0
        step[0] += 1
        if progress:
            progress(name, step[0], len(STAGES))

    t0 = time.perf_counter() if cohort_started is None else cohort_started
    if cohort is None:
        cohort = build_cohort(con, results, config, kb)
    tick("cohort", t0)
    f = cohort.frame
    o = config.primary_outcome
    me = config.min_events
    other = "creatinine" if config.outcome_definition == "creatinine+urine" else "creatinine+urine"
    notes = [
        "Missing data: complete-case analysis; each model's n and the number of admissions it left out are shown.",
        "Time zero (index): when the admission Mg and the admission creatinine are both known (the later of the "
        f"two, within {config.admission_window_hours:g} h of admission). ICU ({config.lookback_icu_hours:g} h), "
        f"nephrotoxic drugs ({config.lookback_nephrotoxic_hours:g} h) and contexts "
        f"({config.lookback_context_hours:g} h) are read in look-back windows ending there; those starting later "
        "enter the Cox model as time-varying covariates, not the logistic models.",
        f"Outcome definition: KDIGO {config.outcome_definition}"
        + (f"; the {other} definition is reported as a sensitivity analysis." if cohort.has_alternative else "."),
        "Death = in-hospital death: a MEDS_DEATH events row naming the admission or timed within it "
        "(admission start to end, inclusive); deaths after discharge are not seen.",
        "Time-weighted mean Mg covers the whole admission, including time after AKI onset: it is descriptive, "
        "not a pre-outcome exposure.",
    ]
    if len(f) == 0:
        raise ValueError("the study cohort is empty after inclusion/exclusion: see the cohort flow")
    t0 = time.perf_counter()
    table1_html, _ = stats.table_one(f)
    included = stats.compare_included(cohort.admissions) if len(cohort.admissions) else None
    tick("table1", t0)
    t0 = time.perf_counter()
    crude: dict[str, stats.BandFit] = {}
    adjusted: dict[str, stats.BandFit] = {}
    censoring: dict[str, object] = {}
    for k in config.outcomes:
        w = None
        if k in ("akd_7d", "aki_over_48h") and "aki_duration_hours" in f:
            hours = config.akd_days * 24 if k == "akd_7d" else config.persistent_aki_hours
            w, msg = stats.ipcw_weights(f, k, hours)
            censoring[k] = msg
            cc = stats.band_odds_ratios(f, k, cohort.bands, config.covariates, config.ci_level, me)
            censoring[f"{k}_complete_case"] = cc
        crude[k] = stats.band_odds_ratios(f, k, cohort.bands, (), config.ci_level, me, w)
        adjusted[k] = stats.band_odds_ratios(f, k, cohort.bands, config.covariates, config.ci_level, me, w)
    sensitivity: dict[str, stats.BandFit] = {}
    if cohort.has_alternative:
        for k in ("aki", "aki_stage2plus"):
            if f"sens_{k}" in f:
                sensitivity[k] = stats.band_odds_ratios(f.assign(**{k: f[f"sens_{k}"]}), k, cohort.bands,
                                                        config.covariates, config.ci_level, me)
    tick("logistic", t0)
    t0 = time.perf_counter()
    ref = next(b for b in cohort.bands if b.reference)
    ref_mg = ((ref.lower or 0.0) + (ref.upper or 0.0)) / 2 if ref.lower is not None and ref.upper is not None \
        else float(np.median(f["admission_mg"]))
    spline = stats.spline_curve(f, o, config.knot_quantiles(), ref_mg, config.covariates, config.ci_level)
    tick("spline", t0)
    t0 = time.perf_counter()
    rocs = []
    y = f[o].astype("Float64")
    ok = y.notna().to_numpy()
    n_ev = int(y[ok].sum())
    if min(n_ev, int(ok.sum()) - n_ev) < me:
        notes.append(f"ROC not estimable: {n_ev} events and {int(ok.sum()) - n_ev} non-events (minimum {me} each)")
    else:
        try:
            rocs.append(stats.roc_youden("admission Mg, lower = positive (monotone)", y[ok].to_numpy(int),
                                         f.loc[ok, "admission_mg"].to_numpy(float), "low", config.bootstrap_reps,
                                         config.seed, config.ci_level))
            score, sok = stats.spline_score(f, o, config.knot_quantiles())
            rocs.append(stats.roc_youden("admission Mg, U-shaped: crude spline risk (in-sample, optimistic)",
                                         y[sok].to_numpy(int), score, "high", config.bootstrap_reps, config.seed,
                                         config.ci_level))
        except ValueError as exc:
            notes.append(str(exc))
    tick("roc", t0)
    t0 = time.perf_counter()
    rr = kb.magnesium.reference_range
    lo, hi = (convert(x, "magnesium", rr.unit, "mg/dL") for x in (rr.low, rr.high))
    later = _later_exposures(f)
    if config.time_varying_cox:
        cox, cox_notes = coxmod.cox_time_varying(cohort.time_varying, f, lo, hi, config.covariates, config.ci_level,
                                                 later=later, min_events=me)
        cox_cont, cont_notes = coxmod.cox_time_varying(cohort.time_varying, f, lo, hi, config.covariates,
                                                       config.ci_level, continuous_mg=True, min_events=me)
        cox_notes += [f"continuous Mg model: {n}" for n in cont_notes]
    else:
        cox = cox_cont = pd.DataFrame(columns=["term", "hr", "lo", "hi", "p"])
        cox_notes = ["time-varying Cox not requested"]
    tick("cox", t0)
    t0 = time.perf_counter()
    competing = _competing(f, cohort, config)
    tick("competing", t0)
    t0 = time.perf_counter()
    pred = run_prediction(con, f, config) if config.prediction else None
    tick("prediction", t0)
    t0 = time.perf_counter()
    trials = _target_trial(con, results, config, kb, lo) if config.target_trial.enabled else []
    tick("target_trial", t0)
    n_tests = len(config.outcomes) * (len(cohort.bands) - 1)
    notes.append(f"Multiplicity: {len(config.outcomes)} outcomes x {len(cohort.bands) - 1} non-reference bands = "
                 f"{n_tests} band comparisons (crude and adjusted each), plus the spline, ROC, Cox and trial analyses. "
                 f"P-values and CIs are nominal, not adjusted; the primary outcome ({o}) is pre-specified and the "
                 f"others are secondary. A Bonferroni reading would need p < {0.05 / n_tests:.4f}.")
    return StudyResult(config, cohort, table1_html, crude, adjusted, spline, rocs, cox, cox_notes, seconds, notes,
                       pred, included=included, censoring=censoring, sensitivity=sensitivity, cox_continuous=cox_cont,
                       competing=competing, trials=trials)


def _later_exposures(f: pd.DataFrame) -> pd.DataFrame:
    """Per cohort row id: the hour each exposure starts after the index time (time-varying Cox terms)."""
    cols = {"icu_tv": "icu_later_hours", "nephrotoxic_tv": "nephrotoxic_later_hours",
            "context_tv": "context_later_hours"}
    return pd.DataFrame({k: f[v].to_numpy(float) for k, v in cols.items() if v in f}, index=np.arange(len(f)))


def _competing(f: pd.DataFrame, cohort: StudyCohort, config: StudyConfig) -> dict[str, object]:
    """Death competing with AKI: cause-specific HRs by band and Aalen-Johansen cumulative incidence by band."""
    from mgaki.research.survival import cumulative_incidence, risk_at

    horizon = config.akd_days * 24.0
    table, cs_notes = coxmod.cause_specific(f, cohort.bands, config.covariates, config.ci_level, config.min_events)
    t, cause = coxmod.competing_times(f)
    rows, curves = [], []
    for b in cohort.bands:
        m = (f["mg_band"] == b.label).to_numpy()
        if not m.any():
            rows.append({"band": b.label, "n": 0, "AKI by 7 d": np.nan, "death before AKI by 7 d": np.nan})
            continue
        times, cif = cumulative_incidence(t[m], cause[m])
        rows.append({"band": b.label, "n": int(m.sum()), "AKI by 7 d": risk_at(times, cif[1], horizon),
                     "death before AKI by 7 d": risk_at(times, cif[2], horizon)})
        keep = times <= horizon
        curves.append(pd.DataFrame({"hours": times[keep], "risk": cif[1][keep], "band": b.label}))
    return {"cause_specific": table, "notes": cs_notes, "cif": pd.DataFrame(rows),
            "curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
            "horizon_hours": horizon}


def _target_trial(con: duckdb.DuckDBPyConnection, results: dict[str, pa.Table], config: StudyConfig,
                  kb: KnowledgeBase, low_mg: float) -> list[object]:
    from mgaki.research.target_trial import emulate, extract_trial

    eps = results["aki_episodes"] if config.outcome_definition == "creatinine+urine" or ALTERNATIVE not in results \
        else results[ALTERNATIVE]
    frame = extract_trial(con, eps, config, kb)
    out: list[object] = [emulate(frame, config, "hypomagnesaemia", config.min_events, low_mg)]
    for pop in config.target_trial.populations:
        out.append(emulate(frame, config, pop, config.min_events, low_mg))
    return out


def write_outputs(result: StudyResult, out: Path) -> dict[str, Path]:
    """cohort.parquet, summary.json, figures/*.png and report.html under ``out``."""
    import json

    from mgaki.research.report import render_report

    out.mkdir(parents=True, exist_ok=True)
    paths = {"cohort": out / "cohort.parquet", "summary": out / "summary.json"}
    frame = result.cohort.frame.copy()
    frame["mg_band"] = frame["mg_band"].astype("string")
    frame.to_parquet(paths["cohort"], index=False)
    paths["summary"].write_text(json.dumps(result.summary(), indent=1, default=str) + "\n", encoding="utf-8")
    if result.prediction is not None and result.prediction.fits:
        paths.update(save_models(result.prediction, out / "models"))
    paths.update(render_report(result, out))
    return paths

