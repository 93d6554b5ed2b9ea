"""Run the surveillance stages over an event store, in full or incrementally.

Incremental mode recomputes only the subjects whose data changed since the last
run (the store records them at ingest) plus those still admitted, whose
monitoring gaps move with time; every other subject's results are kept as
they are. Alerts are logged by key (subject, encounter, kind, time): a key
already in the log is never emitted again, so re-running changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import re
import time as _time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mgaki.events import EventStore
from mgaki.events.store import write_parquet_atomic
from mgaki.knowledge import KnowledgeBase, load
from mgaki.surveillance.dialect import DUCKDB
from mgaki.surveillance.stages import OPEN_END, H, Stage, stages
from mgaki.units import factor

__all__ = ["OUTPUTS", "URINE_ANALYTES", "FullRun", "SurveillanceResult", "alert_rates", "baseline_sensitivity",
           "last_use", "needed", "run", "studies_table", "surveil"]

OUTPUTS = ("kidney_status", "kdigo_creatinine", "kdigo_urine", "uo_weight_rejected", "aki_episodes_out",
           "aki_stage_changes", "mg_trajectory", "evidence_flags", "alerts", "suspect_specimens")
RESULT_NAMES = {"aki_episodes_out": "aki_episodes"}
# every analyte the urine-output criteria read (docs/kdigo.md#irrigation): what a creatinine-only run leaves out
URINE_ANALYTES = ("urine_output", "urine_irrigant", "urine_irrigant_out")
ALERT_KEY = ("subject_id", "encounter_id", "kind", "time")

Progress = Callable[[str, int, int], None]


@dataclass
class SurveillanceResult:
    tables: dict[str, pa.Table]
    new_alerts: pa.Table
    subjects_recomputed: int
    as_of: datetime | None
    seconds: dict[str, float] = field(default_factory=dict)


FullRun = Callable[[datetime | None, KnowledgeBase, Progress | None], SurveillanceResult]  # everyone, as of


def studies_table(kb: KnowledgeBase) -> pa.Table:
    """Applied studies x contexts x risk regions, with the study's exposure-time rule (anchor, pick and
    window in seconds from the anchor; evidence.yaml ``exposure_times``) and the factor to its unit."""
    rows: list[dict[str, object]] = []
    for s in kb.evidence.studies:
        if not s.applied:
            continue
        rule = kb.evidence.exposure(s)
        canonical = kb.analyte(s.analyte).canonical_unit
        for ctx in s.contexts:
            for r in s.risk_regions:
                rows.append({
                    "study_id": s.id, "context": ctx, "exposure_time": rule.id, "anchor": rule.anchor,
                    "pick": rule.pick, "from_s": round(rule.from_h * H),  # the stages count seconds
                    "to_s": None if rule.to_h is None else round(rule.to_h * H), "analyte": s.analyte,
                    "lower": r.lower, "upper": r.upper, "lower_exclusive": r.lower_exclusive,
                    "upper_inclusive": r.upper_inclusive, "unit": r.unit,
                    "to_study_unit": factor(s.analyte, canonical, r.unit), "label": r.label, "effect": r.effect,
                    "citation": s.source.citation, "doi": s.source.doi, "requires_aki": s.requires_aki,
                })
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("study_id", pa.string()), ("context", pa.string()), ("exposure_time", pa.string()),
        ("anchor", pa.string()), ("pick", pa.string()), ("from_s", pa.int64()), ("to_s", pa.int64()),
        ("analyte", pa.string()), ("lower", pa.float64()), ("upper", pa.float64()),
        ("lower_exclusive", pa.bool_()), ("upper_inclusive", pa.bool_()), ("unit", pa.string()),
        ("to_study_unit", pa.float64()), ("label", pa.string()), ("effect", pa.string()),
        ("citation", pa.string()), ("doi", pa.string()), ("requires_aki", pa.bool_()),
    ]))


def alert_rates(encounters: pa.Table, alerts: pa.Table, as_of: datetime | None) -> tuple[float, pa.Table]:
    """(patient-days, alerts per 100 patient-days by kind and severity, with an 'all' row per severity).

    Patient-days: every hospital encounter from its start to its end, an open one to ``as_of``; an ICU stay
    counts within its admission, and the emergency visit that led to an admission (its labs are staged with it,
    docs/kdigo.md) extends the admission back to the visit's start; an encounter sent twice (open, then closed)
    counts once, closed (issue 13 point 9)."""
    con = duckdb.connect()
    try:
        con.register("enc", encounters)
        con.register("al", alerts if alerts.num_rows else pa.table({
            "kind": pa.array([], pa.string()), "severity": pa.array([], pa.string())}))
        cap = "CAST(? AS TIMESTAMP)"
        days = con.execute(f"""
            SELECT COALESCE(SUM(GREATEST(epoch(LEAST(COALESCE(e, {cap}), {cap})) - epoch(s), 0)), 0) / 86400.0
            FROM (SELECT subject_id, COALESCE(parent_id, encounter_id) AS adm, MIN(start) AS s,
                         CASE WHEN COUNT(CASE WHEN parent_id IS NULL THEN "end" END) > 0
                              THEN MAX(CASE WHEN parent_id IS NULL THEN "end" END) END AS e
                  FROM enc GROUP BY subject_id, COALESCE(parent_id, encounter_id)) x""",
                           [as_of, as_of]).fetchall()[0][0]
        per = 100.0 / days if days else float("nan")
        tab = con.sql("""
            SELECT kind, severity, n, n * ? AS per_100_patient_days FROM (
              SELECT kind, severity, COUNT(*) AS n FROM al GROUP BY kind, severity
              UNION ALL
              SELECT 'all', severity, COUNT(*) FROM al GROUP BY severity) x
            ORDER BY kind = 'all', kind, severity""", params=[per]).to_arrow_table()
        return float(days), tab
    finally:
        con.close()


def _as_of(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The latest time the data speaks of: a closed encounter's gaps run to its end."""
    row = con.sql("""SELECT greatest((SELECT max(time) FROM events), (SELECT max(start) FROM medications),
                                     (SELECT max(greatest(start, coalesce("end", start))) FROM encounters))"""
                  ).fetchall()[0]
    return row[0] if row else None


