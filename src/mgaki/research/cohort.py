"""Study cohort from the canonical event tables and the surveillance outputs, as portable SQL stages.

One row per hospital admission with the flags every inclusion/exclusion step
needs, the exposures (admission Mg, its band, time-weighted mean Mg), the
covariates and the outcomes; the cohort flow is counted from those flags, so a
changed criterion changes the flow and the analysis set together. The
time-varying table for the Cox model (Mg as a step function until AKI or
discharge) comes from the same admissions.

The stages are written once (`cohort_stages`) in the SQL both DuckDB and Spark
run, through the surveillance dialect layer; `build_cohort(engine=...)` runs
them on either. Only the reduced results reach the driver: the analysis cohort
(one row per admission), the flow counts (one row) and the time-varying table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from mgaki.errors import InputError
from mgaki.events.schema import DEATH
from mgaki.knowledge import KnowledgeBase, load
from mgaki.research._config import Band, StudyConfig, bands
from mgaki.surveillance.dialect import DUCKDB, SPARK, Dialect
from mgaki.surveillance.stages import Stage

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from mgaki.surveillance.spark import Source

__all__ = ["ADMISSIONS_SQL", "ALTERNATIVE", "Engine", "FlowStep", "StudyCohort", "band_case_sql", "build_cohort",
           "cohort_stages", "connect_tables", "spark_tables"]

Engine = Literal["duckdb", "spark"]
_H = 3600.0
_RESULTS = ("mg_trajectory", "aki_episodes", "kdigo_creatinine")
ALTERNATIVE = "aki_episodes_creatinine"  # surveillance's episodes without urine output (run(exclude_analytes=...))
_SENS = ("aki_onset_hours", "aki_peak_stage", "aki", "aki_stage2plus", "aki_over_48h", "akd_7d", "non_recovery")
_TABLES = ("subjects", "encounters", "events", "medications", "contexts")
# the analysis frame's columns, in order (the stages also carry the flow flags and a row id)
_COLUMNS = ("subject_id", "encounter_id", "start", "end", "sex", "age", "admission_mg_any", "mg_time",
            "admission_mg", "twa_mg", "min_mg", "mg_measurements", "admission_creatinine", "has_creatinine",
            "index_hours", "aki_at_entry", "rrt_at_entry", "icu", "icu_any", "icu_later_hours", "context",
            "context_later_hours", "nephrotoxic", "nephrotoxic_later_hours", "stay_hours", "aki_onset_hours",
            "aki_peak_stage", "aki", "aki_stage2plus", "aki_over_48h", "akd_7d", "non_recovery",
            "aki_duration_hours", "aki_all_recovered", "death", "death_hours", "egfr", "mg_band",
            *(f"sens_{c}" for c in _SENS))
# what the excluded admissions are compared on (STROBE: included vs excluded)
_ALL_COLUMNS = ("sex", "age", "admission_mg_any", "admission_creatinine", "has_creatinine", "icu_any", "aki",
                "death", "stay_hours")


# the hospital admissions (not ICU stays), each an encounter's latest record version (the closed one wins)
ADMISSIONS_SQL = """
    SELECT subject_id, encounter_id, start, "end" FROM (
      SELECT subject_id, encounter_id, start, "end", row_number() OVER (PARTITION BY subject_id, encounter_id
        ORDER BY "end" IS NULL, "end" DESC, start) AS rn
      FROM encounters WHERE kind <> 'icu' AND parent_id IS NULL) x
    WHERE rn = 1"""


@dataclass(frozen=True)
class FlowStep:
    """One box of the cohort flow diagram: who is left, and who this step removed."""

    label: str
    remaining: int
    excluded: int


@dataclass
class StudyCohort:
    frame: pd.DataFrame  # one row per admission of the analysis cohort
    flow: list[FlowStep]
    time_varying: pd.DataFrame  # (id, start, stop, mg, event) intervals in hours since admission
    bands: tuple[Band, ...]
    all_admissions: int
    admissions: pd.DataFrame = field(default_factory=pd.DataFrame)  # every admission: _ALL_COLUMNS, first_failed
    has_alternative: bool = False  # the sens_* columns (the other outcome definition) are filled


def connect_tables(tables: dict[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose views are the given canonical tables (an in-memory 'store')."""
    con = duckdb.connect()
    for name in _TABLES:
        if name not in tables:
            raise InputError("study", f"the canonical table {name!r} is missing")
        con.register(name, tables[name])
    return con


