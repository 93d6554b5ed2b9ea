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
from mgaki.research.cohort import Engine, StudyCohort, build_cohort, connect_tables
from mgaki.research.predict import run_prediction, save_models
from mgaki.research.provenance import versions
from mgaki.research.results import StudyResult
from mgaki.units import convert

__all__ = ["STAGES", "StudyResult", "run_study", "study_store", "versions", "write_outputs"]

STAGES = ("surveillance", "cohort", "table1", "logistic", "spline", "roc", "cox", "prediction")
Progress = Callable[[str, int, int], None]


def study_store(store: EventStore, config: StudyConfig | None = None, progress: Progress | None = None,
                kb: KnowledgeBase | None = None, engine: Engine = "duckdb",
                spark_master: str = "local[*]") -> StudyResult:
    """The whole study over an event store: surveillance is computed fresh (full run) from its events.

    `engine="spark"` runs surveillance and the cohort stages on Spark (`spark_master`, local mode by
    default) from the store's Parquet files; the statistics after the cohort run here, as for DuckDB.
    """
    from mgaki.surveillance import run

    kb = kb or load()
    if engine == "spark":
        return _study_spark(store, config, progress, kb, spark_master)
    t0 = time.perf_counter()
    res = run(store, kb=kb)
    took = time.perf_counter() - t0
    if progress:
        progress("surveillance", 1, len(STAGES))
    con = store.connect()
    try:
        out = run_study(con, res.tables, config, progress, kb)
    finally:
        con.close()
    out.seconds = {"surveillance": took, **out.seconds}
    return out


def _study_spark(store: EventStore, config: StudyConfig | None, progress: Progress | None, kb: KnowledgeBase,
                 master: str) -> StudyResult:
    """Surveillance and cohort extraction on Spark; only the reduced cohort tables come to the driver."""
    import tempfile

    from mgaki.research.cohort import spark_tables
    from mgaki.surveillance.spark import CANONICAL, run_spark, session

    config = config or StudyConfig()
    spark = session(master, app="mgaki-study")
    with tempfile.TemporaryDirectory() as scratch:
        files = store.visible_files((*CANONICAL, "subjects"), Path(scratch))
        t0 = time.perf_counter()
        res = run_spark({k: files[k] for k in CANONICAL}, spark, kb=kb,
                        outputs=("kdigo_creatinine", "aki_episodes_out", "mg_trajectory"))
        took = time.perf_counter() - t0
        if progress:
            progress("surveillance", 1, len(STAGES))
        t0 = time.perf_counter()
        spark_tables(spark, files)
        cohort = build_cohort(spark, res.tables, config, kb, engine="spark")
    con = store.connect()
    try:
        out = run_study(con, res.tables, config, progress, kb, cohort=cohort, cohort_started=t0)
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
    notes = [
        "Missing data: complete-case analysis; each model's n and the number of admissions it left out are shown.",
        "Death = in-hospital death: a MEDS_DEATH events row naming the admission or timed within it "
        "(admission start to end, inclusive); deaths after discharge are not seen.",
        "Time-weighted mean Mg covers the whole admission, including time after AKI onset: it is descriptive, "
        "not a pre-outcome exposure.",
    ]
    if len(f) == 0:
        raise ValueError("the study cohort is empty after inclusion/exclusion: see the cohort flow")
    t0 = time.perf_counter()
    table1_html, _ = stats.table_one(f, o)
    tick("table1", t0)
    t0 = time.perf_counter()
    crude = {k: stats.band_odds_ratios(f, k, cohort.bands, (), config.ci_level) for k in config.outcomes}
    adjusted = {k: stats.band_odds_ratios(f, k, cohort.bands, config.covariates, config.ci_level)
                for k in config.outcomes}
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
    for name, direction in (("admission Mg (lower = positive)", "low"), ("admission Mg (higher = positive)", "high")):
        try:
            rocs.append(stats.roc_youden(name, y[ok].to_numpy(int), f.loc[ok, "admission_mg"].to_numpy(float),
                                         direction, config.bootstrap_reps, config.seed, config.ci_level))
        except ValueError as exc:
            notes.append(str(exc))
    tick("roc", t0)
    t0 = time.perf_counter()
    rr = kb.magnesium.reference_range
    lo, hi = (convert(x, "magnesium", rr.unit, "mg/dL") for x in (rr.low, rr.high))
    if config.time_varying_cox:
        cox, cox_notes = coxmod.cox_time_varying(cohort.time_varying, f, lo, hi, config.covariates, config.ci_level)
    else:
        cox, cox_notes = pd.DataFrame(columns=["term", "hr", "lo", "hi", "p"]), ["time-varying Cox not requested"]
    tick("cox", t0)
    t0 = time.perf_counter()
    pred = run_prediction(con, f, config) if config.prediction else None
    tick("prediction", t0)
    return StudyResult(config, cohort, table1_html, crude, adjusted, spline, rocs, cox, cox_notes, seconds, notes,
                       pred)


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