def run(store: EventStore, subjects: Iterable[str] | None = None, as_of: datetime | None = None,
        kb: KnowledgeBase | None = None, progress: Progress | None = None,
        outputs: Iterable[str] = OUTPUTS, duckdb_settings: Mapping[str, str] | None = None,
        exclude_analytes: Iterable[str] = (), baseline_rule: str | None = None) -> SurveillanceResult:
    """Compute the output tables (default: all) for `subjects` (default: everyone) from the store's events.

    `baseline_rule` chooses the reference creatinine (kidney.yaml ``baseline_rules``; default ``nhs_england``).
    `exclude_analytes` leaves those analytes' events out (e.g. ``URINE_ANALYTES``: the creatinine-only
    KDIGO definition the study reports as a sensitivity analysis, docs/research.md#outcomes).

    Only the stages the requested outputs depend on run: `outputs=("kdigo_creatinine",)` stages
    creatinine and nothing else. `duckdb_settings` (e.g. ``{"memory_limit": "8GB", "temp_directory":
    "/scratch"}``) bound DuckDB's memory so a cohort larger than RAM spills to disk instead.
    """
    kb = kb or load()
    con = store.connect()
    try:
        for key, value in (duckdb_settings or {}).items():
            if not re.fullmatch(r"[a-z_]+", key):
                raise ValueError(f"DuckDB setting name {key!r}: lower-case letters and underscores only")
            con.execute(f"SET {key} = ?", [value])
        return _run(con, kb, None if subjects is None else sorted(set(subjects)), as_of, progress,
                    tuple(outputs), tuple(exclude_analytes), baseline_rule)
    finally:
        con.close()