def spark_tables(spark: SparkSession, tables: Mapping[str, Source]) -> None:
    """The canonical tables the cohort reads as temp views of `spark` (Arrow tables or Parquet paths/URLs)."""
    from mgaki.surveillance.spark import SESSION_CONF, _frame

    for k, v in SESSION_CONF.items():
        spark.conf.set(k, v)
    for name in _TABLES:
        if name not in tables:
            raise InputError("study", f"the canonical table {name!r} is missing")
        _frame(spark, name, tables[name]).createOrReplaceTempView(name)


def band_case_sql(col: str, bs: tuple[Band, ...], d: Dialect = DUCKDB) -> str:
    """CASE expression mapping an Mg column (mg/dL) to its band label, with each band's own bounds."""
    whens = []
    for b in bs:
        conds = []
        if b.lower is not None:
            conds.append(f"{col} {'>=' if b.lower_inclusive else '>'} {d.double(b.lower)}")
        if b.upper is not None:
            conds.append(f"{col} {'<=' if b.upper_inclusive else '<'} {d.double(b.upper)}")
        whens.append(f"WHEN {' AND '.join(conds)} THEN {_lit(b.label)}")
    return f"CASE {' '.join(whens)} END"


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _egfr_sql(kb: KnowledgeBase, d: Dialect) -> str:
    """CKD-EPI 2021 (race-free) in SQL, coefficients from kidney.yaml by id, as engine.kidney.ckd_epi_2021.

    NULL without a creatinine or a known sex: least/greatest skip NULLs on both engines, so the bare
    formula would give a creatinine-free 'eGFR' (142 x 0.9938^age) and the male one for unknown sex.
    """
    def c(cid: str) -> str:
        return d.double(kb.coefficient(cid))
    k = f"CASE WHEN sex = 'female' THEN {c('ckdepi_kappa_female')} ELSE {c('ckdepi_kappa_male')} END"
    a = f"CASE WHEN sex = 'female' THEN {c('ckdepi_alpha_female')} ELSE {c('ckdepi_alpha_male')} END"
    one = d.double(1.0)
    return (f"CASE WHEN admission_creatinine IS NOT NULL AND sex IN ('female', 'male') THEN "
            f"{c('ckdepi_const')} * pow(least(admission_creatinine / ({k}), {one}), {a})"
            f" * pow(greatest(admission_creatinine / ({k}), {one}), {c('ckdepi_exp_high')})"
            f" * pow({c('ckdepi_age_base')}, age)"
            f" * CASE WHEN sex = 'female' THEN {c('ckdepi_female')} ELSE {one} END END")


def _flow_steps(cfg: StudyConfig, d: Dialect) -> list[tuple[str, str]]:
    """The criteria in order, each (label, SQL condition over one admission row; NULL counts as not met)."""
    steps: list[tuple[str, str]] = []
    win = f"{cfg.admission_window_hours:g}"
    if cfg.min_age_years is not None:
        steps.append((f"age >= {cfg.min_age_years:g} years (age and sex known)",
                      f"age >= {d.double(cfg.min_age_years)} AND sex IN ('female', 'male')"))
    steps.append((f"admission Mg within {win} h", "admission_mg IS NOT NULL"))
    if cfg.require_creatinine:
        steps.append((f"admission creatinine within {win} h", "admission_creatinine IS NOT NULL"))
    if cfg.exclude_rrt_at_entry:
        steps.append(("no RRT at entry", "NOT rrt_at_entry"))
    if cfg.exclude_egfr_below is not None:  # an unknown eGFR is not a reason to exclude here
        steps.append((f"admission eGFR >= {cfg.exclude_egfr_below:g} (no kidney failure at entry)",
                      f"NOT coalesce(egfr < {d.double(cfg.exclude_egfr_below)}, false)"))
    if cfg.exclude_aki_at_entry:
        steps.append(("no AKI at entry (first creatinine, or onset before the index time)", "NOT aki_at_entry"))
    return steps


