"""Study cohort from the canonical event tables and the surveillance outputs (one SQL pass in DuckDB).

One row per hospital admission with the flags every inclusion/exclusion step
needs, the exposures (admission Mg, its band, time-weighted mean Mg), the
covariates and the outcomes; the cohort flow is counted from those flags, so a
changed criterion changes the flow and the analysis set together. The
time-varying table for the Cox model (Mg as a step function until AKI or
discharge) comes from the same admissions.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from mgaki.errors import InputError
from mgaki.events.schema import DEATH
from mgaki.knowledge import KnowledgeBase, load
from mgaki.research._config import Band, StudyConfig, bands

__all__ = ["FlowStep", "StudyCohort", "band_case_sql", "build_cohort", "connect_tables"]

_H = 3600.0
_RESULTS = ("mg_trajectory", "aki_episodes", "kdigo_creatinine")
_TABLES = ("subjects", "encounters", "events", "medications", "contexts")


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


def connect_tables(tables: dict[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose views are the given canonical tables (an in-memory 'store')."""
    con = duckdb.connect()
    for name in _TABLES:
        if name not in tables:
            raise InputError("study", f"the canonical table {name!r} is missing")
        con.register(name, tables[name])
    return con


def band_case_sql(col: str, bs: tuple[Band, ...]) -> str:
    """CASE expression mapping an Mg column (mg/dL) to its band label, with each band's own bounds."""
    whens = []
    for b in bs:
        conds = []
        if b.lower is not None:
            conds.append(f"{col} {'>=' if b.lower_inclusive else '>'} {b.lower!r}")
        if b.upper is not None:
            conds.append(f"{col} {'<=' if b.upper_inclusive else '<'} {b.upper!r}")
        whens.append(f"WHEN {' AND '.join(conds)} THEN '{b.label}'")
    return f"CASE {' '.join(whens)} END"


def _egfr_sql(kb: KnowledgeBase) -> str:
    """CKD-EPI 2021 (race-free) in SQL, coefficients from kidney.yaml by id, as engine.kidney.ckd_epi_2021."""
    c = kb.coefficient
    k = f"CASE WHEN sex = 'female' THEN {c('ckdepi_kappa_female')!r} ELSE {c('ckdepi_kappa_male')!r} END"
    a = f"CASE WHEN sex = 'female' THEN {c('ckdepi_alpha_female')!r} ELSE {c('ckdepi_alpha_male')!r} END"
    return (f"{c('ckdepi_const')!r} * pow(least(admission_creatinine / ({k}), 1.0), {a})"
            f" * pow(greatest(admission_creatinine / ({k}), 1.0), {c('ckdepi_exp_high')!r})"
            f" * pow({c('ckdepi_age_base')!r}, age)"
            f" * CASE WHEN sex = 'female' THEN {c('ckdepi_female')!r} ELSE 1.0 END")