def _run(con: duckdb.DuckDBPyConnection, kb: KnowledgeBase, subjects: list[str] | None,
         as_of: datetime | None, progress: Progress | None,
         outputs: tuple[str, ...] = OUTPUTS, exclude_analytes: tuple[str, ...] = (),
         baseline_rule: str | None = None) -> SurveillanceResult:
    as_of = as_of or _as_of(con)
    if exclude_analytes:
        con.register("excluded_analytes", pa.table({"analyte": pa.array(exclude_analytes, pa.string())}))
        con.execute('ALTER VIEW "events" RENAME TO "events_all_analytes"')
        con.execute('CREATE VIEW "events" AS SELECT * FROM "events_all_analytes" '
                    "WHERE analyte NOT IN (SELECT analyte FROM excluded_analytes)")
    as_of_epoch = int(as_of.replace(tzinfo=UTC).timestamp()) if as_of else OPEN_END
    if subjects is not None:
        con.register("affected", pa.table({"subject_id": pa.array(subjects, pa.string())}))
        for t in ("events", "encounters", "weights", "medications", "contexts"):
            con.execute(f'ALTER VIEW "{t}" RENAME TO "all_{t}"')
            con.execute(f'CREATE VIEW "{t}" AS SELECT * FROM "all_{t}" '
                        "WHERE subject_id IN (SELECT subject_id FROM affected)")
    con.register("studies", studies_table(kb))
    unknown = set(outputs) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown surveillance output(s) {sorted(unknown)}; known: {', '.join(OUTPUTS)}")
    plan = needed(stages(kb, DUCKDB, as_of_epoch, baseline_rule), outputs)
    done_after = last_use(plan, outputs)
    seconds: dict[str, float] = {}
    for i, st in enumerate(plan):
        t0 = _time.perf_counter()
        con.execute(f'CREATE OR REPLACE TEMP TABLE "{st.name}" AS {st.sql}')
        for name in done_after.get(st.name, ()):  # intermediate tables no later stage reads: free them
            con.execute(f'DROP TABLE "{name}"')
        seconds[st.name] = _time.perf_counter() - t0
        if progress:
            progress(st.name, i + 1, len(plan))
    tables = {RESULT_NAMES.get(n, n): _drop_internal(con.sql(f'SELECT * FROM "{n}"').to_arrow_table())
              for n in outputs}
    alerts = tables["alerts"] if "alerts" in tables else pa.table({})
    return SurveillanceResult(tables, alerts, len(subjects) if subjects is not None else -1, as_of, seconds)


def baseline_sensitivity(store: EventStore, kb: KnowledgeBase | None = None, as_of: datetime | None = None,
                         ) -> pa.Table:
    """AKI episodes by peak stage under each baseline rule of kidney.yaml (one row per rule, default first).

    Nothing is written: each rule is a fresh in-memory run of the KDIGO stages over every subject."""
    kb = kb or load()
    default = kb.baseline_rule().id
    rows = []
    for r in sorted(kb.kidney.baseline_rules, key=lambda r: r.id != default):
        eps = run(store, as_of=as_of, kb=kb, outputs=("aki_episodes_out",), baseline_rule=r.id
                  ).tables["aki_episodes"].to_pylist()
        rows.append({"baseline_rule": r.id, "default": r.id == default, "episodes": len(eps),
                     **{f"peak_stage_{k}": sum(1 for e in eps if e["peak_stage"] == k) for k in (1, 2, 3)},
                     "encounters_with_aki": len({(e["subject_id"], e["encounter_id"]) for e in eps})})
    return pa.Table.from_pylist(rows)


def _reads(st: Stage, other: Stage) -> bool:
    return other.name != st.name and re.search(rf'(?<![\w"]){re.escape(other.name)}(?![\w"])', st.sql) is not None


def needed(plan: list[Stage], outputs: Iterable[str]) -> list[Stage]:
    """The stages the outputs depend on, in plan order."""
    want = set(outputs)
    for st in reversed(plan):
        if st.name in want:
            want.update(o.name for o in plan if _reads(st, o))
    return [st for st in plan if st.name in want]


def last_use(plan: list[Stage], outputs: Iterable[str] = OUTPUTS) -> dict[str, list[str]]:
    """For each stage, the intermediate tables whose last reader it is (outputs are kept)."""
    keep = set(outputs)
    last: dict[str, str] = {}
    for st in plan:
        for other in plan:
            if _reads(st, other):
                last[other.name] = st.name
    out: dict[str, list[str]] = {}
    for name, reader in last.items():
        if name not in keep:
            out.setdefault(reader, []).append(name)
    return out


def _drop_internal(tab: pa.Table) -> pa.Table:
    """Epoch helper columns are internal; the outputs keep the timestamps."""
    keep = [c for c in tab.column_names if c not in ("t", "src")]
    return tab.select(keep)


# --- incremental mode ---------------------------------------------------------------------------


def _results_dir(store: EventStore) -> Path:
    return store.root / "results"