def _outcome_sql(eps: str, prefix: str, persistent: str, akd: str, h: str, ep: Callable[[str], str]) -> str:
    """The AKI outcome columns of one definition's episode summary CTE (``eps``), names prefixed."""
    e = ep  # the dialect's epoch function
    return f"""
      ({e(f'{eps}.aki_onset')} - {e('a.start')}) / {h} AS {prefix}aki_onset_hours,
      coalesce({eps}.peak_stage, 0) AS {prefix}aki_peak_stage,
      {eps}.subject_id IS NOT NULL AS {prefix}aki,
      coalesce({eps}.peak_stage, 0) >= 2 AS {prefix}aki_stage2plus,
      CASE WHEN {eps}.subject_id IS NULL THEN false
           WHEN {eps}.longest_s > {persistent} THEN true
           WHEN {eps}.all_recovered THEN false END AS {prefix}aki_over_48h,
      CASE WHEN {eps}.subject_id IS NULL THEN false
           WHEN {eps}.longest_s >= {akd} THEN true
           WHEN {eps}.all_recovered THEN false END AS {prefix}akd_7d,
      coalesce({eps}.any_unrecovered, false) AS {prefix}non_recovery"""


def cohort_stages(config: StudyConfig, kb: KnowledgeBase, d: Dialect,
                  has_alternative: bool = True) -> tuple[list[Stage], list[str]]:
    """The cohort's SQL stages for one engine's dialect, and the flow step labels.

    Reads the canonical tables (subjects, encounters, events, medications, contexts) and the
    surveillance outputs (mg_trajectory, aki_episodes, aki_episodes_creatinine, kdigo_creatinine).
    The index time (time zero) is when the admission Mg and creatinine are both known: the later of the
    two within the admission window. Covariates are read in look-back windows ending there; ICU stays,
    nephrotoxic drugs and contexts starting later are returned as times for the time-varying Cox model.
    Outcomes follow ``config.outcome_definition``; the other definition's outcomes are the ``sens_*``
    columns (NULL when ``has_alternative`` is false). Stages: ``study_admissions`` (every admission, its
    exposures, outcomes, eGFR, band and cumulative inclusion flags ``_in1..``), ``study_flow`` (one row of
    counts), ``study_cohort`` (the admissions that pass every step, with a row id) and ``study_tv`` (Mg
    step intervals of the cohort from the index time).
    """
    ep = d.epoch_exact
    f = d.double
    bs = bands(config.band_study)
    nephro = sorted({x.ingredient for x in kb.drugs.drugs if x.nephrotoxic})
    nephro_in = f"m.drug IN ({', '.join(_lit(n) for n in nephro)})" if nephro else "false"
    win = f(config.admission_window_hours * _H)
    persistent = f(config.persistent_aki_hours * _H)
    akd = f(config.akd_days * 24 * _H)
    rrt_after, rrt_before = f(config.rrt_entry_hours * _H), f(config.rrt_prior_days * 24 * _H)
    h = f(_H)
    l_icu, l_neph, l_ctx = (f(x * _H) for x in (config.lookback_icu_hours, config.lookback_nephrotoxic_hours,
                                                 config.lookback_context_hours))
    primary, other = (("aki_episodes", "aki_episodes_creatinine") if config.outcome_definition == "creatinine+urine"
                      else ("aki_episodes_creatinine", "aki_episodes"))

    def on(x: str) -> str:
        return f"a.subject_id = {x}.subject_id AND a.encounter_id = {x}.encounter_id"

    def in_adm(t: str) -> str:  # a row of the subject timed within the admission (x = the admission)
        return f"{t} BETWEEN x.start AND coalesce(x.\"end\", {t})"

    def episodes(table: str) -> str:
        return f"""
      SELECT e.subject_id, e.encounter_id, min(e.onset) AS aki_onset, max(e.peak_stage) AS peak_stage,
        bool_or(NOT e.recovered) AS any_unrecovered,
        max({ep('coalesce(e.recovery, a."end", o.t)')} - {ep('e.onset')}) AS longest_s,
        bool_and(e.recovered) AS all_recovered
      FROM {table} e JOIN adm a ON {on('e')} CROSS JOIN as_of_t o
      GROUP BY e.subject_id, e.encounter_id"""

    # first-by-time picks are row_number() = 1 with every column in the order (ties resolved the same way
    # on both engines); the admission is an encounter's latest record version
    base = f"""
    WITH adm AS ({ADMISSIONS_SQL}),
    as_of_t AS (SELECT greatest(max(time), (SELECT max(coalesce("end", start)) FROM encounters)) AS t FROM events),
    subj AS (SELECT subject_id, min(sex) AS sex, min(birth_year) AS birth_year FROM subjects GROUP BY subject_id),
    cr AS (
      SELECT subject_id, encounter_id, value AS cr_first, time AS cr_time, stage AS cr_first_stage FROM (
        SELECT subject_id, encounter_id, value, time, stage, row_number() OVER (
          PARTITION BY subject_id, encounter_id ORDER BY time, value, stage) AS rn
        FROM kdigo_creatinine) x
      WHERE rn = 1),
    ix AS (
      SELECT a.subject_id, a.encounter_id, a.start, a."end",
        CASE WHEN {ep('t.first_time')} - {ep('a.start')} <= {win} THEN
          CASE WHEN {ep('cr.cr_time')} - {ep('a.start')} <= {win} AND cr.cr_time > t.first_time
               THEN cr.cr_time ELSE t.first_time END END AS index_time
      FROM adm a LEFT JOIN mg_trajectory t ON {on('t')} LEFT JOIN cr ON {on('cr')}),
    rrt AS (SELECT DISTINCT a.subject_id, a.encounter_id FROM adm a JOIN events e
            ON e.subject_id = a.subject_id AND e.analyte = 'rrt'
            AND {ep('e.time')} - {ep('a.start')} BETWEEN -{rrt_before} AND {rrt_after}),
    icu AS (
      SELECT x.subject_id, x.encounter_id,
        max(CASE WHEN i.start <= x.index_time
                  AND {ep('coalesce(i."end", x.index_time)')} >= {ep('x.index_time')} - {l_icu} THEN 1 ELSE 0 END)
          AS at_index,
        max(CASE WHEN i.parent_id = x.encounter_id OR {in_adm('i.start')} THEN 1 ELSE 0 END) AS any_stay,
        min(CASE WHEN i.start > x.index_time AND (i.parent_id = x.encounter_id OR {in_adm('i.start')})
                 THEN ({ep('i.start')} - {ep('x.start')}) / {h} END) AS later_h
      FROM ix x JOIN encounters i ON i.subject_id = x.subject_id AND i.kind = 'icu'
      GROUP BY x.subject_id, x.encounter_id),
    ctx AS (
      SELECT subject_id, encounter_id, context FROM (
        SELECT x.subject_id, x.encounter_id, c.context, row_number() OVER (
          PARTITION BY x.subject_id, x.encounter_id ORDER BY c.time, c.context) AS rn
        FROM ix x JOIN contexts c ON c.subject_id = x.subject_id AND c.context <> 'icu'
          AND c.time <= x.index_time AND {ep('c.time')} >= {ep('x.index_time')} - {l_ctx}) y
      WHERE rn = 1),
    ctx_later AS (
      SELECT x.subject_id, x.encounter_id, min(({ep('c.time')} - {ep('x.start')}) / {h}) AS later_h
      FROM ix x JOIN contexts c ON c.subject_id = x.subject_id AND c.context <> 'icu' AND c.time > x.index_time
        AND (c.encounter_id = x.encounter_id OR {in_adm('c.time')})
      GROUP BY x.subject_id, x.encounter_id),
    neph AS (
      SELECT x.subject_id, x.encounter_id,
        max(CASE WHEN m.start <= x.index_time
                  AND {ep('coalesce(m."end", x.index_time)')} >= {ep('x.index_time')} - {l_neph} THEN 1 ELSE 0 END)
          AS at_index,
        min(CASE WHEN m.start > x.index_time AND (m.encounter_id = x.encounter_id OR {in_adm('m.start')})
                 THEN ({ep('m.start')} - {ep('x.start')}) / {h} END) AS later_h
      FROM ix x JOIN medications m ON m.subject_id = x.subject_id AND {nephro_in}
      GROUP BY x.subject_id, x.encounter_id),
    eps AS ({episodes(primary)}),
    alt AS ({episodes(other)}),
    dth AS (SELECT a.subject_id, a.encounter_id, min(d.time) AS time FROM adm a JOIN events d
            ON d.subject_id = a.subject_id AND d.analyte = '{DEATH}'
            AND (d.encounter_id = a.encounter_id OR d.time BETWEEN a.start AND coalesce(a."end", d.time))
            GROUP BY a.subject_id, a.encounter_id)
    SELECT a.subject_id, a.encounter_id, a.start, a."end",
      s.sex, CAST(year(a.start) - s.birth_year AS DOUBLE) AS age,
      t.first_mg AS admission_mg_any, t.first_time AS mg_time,
      CASE WHEN {ep('t.first_time')} - {ep('a.start')} <= {win} THEN t.first_mg END AS admission_mg,
      t.time_weighted_mean AS twa_mg, t.min_mg, t.n_measurements AS mg_measurements,
      CASE WHEN {ep('cr.cr_time')} - {ep('a.start')} <= {win} THEN cr.cr_first END AS admission_creatinine,
      cr.cr_time IS NOT NULL AS has_creatinine,
      ({ep('ix.index_time')} - {ep('a.start')}) / {h} AS index_hours,
      coalesce(cr.cr_first_stage, 0) >= 1 OR coalesce(eps.aki_onset <= ix.index_time, false) AS aki_at_entry,
      rrt.subject_id IS NOT NULL AS rrt_at_entry,
      coalesce(icu.at_index, 0) = 1 AS icu,
      coalesce(icu.any_stay, 0) = 1 AS icu_any,
      icu.later_h AS icu_later_hours,
      coalesce(ctx.context, 'none') AS context,
      ctx_later.later_h AS context_later_hours,
      coalesce(neph.at_index, 0) = 1 AS nephrotoxic,
      neph.later_h AS nephrotoxic_later_hours,
      ({ep('coalesce(a."end", o.t)')} - {ep('a.start')}) / {h} AS stay_hours,
      {_outcome_sql('eps', '', persistent, akd, h, ep)},
      eps.longest_s / {h} AS aki_duration_hours,
      eps.all_recovered AS aki_all_recovered,
      {_outcome_sql('alt', 'alt_', persistent, akd, h, ep)},
      dth.subject_id IS NOT NULL AS death,
      ({ep('dth.time')} - {ep('a.start')}) / {h} AS death_hours
    FROM adm a CROSS JOIN as_of_t o
    LEFT JOIN subj s ON s.subject_id = a.subject_id
    LEFT JOIN mg_trajectory t ON {on('t')}
    LEFT JOIN cr ON {on('cr')}
    LEFT JOIN ix ON {on('ix')}
    LEFT JOIN rrt ON {on('rrt')}
    LEFT JOIN icu ON {on('icu')}
    LEFT JOIN ctx ON {on('ctx')}
    LEFT JOIN ctx_later ON {on('ctx_later')}
    LEFT JOIN neph ON {on('neph')}
    LEFT JOIN eps ON {on('eps')}
    LEFT JOIN alt ON {on('alt')}
    LEFT JOIN dth ON {on('dth')}"""
    steps = _flow_steps(config, d)
    alt_cols = ", ".join(f"CASE WHEN {'true' if has_alternative else 'false'} THEN alt_{c} END AS sens_{c}"
                         for c in _SENS)
    scored = f"SELECT b.*, {_egfr_sql(kb, d)} AS egfr, {alt_cols} FROM ({base}) b"
    flags = []
    for i in range(1, len(steps) + 1):
        conds = " AND ".join(f"coalesce({c}, false)" for _, c in steps[:i])
        flags.append(f"{conds} AS _in{i}")
    admissions = f"SELECT s.*, {band_case_sql('admission_mg', bs, d)} AS mg_band, {', '.join(flags)} FROM ({scored}) s"
    counts = ", ".join(f"sum(CASE WHEN _in{i} THEN 1 ELSE 0 END) AS n{i}" for i in range(1, len(steps) + 1))
    flow = f"SELECT count(*) AS n0, {counts} FROM study_admissions"
    cols = ", ".join(f'"{c}"' for c in _COLUMNS)
    cohort = (f"SELECT {cols}, CAST(row_number() OVER (ORDER BY subject_id, start, encounter_id) - 1 AS BIGINT) AS _id "
              f"FROM study_admissions WHERE _in{len(steps)}")
    tv = f"""
    WITH mg AS (
      SELECT k._id AS id, ({ep('e.time')} - {ep('k.start')}) / {h} AS h, e.numeric_value AS mg,
             coalesce(k.aki_onset_hours, k.stay_hours) AS end_h, k.aki_onset_hours IS NOT NULL AS aki,
             k.index_hours AS idx
      FROM study_cohort k JOIN events e ON e.subject_id = k.subject_id AND e.analyte = 'magnesium'
        AND e.numeric_value IS NOT NULL AND e.time >= k.start),
    steps AS (SELECT id, h, avg(mg) AS mg, max(end_h) AS end_h, bool_or(aki) AS aki, max(idx) AS idx
              FROM mg WHERE h < end_h GROUP BY id, h),
    iv AS (SELECT id, h AS start, coalesce(lead(h) OVER (PARTITION BY id ORDER BY h), end_h) AS stop, mg, idx,
                  aki AND lead(h) OVER (PARTITION BY id ORDER BY h) IS NULL AS event
           FROM steps)
    SELECT id, greatest(start, idx) AS start, stop, mg, event FROM iv WHERE stop > greatest(start, idx)"""
    return ([Stage("study_admissions", admissions), Stage("study_flow", flow, output=True),
             Stage("study_cohort", cohort, output=True), Stage("study_tv", tv, output=True)],
            [label for label, _ in steps])


