"""Differential (issue 18): after every increment, the incremental results equal a full recomputation.

The feed is replayed in time order: at each cut the store holds what the hospital system knew then
(results up to the cut, encounters begun by then, those still running without an end). After each
increment the incremental run (only the subjects whose data changed or whose timer came due, only
their buckets rewritten) must give row for row what a full recomputation of a fresh store with the
same data gives, and its alert log must hold exactly the alerts the full recomputations gave at the
successive cuts (alerts are logged once and never withdrawn). Real-shaped (MIMIC-IV demo subset, with
the maintenance-haemodialysis and bladder-irrigation patients) and synthetic cohorts, with buckets small
enough that a subject's neighbours share its files. Every result table is compared, the issue-13 ones
(kidney_status, uo_weight_rejected, suspect_specimens) included; a change of baseline rule recomputes
everyone and gives that rule's full run.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from tests.surveillance.cohort import random_cohort

from mgaki.adapters.mimic import read_mimic
from mgaki.events import EventStore, normalize
from mgaki.knowledge import KnowledgeBase
from mgaki.surveillance import SurveillanceResult, pipeline, run, surveil
from mgaki.surveillance.pipeline import RESULT_TABLES, ResultTables

DATA = Path(__file__).parents[1] / "data"
MIMIC = DATA / "mimic-iv-demo-subset"
MIMIC_ESKD = DATA / "mimic-iv-demo-10010471"  # maintenance haemodialysis: kidney_status not applicable
MIMIC_IRRIGATION = DATA / "mimic-iv-demo-10007818"  # GU irrigation netted from urine output
KEY = ("subject_id", "encounter_id", "kind", "time")
TIME_OF = {"events": "time", "weights": "time", "medications": "start", "contexts": "time"}


def _known_at(tables: dict[str, pa.Table], cut: datetime) -> dict[str, pa.Table]:
    """What the feed had delivered at `cut`: rows dated up to it, encounters begun, open ones without an end."""
    out: dict[str, pa.Table] = {}
    for name, tab in tables.items():
        if name == "quarantine":
            continue
        if name in TIME_OF:
            col = tab[TIME_OF[name]]
            out[name] = tab.filter(pc.or_kleene(pc.is_null(col), pc.less_equal(col, cut)))
        elif name == "encounters":
            begun = tab.filter(pc.less_equal(tab["start"], cut))
            still_open = pc.fill_null(pc.greater(begun["end"], cut), False)
            ends = pc.if_else(still_open, pa.nulls(begun.num_rows, begun.schema.field("end").type), begun["end"])
            out[name] = begun.set_column(begun.schema.get_field_index("end"), "end", ends)
        else:
            out[name] = tab
    return out


def _rows(tab: pa.Table) -> list[tuple[object, ...]]:
    """Rows as sorted tuples; floats to 12 significant digits (window sums may add in another order)."""
    def norm(x: object) -> object:
        if isinstance(x, float):
            return "NaN" if math.isnan(x) else float(f"{x:.12g}")
        return x
    return sorted((tuple(norm(v) for v in r.values()) for r in tab.to_pylist()), key=repr)


def _cuts(events: pa.Table, n: int) -> list[datetime]:
    times = sorted(events["time"].to_pylist())
    return [times[len(times) * (i + 1) // (n + 1)] for i in range(n)]


def _replay(tmp: Path, tables: dict[str, pa.Table], steps: int, rules: list[str | None] | None = None,
            seen: dict[str, int] | None = None) -> list[int]:
    """Replay in `steps` + 1 increments; `rules`: the baseline rule of each run (None: the default);
    `seen`: filled with the most rows each result table had at a cut."""
    inc = EventStore(tmp / "inc")
    cuts = [*_cuts(tables["events"], steps), max(tables["events"]["time"].to_pylist())]
    rules = rules or [None] * len(cuts)
    expected_log: set[tuple[object, ...]] = set()
    emitted = timer_alerts = 0
    recomputed = []
    for i, (cut, rule) in enumerate(zip(cuts, rules, strict=True)):
        now = _known_at(tables, cut)
        inc.append(now)
        got = surveil(inc, baseline_rule=rule)
        ref_store = EventStore(tmp / f"full{i}")
        ref_store.append(now)
        ref = surveil(ref_store, full=True, baseline_rule=rule)
        assert got.as_of == ref.as_of, cut
        for name in RESULT_TABLES:
            assert _rows(got.tables[name]) == _rows(ref.tables[name]), (cut, name)
            if seen is not None:
                seen[name] = max(seen.get(name, 0), got.tables[name].num_rows)
        # whole rows but the emission stamp: a timer's alert, logged as the timer kept it, is the full run's
        expected_log |= set(_rows(ref.tables["alerts"].drop_columns(["emitted_at"])))
        log = got.tables["alerts"].drop_columns(["emitted_at"])
        assert sorted(map(repr, _rows(log))) == sorted(map(repr, expected_log)), cut
        emitted += got.new_alerts.num_rows
        assert emitted == log.num_rows  # each alert logged once, by the run that first saw it
        timer_alerts += got.timer_alerts
        if seen is not None:
            for kind in log.column("kind").to_pylist():
                seen[f"alerts/{kind}"] = seen.get(f"alerts/{kind}", 0) + 1
        recomputed.append(got.subjects_recomputed)
    if seen is not None:
        seen["timer_alerts"] = timer_alerts
    return recomputed


@pytest.fixture
def small_buckets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(pipeline, "SUBJECTS_PER_BUCKET", 4)  # several subjects per file, several files
    monkeypatch.setattr(pipeline, "_FEW_ROWS_SHARE", 2)  # the tables of about a row per subject too
    # increments leave generations of results, folded into the buckets (in a background thread: a process
    # per fold would cost its start-up every third run) once three are pending: the comparisons after each
    # increment read results with generations pending, being folded, and just folded
    monkeypatch.setattr(pipeline, "DELTA_FOLD_GENS", 3)
    monkeypatch.setattr(pipeline, "FOLD_IN", "thread")
    yield
    pipeline.wait_for_folds()


def _plant_issue13(tables: dict[str, pa.Table], n: int = 4) -> dict[str, pa.Table]:
    """In the first `n` admissions with weights: a Mg spike that returns (a suspect specimen by the delta check)
    and an outlying weight just before urine charting begins among consistent earlier ones (rejected)."""
    enc = {r["subject_id"]: r for r in tables["encounters"].to_pylist()}
    wts = tables["weights"].to_pylist()
    ev, wt = [], []
    for w in wts[:n]:
        s, start, kg = w["subject_id"], w["time"], w["weight_kg"]
        e = enc[s]["encounter_id"]
        for h, v in ((3, 10.0), (5, 2.3)):  # Mg at start + 2 h is the cohort's own
            ev.append({"subject_id": s, "encounter_id": e, "time": start + timedelta(hours=h),
                       "code": "test/magnesium", "analyte": "magnesium", "numeric_value": v, "unit": "mg/dL",
                       "source": f"spike{s}{h}"})
        for days, f in ((60, 1.0), (20, 1.02), (2, 0.99)):
            wt.append({"subject_id": s, "time": start - timedelta(days=days), "weight_kg": kg * f, "source": "test"})
        wt.append({"subject_id": s, "time": start + timedelta(minutes=30), "weight_kg": kg * 0.7, "source": "test"})
    return {**tables,
            "events": pa.concat_tables([tables["events"], pa.Table.from_pylist(ev, schema=tables["events"].schema)]),
            "weights": pa.concat_tables([tables["weights"],
                                         pa.Table.from_pylist(wt, schema=tables["weights"].schema)])}


@pytest.mark.usefixtures("small_buckets")
def test_synthetic_increments_equal_full_recomputation(tmp_path: Path) -> None:
    seen: dict[str, int] = {}
    recomputed = _replay(tmp_path, _plant_issue13(random_cohort(40, seed=18)), steps=5, seen=seen)
    # the issue-13 tables were compared on rows, not only on being empty alike
    assert seen["kidney_status"] and seen["suspect_specimens"] and seen["uo_weight_rejected"], seen
    assert seen["alerts/suspect_specimen"], seen  # the held spikes' repeat requests, logged as a full run gives them
    assert recomputed[0] == -1  # the first run computes everyone
    assert any(0 <= r < 40 for r in recomputed[1:])  # later ones only whom the increment touched
    results = tmp_path / "inc" / "results"
    files = {t: len(list((results / t).glob("b*.parquet"))) for t in ("kdigo_urine", "mg_trajectory")}
    assert files["kdigo_urine"] > files["mg_trajectory"] > 1, files


def _mimic() -> dict[str, pa.Table]:
    parts = [normalize(read_mimic(p)) for p in (MIMIC, MIMIC_ESKD, MIMIC_IRRIGATION)]
    return {name: pa.concat_tables([p[name] for p in parts if name in p], promote_options="permissive")
            for name in {n for p in parts for n in p}}


@pytest.mark.usefixtures("small_buckets")
def test_mimic_subset_increments_equal_full_recomputation(tmp_path: Path) -> None:
    seen: dict[str, int] = {}
    _replay(tmp_path, _mimic(), steps=4, seen=seen)
    # the issue-13 tables were compared on rows, not only on being empty alike
    assert seen["kidney_status"] > 0, seen
    status = ResultTables(tmp_path / "inc" / "results")["kidney_status"]
    assert "10010471" in status.filter(pc.not_equal(status["kdigo_status"], "applicable"))["subject_id"].to_pylist()


@pytest.mark.usefixtures("small_buckets")
def test_a_baseline_rule_change_recomputes_everyone(tmp_path: Path) -> None:
    """Results of one baseline rule are never completed with another's: the run that changes the rule
    recomputes everyone (and equals that rule's full run); the runs after it are incremental again."""
    recomputed = _replay(tmp_path, random_cohort(30, seed=13), steps=3,
                         rules=[None, None, "kdigo_7day", "kdigo_7day"])
    assert recomputed[0] == recomputed[2] == -1, recomputed
    assert 0 <= recomputed[1] < 30 and 0 <= recomputed[3] < 30, recomputed
    assert pipeline._read_state(tmp_path / "inc" / "results")["baseline_rule"] == "kdigo_7day"


@pytest.mark.usefixtures("small_buckets")
def _log_rows(res: SurveillanceResult) -> list[tuple[object, ...]]:
    return _rows(res.tables["alerts"].drop_columns(["emitted_at"]))


def _timer_store(tmp: Path, engine_first: bool = False) -> tuple[EventStore, dict[str, pa.Table], datetime]:
    """Twelve patients known a third of the way in, surveilled (by an engine: no timers); the cohort; the cut."""
    tables = random_cohort(12, seed=3)
    enc = tables["encounters"]
    store = EventStore(tmp / "s")
    first_cut = min(enc["start"].to_pylist()) + (max(enc["end"].to_pylist()) - min(enc["start"].to_pylist())) / 3
    store.append(_known_at(tables, first_cut))

    def engine(as_of: datetime | None, kb: KnowledgeBase, progress: object) -> SurveillanceResult:
        return run(store, as_of=as_of, kb=kb)

    surveil(store, engine=engine if engine_first else None)
    return store, tables, first_cut


def _full_run_of(tmp: Path, name: str, *parts: dict[str, pa.Table]) -> SurveillanceResult:
    ref = EventStore(tmp / name)
    for part in parts:
        ref.append(part)
    return surveil(ref, full=True)


@pytest.mark.parametrize("engine_first", [False, True], ids=["duckdb", "engine-without-timers"])
def test_a_due_timer_logs_its_alert_without_recomputing_its_subject(tmp_path: Path, engine_first: bool) -> None:
    """A monitoring gap falls due while the patient's own data is unchanged: another patient's result
    moves the clock, and the gap alert the timer kept is logged as it is, the full run's row for row,
    with only the patient whose result came recomputed. After an engine's full run (Spark sets no
    timers), the subjects open then are recomputed instead, once."""
    store, tables, first_cut = _timer_store(tmp_path, engine_first)
    state = pipeline._read_state(store.root / "results")
    if engine_first:
        assert state["timers"] == {} and not state["timers_known"]
    else:
        assert state["timers"], "an open encounter at risk has a monitoring-gap timer"
    # one later result for one subject moves as-of past some timers of the others
    ev = tables["events"]
    later = ev.filter(pc.greater(ev["time"], first_cut))
    one = later.slice(later.num_rows - 1, 1)
    store.append({"events": one})
    got = surveil(store)
    full = _full_run_of(tmp_path, "r", _known_at(tables, first_cut), {"events": one})
    assert got.as_of == full.as_of
    assert _log_rows(got) == _log_rows(full)
    if engine_first:
        assert got.subjects_recomputed > 1 and got.timer_alerts == 0
    else:
        assert got.subjects_recomputed == 1 and got.timer_alerts >= 1
        timer_kinds = set(got.new_alerts["kind"].to_pylist()) - set(
            full.tables["alerts"].filter(pc.equal(full.tables["alerts"]["subject_id"], one["subject_id"][0]))
            ["kind"].to_pylist())
        assert timer_kinds <= {"no_mg_48h"}


def test_a_timer_due_at_the_run_s_own_second_recomputes_its_subject(tmp_path: Path) -> None:
    """Whether a gap alert is due at its own second depends on the rule (a gap still open at the as-of
    counts up to the as-of, not through it): a run whose as-of is a timer's second recomputes that
    patient instead of logging the kept alert, and the log stays the full run's at that second and
    one minute later."""
    store, tables, first_cut = _timer_store(tmp_path)
    state = pipeline._read_state(store.root / "results")
    files = sorted((store.root / "results" / "_timers").glob("b*.parquet"))
    timers = pa.concat_tables([pq.read_table(f) for f in files])
    a0 = int(datetime.fromisoformat(state["as_of"]).replace(tzinfo=UTC).timestamp())
    pending = timers.filter(pc.greater(timers["due"], a0)).sort_by("due")
    assert pending.num_rows, "a gap alert not yet due"
    subject, due = pending["subject_id"][0].as_py(), pending["due"][0].as_py()
    other = next(s for s in tables["encounters"]["subject_id"].to_pylist() if s != subject)
    at = datetime.fromtimestamp(due, UTC).replace(tzinfo=None)
    base = _known_at(tables, first_cut)
    ev = base["events"]

    def creatinine(when: datetime, source: str) -> dict[str, pa.Table]:
        return {"events": _event_like(ev, other, when, source)}

    first = creatinine(at, "test/at-due")
    store.append(first)
    got = surveil(store)
    assert got.subjects_recomputed == 2 and got.timer_alerts == 0  # the other patient, and the timer's
    assert _log_rows(got) == _log_rows(_full_run_of(tmp_path, "r1", base, first))
    second = creatinine(at + timedelta(minutes=1), "test/after-due")
    store.append(second)
    got = surveil(store)
    full = _full_run_of(tmp_path, "r2", base, first, second)
    assert _log_rows(got) == _log_rows(full)
    logged = {(r["subject_id"], r["kind"], r["time"]) for r in full.tables["alerts"].to_pylist()}
    assert (subject, "no_mg_48h", at) in logged  # the timer's alert, logged a minute after its second


def _event_like(ev: pa.Table, subject: str, when: datetime, source: str) -> pa.Table:
    """One creatinine of `subject` at `when` in the schema of events `ev` (other columns null)."""
    row = {name: [None] for name in ev.schema.names}
    row.update({"subject_id": [subject], "time": [when], "code": ["LOINC/2160-0"], "analyte": ["creatinine"],
                "numeric_value": [1.0], "unit": ["mg/dL"], "source": [source]})
    return pa.table(row).cast(ev.schema)


@pytest.mark.parametrize("layout", [2, 3])
def test_results_of_an_earlier_layout_are_recomputed_once_and_log_what_the_full_run_logs(
        tmp_path: Path, layout: int) -> None:
    """Results of layout 2 (a timer was a subject's earliest due time) or 3 (the tables of many rows in as many
    buckets as the others): the next run recomputes everyone once, writes the buckets of this layout, and logs
    what a full run logs, none of the logged alerts again."""
    store, tables, first_cut = _timer_store(tmp_path)
    out = store.root / "results"
    state = pipeline._read_state(out)
    if layout == 2:
        for f in (out / "_timers").glob("b*.parquet"):  # the earlier layout's timer files
            t = pq.read_table(f)
            pq.write_table(pa.table({"subject_id": t["subject_id"], "due": t["due"], "after": t["after"]}), f)
    for name in pipeline._MANY_ROWS:  # the earlier layouts' buckets of those tables: as many as the others'
        rows = pa.concat_tables([pq.read_table(f) for f in sorted((out / name).glob("b*.parquet"))])
        for f in (out / name).glob("b*.parquet"):
            f.unlink()
        b = pipeline._row_buckets(rows.column("subject_id"), int(state["buckets"]))
        for k in pc.unique(b).to_pylist():
            pq.write_table(rows.filter(pc.equal(b, k)), pipeline._bucket_file(out / name, k))
    pipeline._write_state(out, {**state, "layout": layout})
    logged = _rows(ResultTables(out)["alerts"].drop_columns(["emitted_at"]))  # the earlier layout's log
    ev = tables["events"]
    one = ev.filter(pc.greater(ev["time"], first_cut)).sort_by("time").slice(0, 1)
    store.append({"events": one})
    got = surveil(store)
    assert got.subjects_recomputed == -1 and logged  # everyone, once
    full = _full_run_of(tmp_path, "r", _known_at(tables, first_cut), {"events": one})
    assert _log_rows(got) == _log_rows(full)
    assert not set(logged) & set(_rows(got.new_alerts.drop_columns(["emitted_at"])))  # none logged again
    after = pipeline._read_state(out)
    assert after["layout"] == pipeline.LAYOUT == 4 and after["timers_known"]
    assert "kind" in pq.read_schema(next((out / "_timers").glob("b*.parquet"))).names
    for name in pipeline._MANY_ROWS:  # each row in its bucket of this layout
        nb = pipeline.table_buckets(name, int(after["buckets"]))
        assert nb == 8 * int(after["buckets"])
        for f in (out / name).glob("b*.parquet"):
            subjects = pq.read_table(f).column("subject_id").unique().to_pylist()
            assert {pipeline.bucket_of(x, nb) for x in subjects if x is not None} <= {int(f.stem[1:])}
        assert _rows(got.tables[name]) == _rows(full.tables[name])
    again = surveil(store)  # and the run after it is incremental again
    assert again.subjects_recomputed >= 0


def test_of_two_alerts_with_one_key_the_more_severe_is_logged() -> None:
    """Severities are ranked critical > warning > info, not by their names' spelling ('info' < 'warning')."""
    con = duckdb.connect()
    t = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)
    con.register("cand", pa.table({"subject_id": ["s", "s"], "encounter_id": ["e", "e"], "kind": ["k", "k"],
                                   "time": [t, t], "severity": ["info", "warning"], "detail": ["a", "b"],
                                   "value": pa.array([None, None], pa.float64())}))
    con.execute("CREATE TEMP TABLE _logged AS SELECT 's' AS subject_id, 'e' AS encounter_id, 'x' AS kind, "
                "TIMESTAMP '2026-01-01' AS time")
    new = pipeline._new_alerts(con, "cand")
    assert new.select(["severity", "detail"]).to_pylist() == [{"severity": "warning", "detail": "b"}]