def build_cohort(con: duckdb.DuckDBPyConnection, results: dict[str, pa.Table], config: StudyConfig | None = None,
                 kb: KnowledgeBase | None = None) -> StudyCohort:
    """The analysis cohort, its flow and its time-varying Mg table (docs/research.md#cohort)."""
    config = config or StudyConfig()
    kb = kb or load()
    for name in _RESULTS:
        if name not in results:
            raise InputError("study", f"surveillance output {name!r} is missing (run mgaki surveil)")
        con.register(name, results[name])
    bs = bands(config.band_study)
    nephro = sorted({d.ingredient for d in kb.drugs.drugs if d.nephrotoxic})
    con.register("nephro", pa.table({"drug": pa.array(nephro, pa.string())}))
    win = config.admission_window_hours * _H
    persistent = config.persistent_aki_hours * _H
    akd = config.akd_days * 24 * _H
    rrt_after, rrt_before = config.rrt_entry_hours * _H, config.rrt_prior_days * 24 * _H
    sql = f"""
    WITH adm AS (
      SELECT subject_id, encounter_id, start, "end" FROM encounters
      WHERE kind <> 'icu' AND parent_id IS NULL
      QUALIFY row_number() OVER (PARTITION BY subject_id, encounter_id ORDER BY "end" IS NULL, "end" DESC) = 1),
    as_of_t AS (SELECT greatest(max(time), (SELECT max(coalesce("end", start)) FROM encounters)) AS t FROM events),
    subj AS (SELECT subject_id, any_value(sex) AS sex, any_value(birth_year) AS birth_year
             FROM subjects GROUP BY subject_id),
    cr AS (SELECT subject_id, encounter_id, arg_min(value, time) AS cr_first, min(time) AS cr_time,
                  arg_min(stage, time) AS cr_first_stage
           FROM kdigo_creatinine GROUP BY subject_id, encounter_id),
    rrt AS (SELECT DISTINCT a.subject_id, a.encounter_id FROM adm a JOIN events e
            ON e.subject_id = a.subject_id AND e.analyte = 'rrt'
            AND epoch(e.time) - epoch(a.start) BETWEEN -{rrt_before} AND {rrt_after}),
    icu AS (SELECT DISTINCT subject_id, parent_id AS encounter_id FROM encounters WHERE kind = 'icu'),
    ctx AS (SELECT a.subject_id, a.encounter_id, arg_min(c.context, c.time) AS context
            FROM adm a JOIN contexts c ON c.subject_id = a.subject_id AND c.context <> 'icu'
              AND (c.encounter_id = a.encounter_id OR c.time BETWEEN a.start AND coalesce(a."end", c.time))
            GROUP BY a.subject_id, a.encounter_id),
    neph AS (SELECT DISTINCT a.subject_id, a.encounter_id FROM adm a JOIN medications m
             ON m.subject_id = a.subject_id AND m.drug IN (SELECT drug FROM nephro)
             AND (m.encounter_id = a.encounter_id OR m.start BETWEEN a.start AND coalesce(a."end", m.start))),
    eps AS (
      SELECT e.subject_id, e.encounter_id, min(e.onset) AS aki_onset, max(e.peak_stage) AS peak_stage,
        bool_or(NOT e.recovered) AS any_unrecovered,
        max(epoch(coalesce(e.recovery, a."end", (SELECT t FROM as_of_t))) - epoch(e.onset)) AS longest_s,
        bool_and(e.recovered) AS all_recovered,
        max(CASE WHEN e.recovered THEN epoch(e.recovery) - epoch(e.onset) END) AS longest_recovered_s
      FROM aki_episodes e JOIN adm a USING (subject_id, encounter_id)
      GROUP BY e.subject_id, e.encounter_id),
    dth AS (SELECT DISTINCT a.subject_id, a.encounter_id FROM adm a JOIN events d
            ON d.subject_id = a.subject_id AND d.analyte = '{DEATH}'
            AND (d.encounter_id = a.encounter_id OR d.time BETWEEN a.start AND coalesce(a."end", d.time)))
    SELECT a.subject_id, a.encounter_id, a.start, a."end",
      s.sex, CAST(year(a.start) - s.birth_year AS DOUBLE) AS age,
      t.first_mg AS admission_mg_any, t.first_time AS mg_time,
      CASE WHEN epoch(t.first_time) - epoch(a.start) <= {win} THEN t.first_mg END AS admission_mg,
      t.time_weighted_mean AS twa_mg, t.min_mg, t.n_measurements AS mg_measurements,
      CASE WHEN epoch(cr.cr_time) - epoch(a.start) <= {win} THEN cr.cr_first END AS admission_creatinine,
      cr.cr_time IS NOT NULL AS has_creatinine,
      coalesce(cr.cr_first_stage, 0) >= 1 AS aki_at_entry,
      rrt.subject_id IS NOT NULL AS rrt_at_entry,
      icu.subject_id IS NOT NULL AS icu,
      coalesce(ctx.context, 'none') AS context,
      neph.subject_id IS NOT NULL AS nephrotoxic,
      (epoch(coalesce(a."end", (SELECT t FROM as_of_t))) - epoch(a.start)) / {_H} AS stay_hours,
      (epoch(eps.aki_onset) - epoch(a.start)) / {_H} AS aki_onset_hours,
      coalesce(eps.peak_stage, 0) AS aki_peak_stage,
      eps.subject_id IS NOT NULL AS aki,
      coalesce(eps.peak_stage, 0) >= 2 AS aki_stage2plus,
      CASE WHEN eps.subject_id IS NULL THEN false
           WHEN eps.longest_s > {persistent} THEN true
           WHEN eps.all_recovered THEN false END AS aki_over_48h,
      CASE WHEN eps.subject_id IS NULL THEN false
           WHEN eps.longest_s >= {akd} THEN true
           WHEN eps.all_recovered THEN false END AS akd_7d,
      coalesce(eps.any_unrecovered, false) AS non_recovery,
      dth.subject_id IS NOT NULL AS death
    FROM adm a
    LEFT JOIN subj s USING (subject_id)
    LEFT JOIN mg_trajectory t USING (subject_id, encounter_id)
    LEFT JOIN cr USING (subject_id, encounter_id)
    LEFT JOIN rrt USING (subject_id, encounter_id)
    LEFT JOIN icu USING (subject_id, encounter_id)
    LEFT JOIN ctx USING (subject_id, encounter_id)
    LEFT JOIN neph USING (subject_id, encounter_id)
    LEFT JOIN eps USING (subject_id, encounter_id)
    LEFT JOIN dth USING (subject_id, encounter_id)
    ORDER BY a.subject_id, a.start"""
    df = con.sql(sql).df()
    egfr = con.sql(f"SELECT {_egfr_sql(kb)} AS egfr FROM df").df()["egfr"].to_numpy()
    df["egfr"] = egfr
    df["mg_band"] = pd.Categorical(
        con.sql(f"SELECT {band_case_sql('admission_mg', bs)} AS b FROM df").df()["b"],
        categories=[b.label for b in bs], ordered=True)
    cohort, flow = _apply_flow(df, config)
    tv = _time_varying(con, cohort) if config.time_varying_cox and len(cohort) else _empty_tv()
    return StudyCohort(cohort.reset_index(drop=True), flow, tv, bs, len(df))