def surveil(store: EventStore, full: bool = False, as_of: datetime | None = None,
            kb: KnowledgeBase | None = None, progress: Progress | None = None,
            engine: FullRun | None = None,
            snapshot_lock: AbstractContextManager[object] | None = None,
            baseline_rule: str | None = None) -> SurveillanceResult:
    """Bring the stored results up to date; return them and the alerts emitted by this call.

    `engine` (e.g. Spark, `mgaki.surveillance.spark.store_runner`) recomputes everyone in place of
    DuckDB; the results and the alert log are kept exactly as for DuckDB.
    `snapshot_lock` (the writers' lock) is held only while the store's files and pending
    subjects are listed: the run then reads that snapshot while appends go on, and an append
    it did not see leaves its pending file for the next run. Runs themselves must not overlap
    (the service holds a lock of its own around each).
    """
    kb = kb or load()
    rule = kb.baseline_rule(baseline_rule).id
    if engine is not None and rule != kb.baseline_rule().id:
        raise ValueError(f"baseline rule {rule!r}: the Spark engine runs the default rule only "
                         f"({kb.baseline_rule().id}); use DuckDB for another rule")
    out = _results_dir(store)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    with snapshot_lock or contextlib.nullcontext():
        con = store.connect()  # the views list the files present now
        pending, pending_files = store.pending()
    try:
        as_of = as_of or _as_of(con)
        # results of another baseline rule cannot be merged with these: recompute everyone
        first = full or not state or engine is not None or state.get("baseline_rule", rule) != rule
        subjects: list[str] | None = None
        if not first:
            prev = datetime.fromisoformat(state["as_of"]) if state.get("as_of") else None
            open_now = _open_subjects(con, prev)
            subjects = sorted(pending | open_now)
        res = engine(as_of, kb, progress) if engine else _run(con, kb, subjects, as_of, progress,
                                                               baseline_rule=rule)
    finally:
        con.close()
    merged: dict[str, pa.Table] = {}
    for name, fresh in res.tables.items():
        path = out / f"{name}.parquet"
        if name == "alerts":
            continue
        tab = fresh
        if subjects is not None and path.exists():
            old = pq.read_table(path)
            keep = pc.invert(pc.is_in(old.column("subject_id"), pa.array(subjects, pa.string())))
            tab = pa.concat_tables([old.filter(keep), fresh.cast(old.schema)])
        write_parquet_atomic(tab, path)
        merged[name] = tab
    new_alerts, log = _log_alerts(out / "alerts.parquet", res.tables["alerts"])
    merged["alerts"] = log
    state_path.write_text(json.dumps({"as_of": as_of.isoformat() if as_of else None,
                                      "knowledge": kb.version, "baseline_rule": rule}))
    store.clear_pending(pending_files)
    return SurveillanceResult(merged, new_alerts, len(subjects) if subjects is not None else -1, as_of,
                              res.seconds)


def _open_subjects(con: duckdb.DuckDBPyConnection, prev_as_of: datetime | None) -> set[str]:
    """Subjects whose encounter was still open at the previous run: their monitoring gaps moved."""
    if prev_as_of is None:
        return set()
    rows = con.execute('SELECT DISTINCT subject_id FROM encounters WHERE "end" IS NULL OR "end" > ?',
                       [prev_as_of]).fetchall()
    return {r[0] for r in rows}


def _log_alerts(path: Path, candidates: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(alerts new to the log, the whole log). The log only grows."""
    con = duckdb.connect()
    try:
        con.register("cand", candidates)
        keys = ", ".join(ALERT_KEY)
        if path.exists():
            con.execute(f"CREATE TABLE log AS SELECT * FROM read_parquet('{path.as_posix()}')")
        else:
            con.execute("CREATE TABLE log AS SELECT *, CAST(NULL AS TIMESTAMP) AS emitted_at FROM cand WHERE false")
        now = datetime.now(UTC).replace(tzinfo=None)
        new = con.sql(f"""
            SELECT DISTINCT ON ({keys}) *, CAST(? AS TIMESTAMP) AS emitted_at FROM cand c
            WHERE NOT EXISTS (SELECT 1 FROM log l WHERE l.subject_id = c.subject_id
              AND l.encounter_id IS NOT DISTINCT FROM c.encounter_id AND l.kind = c.kind AND l.time = c.time)
            ORDER BY {keys}, severity""", params=[now]).to_arrow_table() if candidates.num_rows else None
        if new is None or new.num_rows == 0:
            log = con.sql("SELECT * FROM log").to_arrow_table()
            return log.slice(0, 0), log
        con.register("new_rows", new)
        log = con.sql("SELECT * FROM log UNION ALL SELECT * FROM new_rows").to_arrow_table()
        write_parquet_atomic(log, path)
        return new, log
    finally:
        con.close()