def build_cohort(con: duckdb.DuckDBPyConnection | SparkSession, results: Mapping[str, pa.Table],
                 config: StudyConfig | None = None, kb: KnowledgeBase | None = None,
                 engine: Engine = "duckdb") -> StudyCohort:
    """The analysis cohort, its flow and its time-varying Mg table (docs/research.md#cohort).

    `engine="duckdb"`: `con` is a DuckDB connection with the canonical tables as views
    (`connect_tables`, `EventStore.connect`). `engine="spark"`: `con` is a SparkSession with them as
    temp views (`spark_tables`); the same stages run there and only the reduced tables are collected.
    """
    config = config or StudyConfig()
    kb = kb or load()
    for name in _RESULTS:
        if name not in results:
            raise InputError("study", f"surveillance output {name!r} is missing (run mgaki surveil)")
    has_alt = ALTERNATIVE in results
    if not has_alt and config.outcome_definition == "creatinine":
        raise InputError("study", f"outcome_definition 'creatinine' needs the surveillance output {ALTERNATIVE!r} "
                                  "(surveillance run with exclude_analytes=URINE_ANALYTES)")
    results = {**results, ALTERNATIVE: results[ALTERNATIVE] if has_alt else results["aki_episodes"].slice(0, 0)}
    if engine == "duckdb":
        if not isinstance(con, duckdb.DuckDBPyConnection):
            raise InputError("study", "engine 'duckdb' needs a DuckDB connection")
        run: _Runner = _DuckRunner(con, results)
    elif engine == "spark":
        if isinstance(con, duckdb.DuckDBPyConnection):
            raise InputError("study", "engine 'spark' needs a SparkSession (canonical tables: spark_tables)")
        run = _SparkRunner(con, results)
    else:
        raise InputError("study", f"unknown engine {engine!r}: duckdb or spark")
    plan, labels = cohort_stages(config, kb, DUCKDB if engine == "duckdb" else SPARK, has_alt)
    bs = bands(config.band_study)
    try:
        for st in plan if config.time_varying_cox else plan[:-1]:
            run.stage(st)
        counts = run.frame("SELECT * FROM study_flow").iloc[0]
        cols = ", ".join(f'"{c}"' for c in _COLUMNS)
        cohort = run.frame(f"SELECT {cols} FROM study_cohort ORDER BY _id")
        flags = ", ".join(f"_in{i}" for i in range(1, len(labels) + 1))
        everyone = run.frame(f"SELECT {', '.join(_ALL_COLUMNS)}, {flags} FROM study_admissions "
                             "ORDER BY subject_id, start, encounter_id")
        tv = run.frame("SELECT * FROM study_tv ORDER BY id, start") \
            if config.time_varying_cox and len(cohort) else _empty_tv()
    finally:
        run.close()
    cohort["mg_band"] = pd.Categorical(cohort["mg_band"], categories=[b.label for b in bs], ordered=True)
    n = [int(counts[f"n{i}"]) for i in range(len(labels) + 1)]
    flow = [FlowStep("hospital admissions", n[0], 0)]
    flow += [FlowStep(label, n[i], n[i - 1] - n[i]) for i, label in enumerate(labels, 1)]
    tv["event"] = tv["event"].astype(bool)
    # each admission's first failed step (0 = included), for the included-vs-excluded comparison
    failed = np.zeros(len(everyone), np.int64)
    for i in range(len(labels), 0, -1):
        failed = np.where(~everyone[f"_in{i}"].astype(bool), i, failed)
    everyone = everyone.drop(columns=[f"_in{i}" for i in range(1, len(labels) + 1)]).assign(first_failed=failed)
    return StudyCohort(cohort, flow, tv, bs, n[0], everyone, has_alt)