def _apply_flow(df: pd.DataFrame, cfg: StudyConfig) -> tuple[pd.DataFrame, list[FlowStep]]:
    """Apply the criteria in order; each step's count of removed admissions is the flow diagram."""
    steps: list[tuple[str, pd.Series]] = []
    if cfg.min_age_years is not None:
        steps.append((f"age >= {cfg.min_age_years:g} years (age and sex known)",
                      (df["age"] >= cfg.min_age_years) & df["sex"].isin(["female", "male"])))
    steps.append((f"admission Mg within {cfg.admission_window_hours:g} h", df["admission_mg"].notna()))
    if cfg.require_creatinine:
        steps.append((f"admission creatinine within {cfg.admission_window_hours:g} h",
                      df["admission_creatinine"].notna()))
    if cfg.exclude_rrt_at_entry:
        steps.append(("no RRT at entry", ~df["rrt_at_entry"]))
    if cfg.exclude_egfr_below is not None:
        steps.append((f"admission eGFR >= {cfg.exclude_egfr_below:g} (no kidney failure at entry)",
                      ~(df["egfr"] < cfg.exclude_egfr_below)))
    if cfg.exclude_aki_at_entry:
        steps.append(("no AKI at the first creatinine", ~df["aki_at_entry"]))
    keep = np.ones(len(df), bool)
    flow = [FlowStep("hospital admissions", len(df), 0)]
    for label, ok in steps:
        new = keep & ok.fillna(False).to_numpy(bool)
        flow.append(FlowStep(label, int(new.sum()), int(keep.sum() - new.sum())))
        keep = new
    return df[keep].copy(), flow


def _empty_tv() -> pd.DataFrame:
    return pd.DataFrame({"id": pd.Series(dtype=int), "start": pd.Series(dtype=float),
                         "stop": pd.Series(dtype=float), "mg": pd.Series(dtype=float),
                         "event": pd.Series(dtype=bool)})


def _time_varying(con: duckdb.DuckDBPyConnection, cohort: pd.DataFrame) -> pd.DataFrame:
    """Mg as a step function: each value holds until the next one, until AKI onset or discharge."""
    keys = cohort[["subject_id", "encounter_id", "start", "stay_hours", "aki_onset_hours"]].copy()
    keys["id"] = np.arange(len(keys))
    con.register("tv_keys", keys)
    tv = con.sql(f"""
      WITH mg AS (
        SELECT k.id, (epoch(e.time) - epoch(k.start)) / {_H} AS h, e.numeric_value AS mg,
               coalesce(k.aki_onset_hours, k.stay_hours) AS end_h, k.aki_onset_hours IS NOT NULL AS aki
        FROM tv_keys k JOIN events e ON e.subject_id = k.subject_id AND e.analyte = 'magnesium'
          AND e.numeric_value IS NOT NULL AND e.time >= k.start),
      steps AS (
        SELECT id, h, avg(mg) AS mg, any_value(end_h) AS end_h, any_value(aki) AS aki
        FROM mg WHERE h < end_h GROUP BY id, h)
      SELECT id, h AS start, coalesce(lead(h) OVER (PARTITION BY id ORDER BY h), end_h) AS stop, mg,
             aki AND lead(h) OVER (PARTITION BY id ORDER BY h) IS NULL AS event
      FROM steps ORDER BY id, start""").df()
    con.unregister("tv_keys")
    tv = tv[tv["stop"] > tv["start"]].reset_index(drop=True)
    tv["event"] = tv["event"].astype(bool)
    return tv
