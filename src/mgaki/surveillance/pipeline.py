"""Run the surveillance stages over an event store, in full or incrementally.

Incremental mode recomputes only the subjects whose data changed since the last
run (the store records them at ingest) and logs the alerts kept as timers that
fell due (an alert that falls due as time passes, such as a monitoring gap,
found by an earlier run: ``_due_timers``); every other subject's results are
kept as they are, and only the recomputed subjects' rows are written
(docs/surveillance.md#results-layout). Alerts are logged by key
(subject, encounter, kind, time): a key already in the log is never emitted
again, so re-running changes nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import heapq
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time as _time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mgaki.errors import ResourceError
from mgaki.events import EventStore
from mgaki.events.locks import FileLock
from mgaki.events.normalize import give_back, lease
from mgaki.events.store import ROW_GROUP, _fsync, subject_in, write_parquet_atomic
from mgaki.knowledge import KnowledgeBase, load
from mgaki.surveillance import _priority
from mgaki.surveillance._priority import lowest_priority, normal_priority
from mgaki.surveillance.dialect import DUCKDB
from mgaki.surveillance.stages import OPEN_END, H, Stage, stages
from mgaki.units import factor

__all__ = ["OUTPUTS", "URINE_ANALYTES", "FullRun", "ResultTables", "SurveillanceResult", "alert_rates",
           "baseline_sensitivity", "bucket_count", "bucket_of", "default_settings", "last_use", "needed",
           "reads_results", "result_files", "result_sql", "results_dir", "run", "studies_table", "summary", "surveil"]

OUTPUTS = ("kidney_status", "kdigo_creatinine", "kdigo_urine", "uo_weight_rejected", "aki_episodes_out",
           "aki_stage_changes", "mg_trajectory", "evidence_flags", "alerts", "suspect_specimens")
RESULT_NAMES = {"aki_episodes_out": "aki_episodes"}
# every analyte the urine-output criteria read (docs/kdigo.md#irrigation): what a creatinine-only run leaves out
URINE_ANALYTES = ("urine_output", "urine_irrigant", "urine_irrigant_out")
ALERT_KEY = ("subject_id", "encounter_id", "kind", "time")
_ALERT_COLS = "subject_id, encounter_id, kind, time, severity, detail, value"  # an alert, as the stages give it
_PENDING_COLS = f"{_ALERT_COLS}, due"  # a timer: an alert not yet due, with its time in epoch seconds

Progress = Callable[[str, int, int], None]


@dataclass
class SurveillanceResult:
    tables: Mapping[str, pa.Table]
    new_alerts: pa.Table
    subjects_recomputed: int
    as_of: datetime | None
    seconds: dict[str, float] = field(default_factory=dict)
    timer_alerts: int = 0  # alerts of timers that fell due, logged without recomputing their subjects


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


def _as_of(con: duckdb.DuckDBPyConnection, prefix: str = "") -> datetime | None:
    """The latest time the data speaks of: a closed encounter's gaps run to its end."""
    row = con.sql(f"""SELECT greatest((SELECT max(time) FROM {prefix}events),
                                      (SELECT max(start) FROM {prefix}medications),
                                      (SELECT max(greatest(start, coalesce("end", start))) FROM {prefix}encounters))"""
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
    con = store.connect(prefix=_ALL if subjects is not None else "")
    try:
        for key, value in (duckdb_settings or {}).items():
            if not re.fullmatch(r"[a-z_]+", key):
                raise ValueError(f"DuckDB setting name {key!r}: lower-case letters and underscores only")
            con.execute(f"SET {key} = ?", [value])
        return _run(con, kb, None if subjects is None else sorted(set(subjects)), as_of, progress,
                    tuple(outputs), tuple(exclude_analytes), baseline_rule)
    finally:
        _release(con)
        con.close()


def _run(con: duckdb.DuckDBPyConnection, kb: KnowledgeBase, subjects: list[str] | None,
         as_of: datetime | None, progress: Progress | None,
         outputs: tuple[str, ...] = OUTPUTS, exclude_analytes: tuple[str, ...] = (),
         baseline_rule: str | None = None) -> SurveillanceResult:
    as_of, seconds = _compute(con, kb, subjects, as_of, progress, outputs, exclude_analytes,
                              baseline_rule=baseline_rule)
    tables = {RESULT_NAMES.get(n, n): _drop_internal(con.sql(f'SELECT * FROM "{n}"').to_arrow_table())
              for n in outputs}
    alerts = tables["alerts"] if "alerts" in tables else pa.table({})
    return SurveillanceResult(tables, alerts, len(subjects) if subjects is not None else -1, as_of, seconds)


_BASE = ("events", "encounters", "weights", "medications", "contexts")  # the stored tables the stages read


def _restrict(con: duckdb.DuckDBPyConnection, subjects: list[str]) -> None:
    """The subjects a run on a few subjects computes (table ``affected``); the store's views are named
    ``all_<table>`` on such a connection (``EventStore.connect(prefix=_ALL)``): ``_materialise`` reads
    their rows from them."""
    con.register("affected", pa.table({"subject_id": pa.array(subjects, pa.string())}))


_ALL = "all_"  # prefix of the store's views on a connection that computes a few subjects (_restrict)
_FEW = "few_"  # prefix of the views, on an incremental run's connection, over the parts that may hold its subjects


READ_THREADS = max(1, min(2, os.cpu_count() or 1))  # DuckDB threads an incremental run on a leased database reads with
_SCRATCH = "_mgaki_inc_"  # prefix of the in-memory database an incremental run computes in
_PREVIOUS: dict[str, str] = {}  # scratch database -> the database its connection used before


@contextlib.contextmanager
def _threads(con: duckdb.DuckDBPyConnection, threads: int | None) -> Iterator[None]:
    """`threads` DuckDB threads for the block, then the setting as it was (None: as it is). A run on a leased
    one-thread database (``normalize.lease``: its own until given back) reads its subjects' rows with more:
    the read is a scan of the row groups that may hold them, which parallelises (400 feed-shaped patients of a
    100 k store: 430 -> 320-350 ms, benchmarks/feed_runs.py), unlike the stages' planning."""
    if not threads:
        yield
        return
    before = con.sql("SELECT current_setting('threads')").fetchall()[0][0]
    con.execute(f"SET threads = {int(threads)}")
    try:
        yield
    finally:
        con.execute(f"SET threads = {int(before)}")


def _materialise(con: duckdb.DuckDBPyConnection, source: str = _ALL, threads: int | None = None) -> None:
    """The rows of the subjects of ``_restrict`` become tables of a scratch in-memory database that the
    connection then uses: each stored table is read once for the few subjects of an incremental run,
    not once per stage that reads it, and the stages can run on two connections at once (``_run_dag``).
    ``_release`` detaches it. `source`: the prefix of the views read (``_FEW``: those over the parts that
    may hold the run's changed subjects, ``EventStore.connect(few=...)``, which must include them all).
    `threads`: DuckDB threads for the read (``_threads``)."""
    prev = con.sql("SELECT current_database()").fetchall()[0][0]
    if prev in _PREVIOUS:  # already materialised
        return
    db = f"{_SCRATCH}{uuid.uuid4().hex[:16]}"
    con.execute(f'ATTACH \':memory:\' AS "{db}"')
    _PREVIOUS[db] = prev
    within = subject_in(_affected(con), "affected")  # their row groups only (parts are sorted by subject)
    try:
        with _threads(con, threads):
            for t in _BASE:  # read before the USE: the store's views may be the previous database's, not TEMP ones
                con.execute(f'CREATE TABLE "{db}".main."{t}" AS SELECT * FROM "{source}{t}" WHERE {within}')
    except BaseException:  # not in use yet: _release would not find it
        del _PREVIOUS[db]
        con.execute(f'DETACH "{db}"')
        raise
    con.execute(f'USE "{db}"')


def _affected(con: duckdb.DuckDBPyConnection) -> list[str]:
    subjects: list[str] = con.sql("SELECT subject_id FROM affected").to_arrow_table().column("subject_id").to_pylist()
    return subjects


def _materialise_more(con: duckdb.DuckDBPyConnection, subjects: list[str], threads: int | None = None) -> None:
    """Add `subjects` (a timer due at the run's own second, or no timers known) to the materialised subjects
    (``_materialise``) and to ``affected``."""
    known = _affected(con)
    con.register("_more", pa.table({"subject_id": pa.array(subjects, pa.string())}))
    within = subject_in(subjects, "_more")
    with _store_views(con) as db, _threads(con, threads):
        for t in _BASE:
            con.execute(f'INSERT INTO "{db}".main."{t}" SELECT * FROM "{_ALL}{t}" WHERE {within}')
    con.unregister("_more")
    con.register("affected", pa.table({"subject_id": pa.array(sorted({*known, *subjects}), pa.string())}))


@contextlib.contextmanager
def _store_views(con: duckdb.DuckDBPyConnection) -> Iterator[str]:
    """The connection back on the database the store's views are in (they are TEMP views only on a shared or
    leased connection) while the block reads them; yields the scratch database of ``_materialise``."""
    db = con.sql("SELECT current_database()").fetchall()[0][0]
    con.execute(f'USE "{_PREVIOUS[db]}"')
    try:
        yield db
    finally:
        con.execute(f'USE "{db}"')


def _release(con: duckdb.DuckDBPyConnection) -> None:
    """Detach the scratch database of ``_materialise`` (a shared database would keep it)."""
    db = con.sql("SELECT current_database()").fetchall()[0][0]
    if db in _PREVIOUS:
        con.execute(f'USE "{_PREVIOUS.pop(db)}"')
        con.execute(f'DETACH "{db}"')


PARSED_KEPT = 256  # parsed statements a process keeps: every stage of a few plan shapes (about 45 each)
_parsed: dict[str, duckdb.Statement] = {}  # SQL -> its statement, least recently used first
_parsed_guard = threading.Lock()
atexit.register(_parsed.clear)  # before the interpreter's teardown, which reports DuckDB objects still held


def _parsed_once(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.Statement:
    """`sql` (one statement) parsed once per process. A stage's SQL is the same text from one incremental run to
    the next (only the stages that read the clock differ: the as-of is written into them), and parsing it was a
    quarter of a one-patient run's statement time (ad hoc, 100 k ICU-shaped store: 33 of 140 ms, its 45 statements
    run one after another). DuckDB copies a statement it executes, so one parse serves any number of runs."""
    with _parsed_guard:
        st = _parsed.pop(sql, None)
    if st is None:
        (st,) = con.extract_statements(sql)
    with _parsed_guard:
        _parsed[sql] = st  # now the most recently used
        while len(_parsed) > PARSED_KEPT:
            del _parsed[next(iter(_parsed))]
    return st


def _run_dag(con: duckdb.DuckDBPyConnection, work: list[tuple[str, str]], deps: Mapping[str, set[str]],
             seconds: dict[str, float], progress: Progress | None, total: int) -> None:
    """Create each table of `work` ((name, SQL), in plan order) once the tables it reads (`deps`) exist,
    two at a time on two connections to the scratch database (DuckDB plans a statement on one core and
    plans, not rows, are the cost of a few subjects). Results do not depend on the order.

    Each of the two threads, as it finishes a stage, takes the next one itself (no hop through a scheduling
    thread between two statements), the stage with the longest chain of stages after it first (``_chain``):
    those on the longest path run as early as their inputs allow."""
    def create(cur: duckdb.DuckDBPyConnection, name: str, sql: str) -> None:
        t0 = _time.perf_counter()
        try:
            cur.execute(_parsed_once(cur, f'CREATE OR REPLACE TABLE "{name}" AS {sql}'))
        except duckdb.OutOfMemoryException as exc:
            raise _out_of_memory(cur, name, exc) from exc
        seconds[name] = _time.perf_counter() - t0

    db = con.sql("SELECT current_database()").fetchall()[0][0]
    workers = max(1, min(2, os.cpu_count() or 1))
    if workers == 1 or len(work) < 2:
        for i, (name, sql) in enumerate(work):
            create(con, name, sql)
            if progress:
                progress(name, i + 1, total)
        return
    sql_of = dict(work)
    readers = _readers(work, deps)
    chain = _chain(work, readers)
    waiting = {name: set(deps[name]) for name in sql_of}
    rank = {name: i for i, (name, _) in enumerate(work)}
    ready = [(-chain[n], rank[n], n) for n, needs in waiting.items() if not needs]
    heapq.heapify(ready)
    state = threading.Condition()
    running, done = 0, 0
    failed: list[BaseException] = []

    def worker(cur: duckdb.DuckDBPyConnection) -> None:
        nonlocal running, done
        while True:
            with state:
                while not ready and not failed and running:
                    state.wait()
                if failed or not ready:  # failed, or nothing left to start and nothing under way to free more
                    if not failed and done < len(sql_of):
                        failed.append(RuntimeError(f"surveillance stages wait on each other: "
                                                   f"{sorted(n for n, w in waiting.items() if w)}"))
                    state.notify_all()
                    return
                name = heapq.heappop(ready)[2]
                running += 1
            try:
                create(cur, name, sql_of[name])
            except BaseException as exc:  # the other thread stops at its next stage; raised below
                with state:
                    failed.append(exc)
                    running -= 1
                    state.notify_all()
                return
            with state:
                running -= 1
                done += 1
                for r in readers[name]:
                    waiting[r].discard(name)
                    if not waiting[r]:
                        heapq.heappush(ready, (-chain[r], rank[r], r))
                state.notify_all()
                try:
                    if progress:  # under the lock: one call at a time, in order
                        progress(name, done, total)
                except BaseException as exc:  # e.g. an interrupt reaching a progress bar: stop as for an error
                    failed.append(exc)
                    state.notify_all()
                    return

    opened: list[duckdb.DuckDBPyConnection] = []
    threads: list[threading.Thread] = []
    try:
        for _ in range(workers):
            cur = con.cursor()
            cur.execute(f'USE "{db}"')
            opened.append(cur)
        threads = [threading.Thread(target=worker, args=(cur,), name="mgaki-stages", daemon=True) for cur in opened]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException as exc:  # e.g. an interrupt: no stage starts now, the ones under way end first
        with state:
            failed.append(exc)
            state.notify_all()
        for t in threads:
            t.join()
        raise
    finally:
        for cur in opened:  # after the threads: a connection is never closed under a statement
            cur.close()
    if failed:
        raise failed[0]


def _readers(work: list[tuple[str, str]], deps: Mapping[str, set[str]]) -> dict[str, list[str]]:
    """Stage -> the stages of `work` that read it."""
    out: dict[str, list[str]] = {name: [] for name, _ in work}
    for name, _ in work:
        for d in deps[name]:
            out[d].append(name)
    return out


def _chain(work: list[tuple[str, str]], readers: Mapping[str, list[str]]) -> dict[str, int]:
    """Each stage's longest chain of stages to the end of the run, its own included, weighed by the length of
    their SQL (what a few subjects' statement costs follows its planning, which follows its size)."""
    size = {name: len(sql) for name, sql in work}
    out: dict[str, int] = {}

    def length(name: str, seen: frozenset[str]) -> int:
        if name not in out:  # readers in any order; a cycle (the run then stops with an error) counts once
            out[name] = size[name] + max((length(r, seen | {name}) for r in readers[name] if r not in seen),
                                         default=0)
        return out[name]

    for name in size:
        length(name, frozenset())
    return out


def _out_of_memory(con: duckdb.DuckDBPyConnection, stage: str, exc: duckdb.OutOfMemoryException) -> ResourceError:
    """DuckDB ran out of memory in `stage`: an error naming the stage, the limit in force and how to raise it."""
    try:
        limit = con.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
    except duckdb.Error:
        limit = "unknown"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    what = f"step {stage}" if " " in stage else f"stage {stage}"
    return ResourceError(f"surveillance {what} needs more memory than DuckDB's limit ({limit}) allows, even "
                         f"spilling to disk ({first}); give it more with `mgaki surveil --memory 8GB` (the Python "
                         "API: duckdb_settings={'memory_limit': '8GB'}) or MGAKI_DUCKDB_MEMORY=8GB")


def _compute(con: duckdb.DuckDBPyConnection, kb: KnowledgeBase, subjects: list[str] | None,
             as_of: datetime | None, progress: Progress | None, outputs: tuple[str, ...] = OUTPUTS,
             exclude_analytes: tuple[str, ...] = (), timers: bool = False,
             restricted: bool = False, baseline_rule: str | None = None) -> tuple[datetime | None, dict[str, float]]:
    """Materialise the stages the outputs need as temp tables named after them; (as-of, seconds per stage).

    `baseline_rule`: the reference creatinine rule (kidney.yaml ``baseline_rules``; None: the default).

    `timers`: also table ``_timers_out`` (the alert columns, due, after): the alerts not yet due at `as_of`
    that become due when nothing but the clock moves (``_timer_stages``), each with its time as epoch
    seconds (`due`) and the as-of they were found at (`after`).
    """
    as_of = as_of or _as_of(con, _ALL if subjects is not None and not restricted else "")
    if subjects is not None:
        if not restricted:
            _restrict(con, subjects)
        _materialise(con)
    if exclude_analytes:
        con.register("excluded_analytes", pa.table({"analyte": pa.array(exclude_analytes, pa.string())}))
        if subjects is not None:  # the subjects' events are a table of their own (_materialise)
            con.execute('DELETE FROM "events" WHERE analyte IN (SELECT analyte FROM excluded_analytes)')
        else:
            con.execute('ALTER VIEW "events" RENAME TO "events_all_analytes"')
            con.execute('CREATE VIEW "events" AS SELECT * FROM "events_all_analytes" '
                        "WHERE analyte NOT IN (SELECT analyte FROM excluded_analytes)")
    as_of_epoch = _epoch(as_of)
    con.register("studies", studies_table(kb))
    unknown = set(outputs) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown surveillance output(s) {sorted(unknown)}; known: {', '.join(OUTPUTS)}")
    shape, timed, views, done_after = _shape(kb, baseline_rule, outputs, timers and "alerts" in outputs)
    now = {st.name: st for st in stages(kb, DUCKDB, as_of_epoch, baseline_rule)}
    plan = [now[st.name] for st in shape]
    seconds: dict[str, float] = {}
    # a few subjects' rows (an incremental run): each statement costs its planning, not its rows, so a
    # stage read once is written into its reader (a CTE: no view to create) and nothing is dropped early
    small = subjects is not None
    if small:
        con.execute("CREATE TABLE studies AS SELECT * FROM temp.main.studies")  # for the other connections
        work = [(st.name, _inlined(st, plan + timed, views)) for st in plan + timed if st.name not in views]
        tables = {name for name, _ in work}
        deps = {name: {o for o in tables if o != name and o in _names(sql)} for name, sql in work}
        _run_dag(con, work, deps, seconds, progress, len(work))
    for i, st in enumerate(plan + timed if not small else ()):
        t0 = _time.perf_counter()
        kind = "VIEW" if st.name in views else "TABLE"
        try:
            con.execute(f'CREATE OR REPLACE TEMP {kind} "{st.name}" AS {st.sql}')
        except duckdb.OutOfMemoryException as exc:
            raise _out_of_memory(con, st.name, exc) from exc
        for name in done_after.get(st.name, ()):  # intermediate tables no later stage reads: free them
            con.execute(f'DROP {"VIEW" if name in views else "TABLE"} "{name}"')
        seconds[st.name] = _time.perf_counter() - t0
        if progress:
            progress(st.name, i + 1, len(plan) + len(timed))
    if timed:
        same = " AND ".join(f"c.{k} IS NOT DISTINCT FROM l.{k}" for k in ALERT_KEY)
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _timers_out AS
            SELECT {_PENDING_COLS}, CAST({as_of_epoch} AS BIGINT) AS after FROM (
              SELECT l.*, {DUCKDB.epoch('l.time')} AS due FROM "alerts{_LATER}" l
              WHERE NOT EXISTS (SELECT 1 FROM alerts c WHERE {same})) y
            WHERE due >= {as_of_epoch}""")
        for st in reversed(timed if not small else ()):  # a scratch database goes whole (_release)
            con.execute(f'DROP {"VIEW" if st.name in views else "TABLE"} "{st.name}"')
    return as_of, seconds


_SHAPE_AS_OF = 1  # any as-of: which stages run, and how, does not depend on it (only their SQL's clock)


@functools.lru_cache(maxsize=16)
def _shape(kb: KnowledgeBase, baseline_rule: str | None, outputs: tuple[str, ...],
           timers: bool) -> tuple[list[Stage], list[Stage], dict[str, str], dict[str, list[str]]]:
    """The stages a run executes and how: (plan, at an arbitrary as-of: take each one's SQL at the run's;
    timer stages, which have no as-of; views; last uses; the tables the timers read are kept). Worked out once per
    knowledge base and outputs, not per run (it compares every pair of stages). Callers must not modify it."""
    all_stages = stages(kb, DUCKDB, _SHAPE_AS_OF, baseline_rule)
    plan = needed(all_stages, outputs)
    timed = _timer_stages(kb, all_stages, baseline_rule) if timers else []
    keep = {o.name for st in timed for o in plan if _reads(st, o)}
    views = _views(plan + timed, {*outputs, *keep})
    return plan, timed, views, last_use(plan, (*outputs, *keep), views)


def _inlined(st: Stage, plan: list[Stage], views: Mapping[str, str]) -> str:
    """`st`'s SQL with the stages only it reads (`views`: stage -> its one reader) written in as CTEs."""
    ins = [v for v in plan if views.get(v.name) == st.name]
    if not ins:
        return st.sql
    ctes = ", ".join(f'"{v.name}" AS ({_inlined(v, plan, views)})' for v in ins)
    return f"WITH {ctes} SELECT * FROM ({st.sql})"


_LATER = "__later"  # suffix of the time-driven stages evaluated with the clock at its end


def _timer_stages(kb: KnowledgeBase, plan: list[Stage], baseline_rule: str | None = None) -> list[Stage]:
    """The stages whose result moves with the as-of time alone, evaluated with no as-of bound.

    Found, not listed: a stage whose SQL differs between two as-of times, and every stage reading one.
    Their rules are thresholds on the clock (a monitoring gap is due once it is `mg_monitoring_gap_hours`
    old), so the alerts they add as time passes are those of the unbounded evaluation whose time has
    come: each subject's earliest such time is its timer, and a run recomputes a subject when its timer
    is due instead of every subject with an open encounter (the differential test checks the claim).
    """
    other = {s.name: s.sql for s in stages(kb, DUCKDB, 0, baseline_rule)}
    timed = {s.name for s in plan if other.get(s.name) != s.sql}
    for st in plan:
        if any(_reads(st, o) for o in plan if o.name in timed):
            timed.add(st.name)
    later = {s.name: s.sql for s in stages(kb, DUCKDB, OPEN_END, baseline_rule)}
    out = []
    for st in plan:
        if st.name not in timed:
            continue
        sql = later[st.name]
        for name in timed:
            sql = re.sub(rf'(?<![\w"]){re.escape(name)}(?![\w"])', name + _LATER, sql)
        out.append(Stage(st.name + _LATER, sql, st.output))
    return out


def _epoch(t: datetime | None) -> int:
    return int(t.replace(tzinfo=UTC).timestamp()) if t else OPEN_END


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
    return other.name != st.name and other.name in _names(st.sql)


@functools.lru_cache(maxsize=512)
def _names(sql: str) -> frozenset[str]:
    """The bare words of a stage's SQL (a table it reads appears as one; quoted names do not count)."""
    return frozenset(re.findall(r'(?<![\w"])(\w+)(?![\w"])', sql))


def needed(plan: list[Stage], outputs: Iterable[str]) -> list[Stage]:
    """The stages the outputs depend on, in plan order."""
    want = set(outputs)
    for st in reversed(plan):
        if st.name in want:
            want.update(o.name for o in plan if _reads(st, o))
    return [st for st in plan if st.name in want]


def _views(plan: list[Stage], keep: set[str]) -> dict[str, str]:
    """Intermediate stages read by exactly one later stage, once: {stage: its reader}. They run as views,
    evaluated inside their reader (as on Spark, which checkpoints only what two stages read), so a wide
    intermediate table (the urine-output windows) is never materialised and written to spill."""
    out: dict[str, str] = {}
    for st in plan:
        if st.name in keep:
            continue
        readers = [r for r in plan if _reads(r, st)]
        if len(readers) == 1 and len(re.findall(rf'(?<![\w"]){re.escape(st.name)}(?![\w"])', readers[0].sql)) == 1:
            out[st.name] = readers[0].name
    return out


def last_use(plan: list[Stage], outputs: Iterable[str] = OUTPUTS,
             views: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """For each stage, the intermediate tables whose last reader it is (outputs are kept). A table a view
    reads lives until the view's own reader (`views`: view -> reader) has run."""
    keep = set(outputs)
    views = views or {}
    pos = {st.name: i for i, st in enumerate(plan)}
    last: dict[str, str] = {}
    for st in plan:
        reader = st.name
        while reader in views and views[reader] in pos:
            reader = views[reader]
        for other in plan:
            if _reads(st, other) and (other.name not in last or pos[reader] > pos[last[other.name]]):
                last[other.name] = reader
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
#
# Layout of ``<store>/results`` (docs/surveillance.md#results-layout):
#   state.json                      as-of, data's latest time, bucket count, timers per bucket
#   <table>/b<k>.parquet            the rows of the subjects whose hash falls in bucket k; _schema.parquet
#   alerts/part-*.parquet           the alert log: append-only parts, compacted like the event store
#   _alert_index/b<k>.parquet       the log's keys by bucket (what is already logged, read per bucket)
#   _timers/b<k>.parquet            the alerts that become due with no new data, with when (epoch s)
# A run rewrites only the buckets of the subjects it recomputed, so its cost follows the subjects it
# touches, not the store's size.

LAYOUT = 4  # 4: the hourly and creatinine tables in 8 times more buckets (3: timers hold their alerts; 2: a
# subject's earliest due time)
SUBJECTS_PER_BUCKET = 256  # the bucket count grows with the cohort so that a bucket stays small
RESULT_TABLES = tuple(RESULT_NAMES.get(n, n) for n in OUTPUTS if n != "alerts")
_INDEX, _TIMERS, _LOG = "_alert_index", "_timers", "alerts"
_SCHEMA = "_schema.parquet"


def bucket_count(n_subjects: int) -> int:
    """Buckets for a cohort: a power of two, about `SUBJECTS_PER_BUCKET` subjects each."""
    b = 1
    while b * SUBJECTS_PER_BUCKET < n_subjects:
        b *= 2
    return b


def bucket_of(subject_id: str, buckets: int) -> int:
    """The bucket of a subject: the first 32 bits of the MD5 of its id, modulo the bucket count."""
    return int(hashlib.md5(subject_id.encode()).hexdigest()[:8], 16) % buckets


# about a row per subject (or encounter), or rarer
_FEW_ROWS = frozenset({"aki_episodes", "mg_trajectory", "evidence_flags", "kidney_status", "uo_weight_rejected",
                       "suspect_specimens", _TIMERS})
_FEW_ROWS_SHARE = 16  # such a table has 16 times fewer buckets: fewer, still small, files


# many rows per subject (an hour's urine output each, a creatinine's criteria each): a bucket of SUBJECTS_PER_BUCKET
# subjects of them was most of what a fold rewrites for each subject it folds; such a table has 8 times more
# buckets. A fold of 64 one-patient generations at 100 k patients: 8.1 -> 2.8 s, peak 1.01 -> 0.32 GB; a full
# run up to a seventh longer (more files) (benchmarks/README.md, "Smaller buckets for the tables of many rows")
_MANY_ROWS = frozenset({"kdigo_urine", "kdigo_creatinine"})
_MANY_ROWS_SHARE = 8


def table_buckets(name: str, buckets: int) -> int:
    """The bucket count of result table (or folder) `name` in a results layout of `buckets` buckets."""
    if name in _FEW_ROWS:
        return max(1, buckets // _FEW_ROWS_SHARE)
    return buckets * _MANY_ROWS_SHARE if name in _MANY_ROWS else buckets


def _row_buckets(subjects: pa.Array | pa.ChunkedArray, buckets: int) -> pa.Array | pa.ChunkedArray:
    """``bucket_of`` each row's subject (a null's: that of ""), worked out once per distinct subject, not per
    row (a urine-output table holds about 200 rows a patient)."""
    col = pc.fill_null(subjects, "")
    distinct = pc.unique(col)
    of = pa.array([bucket_of(s, buckets) for s in distinct.to_pylist()], pa.int32())
    return pc.take(of, pc.index_in(col, value_set=distinct))


def _by_bucket(subjects: Iterable[str], buckets: int) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for s in subjects:
        out.setdefault(bucket_of(s, buckets), set()).add(s)
    return out


def _bucket_sql(col: str, buckets: int) -> str:
    """`bucket_of` in DuckDB SQL (the same number)."""
    return f"CAST(CAST(('0x' || left(md5(COALESCE({col}, '')), 8)) AS UBIGINT) % {buckets} AS INTEGER)"


def _bucket_file(folder: Path, b: int) -> Path:
    return folder / f"b{b:05d}.parquet"


def results_dir(store: EventStore) -> Path:
    """The folder of the store's surveillance results (``ResultTables`` reads it)."""
    return store.root / "results"


def _written(root: Path, name: str) -> bool:
    """Whether surveillance has written result table `name` (``result_files`` is not None) without listing its
    buckets (thousands of files in a large store: listing and sorting them cost an increment 50-150 ms at 1 M)."""
    return (root / name / _SCHEMA).exists()


def result_files(root: Path, name: str, subject_id: str | None = None) -> list[Path] | None:
    """The Parquet files of result table `name` under a results folder (all, or the one holding
    `subject_id`); None when surveillance has not written it yet. The alert log: its live parts."""
    folder = root / name
    if name == _LOG:
        return EventStore(root).files(_LOG) if folder.is_dir() else None
    if not _written(root, name):
        return None
    if subject_id is not None:
        state = _read_state(root)
        hit = _bucket_file(folder, bucket_of(subject_id, table_buckets(name, int(state.get("buckets", 1)))))
        return [hit] if hit.exists() else [folder / _SCHEMA]
    return sorted(folder.glob("b*.parquet")) or [folder / _SCHEMA]


def result_sql(root: Path, name: str, subject_id: str | None = None) -> str | None:
    """A DuckDB FROM source for result table `name` (see `result_files`, and the generations of
    recomputed subjects not yet folded into them: ``_delta_sql``), or None before the first run.

    The generations are listed before the buckets: a fold under way may add a bucket file after the
    listing, but only for rows of generations it has not marked folded yet, which are then listed."""
    gens = _gens(root) if name != _LOG else []
    files = result_files(root, name, subject_id)
    if files is None:
        return None
    if not files:
        return f"(SELECT * FROM ({_log_empty_sql()}) WHERE false)"
    base = "read_parquet([" + ", ".join(f"'{f.as_posix()}'" for f in files) + "], union_by_name = true)"
    return _delta_sql(base, gens, name) if gens else base


# Results of an incremental run are written as one generation of rows (results/_delta/g<n>/<table>.parquet,
# with the subjects it recomputed in _subjects.parquet) instead of rewriting the buckets that hold those
# subjects: its cost follows what it recomputed, not the size of the buckets. A reader takes each subject's
# rows from the newest generation that recomputed it, else from its bucket. Once DELTA_FOLD_GENS generations
# are pending they are folded into the buckets (each bucket rewritten once for all the subjects they touched)
# in the background (a process of its own, FOLD_IN), off the run's latency; the fold then marks them folded
# (_delta/folded) and removes the generations the fold before it marked, which no reader has listed since.
_DELTA = "_delta"
_COVERED = "_subjects.parquet"
_FOLDED = "folded"  # in _delta: the newest generation the buckets hold
_FOLD_LOCK = ".fold.lock"  # in results: one fold (or full run) at a time, across threads and processes
DELTA_FOLD_GENS = 64
# where the fold runs: "process" (a child process at the lowest priority: no GIL or core taken from the runs),
# "thread" (a thread of this process), "inline" (the run that writes the DELTA_FOLD_GENS-th generation folds
# before returning)
FOLD_IN = "process"
FOLD_CHUNK = 64  # buckets of one table a fold reads, rewrites and commits at a time: what it holds in memory
# (a fold of 63 generations covering 1,058 patients of a 100 k store held 7.3 GB when it read all at once)
FOLD_PACE = 1.0  # a background fold pauses after each file it writes as long as the write took: half the disk
# pending generations past which a fold neither yields the CPU nor pauses: on a machine the runs saturate, a fold
# at the lowest priority is starved, the generations pile up and every reader merges them all; this bounds the pile
DELTA_URGENT_GENS = 4 * DELTA_FOLD_GENS
_log = logging.getLogger(__name__)
_folds: dict[Path, threading.Thread | subprocess.Popen[bytes]] = {}  # results folder -> its fold under way
_folds_guard = threading.Lock()


def _gen_dirs(root: Path) -> list[Path]:
    """Every committed generation (a generation folder appears by one rename), folded or not, oldest first."""
    folder = root / _DELTA
    return sorted(p for p in folder.glob("g*") if p.is_dir()) if folder.is_dir() else []


def _folded(root: Path) -> int:
    path = root / _DELTA / _FOLDED
    try:
        return int(path.read_text())
    except FileNotFoundError:
        return 0


def _gens(root: Path) -> list[Path]:
    """The generations the buckets do not hold yet, oldest first. (Reading a folded one too would give the
    same rows: the buckets were committed before the mark.)"""
    done = _folded(root)
    return [g for g in _gen_dirs(root) if int(g.name[1:]) > done]


def _delta_sql(base: str, gens: list[Path], name: str) -> str:
    """`base`'s rows of subjects no generation recomputed, and each other subject's rows of the newest
    generation that recomputed it."""
    cov = " UNION ALL ".join(f"SELECT subject_id, {int(g.name[1:])} AS _g "
                             f"FROM read_parquet('{(g / _COVERED).as_posix()}')" for g in gens)
    rows = " UNION ALL BY NAME ".join(f"SELECT *, {int(g.name[1:])} AS _g "
                                      f"FROM read_parquet('{(g / name).as_posix()}.parquet')" for g in gens)
    return f"""(WITH _cov AS (SELECT subject_id, max(_g) AS _g FROM ({cov}) c GROUP BY subject_id)
        SELECT b.* FROM {base} b WHERE NOT EXISTS (SELECT 1 FROM _cov c WHERE c.subject_id = b.subject_id)
        UNION ALL BY NAME
        SELECT d.* EXCLUDE (_g) FROM ({rows}) d JOIN _cov c ON c.subject_id = d.subject_id AND c._g = d._g)"""


def _write_delta(out: Path, fresh: Mapping[str, pa.Table], subjects: list[str]) -> int:
    """One generation: every result table's rows of `subjects` and the subjects themselves, written and
    synced under a temporary name, then renamed into place (the commit). Returns the generations now kept."""
    folder = out / _DELTA
    folder.mkdir(exist_ok=True)
    every, done = _gen_dirs(out), _folded(out)
    g = max(int(every[-1].name[1:]) if every else 0, done) + 1
    gens = [p for p in every if int(p.name[1:]) > done]
    tmp = folder / f".g{g:020d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = [(tab, tmp / f"{rn}.parquet") for rn, tab in fresh.items()]
    files.append((pa.table({"subject_id": pa.array(subjects, pa.string())}), tmp / _COVERED))
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda w: _write_synced(*w), files))
    _fsync(tmp)
    os.replace(tmp, folder / f"g{g:020d}")
    _fsync(folder)
    return len(gens) + 1


def _fold(out: Path, pace: float | None = None) -> None:
    """Fold the pending generations into the buckets: each bucket holding a recomputed subject rewritten once
    with the subject's newest rows, ``FOLD_CHUNK`` buckets of a table at a time (synced together; a reader meanwhile
    finds a subject's rows in the buckets or in the generations, the same rows), then the generations marked
    folded, then
    the generations the previous fold marked removed. A crash before the mark leaves generations whose rows
    the buckets already hold (the same results; the next fold folds them again). The caller holds the fold
    lock (``_fold_lock``). `pace`: as ``FOLD_PACE`` (None: it, or none inline)."""
    gens = _gens(out)
    if pace is None:
        pace = FOLD_PACE if FOLD_IN != "inline" else 0.0
    state = _read_state(out)
    if not gens or not state.get("buckets"):
        return
    buckets = int(state["buckets"])
    con = duckdb.connect(config={"threads": 1})  # beside the runs, on one core
    try:
        cov = " UNION ALL ".join(f"SELECT subject_id FROM read_parquet('{(g / _COVERED).as_posix()}')" for g in gens)
        covered = sorted(r[0] for r in con.sql(f"SELECT DISTINCT subject_id FROM ({cov}) c").fetchall())
        for rn in RESULT_TABLES:  # a table, and FOLD_CHUNK of its buckets, at a time: only those in memory
            base = f"(SELECT * FROM read_parquet('{(out / rn / _SCHEMA).as_posix()}') WHERE false)"
            latest = con.sql(f"SELECT * FROM {_delta_sql(base, gens, rn)} x").to_arrow_table()
            nb = table_buckets(rn, buckets)
            by_bucket = _by_bucket(covered, nb)
            row_bucket = _row_buckets(latest.column("subject_id"), nb)
            keys = sorted(by_bucket)
            for i in range(0, len(keys), FOLD_CHUNK):
                chunk = {b: by_bucket[b] for b in keys[i:i + FOLD_CHUNK]}
                theirs = latest.filter(pc.is_in(row_bucket, pa.array(list(chunk), pa.int32())))
                cache = _read_many([_bucket_file(out / rn, b) for b in chunk], threads=False)
                batch = _Batch()
                _replace_rows(out / rn, theirs, chunk, nb, batch, cache, keep_empty=True)
                del cache
                # no thread pools: at interpreter exit the pools refuse work before this thread is joined
                batch.commit(threads=False, pace=pace)
    finally:
        con.close()
    before = _folded(out)
    _mark_folded(out, int(gens[-1].name[1:]))
    for g in _gen_dirs(out):
        if int(g.name[1:]) <= before:  # folded by the previous fold: listed by no reader since its mark
            shutil.rmtree(g, ignore_errors=True)
    _fsync(out / _DELTA)


def _mark_folded(out: Path, g: int) -> None:
    tmp = out / _DELTA / f".{_FOLDED}.tmp"
    tmp.write_text(str(g))
    _fsync(tmp)
    os.replace(tmp, out / _DELTA / _FOLDED)
    _fsync(out / _DELTA)


def _fold_lock(out: Path) -> FileLock:
    return FileLock(out / _FOLD_LOCK)


def _start_fold(out: Path, urgent: bool = False) -> None:
    """Fold the generations (``_fold``) where ``FOLD_IN`` says: in a child process or a thread (one per
    results folder; a fold another process holds the lock for is left to it), or now. `urgent`: more than
    ``DELTA_URGENT_GENS`` generations pending (the child process then starts at its normal priority)."""
    if FOLD_IN == "inline":
        with _fold_lock(out):
            _fold(out)
        return
    with _folds_guard:
        running = _folds.get(out)
        if running is not None and (running.is_alive() if isinstance(running, threading.Thread)
                                    else running.poll() is None):
            return  # the next run asks again if generations are still pending
        if FOLD_IN == "process":
            # its own session: it completes after this process exits (mgaki surveil returns at once); at the
            # lowest priority from its first statement, before its imports (_FOLD_BOOT), unless urgent
            boot = [_priority.__file__, "mgaki.surveillance.fold", str(out)]
            _folds[out] = subprocess.Popen([sys.executable, "-c", _FOLD_BOOT, *(["--urgent"] if urgent else []),
                                            *boot], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           start_new_session=True)
        else:
            t = threading.Thread(target=fold_in_background, args=(out,), name="mgaki-fold", daemon=False)
            _folds[out] = t
            t.start()


# The fold process's first statements (``python -c _FOLD_BOOT [--urgent] <_priority.py> <module> <args>``): the
# priority module loaded by its path, without the mgaki package (whose imports are the half second of CPU the
# process must not take at its starting priority), the priority lowered unless --urgent, then `module`.main(args).
_FOLD_BOOT = """import importlib.util, sys
args = sys.argv[1:]
urgent = args[:1] == ["--urgent"]
args = args[1:] if urgent else args
spec = importlib.util.spec_from_file_location("_mgaki_fold_priority", args[0])
priority = importlib.util.module_from_spec(spec)
spec.loader.exec_module(priority)
if not urgent:
    priority.lowest_priority(own_session=True)
raise SystemExit(importlib.import_module(args[1]).main(args[2:]))
"""


def fold_in_background(out: Path, own_session: bool = False) -> None:
    """Fold `out`'s generations at the lowest priority (this thread, or the fold process: `own_session`,
    see ``lowest_priority``), unless another fold or a full run holds the folder; a failure is logged (no
    row values) and left to the next fold. Past ``DELTA_URGENT_GENS`` pending generations (earlier folds starved
    of CPU) it folds at the priority and pace of the runs, which it then slows: the pile stays bounded."""
    try:
        pending = len(_gens(out))
    except OSError:  # unreadable now: the fold below logs what fails
        pending = 0
    urgent = pending > DELTA_URGENT_GENS
    if not urgent:
        lowest_priority(own_session)
    elif own_session:  # a process started low (_FOLD_BOOT) whose generations piled up meanwhile
        normal_priority(own_session)
    lock = _fold_lock(out)
    try:
        if not lock.acquire(blocking=False):
            return  # another process (or a full run) has the folder; the generations stay readable
        try:
            if urgent:
                _log.warning("%d surveillance result generations pending (more than %d): folding them at normal "
                             "priority", pending, DELTA_URGENT_GENS)
            _fold(out, pace=0.0 if urgent else None)
        finally:
            lock.release()
    except Exception as e:  # the generations stay readable; the next run starts another fold
        _log.error("folding surveillance result generations failed (%s); they stay pending", type(e).__name__)


def wait_for_folds(timeout: float | None = None) -> None:
    """Wait for the folds this process started (``_start_fold``) to finish."""
    with _folds_guard:
        running = list(_folds.values())
    for t in running:
        if isinstance(t, threading.Thread):
            t.join(timeout)
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                t.wait(timeout)


def _log_empty_sql() -> str:
    return ("SELECT NULL::VARCHAR AS subject_id, NULL::VARCHAR AS encounter_id, NULL::VARCHAR AS kind, "
            "NULL::TIMESTAMP AS time, NULL::VARCHAR AS severity, NULL::VARCHAR AS detail, NULL::DOUBLE AS value, "
            "NULL::TIMESTAMP AS emitted_at")


TORN_READ_TRIES = 5  # reads of result files a reader makes at most while folds replace or remove them under it
_P = ParamSpec("_P")
_T = TypeVar("_T")
# errors of the statement itself, which no second read changes
_NOT_TORN = (duckdb.BinderException, duckdb.ParserException, duckdb.CatalogException, duckdb.ConversionException)


def reads_results(read: Callable[_P, _T]) -> Callable[_P, _T]:
    """`read` (which reads result files) again when a file changed under it, up to ``TORN_READ_TRIES`` times.

    A fold replaces a bucket file whole (a new file renamed over it) and removes the generations it folded;
    DuckDB opens a Parquet file more than once in one read (its metadata when planning, its data when
    scanning), so a read that a replacement falls between fails ("TProtocolException: Invalid data", "Could
    not read enough bytes"; a file replaced every 5 ms failed about one DuckDB read in 15). Listing and
    reading again gives a consistent view (the fold's invariant, ``result_sql``); an error that persists is
    raised."""
    @functools.wraps(read)
    def again(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        for attempt in range(TORN_READ_TRIES):
            try:
                return read(*args, **kwargs)
            except _NOT_TORN:
                raise
            except (duckdb.Error, OSError, pa.ArrowException):
                if attempt == TORN_READ_TRIES - 1:
                    raise
                _log.debug("surveillance results: a read failed (%d of %d tries); a fold may have replaced a "
                          "file under it: reading again", attempt + 1, TORN_READ_TRIES)
                _time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")
    return again


class ResultTables(Mapping[str, pa.Table]):
    """The stored results, read from disk when a table is asked for (an incremental run reads none)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, pa.Table] = {}

    def __getitem__(self, name: str) -> pa.Table:
        if name not in (*RESULT_TABLES, _LOG):
            raise KeyError(name)
        if name not in self._cache:
            self._cache[name] = self._read(name)
        return self._cache[name]

    @reads_results
    def _read(self, name: str) -> pa.Table:
        pending = _gens(self.root)  # before the files, as in result_sql
        files = result_files(self.root, name)
        if name == _LOG and not files:
            return _empty_log()
        if files is None:
            raise KeyError(name)
        if name == _LOG or pending:
            con = duckdb.connect()
            try:
                return con.sql(f"SELECT * FROM {result_sql(self.root, name)}").to_arrow_table()
            finally:
                con.close()
        tabs = [pq.read_table(f) for f in files]
        return pa.concat_tables(tabs, promote_options="permissive") if len(tabs) > 1 else tabs[0]

    def __iter__(self) -> Iterator[str]:
        return iter(n for n in (*RESULT_TABLES, _LOG) if n == _LOG or result_files(self.root, n) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def summary(tables: Mapping[str, pa.Table]) -> dict[str, Any]:
    """Counts over the results (those `surveil` returns, or any mapping of result tables), computed by
    DuckDB over the stored files, not by reading the tables into Python: encounters with Mg measured,
    encounters not staged (maintenance dialysis), baseline rules, weights rejected, AKI episodes by peak
    stage and recovered, evidence flags, suspect specimens by kind (None: a table the results lack)."""
    con = duckdb.connect(config={"threads": 2})
    try:
        for name in ("aki_episodes", "mg_trajectory", "kidney_status", "uo_weight_rejected", "evidence_flags",
                     "suspect_specimens"):
            src = result_sql(tables.root, name) if isinstance(tables, ResultTables) else None
            if src is not None:
                con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM {src}')
            elif name in tables:
                con.register(name, tables[name])
        have = {r[0] for r in con.sql("SELECT table_name FROM duckdb_tables() UNION ALL "
                                      "SELECT view_name FROM duckdb_views()").fetchall()}

        def one(sql: str, table: str) -> Any:
            return con.sql(sql).fetchall()[0][0] if table in have else None

        eps = con.sql("SELECT count(*), count(*) FILTER (peak_stage = 1), count(*) FILTER (peak_stage = 2), "
                      "count(*) FILTER (peak_stage = 3), count(*) FILTER (recovered), "
                      "list(DISTINCT baseline_rule ORDER BY baseline_rule) FILTER (baseline_rule IS NOT NULL) "
                      "FROM aki_episodes").fetchall()[0]
        return {
            "mg_encounters": one("SELECT count(*) FROM mg_trajectory", "mg_trajectory"),
            "not_staged_dialysis": one("SELECT count(*) FROM kidney_status "
                                       "WHERE kdigo_status IS DISTINCT FROM 'applicable'", "kidney_status"),
            "baseline_rules": list(eps[5] or []),
            "weights_rejected": one("SELECT count(*) FROM uo_weight_rejected", "uo_weight_rejected"),
            "episodes": eps[0], "peak_stage": {1: eps[1], 2: eps[2], 3: eps[3]}, "recovered": eps[4],
            "evidence_flags": one("SELECT count(*) FROM evidence_flags", "evidence_flags"),
            "suspect_specimens": dict(con.sql("SELECT kind, count(*) FROM suspect_specimens GROUP BY kind "
                                              "ORDER BY kind").fetchall()) if "suspect_specimens" in have else None,
        }
    finally:
        con.close()


def _read_state(out: Path) -> dict[str, Any]:
    path = out / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_state(out: Path, state: dict[str, Any]) -> None:
    tmp = out / ".state.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, out / "state.json")


def surveil(store: EventStore, full: bool = False, as_of: datetime | None = None,
            kb: KnowledgeBase | None = None, progress: Progress | None = None,
            engine: FullRun | None = None,
            snapshot_lock: AbstractContextManager[object] | None = None,
            duckdb_settings: Mapping[str, str] | None = None,
            baseline_rule: str | None = None) -> SurveillanceResult:
    """Bring the stored results up to date; return them (read from disk when asked for) and the alerts
    emitted by this call.

    An incremental run recomputes the subjects whose data changed since the last run (the store records them at
    ingest) and logs the alerts of the timers that fell due (an alert that becomes due as time passes, such as a
    monitoring gap, kept by the run that found it); everyone else's results are kept as they are, and only the
    recomputed subjects' rows are written. `engine` (e.g. Spark, `mgaki.surveillance.spark.store_runner`)
    recomputes everyone in place of DuckDB; the results and the alert log are kept exactly as for DuckDB.
    `snapshot_lock` (the writers' lock) is held only while the store's files and pending subjects are listed:
    the run then reads that snapshot while appends go on, and an append it did not see leaves its pending file
    for the next run. Runs themselves must not overlap (the service holds a lock of its own around each).
    `duckdb_settings`: as for `run`; by default a full run caps DuckDB's memory (`default_settings`).
    `baseline_rule`: the reference creatinine rule (kidney.yaml ``baseline_rules``; None: the default); results
    of another rule cannot be merged with these, so a run whose rule differs from the stored results' recomputes
    everyone.
    """
    kb = kb or load()
    rule = kb.baseline_rule(baseline_rule).id
    if engine is not None and rule != kb.baseline_rule().id:
        raise ValueError(f"baseline rule {rule!r}: the Spark engine runs the default rule only "
                         f"({kb.baseline_rule().id}); use DuckDB for another rule")
    out = results_dir(store)
    out.mkdir(parents=True, exist_ok=True)
    state = _read_state(out)
    if state and state.get("layout") != LAYOUT:
        state = _migrate(out, state)
    # results of another baseline rule cannot be merged with these, nor results lacking a table (an output
    # added since they were written) completed subject by subject: recompute everyone
    # nor results of other rules: a knowledge file or a stage changed since they were written
    first = (full or not state or engine is not None or state.get("baseline_rule", rule) != rule
             or state.get("rules") != rules_fingerprint(kb, rule)
             or any(not _written(out, t) for t in RESULT_TABLES))
    # an incremental run with no settings of its own runs on a one-thread database the process keeps open
    # (its statements cost their planning: two of them on two cores, side by side, in _run_dag)
    leased = lease() if not first and not duckdb_settings else None
    with snapshot_lock or contextlib.nullcontext():
        # the views list the files present now (an append committing in between leaves its pending file for
        # the next run); an incremental run's changed subjects are read from the parts that may hold them
        pending, pending_files = store.pending()
        con = store.connect(database=leased, prefix=_ALL, few=None if first else pending, few_prefix=_FEW)
    try:
        spill = {"temp_directory": str(out / ".spill")} if first else {}  # beside the results, not the cwd
        for key, value in {**(default_settings() if first else {}), **spill, **(duckdb_settings or {})}.items():
            if not re.fullmatch(r"[a-z_]+", key):
                raise ValueError(f"DuckDB setting name {key!r}: lower-case letters and underscores only")
            con.execute(f"SET {key} = ?", [value])
        try:
            if first:
                with _fold_lock(out):  # a background fold finishes first; none starts until the new state is written
                    res = _surveil_all(con, out, kb, as_of, progress, engine, rule)
            else:
                res = _surveil_some(con, out, state, sorted(pending), kb, as_of, progress, rule,
                                    read_threads=READ_THREADS if leased is not None else None)
        except duckdb.OutOfMemoryException as exc:  # outside a stage (those name themselves: _out_of_memory)
            raise _out_of_memory(con, "reading or writing", exc) from exc
    finally:
        clean = False
        try:
            _release(con)
            con.close()
            clean = True
        finally:
            if leased is not None:  # given back only without its scratch database (else closed)
                give_back(leased) if clean else leased.close()
    store.clear_pending(pending_files)
    return res


@functools.lru_cache(maxsize=8)
def rules_fingerprint(kb: KnowledgeBase, rule: str) -> str:
    """SHA-256 of every stage's SQL (thresholds, code sets and severities from the knowledge files are
    written into it) with the baseline rule: results computed under other rules are never completed
    subject by subject with these; the next run recomputes everyone."""
    sql = "\n".join(f"{st.name}\n{st.sql}" for st in stages(kb, DUCKDB, 0, rule))
    return hashlib.sha256(f"{rule}\n{sql}".encode()).hexdigest()


def default_settings() -> dict[str, str]:
    """DuckDB settings of a full run when the caller gives none: memory capped at a quarter of RAM
    (at most 3 GB) so that the whole process stays under the 4 GB of issue 18; DuckDB spills to a
    temporary folder beyond it. ``MGAKI_DUCKDB_MEMORY`` overrides the cap (e.g. ``8GB``)."""
    env = os.environ.get("MGAKI_DUCKDB_MEMORY")
    if env:
        return {"memory_limit": env}
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return {}
    return {"memory_limit": f"{max(256, min(3072, ram // 4 // 2**20))}MB"}


FULL_RUN_BATCH_ROWS = 4_000_000  # stored rows per batch of a full run (``full_run_batches``): 100 k ICU-shaped
# patients (25 M rows) take 117-119 s in 4 to 16 batches, 173 s in one (spilling past the 3 GB cap)


def full_run_batches(rows: int, buckets: int) -> int:
    """Batches a full run computes its subjects in: a power of two, about ``FULL_RUN_BATCH_ROWS`` stored rows
    each, at most the bucket count of the results' smallest tables (a batch owns whole buckets of every table).

    Every stage computes each subject from that subject's rows alone (what lets an incremental run recompute a
    few subjects), so a batch's results are those subjects' rows of one run over everyone; what a batch holds
    in memory (the stages' intermediate tables, spilled past the cap) is a batch's, not the cohort's."""
    k = 1
    while k * FULL_RUN_BATCH_ROWS < rows and k < max(1, buckets // _FEW_ROWS_SHARE):
        k *= 2
    return k


def _surveil_all(con: duckdb.DuckDBPyConnection, out: Path, kb: KnowledgeBase, as_of: datetime | None,
                 progress: Progress | None, engine: FullRun | None, rule: str) -> SurveillanceResult:
    """Recompute everyone (the connection's store views are named ``all_<table>``), in batches of subjects
    (``full_run_batches``) unless an engine runs it; replace every result table and the timers, log the new
    alerts."""
    data_max = _as_of(con, _ALL)
    as_of = as_of or data_max
    n, rows = con.sql(f"SELECT count(DISTINCT subject_id), count(*) FROM (SELECT subject_id FROM {_ALL}events "
                      f"UNION ALL SELECT subject_id FROM {_ALL}encounters)").fetchall()[0]
    buckets = bucket_count(int(n))
    batches = 1 if engine is not None else full_run_batches(int(rows), buckets)
    seconds: dict[str, float] = {}
    t0 = _time.perf_counter()
    # from here until the new state is written the results are mixed: a crash recomputes everyone
    (out / "state.json").unlink(missing_ok=True)
    shutil.rmtree(out / _DELTA, ignore_errors=True)  # the new buckets hold every subject
    split = out / _BATCHES
    shutil.rmtree(split, ignore_errors=True)
    log_src = result_sql(out, _LOG) if result_files(out, _LOG) else None
    keys = ", ".join(ALERT_KEY)
    no_log = f"(SELECT {keys} FROM ({_log_empty_sql()}) WHERE false)"
    if batches > 1:
        _split_by_batch(con, split, batches, buckets, log_src)
    seconds["split"] = _time.perf_counter() - t0
    folders = [*(RESULT_NAMES.get(nm, nm) for nm in OUTPUTS if nm != "alerts"), _INDEX,
               *([_TIMERS] if engine is None else [])]
    staged = {name: _stage_folder(out / name) for name in folders}
    news: list[pa.Table] = []
    timers: dict[str, int] = {}
    tb = table_buckets(_TIMERS, buckets)
    try:
        for k in range(batches):
            # the log's keys of this batch's subjects (the log is the record; the index only speeds it up)
            logged = _batch_source(split, _LOG, k, no_log) if batches > 1 and log_src else log_src or no_log
            if batches > 1:
                _batch_views(con, split, k)
            elif engine is None:
                for t in _BASE:
                    con.execute(f'CREATE OR REPLACE TEMP VIEW "{t}" AS SELECT * FROM "{_ALL}{t}"')
            if engine is not None:
                res = engine(as_of, kb, progress)
                for name in OUTPUTS:
                    con.register(f"_fresh_{name}", res.tables[RESULT_NAMES.get(name, name)])
                    con.execute(f'CREATE OR REPLACE TEMP TABLE "{name}" AS SELECT * FROM "_fresh_{name}"')
                seconds.update(res.seconds)
            else:
                step = _batch_progress(progress, k, batches)
                as_of, sec = _compute(con, kb, None, as_of, step, timers=True, baseline_rule=rule)
                for name, s in sec.items():
                    seconds[name] = seconds.get(name, 0.0) + s
            t1 = _time.perf_counter()
            for name in OUTPUTS:
                if name != "alerts":
                    rn = RESULT_NAMES.get(name, name)
                    _write_buckets(con, name, staged[rn], table_buckets(rn, buckets), f"_k{k}")
            con.execute(f"CREATE OR REPLACE TEMP TABLE _logged AS SELECT {keys} FROM {logged}")
            new = _new_alerts(con)
            if new.num_rows:
                con.register("_new", new)
                con.execute(f"INSERT INTO _logged SELECT {keys} FROM _new")
                con.unregister("_new")
                news.append(new)
            _write_buckets(con, "_logged", staged[_INDEX], buckets, f"_k{k}")
            if engine is None:
                _write_buckets(con, "_timers_out", staged[_TIMERS], tb, f"_k{k}")
                timers.update({str(b): int(d) for b, d in con.sql(
                    f"SELECT {_bucket_sql('subject_id', tb)}, MIN(due) FROM _timers_out GROUP BY 1").fetchall()})
            for name in (*OUTPUTS, "_logged", "_timers_out"):  # this batch's results are on disk: free them
                con.execute(f'DROP TABLE IF EXISTS "{name}"')
            seconds["write_results"] = seconds.get("write_results", 0.0) + _time.perf_counter() - t1
        t1 = _time.perf_counter()
        if engine is not None:
            shutil.rmtree(out / _TIMERS, ignore_errors=True)  # the timers of the earlier run describe older data
        for name, stage in staged.items():
            _swap_folder(out / name, stage)
    finally:
        for stage in staged.values():
            shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(split, ignore_errors=True)
    new = pa.concat_tables(news) if news else _empty_log()
    _append_log(out, new)
    _write_state(out, {"layout": LAYOUT, "as_of": as_of.isoformat() if as_of else None,
                       "data_max": data_max.isoformat() if data_max else None, "knowledge": kb.version,
                       "rules": rules_fingerprint(kb, rule),
                       "buckets": buckets, "timers": timers, "timers_known": engine is None,
                       "baseline_rule": rule})
    seconds["write_results"] = seconds.get("write_results", 0.0) + _time.perf_counter() - t1
    return SurveillanceResult(ResultTables(out), new, -1, as_of, seconds)


_BATCHES = ".batches"  # in results: the store's rows split by batch, during a full run in batches


def _split_by_batch(con: duckdb.DuckDBPyConnection, split: Path, batches: int, buckets: int,
                    log_src: str | None) -> None:
    """Write the stored rows of the stages' tables once, split by batch (a subject's batch: its bucket modulo
    `batches`, the MD5 taken once per subject), so that a batch reads its own rows only; likewise the alert
    log's keys (`log_src`), those of subjects no stored row names any more included."""
    sources = {t: f'"{_ALL}{t}"' for t in _BASE}
    if log_src:
        sources[_LOG] = log_src
    subjects = " UNION ".join(f"SELECT subject_id FROM {src}" for src in sources.values())
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _batch_of AS
                    SELECT subject_id, {_bucket_sql('subject_id', buckets)} % {batches} AS _k FROM ({subjects}) s""")
    empty = bucket_of("", buckets) % batches  # a row without a subject goes where _write_buckets puts it
    split.mkdir(parents=True)
    for t, src in sources.items():
        cols = ALERT_KEY if t == _LOG else con.sql(f"SELECT * FROM {src} LIMIT 0").columns
        con.execute(f"""COPY (SELECT {', '.join(f'x."{c}"' for c in cols)}, COALESCE(b._k, {empty}) AS _k
                              FROM {src} x LEFT JOIN _batch_of b ON b.subject_id = x.subject_id)
                        TO '{(split / t).as_posix()}'
                        (FORMAT parquet, PARTITION_BY (_k), WRITE_PARTITION_COLUMNS false)""")
    con.execute("DROP TABLE _batch_of")


def _batch_source(split: Path, table: str, k: int, empty: str | None = None) -> str:
    """A FROM source of batch `k`'s rows of `table` (``_split_by_batch``); `empty` (default: the store view's
    rows, none) when the batch has none."""
    folder = split / table / f"_k={k}"
    if not any(folder.glob("*.parquet")):
        return empty or f'(SELECT * FROM "{_ALL}{table}" WHERE false)'
    return f"read_parquet('{(folder / '*.parquet').as_posix()}')"


def _batch_views(con: duckdb.DuckDBPyConnection, split: Path, k: int) -> None:
    """The stages' tables as views of batch `k`'s rows (``_split_by_batch``), under the names the stages read."""
    for t in _BASE:
        cols = ", ".join(f'"{c}"' for c in con.sql(f'SELECT * FROM "{_ALL}{t}" LIMIT 0').columns)
        con.execute(f'CREATE OR REPLACE TEMP VIEW "{t}" AS SELECT {cols} FROM {_batch_source(split, t, k)}')


def _batch_progress(progress: Progress | None, k: int, batches: int) -> Progress | None:
    """`progress` over all batches: stage i of batch k counts as done k * total + i."""
    if progress is None or batches == 1:
        return progress
    p = progress

    def step(name: str, i: int, total: int) -> None:
        p(f"{name} (batch {k + 1}/{batches})", k * total + i, batches * total)
    return step


def _stage_folder(folder: Path) -> Path:
    """An empty folder beside `folder` that ``_write_buckets`` fills and ``_swap_folder`` puts in its place."""
    stage = folder.with_name(f".{folder.name}.new")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def _write_buckets(con: duckdb.DuckDBPyConnection, table: str, stage: Path, buckets: int, tag: str = "") -> None:
    """`table`'s rows into `stage`, one file per bucket (DuckDB writes the partitions). The buckets a call
    writes must not have been written by an earlier call on the same stage (batches own disjoint buckets)."""
    cols = [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall() if r[0] not in ("t", "src")]
    sel = ", ".join(f'"{c}"' for c in cols)
    if not (stage / _SCHEMA).exists():
        con.execute(f"COPY (SELECT {sel} FROM \"{table}\" LIMIT 0) TO '{(stage / _SCHEMA).as_posix()}' "
                    "(FORMAT parquet)")
    parts = stage / f"_parts{tag}"
    # the bucket hashed once per subject, not per row (MD5 of every row cost more than the write)
    sel_x = ", ".join(f'x."{c}"' for c in cols)
    con.execute(f"""COPY (SELECT {sel_x}, COALESCE(k._b, {bucket_of('', buckets)}) AS _b FROM "{table}" x
                          LEFT JOIN (SELECT subject_id, {_bucket_sql('subject_id', buckets)} AS _b
                                     FROM (SELECT DISTINCT subject_id FROM "{table}") d) k
                            ON k.subject_id = x.subject_id
                    ) TO '{parts.as_posix()}'
                    (FORMAT parquet, PARTITION_BY (_b), WRITE_PARTITION_COLUMNS false, ROW_GROUP_SIZE 65536)""")
    if parts.is_dir():
        for d in parts.iterdir():
            files = sorted(d.glob("*.parquet"))
            b = int(d.name.split("=", 1)[1])
            target = _bucket_file(stage, b)
            if target.exists():
                raise RuntimeError(f"{stage.name}: bucket {b} written twice")  # batches own disjoint buckets
            if len(files) == 1:
                os.replace(files[0], target)
            elif files:
                pq.write_table(pa.concat_tables([pq.read_table(f) for f in files]), target)
        shutil.rmtree(parts)


def _swap_folder(folder: Path, stage: Path) -> None:
    """Put `stage` (``_stage_folder``) in the place of `folder`."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(stage, folder)
    shutil.rmtree(old, ignore_errors=True)
    legacy = folder.with_name(f"{folder.name}.parquet")
    legacy.unlink(missing_ok=True)


# the schema's three levels (knowledge.schema.SeverityLevelName), most severe first
_SEVERITY_RANK = "CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 WHEN 'info' THEN 2 ELSE 3 END"


def _new_alerts(con: duckdb.DuckDBPyConnection, candidates: str = "alerts") -> pa.Table:
    """Candidates (`candidates`: a table, or a FROM-clause source in parentheses) not in ``_logged``, once per
    key (the most severe, then the first detail: the same row whichever run logs it), stamped now."""
    keys = ", ".join(ALERT_KEY)
    now = datetime.now(UTC).replace(tzinfo=None)
    return con.sql(f"""
        SELECT DISTINCT ON ({keys}) {_ALERT_COLS},
               CAST(? AS TIMESTAMP) AS emitted_at FROM {candidates} c
        WHERE NOT EXISTS (SELECT 1 FROM _logged l WHERE l.subject_id = c.subject_id
          AND l.encounter_id IS NOT DISTINCT FROM c.encounter_id AND l.kind = c.kind AND l.time = c.time)
        ORDER BY {keys}, {_SEVERITY_RANK}, detail""", params=[now]).to_arrow_table()


def _append_log(out: Path, new: pa.Table) -> None:
    """One new part of the alert log (nothing when no alert is new); small parts merged now and then."""
    if new.num_rows == 0:
        return
    folder = out / _LOG
    folder.mkdir(exist_ok=True)
    write_parquet_atomic(new, folder / f"part-{_time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet")
    EventStore(out).compact(_LOG, schema=new.schema)


def _surveil_some(con: duckdb.DuckDBPyConnection, out: Path, state: dict[str, Any], pending: list[str],
                  kb: KnowledgeBase, as_of: datetime | None, progress: Progress | None,
                  rule: str, read_threads: int | None = None) -> SurveillanceResult:
    buckets = int(state["buckets"])
    t0 = _time.perf_counter()
    data_max = datetime.fromisoformat(state["data_max"]) if state.get("data_max") else None
    if pending:
        _restrict(con, pending)
        _materialise(con, _FEW, read_threads)  # their rows, read once (from the parts that may hold them)
        seen = _as_of(con)  # the changed subjects' latest time: the store's only moves with theirs
        data_max = max((t for t in (data_max, seen) if t is not None), default=None)
    as_of = as_of or data_max
    a = _epoch(as_of)
    timers = dict(state.get("timers", {}))
    due = _due_timers(out, timers, a)  # also moves each bucket read to its next timer
    # a timer's alert is logged as it is (the stages would find it again: ``_timer_stages``), unless it falls
    # due at this very second (whether it is due at its own second depends on the rule): those recompute
    at_a = set(due.filter(pc.equal(due["due"], a)).column("subject_id").to_pylist())
    recompute = set(pending) | at_a
    if not state.get("timers_known", True) and state.get("as_of"):
        # results an engine wrote carry no timers: the subjects still admitted then, once, as before
        prev = datetime.fromisoformat(state["as_of"])
        with _store_views(con) if pending else contextlib.nullcontext():
            rows = con.execute(f'SELECT DISTINCT subject_id FROM {_ALL}encounters WHERE "end" IS NULL OR "end" > ?',
                               [prev]).fetchall()
        recompute |= {r[0] for r in rows}
    subjects = sorted(recompute)
    due = due.filter(pc.and_(pc.less(due["due"], a), pc.invert(pc.is_in(
        due["subject_id"], pa.array(subjects, pa.string())))))
    seconds: dict[str, float] = {"plan": _time.perf_counter() - t0}
    new = pa.table({})
    if subjects:
        if not pending:
            _restrict(con, subjects)
        elif subjects != pending:  # subjects whose timer fell due, with the changed ones
            _materialise_more(con, sorted(set(subjects) - set(pending)), read_threads)
        t1 = _time.perf_counter()
        _, sec = _compute(con, kb, subjects, as_of, progress, timers=True, restricted=True, baseline_rule=rule)
        seconds.update(sec)
        seconds["stages"] = _time.perf_counter() - t1  # wall time (stages run two at a time)
    if subjects or due.num_rows:
        t1 = _time.perf_counter()
        new = _write_some(con, out, subjects, buckets, timers, a, due)
        seconds["write_results"] = _time.perf_counter() - t1
    _write_state(out, {**state, "as_of": as_of.isoformat() if as_of else None,
                       "data_max": data_max.isoformat() if data_max else None, "knowledge": kb.version,
                       "rules": rules_fingerprint(kb, rule),
                       "timers": timers, "timers_known": True, "baseline_rule": rule})
    if new.num_rows == 0:
        new = _empty_log()
    return SurveillanceResult(ResultTables(out), new, len(subjects), as_of, seconds, due.num_rows)


LOG_SCHEMA = pa.schema([("subject_id", pa.string()), ("encounter_id", pa.string()), ("kind", pa.string()),
                        ("time", pa.timestamp("us")), ("severity", pa.string()), ("detail", pa.string()),
                        ("value", pa.float64()), ("emitted_at", pa.timestamp("us"))])


def _empty_log() -> pa.Table:
    return LOG_SCHEMA.empty_table()


def _due_timers(out: Path, timers: dict[str, int], a: int) -> pa.Table:
    """The timers' alerts due at as-of `a` (``due <= a``, found at an earlier as-of): only the buckets whose
    earliest timer is due are read. `timers` (bucket -> its earliest timer) moves each bucket read to its
    earliest timer at or after `a` (one due earlier is logged by this run, or was by an earlier one)."""
    found = []
    for b, when in list(timers.items()):
        if when > a:
            continue
        path = _bucket_file(out / _TIMERS, int(b))
        if not path.exists():
            timers.pop(b)
            continue
        t = _read_one(path)
        _next_timer(timers, b, t, a)
        found.append(t.filter(pc.and_(pc.less_equal(t["due"], a), pc.greater(pa.scalar(a, pa.int64()), t["after"]))))
    return pa.concat_tables(found) if found else _empty_pending()


def _next_timer(timers: dict[str, int], b: str, t: pa.Table, a: int) -> None:
    """Bucket `b`'s entry in `timers`: the earliest timer of its file `t` at or after as-of `a` (earlier ones are
    logged by this run or were by an earlier one); none left: no entry."""
    later = pc.filter(t["due"], pc.greater_equal(t["due"], a))
    if len(later):
        timers[b] = int(pc.min(later).as_py())
    else:
        timers.pop(b, None)


def _empty_pending() -> pa.Table:
    return pa.schema([*LOG_SCHEMA.remove(LOG_SCHEMA.get_field_index("emitted_at")),
                      ("due", pa.int64()), ("after", pa.int64())]).empty_table()


def _write_some(con: duckdb.DuckDBPyConnection, out: Path, subjects: list[str], buckets: int,
                timers: dict[str, int], a: int, due: pa.Table) -> pa.Table:
    """Write the recomputed subjects' rows as one generation (``_write_delta``; folded into the buckets
    every ``DELTA_FOLD_GENS`` runs) and their timers; log their new alerts and the timers' `due` alerts of
    the others (``_due_timers``) not logged yet."""
    batch = _Batch()
    kept = 0
    timer_buckets: dict[int, set[str]] = {}
    tb = table_buckets(_TIMERS, buckets)
    if subjects:
        fresh_of = {RESULT_NAMES.get(name, name): _drop_internal(con.sql(f'SELECT * FROM "{name}"').to_arrow_table())
                    for name in OUTPUTS if name != "alerts"}
        kept = _write_delta(out, fresh_of, subjects)
        fresh_timers = con.sql("SELECT * FROM _timers_out").to_arrow_table()
        timer_buckets = _by_bucket(subjects, tb)
        _replace_rows(out / _TIMERS, fresh_timers, timer_buckets, tb, batch)
    # what the log holds for these subjects: their buckets of the index
    emitting = sorted({*subjects, *due.column("subject_id").to_pylist()})
    index = [_bucket_file(out / _INDEX, b) for b in _by_bucket(emitting, buckets)]
    index = [f for f in index if f.exists()]
    src = ("read_parquet([" + ", ".join(f"'{f.as_posix()}'" for f in index) + "])") if index else \
        f"(SELECT {', '.join(ALERT_KEY)} FROM ({_log_empty_sql()}) WHERE false)"
    con.register("_emitting", pa.table({"subject_id": pa.array(emitting, pa.string())}))
    con.execute(f"CREATE OR REPLACE TEMP TABLE _logged AS SELECT * FROM {src} "
                "WHERE subject_id IN (SELECT subject_id FROM _emitting)")
    con.unregister("_emitting")
    con.register("_due", due.drop_columns(["due", "after"]))
    new = _new_alerts(con, f"(SELECT * FROM _due UNION ALL SELECT {_ALERT_COLS} FROM alerts)" if subjects else "_due")
    con.unregister("_due")
    batch.commit()
    _append_log(out, new)  # the log before its index: a crash between them re-finds the alerts in the log
    if new.num_rows:
        keys = new.select(list(ALERT_KEY))
        touched = {bucket_of(s, buckets) for s in keys.column("subject_id").to_pylist()}
        index_batch = _Batch()
        _replace_rows(out / _INDEX, keys, {b: set() for b in touched}, buckets, index_batch)
        index_batch.commit()
    for b in timer_buckets:  # each rewritten timer file's earliest timer not yet past
        path = _bucket_file(out / _TIMERS, b)
        left = next((t for t, p in batch.writes if p == path), None)
        if left is not None:
            _next_timer(timers, str(b), left, a)
        elif path in batch.deletes or not path.exists():
            timers.pop(str(b), None)
    if kept >= DELTA_FOLD_GENS:
        _start_fold(out, urgent=kept > DELTA_URGENT_GENS)
    return new


class _Batch:
    """Files replaced together: each written under a temporary name, all synced at once (in threads, so
    the file system commits them together), then renamed into place, then their folders synced."""

    def __init__(self) -> None:
        self.writes: list[tuple[pa.Table, Path]] = []
        self.deletes: list[Path] = []

    def write(self, tab: pa.Table, path: Path) -> None:
        self.writes.append((tab, path))

    def delete(self, path: Path) -> None:
        self.deletes.append(path)

    def commit(self, threads: bool = True, pace: float = 0.0) -> None:
        """`threads`: write and sync the files in threads. Else one after the other, each followed by a
        pause of `pace` times its own duration (a background fold: the disk left to the runs meanwhile)."""
        tmps = [path.with_name(f".{path.name}.tmp") for _, path in self.writes]

        def write(tab: pa.Table, tmp: Path) -> None:
            t0 = _time.perf_counter()
            _write_synced(tab, tmp)
            if pace:
                _time.sleep(pace * (_time.perf_counter() - t0))

        with ThreadPoolExecutor(max_workers=8) if threads else contextlib.nullcontext() as pool:
            # in threads, Parquet encoding releases the GIL and the syncs go together
            each = pool.map if pool is not None else map
            list(each(write, [tab for tab, _ in self.writes], tmps))
            for tmp, (_, path) in zip(tmps, self.writes, strict=True):
                os.replace(tmp, path)
            for path in self.deletes:
                path.unlink(missing_ok=True)
            list(each(_fsync, {p.parent for _, p in self.writes} | {p.parent for p in self.deletes}))


def _read_one(path: Path) -> pa.Table:
    """One result file, whole: ``ParquetFile.read`` on this thread (0.40 ms a small bucket file, against 0.66 ms for
    ``pq.read_table``, whose dataset layer and thread pool cost more than such a file's decoding)."""
    with pq.ParquetFile(path) as f:
        return f.read(use_threads=False)


def _read_many(paths: Iterable[Path], threads: bool = True) -> dict[Path, pa.Table]:
    """The existing files of `paths` (``_read_one``), in threads (Parquet decoding releases the GIL)."""
    found = sorted({p for p in paths if p.exists()})
    if len(found) <= 1 or not threads:
        return {p: _read_one(p) for p in found}
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(found, pool.map(_read_one, found), strict=True))


def _write_synced(tab: pa.Table, tmp: Path) -> None:
    pq.write_table(tab, tmp, row_group_size=ROW_GROUP)
    _fsync(tmp)


def _replace_rows(folder: Path, fresh: pa.Table, by_bucket: Mapping[int, set[str]], buckets: int,
                  batch: _Batch, cache: Mapping[Path, pa.Table] | None = None, keep_empty: bool = False) -> None:
    """In each bucket of `by_bucket`: drop the rows of its subjects, add `fresh`'s rows of that bucket
    (`cache`: files already read). A bucket left empty is removed, or with `keep_empty` written with no
    rows (a fold: a reader may have listed it)."""
    folder.mkdir(exist_ok=True)
    if not (folder / _SCHEMA).exists():
        pq.write_table(fresh.slice(0, 0), folder / _SCHEMA)
    if cache is None:  # the buckets' files read in threads, not one after the other
        cache = _read_many(_bucket_file(folder, b) for b in by_bucket)
    fresh_b = _row_buckets(fresh.column("subject_id"), buckets)
    extra = set(pc.unique(fresh_b).to_pylist()) - set(by_bucket)
    for b in [*by_bucket, *sorted(extra)]:
        drop = by_bucket.get(b, set())
        path = _bucket_file(folder, b)
        mine = fresh.filter(pc.equal(fresh_b, b)) if fresh.num_rows else fresh
        parts = []
        if path in cache or path.exists():
            old = cache[path] if path in cache else _read_one(path)
            mine = mine.cast(old.schema)
            if drop:
                theirs = pc.is_in(old["subject_id"], pa.array(sorted(drop), pa.string()))
                if _same_rows(old.filter(theirs), mine):
                    continue  # the recomputed subjects' rows did not change: the file stays as it is
                old = old.filter(pc.invert(theirs))
            parts.append(old)
        elif mine.num_rows == 0:
            continue
        tab = pa.concat_tables([*parts, mine]) if parts else mine
        if tab.num_rows == 0 and not keep_empty:
            batch.delete(path)
        else:
            batch.write(tab, path)


def _same_rows(a: pa.Table, b: pa.Table) -> bool:
    """Whether two small tables hold the same rows in any order (NaN never equal: then rewrite)."""
    if a.num_rows != b.num_rows or a.schema != b.schema:
        return False
    if a.num_rows == 0:
        return True
    keys = [(c, "ascending") for c in a.column_names]
    try:
        return bool(a.sort_by(keys).equals(b.sort_by(keys)))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # a column type arrow cannot sort
        return False


def _migrate(out: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Results of an earlier layout; the state to go on from.

    Layouts 2 (a timer per subject, its earliest due time, instead of its alerts not yet due) and 3 (the tables
    of many rows in as many buckets as the others): recomputed by the full run that follows (empty state), once;
    their alert log, kept, is not emitted again. The one-file-per-table layout: the alert log becomes the first
    log part, the rest is recomputed by the full run that follows (empty state)."""
    if state.get("layout") in (2, 3):
        _log.warning("surveillance results of layout %s: recomputing every patient once (the result tables of "
                     "many rows move to more buckets); the alert log is kept", state.get("layout"))
        (out / "state.json").unlink(missing_ok=True)
        return {}
    legacy_log = out / "alerts.parquet"
    if legacy_log.exists():
        (out / _LOG).mkdir(exist_ok=True)
        os.replace(legacy_log, out / _LOG / "part-00000000000000000000-legacy.parquet")
    for name in RESULT_TABLES:
        (out / f"{name}.parquet").unlink(missing_ok=True)
    (out / "state.json").unlink(missing_ok=True)
    return {}