class _Runner:
    def stage(self, st: Stage) -> None:
        raise NotImplementedError

    def frame(self, sql: str) -> pd.DataFrame:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _DuckRunner(_Runner):
    """Stages as temp tables of the caller's connection, dropped afterwards (the results stay registered)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, results: Mapping[str, pa.Table]) -> None:
        self.con = con
        self.made: list[str] = []
        for name in (*_RESULTS, ALTERNATIVE):
            con.register(name, results[name])

    def stage(self, st: Stage) -> None:
        self.con.execute(f'CREATE OR REPLACE TEMP TABLE "{st.name}" AS {st.sql}')
        self.made.append(st.name)

    def frame(self, sql: str) -> pd.DataFrame:
        return self.con.sql(sql).df()

    def close(self) -> None:
        for name in self.made:
            self.con.execute(f'DROP TABLE IF EXISTS "{name}"')


class _SparkRunner(_Runner):
    """Stages as locally checkpointed temp views; a collected result is turned into pandas by DuckDB,
    so both engines' frames have the same dtypes."""

    def __init__(self, spark: SparkSession, results: Mapping[str, pa.Table]) -> None:
        from mgaki.surveillance.spark import SESSION_CONF

        self.spark = spark
        self.made: list[str] = []
        for k, v in SESSION_CONF.items():
            spark.conf.set(k, v)
        for name in (*_RESULTS, ALTERNATIVE):
            spark.createDataFrame(results[name]).createOrReplaceTempView(name)
            self.made.append(name)

    def stage(self, st: Stage) -> None:
        self.spark.sparkContext.setJobDescription(f"mgaki {st.name}")
        self.spark.sql(st.sql).localCheckpoint(eager=True).createOrReplaceTempView(st.name)
        self.made.append(st.name)

    def frame(self, sql: str) -> pd.DataFrame:
        conv = duckdb.connect()
        try:
            conv.register("collected", self.spark.sql(sql).toArrow())
            return conv.sql("SELECT * FROM collected").df()
        finally:
            conv.close()

    def close(self) -> None:
        self.spark.sparkContext.setJobDescription(None)  # type: ignore[arg-type]  # pyspark resets on None
        for name in self.made:
            self.spark.catalog.dropTempView(name)


def _empty_tv() -> pd.DataFrame:
    return pd.DataFrame({"id": pd.Series(dtype=int), "start": pd.Series(dtype=float),
                         "stop": pd.Series(dtype=float), "mg": pd.Series(dtype=float),
                         "event": pd.Series(dtype=bool)})