def test_results_of_the_one_file_layout_are_migrated_and_their_alerts_not_emitted_again(tmp_path: Path) -> None:
    """A store surveilled before issue 18 (results/<table>.parquet, results/alerts.parquet): the next run
    keeps that log as its first part, recomputes the tables, and emits none of the logged alerts again."""
    store = EventStore(tmp_path / "s")
    store.append(random_cohort(10, seed=2))
    first = surveil(store)
    out = store.root / "results"
    log = first.tables["alerts"]
    assert log.num_rows > 0
    # rebuild the earlier layout from this run's results
    for name in RESULT_TABLES:
        pq.write_table(first.tables[name], out / f"{name}.parquet")
    pq.write_table(log, out / "alerts.parquet")
    for folder in out.iterdir():
        if folder.is_dir():
            shutil.rmtree(folder)
    (out / "state.json").write_text('{"as_of": null, "knowledge": "old"}')
    again = surveil(store)
    assert again.new_alerts.num_rows == 0
    assert _rows(again.tables["alerts"]) == _rows(log)
    assert not (out / "alerts.parquet").exists() and not (out / "kdigo_urine.parquet").exists()
    assert _rows(again.tables["kdigo_urine"]) == _rows(first.tables["kdigo_urine"])


def test_results_lacking_a_table_are_recomputed_in_full(tmp_path: Path) -> None:
    """Results written before an output existed (e.g. issue 13's suspect_specimens): the next run recomputes
    everyone instead of filling the new table for the changed subjects only."""
    tables = _plant_issue13(random_cohort(8, seed=5))
    store = EventStore(tmp_path / "s")
    store.append(tables)
    first = surveil(store)
    before = _rows(first.tables["suspect_specimens"])
    assert before
    shutil.rmtree(store.root / "results" / "suspect_specimens")
    ev = tables["events"]
    store.append({"events": ev.slice(ev.num_rows - 1, 1).set_column(
        ev.schema.get_field_index("source"), "source", pa.array(["again"], pa.string()))})
    again = surveil(store)
    assert again.subjects_recomputed == -1
    assert _rows(again.tables["suspect_specimens"]) == before


@pytest.mark.usefixtures("small_buckets")
def test_increments_on_one_core_equal_those_on_two(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An incremental run creates its stage tables two at a time on a machine with two cores or more
    (``_run_dag``) and one after the other on one core; both equal the full recomputation, and neither
    leaves its scratch database attached to the process's DuckDB databases. The stages run on one-thread
    databases (``normalize.lease``): two statements on two cores, not two threads each."""
    tables = random_cohort(16, seed=7)
    threads: set[int] = set()
    real_dag = pipeline._run_dag

    def spy(con: duckdb.DuckDBPyConnection, *args: object) -> None:
        threads.add(int(con.sql("SELECT current_setting('threads')").fetchall()[0][0]))
        real_dag(con, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "_run_dag", spy)
    for cores in (1, 2):
        monkeypatch.setattr(pipeline.os, "cpu_count", lambda cores=cores: cores)
        recomputed = _replay(tmp_path / f"cores{cores}", tables, steps=2)
        assert any(0 < r < 16 for r in recomputed[1:]), recomputed  # an incremental run did happen
        assert not _scratch_left()
    assert threads == {1}


def _scratch_left() -> list[str]:
    """Scratch databases still attached to the process's shared database or to a leased one."""
    normalize = importlib.import_module("mgaki.events.normalize")  # the package exports a function of that name
    dbs = [normalize.cursor(), *normalize._POOL.get(os.getpid(), [])]
    assert len(dbs) > 1, "an incremental run gave its database back"
    return [r[0] for db in dbs for r in db.sql("SELECT database_name FROM duckdb_databases()").fetchall()
            if r[0].startswith(pipeline._SCRATCH)]


def test_a_failing_incremental_run_detaches_its_scratch_database(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    tables = random_cohort(6, seed=5)
    store = EventStore(tmp_path / "s")
    first = _known_at(tables, _cuts(tables["events"], 1)[0])
    store.append(first)
    surveil(store)
    store.append(tables)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("stage failed")

    monkeypatch.setattr(pipeline, "_run_dag", broken)
    with pytest.raises(RuntimeError, match="stage failed"):
        surveil(store)
    assert not _scratch_left()
    assert store.pending()[0], "the subjects stay pending for the next run"


def test_a_failing_read_of_the_changed_subjects_detaches_its_scratch_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read into the scratch database fails before the connection uses it (a part gone, a disk error):
    the scratch database is detached all the same, and the next run, the part back, computes them."""
    tables = random_cohort(6, seed=5)
    store = EventStore(tmp_path / "s")
    store.append(_known_at(tables, _cuts(tables["events"], 1)[0]))
    surveil(store)
    store.append(tables)
    real = pipeline.subject_in
    monkeypatch.setattr(pipeline, "subject_in", lambda subjects, rel: "error('part unreadable') IS NULL")
    with pytest.raises(duckdb.Error, match="part unreadable"):
        surveil(store)
    assert not _scratch_left() and not pipeline._PREVIOUS
    monkeypatch.setattr(pipeline, "subject_in", real)
    assert surveil(store).subjects_recomputed > 0 and not store.pending()[0]


def test_changed_rules_recompute_everyone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Results are never completed subject by subject under other rules: when a stage's SQL changes (a
    threshold in a knowledge file, or a new release), the next run recomputes everyone and equals the full
    run under the new rules; with the rules unchanged it stays incremental."""
    tables = random_cohort(10, seed=11)
    cut = _cuts(tables["events"], 1)[0]
    store = EventStore(tmp_path / "s")
    store.append(_known_at(tables, cut))
    assert surveil(store).subjects_recomputed == -1
    later = _known_at(tables, cut + timedelta(hours=12))
    store.append(later)
    assert surveil(store).subjects_recomputed >= 0  # incremental

    real = pipeline.stages

    def stricter(*args: object, **kwargs: object) -> list[pipeline.Stage]:  # stage 1 from a 1.2x rise
        return [pipeline.Stage(st.name, st.sql.replace("reference >= 1.5", "reference >= 1.2"), st.output)
                if st.name == "kdigo_creatinine" else st
                for st in real(*args, **kwargs)]  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "stages", stricter)
    pipeline.rules_fingerprint.cache_clear()
    store.append(tables)
    got = surveil(store)
    assert got.subjects_recomputed == -1  # everyone, under the new rules
    ref_store = EventStore(tmp_path / "ref")
    ref_store.append(tables)
    ref = surveil(ref_store, full=True)
    for name in RESULT_TABLES:
        assert _rows(got.tables[name]) == _rows(ref.tables[name]), name
    monkeypatch.undo()
    pipeline.rules_fingerprint.cache_clear()
    before = run(ref_store).tables["kdigo_creatinine"]  # the planted change did change results
    assert _rows(before) != _rows(got.tables["kdigo_creatinine"])


@pytest.mark.usefixtures("small_buckets")
def test_generations_are_folded_and_a_crash_before_marking_them_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Incremental results are generations until the third, whose run folds them into the buckets and
    marks them folded; a fold that dies after rewriting the buckets, before the mark, leaves results equal
    to the full run's (the generations repeat what the buckets hold), and the next fold folds them again."""
    monkeypatch.setattr(pipeline, "FOLD_IN", "inline")  # the crash in the run itself
    tables = random_cohort(12, seed=21)
    cuts = _cuts(tables["events"], 7)
    store = _surveilled_at(tmp_path / "s", tables, cuts[:3])
    results = store.root / "results"
    assert len(pipeline._gens(results)) == 2

    def dies(out: Path, g: int) -> None:
        raise OSError("killed before marking the generations folded")

    real_mark = pipeline._mark_folded
    monkeypatch.setattr(pipeline, "_mark_folded", dies)
    store.append(_known_at(tables, cuts[3]))
    with pytest.raises(OSError, match="killed"):
        surveil(store)  # the third generation: folded, then killed
    monkeypatch.setattr(pipeline, "_mark_folded", real_mark)
    assert len(pipeline._gens(results)) == 3
    ref = surveil(_store_at(tmp_path / "ref3", tables, cuts[3]), full=True)
    got = ResultTables(results)
    for name in RESULT_TABLES:
        assert _rows(got[name]) == _rows(ref.tables[name]), name
    again = surveil(store)  # the killed run's subjects are still pending: recomputed, all four folded
    assert pipeline._gens(results) == [] and pipeline._folded(results) == 4
    for name in RESULT_TABLES:
        assert _rows(again.tables[name]) == _rows(ref.tables[name]), name
    for cut in cuts[4:7]:  # three more generations: the next fold removes the four the first one marked
        store.append(_known_at(tables, cut))
        surveil(store)
    assert [int(g.name[1:]) for g in pipeline._gen_dirs(results)] == [5, 6, 7]
    assert pipeline._folded(results) == 7
    ref = surveil(_store_at(tmp_path / "ref6", tables, cuts[6]), full=True)
    for name in RESULT_TABLES:
        assert _rows(ResultTables(results)[name]) == _rows(ref.tables[name]), name


@pytest.mark.usefixtures("small_buckets")
def test_a_fold_rewrites_one_table_at_a_time_and_a_crash_between_two_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold holds some buckets of one result table at a time (a commit per chunk, not one for all: at
    100 k patients the fold of a busy feed's generations held 7.3 GB); killed after its first commit, the
    results still equal the full run's, and the next fold completes."""
    monkeypatch.setattr(pipeline, "FOLD_IN", "inline")
    monkeypatch.setattr(pipeline, "FOLD_CHUNK", 1)  # a bucket per commit: several commits per table
    tables = random_cohort(40, seed=21)
    cuts = _cuts(tables["events"], 4)
    store = _surveilled_at(tmp_path / "s", tables, cuts[:3])
    results = store.root / "results"
    commits: list[set[str]] = []
    real_commit = pipeline._Batch.commit

    def dies_after_the_first_table(self: pipeline._Batch, threads: bool = True, pace: float = 0.0) -> None:
        folders = {p.parent.name for _, p in self.writes} | {p.parent.name for p in self.deletes}
        real_commit(self, threads, pace)
        if folders & set(RESULT_TABLES):  # the fold's (a run's own commits write timers and the log's index)
            commits.append(folders)
            raise OSError("killed between two tables")

    monkeypatch.setattr(pipeline._Batch, "commit", dies_after_the_first_table)
    store.append(_known_at(tables, cuts[3]))
    with pytest.raises(OSError, match="between two tables"):
        surveil(store)  # the third generation: the fold rewrites the first table, then dies
    assert commits[-1] == {RESULT_TABLES[0]}
    ref = surveil(_store_at(tmp_path / "ref", tables, cuts[3]), full=True)
    for name in RESULT_TABLES:
        assert _rows(ResultTables(results)[name]) == _rows(ref.tables[name]), name
    commits.clear()
    writes: list[list[str]] = []
    monkeypatch.setattr(pipeline._Batch, "commit", lambda self, threads=True, pace=0.0: (
        commits.append({p.parent.name for _, p in self.writes}),
        writes.append([p.name for _, p in self.writes]) if {p.parent.name for _, p in self.writes} & set(
            RESULT_TABLES) else None, real_commit(self, threads, pace))[-1])
    again = surveil(store)
    folds = [c for c in commits if c & set(RESULT_TABLES)]
    assert all(len(c) == 1 for c in folds), folds  # one table per commit (a table with nothing of the covered
    # subjects has nothing to rewrite), and some tables in several: at most FOLD_CHUNK buckets each
    assert len(folds) > len({next(iter(c)) for c in folds}) >= 3, (folds, writes)
    assert all(len(c) <= 1 for c in writes), writes
    assert pipeline._gens(results) == []
    for name in RESULT_TABLES:
        assert _rows(again.tables[name]) == _rows(ref.tables[name]), name


def _surveilled_at(root: Path, tables: dict[str, pa.Table], cuts: list[datetime]) -> EventStore:
    """A store fed what was known at each cut in turn, surveilled after each (a full run, then increments)."""
    store = EventStore(root)
    for cut in cuts:
        store.append(_known_at(tables, cut))
        surveil(store)
    return store


def _store_at(root: Path, tables: dict[str, pa.Table], cut: datetime) -> EventStore:
    store = EventStore(root)
    store.append(_known_at(tables, cut))
    return store


@pytest.mark.usefixtures("small_buckets")
def test_a_fold_runs_beside_the_increments_and_a_full_run_waits_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run that writes the third generation returns while the fold is still writing the buckets; the
    results read meanwhile, and those of another increment run meanwhile, equal the full runs'; a full run
    asked for meanwhile starts writing only once the fold is done."""
    tables = random_cohort(12, seed=22)
    cuts = _cuts(tables["events"], 5)
    store = _store_at(tmp_path / "s", tables, cuts[0])
    surveil(store)
    results = store.root / "results"
    entered, gate = threading.Event(), threading.Event()
    order: list[str] = []
    real_commit = pipeline._Batch.commit

    def held_in_the_fold(self: pipeline._Batch, threads: bool = True, pace: float = 0.0) -> None:
        if threading.current_thread().name == "mgaki-fold":
            assert pace > 0  # a background fold leaves the disk to the runs between its files
            entered.set()
            assert gate.wait(60)
            real_commit(self, threads, pace)
            order.append("fold committed")
        else:
            real_commit(self, threads, pace)

    real_all = pipeline._surveil_all

    def full_run(*args: object, **kwargs: object) -> SurveillanceResult:
        order.append("full run started")
        return real_all(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline._Batch, "commit", held_in_the_fold)
    monkeypatch.setattr(pipeline, "_surveil_all", full_run)
    for cut in cuts[1:4]:
        store.append(_known_at(tables, cut))
        surveil(store)  # the third returns with its fold under way
    assert entered.wait(60)
    folding = [t for t in threading.enumerate() if t.name == "mgaki-fold"]
    assert folding and folding[0].is_alive()
    ref = surveil(_store_at(tmp_path / "ref3", tables, cuts[3]), full=True)
    order.clear()
    for name in RESULT_TABLES:
        assert _rows(ResultTables(results)[name]) == _rows(ref.tables[name]), name
    store.append(_known_at(tables, cuts[4]))
    surveil(store)  # an increment while the fold holds its buckets
    assert folding[0].is_alive() and pipeline._folded(results) == 0
    ref = surveil(_store_at(tmp_path / "ref4", tables, cuts[4]), full=True)
    order.clear()
    for name in RESULT_TABLES:
        assert _rows(ResultTables(results)[name]) == _rows(ref.tables[name]), name
    full = threading.Thread(target=surveil, args=(store,), kwargs={"full": True})
    full.start()
    full.join(1.0)
    gate.set()
    full.join(120)
    pipeline.wait_for_folds()
    # the fold commits table by table, all before the full run starts
    assert order[-1] == "full run started" and len(order) >= 2 and set(order[:-1]) == {"fold committed"}, order
    assert not (results / pipeline._DELTA).exists()
    for name in RESULT_TABLES:
        assert _rows(ResultTables(results)[name]) == _rows(ref.tables[name]), name


@pytest.mark.parametrize("where", ["process", "thread"])
def test_a_process_that_exits_right_after_starting_a_fold_completes_it(tmp_path: Path, where: str) -> None:
    """`mgaki surveil` returns, and its process exits, with the fold its run started still under way: the
    fold completes, in the fold process (the default) or in a thread joined at exit (thread pools refuse
    work at exit: the fold uses none)."""
    import subprocess
    import sys
    import time

    tables = random_cohort(8, seed=23)
    cuts = _cuts(tables["events"], 2)
    store = _store_at(tmp_path / "s", tables, cuts[0])
    surveil(store)
    store.append(_known_at(tables, cuts[1]))
    script = ("import sys\nfrom pathlib import Path\nfrom mgaki.events import EventStore\n"
              f"from mgaki.surveillance import pipeline\npipeline.DELTA_FOLD_GENS = 1\npipeline.FOLD_IN = {where!r}\n"
              "res = pipeline.surveil(EventStore(Path(sys.argv[1])))\nassert res.subjects_recomputed > 0\n")
    done = subprocess.run([sys.executable, "-c", script, str(store.root)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    results = store.root / "results"
    deadline = time.monotonic() + 120
    while pipeline._folded(results) != 1 and time.monotonic() < deadline:
        assert where == "process", "a thread's fold is done when its process has exited"
        time.sleep(0.1)
    with pipeline._fold_lock(results):  # the fold process has released the folder
        assert pipeline._folded(results) == 1 and pipeline._gens(results) == []
    assert "failed" not in done.stderr, done.stderr
    ref = surveil(_store_at(tmp_path / "ref", tables, cuts[1]), full=True)
    for name in RESULT_TABLES:
        assert _rows(ResultTables(results)[name]) == _rows(ref.tables[name]), name


@pytest.mark.parametrize("urgent", [False, True])
def test_a_fold_past_the_urgent_pile_keeps_the_runs_priority_and_pace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, urgent: bool) -> None:
    """A fold yields the CPU and half the disk to the runs, unless more than ``DELTA_URGENT_GENS`` generations
    are pending (earlier folds starved on a saturated machine): it then folds at their priority and pace, so
    the pile every reader merges stays bounded. Either way the results are the full run's."""
    monkeypatch.setattr(pipeline, "DELTA_FOLD_GENS", 100)  # the runs start no fold: three generations pile up
    monkeypatch.setattr(pipeline, "DELTA_URGENT_GENS", 2 if urgent else 3)
    tables = random_cohort(10, seed=23)
    cuts = _cuts(tables["events"], 4)
    store = _surveilled_at(tmp_path / "s", tables, cuts)
    results = store.root / "results"
    assert len(pipeline._gens(results)) == 3
    lowered: list[bool] = []
    paces: list[float] = []
    monkeypatch.setattr(pipeline, "lowest_priority", lambda own_session=False: lowered.append(own_session))
    real_commit = pipeline._Batch.commit

    def commit(self: pipeline._Batch, threads: bool = True, pace: float = 0.0) -> None:
        paces.append(pace)
        real_commit(self, threads, pace)

    monkeypatch.setattr(pipeline._Batch, "commit", commit)
    with caplog.at_level(logging.WARNING, logger="mgaki.surveillance.pipeline"):
        pipeline.fold_in_background(results)
    assert pipeline._gens(results) == [] and paces
    assert lowered == ([] if urgent else [False])
    assert set(paces) == ({0.0} if urgent else {pipeline.FOLD_PACE})
    assert ("3 surveillance result generations pending" in caplog.text) is urgent
    ref = surveil(_store_at(tmp_path / "ref", tables, cuts[-1]), full=True)
    for name in RESULT_TABLES:
        assert _rows(ResultTables(results)[name]) == _rows(ref.tables[name]), name


def test_a_fold_that_cannot_list_the_generations_logs_it_and_raises_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The fold process must not die on a traceback before its lock and log: an unreadable results folder is
    logged (the error's kind, no path or row) and the generations are left to the next fold."""
    (tmp_path / "results").mkdir()
    lowered: list[bool] = []

    def unreadable(out: Path) -> list[Path]:
        raise PermissionError("results folder unreadable")

    monkeypatch.setattr(pipeline, "_gens", unreadable)
    monkeypatch.setattr(pipeline, "lowest_priority", lambda own_session=False: lowered.append(own_session))
    with caplog.at_level(logging.ERROR, logger="mgaki.surveillance.pipeline"):
        pipeline.fold_in_background(tmp_path / "results", own_session=True)
    assert lowered == [True]  # not urgent: nothing known to be pending
    assert "folding surveillance result generations failed (PermissionError)" in caplog.text


def _autogroup_nice() -> str | None:
    """This process's autogroup nice value, or None where /proc/self/autogroup reads empty (a process in the
    kernel's default group, as under a container's init, is in no autogroup of its own)."""
    words = Path("/proc/self/autogroup").read_text().split()
    return words[-1] if words else None


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no Linux autogroups here")
@pytest.mark.parametrize("own_session", [True, False])
def test_the_fold_process_gives_the_cpu_to_the_server_across_sessions(tmp_path: Path, own_session: bool) -> None:
    """The fold process runs in a session of its own, so Linux schedules it as an autogroup of its own: its
    threads' nice 19 alone left it as much CPU as the whole server. It lowers its autogroup too; a fold in a
    thread of the server (``fold_in_background`` without ``own_session``) must not lower the server's."""
    import subprocess
    import sys

    (tmp_path / "results").mkdir()
    call = (f"fold.main([{str(tmp_path / 'results')!r}])" if own_session else
            f"threading.Thread(target=pipeline.fold_in_background, args=(Path({str(tmp_path / 'results')!r}),))"
            ".start()")
    script = ("import os, threading\nfrom pathlib import Path\nfrom mgaki.surveillance import fold, pipeline\n"
              f"{call}\nfor t in threading.enumerate():\n    t is threading.current_thread() or t.join()\n"
              "print(Path('/proc/self/autogroup').read_text().split()[-1])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == ("19" if own_session else "0")


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no Linux autogroups here")
@pytest.mark.parametrize("urgent", [False, True])
def test_the_fold_process_is_lowered_before_it_imports_mgaki(tmp_path: Path, urgent: bool) -> None:
    """The fold process's boot (``_FOLD_BOOT``, as ``_start_fold`` starts it) lowers its thread and its
    autogroup before the module it runs is imported: importing mgaki is half a second of CPU that a fold still
    at its starting priority took from the runs. Urgent (generations piled up): it keeps its priority."""
    import subprocess
    import sys

    from mgaki.surveillance import _priority

    (tmp_path / "probe_fold.py").write_text(
        "import os, sys\nfrom pathlib import Path\n"
        "print(os.getpriority(os.PRIO_PROCESS, 0), Path('/proc/self/autogroup').read_text().split()[-1],\n"
        "      any(m == 'mgaki' or m.startswith('mgaki.') for m in sys.modules))\n"
        "def main(args):\n    print(args)\n    return 3\n")
    done = subprocess.run([sys.executable, "-c", pipeline._FOLD_BOOT, *(["--urgent"] if urgent else []),
                           _priority.__file__, "probe_fold", "a", "b"], capture_output=True, text=True, timeout=120,
                          start_new_session=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    ours = str(os.getpriority(os.PRIO_PROCESS, 0))  # what the child starts with (a new session's autogroup: 0)
    assert lines[0].split() == ([ours, "0", "False"] if urgent else ["19", "19", "False"])
    assert lines[1] == "['a', 'b']"


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no Linux autogroups here")
def test_the_fold_run_by_hand_leaves_the_shells_session_alone(tmp_path: Path) -> None:
    """``python -m mgaki.surveillance.fold`` run from a shell is not the leader of its session: it must not
    lower the autogroup it shares with the shell (and here with the test run)."""
    import subprocess
    import sys

    (tmp_path / "results").mkdir()
    before = _autogroup_nice()
    if before is None:  # the kernel's default group (e.g. a container whose init never started a session): empty
        pytest.skip("this process is in no autogroup of its own: /proc/self/autogroup reads empty")
    done = subprocess.run([sys.executable, "-m", "mgaki.surveillance.fold", str(tmp_path / "results")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    after = _autogroup_nice()
    if after != before:  # restore this session's before failing (raising a nice value back needs no privilege here)
        with contextlib.suppress(OSError):
            Path("/proc/self/autogroup").write_text(before)
    assert after == before


def test_the_fold_process_refuses_a_wrong_folder(tmp_path: Path) -> None:
    from mgaki.surveillance import fold

    assert fold.main([str(tmp_path / "missing")]) == 2
    assert fold.main([]) == 2


@pytest.mark.usefixtures("small_buckets")
def test_a_fold_between_listing_the_buckets_and_reading_them_loses_no_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader lists a table's buckets; a fold then writes a bucket file that did not exist (rows of a
    generation it marks folded) before the reader has listed the generations: the reader listed the
    generations first, so it still reads those rows. Found as a rare mismatch of the replay test under load."""
    monkeypatch.setattr(pipeline, "DELTA_FOLD_GENS", 1000)  # folds only where this test runs them
    tables = random_cohort(12, seed=25)  # its first evidence flag of bucket 0 comes after the first cut
    cuts = _cuts(tables["events"], 6)
    store = _store_at(tmp_path / "s", tables, cuts[0])
    surveil(store)
    results = store.root / "results"
    for cut in cuts[1:]:
        store.append(_known_at(tables, cut))
        surveil(store)
    ref = surveil(_store_at(tmp_path / "ref", tables, cuts[-1]), full=True)
    before = {p.relative_to(results) for p in results.glob("*/b*.parquet")}
    real_files = pipeline.result_files
    folded: list[str] = []

    def fold_right_after_listing(root: Path, name: str, subject_id: str | None = None) -> list[Path] | None:
        listed = real_files(root, name, subject_id)
        if not folded and name == "evidence_flags":
            with pipeline._fold_lock(results):
                pipeline._fold(results)
            folded.append(name)
        return listed

    monkeypatch.setattr(pipeline, "result_files", fold_right_after_listing)
    got = {name: ResultTables(results)[name] for name in RESULT_TABLES}
    created = {p.relative_to(results) for p in results.glob("*/b*.parquet")} - before
    assert folded and Path("evidence_flags/b00000.parquet") in created, created  # not listed by the reader
    assert pipeline._gens(results) == []
    for name in RESULT_TABLES:
        assert _rows(got[name]) == _rows(ref.tables[name]), name


@pytest.mark.usefixtures("small_buckets")
@pytest.mark.parametrize("cohort", ["synthetic", "mimic"])
def test_a_full_run_in_batches_equals_one_over_everyone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        cohort: str) -> None:
    """A full run computes its subjects batch by batch (bounded memory at any cohort size): every result
    table, the alert log, its index, the timers and the increments after it are those of one run over
    everyone."""
    monkeypatch.setattr(pipeline, "SUBJECTS_PER_BUCKET", 1)  # MIMIC's 14 patients: buckets enough for batches
    tables = _plant_issue13(random_cohort(40, seed=18)) if cohort == "synthetic" else _mimic()
    cut = _cuts(tables["events"], 2)[1]
    first, rest = _known_at(tables, cut), tables

    def results(root: Path) -> dict[str, list[tuple[object, ...]]]:
        res = ResultTables(root / "results")
        got = {name: _rows(res[name]) for name in RESULT_TABLES}
        got["alerts"] = _rows(res["alerts"].drop_columns(["emitted_at"]))  # the time each run logged it
        for folder in ("_alert_index", "_timers"):
            files = sorted((root / "results" / folder).glob("b*.parquet"))
            got[folder] = _rows(pa.concat_tables([pq.read_table(f) for f in files])) if files else []
        return got

    one = EventStore(tmp_path / "one")
    one.append(first)
    ref = surveil(one, full=True)
    batched = []
    real = pipeline._batch_views
    monkeypatch.setattr(pipeline, "_batch_views", lambda con, split, k: (batched.append(k), real(con, split, k)))
    monkeypatch.setattr(pipeline, "FULL_RUN_BATCH_ROWS", 50)
    many = EventStore(tmp_path / "many")
    many.append(first)
    got = surveil(many, full=True)
    assert len(batched) > 1 and batched == sorted(set(batched)), batched  # several batches, each once
    assert not (tmp_path / "many" / "results" / ".batches").exists()  # the split rows are gone
    want, have = results(tmp_path / "one"), results(tmp_path / "many")
    assert want["alerts"] and (want["_timers"] or cohort == "mimic"), "nothing to compare"  # MIMIC: none open
    assert have == want
    assert _rows(got.new_alerts.drop_columns(["emitted_at"])) == _rows(ref.new_alerts.drop_columns(["emitted_at"]))
    assert pipeline._read_state(tmp_path / "many" / "results") == pipeline._read_state(tmp_path / "one" / "results")
    # an alert logged for a patient no stored row names (e.g. every row a later version replaced) stays indexed:
    # a later run must never log it again
    gone = ref.new_alerts.slice(0, 1).set_column(0, "subject_id", pa.array(["gone-patient"], pa.string()))
    for root in (tmp_path / "one", tmp_path / "many"):
        pipeline._append_log(root / "results", gone)
    monkeypatch.setattr(pipeline, "FULL_RUN_BATCH_ROWS", 10**9)
    surveil(one, full=True)
    monkeypatch.setattr(pipeline, "FULL_RUN_BATCH_ROWS", 50)
    surveil(many, full=True)
    assert len(batched) == 2 * len(set(batched))  # the second run was in batches too, the reference was not
    want, have = results(tmp_path / "one"), results(tmp_path / "many")
    assert "gone-patient" in {r[0] for r in have["_alert_index"]}
    assert have == want
    # the increments after it (the rest of the feed) find the same results and log the same new alerts
    one.append(rest)
    many.append(rest)
    after_one, after_many = surveil(one), surveil(many)
    assert after_many.subjects_recomputed == after_one.subjects_recomputed > 0
    assert results(tmp_path / "many") == results(tmp_path / "one")
    assert after_many.new_alerts.num_rows == after_one.new_alerts.num_rows


def test_full_run_batches_grow_with_rows_and_own_whole_buckets() -> None:
    rows = pipeline.FULL_RUN_BATCH_ROWS
    assert pipeline.full_run_batches(rows, 4096) == 1
    assert pipeline.full_run_batches(rows + 1, 4096) == 2
    assert pipeline.full_run_batches(31 * rows, 4096) == 32
    # never more than the smallest tables' buckets: a batch owns whole buckets of every table
    assert pipeline.full_run_batches(10_000 * rows, 512) == 512 // pipeline._FEW_ROWS_SHARE
    assert pipeline.full_run_batches(10 * rows, 1) == 1


def test_a_run_of_a_few_subjects_gives_their_rows_of_a_run_over_everyone(tmp_path: Path) -> None:
    """``run(store, subjects=...)`` (a connection of its own, the store's views not TEMP ones): those subjects'
    rows of the run over everyone, every output."""
    tables = random_cohort(12, seed=5)
    store = EventStore(tmp_path / "s")
    store.append(tables)
    everyone = run(store)
    few = sorted(set(tables["events"]["subject_id"].to_pylist()))[2:5]
    some = run(store, subjects=few)
    assert some.subjects_recomputed == 3 and some.as_of == everyone.as_of
    checked = 0
    for name, tab in everyone.tables.items():
        theirs = tab.filter(pc.is_in(tab["subject_id"], pa.array(few, pa.string())))
        assert _rows(some.tables[name]) == _rows(theirs), name
        checked += theirs.num_rows
    assert checked > 100


@pytest.mark.usefixtures("small_buckets")
def test_an_incremental_run_with_duckdb_settings_equals_one_without(tmp_path: Path) -> None:
    """``surveil(..., duckdb_settings=...)`` runs on a connection of its own (not the process's leased one):
    the increment, with the admitted patients an engine's run left without timers, gives the same log and
    results as the run without settings."""
    store, tables, cut = _timer_store(tmp_path, engine_first=True)
    later = cut + timedelta(hours=12)
    shutil.copytree(store.root, tmp_path / "twin")
    twin = EventStore(tmp_path / "twin")
    subject = sorted(set(tables["events"]["subject_id"].to_pylist()))[0]
    new = {"events": _event_like(tables["events"], subject, later, "lab/settings-1")}
    for s in (store, twin):
        s.append(new)
    with_settings = surveil(store, duckdb_settings={"threads": "1"})
    without = surveil(twin)
    assert with_settings.subjects_recomputed == without.subjects_recomputed > 1  # the admitted ones too
    assert _rows(with_settings.new_alerts.drop_columns(["emitted_at"])) == \
        _rows(without.new_alerts.drop_columns(["emitted_at"]))
    for name in RESULT_TABLES:
        assert _rows(with_settings.tables[name]) == _rows(without.tables[name]), name
