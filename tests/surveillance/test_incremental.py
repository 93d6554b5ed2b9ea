"""Incremental surveillance: same results as a full run, alerts once, re-ingest changes nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.surveillance.cohort import T0, random_cohort

from mgaki.events import EventStore
from mgaki.surveillance import surveil

CUT = T0 + timedelta(days=14)


def _split(tables: dict[str, pa.Table]) -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    """What the hospital feed had at CUT (open encounters without an end), and what came after."""
    ev, w, enc = tables["events"], tables["weights"], tables["encounters"]
    before = {"events": ev.filter(pc.less_equal(ev["time"], CUT)),
              "weights": w.filter(pc.less_equal(w["time"], CUT))}
    started = enc.filter(pc.less_equal(enc["start"], CUT))
    still_open = pc.greater(started["end"], CUT)
    ends = pc.if_else(still_open, pa.nulls(started.num_rows, started.schema.field("end").type), started["end"])
    before["encounters"] = started.set_column(started.schema.get_field_index("end"), "end", ends)
    after = {"events": ev.filter(pc.greater(ev["time"], CUT)), "weights": w.filter(pc.greater(w["time"], CUT)),
             "encounters": enc}
    return before, after


def _rows(tab: pa.Table) -> list[tuple[object, ...]]:
    """Rows as sorted tuples; floats to 12 significant digits (window sums may add in another order)."""
    def norm(x: object) -> object:
        return float(f"{x:.12g}") if isinstance(x, float) else x
    return sorted((tuple(norm(v) for v in r.values()) for r in tab.to_pylist()), key=repr)


def test_incremental_equals_full_and_alerts_fire_once(tmp_path: Path) -> None:
    tables = random_cohort(80, seed=11)
    full = surveil(_store(tmp_path / "full", tables))

    store = EventStore(tmp_path / "inc")
    before, after = _split(tables)
    store.append(before)
    first = surveil(store)
    assert first.subjects_recomputed == -1  # first run: everyone
    s = store.append(after)
    second = surveil(store)
    assert 0 < second.subjects_recomputed < 80
    assert second.subjects_recomputed >= len(s.affected_subjects)

    for name in ("kdigo_creatinine", "kdigo_urine", "aki_episodes", "mg_trajectory", "aki_stage_changes",
                 "evidence_flags"):
        assert _rows(second.tables[name]) == _rows(full.tables[name]), name
    key = ("subject_id", "encounter_id", "kind", "time")
    log = second.tables["alerts"]
    assert _rows(log.select(key)) == _rows(full.tables["alerts"].select(key))
    assert len(set(_rows(log.select(key)))) == log.num_rows  # each alert once
    assert first.new_alerts.num_rows + second.new_alerts.num_rows == log.num_rows
    assert full.tables["alerts"].num_rows > 20


def test_reingesting_and_rerunning_changes_nothing(tmp_path: Path) -> None:
    tables = random_cohort(40, seed=5)
    store = _store(tmp_path, tables)
    first = surveil(store)
    again = store.append(tables)
    assert sum(again.added.values()) == 0 and not again.affected_subjects
    rerun = surveil(store)
    assert rerun.new_alerts.num_rows == 0
    assert rerun.subjects_recomputed == 0
    for name, tab in first.tables.items():
        assert _rows(rerun.tables[name]) == _rows(tab), name


def _store(path: Path, tables: dict[str, pa.Table]) -> EventStore:
    store = EventStore(path)
    store.append(tables)
    return store


def test_an_incremental_run_reads_with_more_threads_and_gives_its_database_back_with_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on a leased one-thread database reads its subjects' rows with ``READ_THREADS`` threads (a scan
    that parallelises), then leaves the database as it was leased, also when the read fails."""
    from mgaki.events.normalize import give_back, lease
    from mgaki.surveillance import pipeline

    monkeypatch.setattr(pipeline, "READ_THREADS", 2)
    tables = random_cohort(20, seed=7)
    store = EventStore(tmp_path / "s")
    before, after = _split(tables)
    store.append(before)
    surveil(store)
    store.append(after)
    seen: list[int] = []
    real = pipeline._threads

    @contextlib.contextmanager
    def recording(con: duckdb.DuckDBPyConnection, threads: int | None) -> Iterator[None]:
        with real(con, threads):
            seen.append(int(con.sql("SELECT current_setting('threads')").fetchall()[0][0]))
            yield

    monkeypatch.setattr(pipeline, "_threads", recording)
    assert surveil(store).subjects_recomputed > 0
    assert seen and set(seen) == {2}

    def one_thread_databases() -> list[int]:
        dbs = [lease() for _ in range(3)]  # the pool's, including the run's
        try:
            return [int(db.sql("SELECT current_setting('threads')").fetchall()[0][0]) for db in dbs]
        finally:
            for db in dbs:
                give_back(db)

    assert set(one_thread_databases()) == {1}
    store.append({"events": after["events"].slice(0, 1).set_column(
        after["events"].schema.get_field_index("source"), "source", pa.array(["new/1"], pa.string()))})
    monkeypatch.setattr(pipeline, "_BASE", (*pipeline._BASE, "no_such_table"))  # the read fails half-way
    with pytest.raises(duckdb.Error):
        surveil(store)
    assert set(one_thread_databases()) == {1}


def test_result_files_read_one_at_a_time_equal_what_pyarrow_reads(tmp_path: Path) -> None:
    """``_read_one`` (``ParquetFile.read``, no thread pool: cheaper for small bucket files) gives every results
    file exactly as ``pq.read_table`` does, schema and metadata included."""
    import pyarrow.parquet as pq

    from mgaki.surveillance import pipeline

    store = _store(tmp_path, random_cohort(30, seed=9))
    surveil(store)
    files = sorted((tmp_path / "results").glob("*/*.parquet"))
    assert len({f.parent.name for f in files}) >= 8  # the result tables, the alert log and index, the timers
    for f in files:
        got, want = pipeline._read_one(f), pq.read_table(f)
        assert got.schema.equals(want.schema, check_metadata=True) and got.equals(want), f
    assert pipeline._read_many(files).keys() == set(files)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=6)), max_size=60), st.integers(1, 5),
       st.sampled_from([1, 16, 512]))
def test_row_buckets_are_each_rows_bucket_of(subjects: list[str | None], chunks: int, buckets: int) -> None:
    """``_row_buckets`` (once per distinct subject) gives each row ``bucket_of`` its subject, a null's that of ""."""
    from mgaki.surveillance import pipeline

    cut = [subjects[i::chunks] for i in range(chunks)]
    for col in (pa.array(subjects, pa.string()), pa.chunked_array(cut, pa.string())):
        want = [pipeline.bucket_of(s or "", buckets) for s in col.to_pylist()]
        assert pipeline._row_buckets(col, buckets).to_pylist() == want


def test_the_clock_evaluation_repeats_only_the_rules_that_read_the_clock(kb) -> None:  # type: ignore[no-untyped-def]
    """An incremental run evaluates the time-driven stages a second time with no as-of bound (its timers). The
    alerts the data raise are one stage both evaluations read (``alerts_by_data``), so the second evaluation is
    the monitoring-gap chain and a union of two tables, not every alert rule again (a one-patient run's SQL,
    which DuckDB parses, binds and plans on every run, was 61 kB with them, 58 kB without)."""
    from mgaki.surveillance import pipeline

    plan, timed, _, _ = pipeline._shape(kb, None, pipeline.OUTPUTS, True)
    assert {st.name for st in timed} == {"mg_gaps__later", "no_mg_cand__later", "alerts__later"}
    later = {st.name: st.sql for st in timed}["alerts__later"]
    assert "alerts_by_data" in pipeline._names(later) and "mg_status_run" not in pipeline._names(later)
    assert "alerts_by_data" in {st.name for st in plan}


def test_result_reads_survive_a_fold_replacing_their_files(tmp_path: Path) -> None:
    """A background fold replaces result buckets whole (a new file renamed over the old) while the service and the
    CLI read them. DuckDB opens a Parquet file more than once in one read, so a replacement between the two
    opens failed the read ("TProtocolException: Invalid data" in CI, a results read during a fold): a reader
    reads again (``reads_results``). Here a thread replaces one bucket with its rows in other bytes every 50 ms
    while results with a generation pending (DuckDB's read) are read 200 times: every read gives the rows
    (with one try, some of the 200 reads fail)."""
    import os
    import threading

    from mgaki.surveillance import pipeline

    store = EventStore(tmp_path)
    before, after = _split(random_cohort(40, seed=5))
    store.append(before)
    surveil(store)
    store.append(after)
    surveil(store)  # one generation pending: reads merge it with the buckets in DuckDB
    root = tmp_path / "results"
    assert pipeline._gens(root)
    expected = _rows(pipeline.ResultTables(root)["kdigo_creatinine"])
    bucket = max((root / "kdigo_creatinine").glob("b*.parquet"), key=lambda p: p.stat().st_size)
    # the same rows in other bytes (as a fold's new bucket holds other rows): metadata read from one file
    # does not describe the other
    other = tmp_path / "other.parquet"
    pq.write_table(pq.read_table(bucket), other, compression="zstd", row_group_size=7)
    contents = [bucket.read_bytes(), other.read_bytes()]
    stop = threading.Event()

    def replace_again_and_again() -> None:
        tmp = bucket.with_name(".replacing.tmp")
        i = 0
        while not stop.is_set():
            i += 1
            tmp.write_bytes(contents[i % 2])
            os.replace(tmp, bucket)
            stop.wait(0.05)  # a fold replaces a bucket once; a reader's next try comes after it

    replacer = threading.Thread(target=replace_again_and_again)
    replacer.start()
    try:
        for _ in range(200):
            assert _rows(pipeline.ResultTables(root)["kdigo_creatinine"]) == expected
    finally:
        stop.set()
        replacer.join()


def test_every_reader_of_result_files_reads_again_after_a_torn_read() -> None:
    """The readers of result files outside a run (the CLI's and studies' ``ResultTables``, the dashboard's list and
    timeline, the alert evaluation's outcomes) are wrapped by ``reads_results`` (the test above shows why)."""
    from mgaki.research import alert_eval
    from mgaki.service.dashboard import patient_data
    from mgaki.surveillance import pipeline

    readers = (pipeline.ResultTables._read, patient_data.patient_list, patient_data.timeline, alert_eval.outcomes)
    assert all(r.__code__ is pipeline.reads_results(lambda: None).__code__ for r in readers)


def test_a_stages_sql_is_parsed_once_per_process(tmp_path: Path) -> None:
    """An incremental run's stages are executed from statements parsed once per process (``_parsed_once``): the
    next run parses only the stages whose SQL differs, those the as-of is written into (the clock's rules), not
    its 40-odd others again. The kept statements are bounded (``PARSED_KEPT``), least recently used out first."""
    from mgaki.surveillance import pipeline

    store = EventStore(tmp_path)
    before, after = _split(random_cohort(30, seed=3))
    store.append(before)
    surveil(store)
    ev = after["events"]
    later = [ev.slice(i, 1) for i in (0, 10)]  # two single results
    pipeline._parsed.clear()
    store.append({"events": later[0]})
    surveil(store, as_of=CUT + timedelta(days=30))
    first = dict(pipeline._parsed)
    assert len(first) > 30  # every stage of a run
    store.append({"events": later[1]})
    surveil(store, as_of=CUT + timedelta(days=31))  # another as-of: the clock's stages differ
    again = {sql for sql in pipeline._parsed if sql not in first}
    assert 0 < len(again) <= 2, sorted(s[:60] for s in again)  # the clock's stages only
    assert all(pipeline._parsed[sql] is st for sql, st in first.items() if sql in pipeline._parsed)

    con = duckdb.connect()
    try:
        kept = pipeline.PARSED_KEPT
        pipeline.PARSED_KEPT = 3
        pipeline._parsed.clear()
        one = pipeline._parsed_once(con, "SELECT 1")
        for sql in ("SELECT 2", "SELECT 3", "SELECT 1", "SELECT 4"):  # SELECT 1 used again: SELECT 2 goes
            pipeline._parsed_once(con, sql)
        assert list(pipeline._parsed) == ["SELECT 3", "SELECT 1", "SELECT 4"]
        assert pipeline._parsed_once(con, "SELECT 1") is one
        assert con.execute(one).fetchall() == [(1,)] and con.execute(one).fetchall() == [(1,)]  # run twice
    finally:
        pipeline.PARSED_KEPT = kept
        pipeline._parsed.clear()
        con.close()


def _scratch() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"threads": 1})
    con.execute("ATTACH ':memory:' AS dag_scratch")
    con.execute("USE dag_scratch")
    con.execute("CREATE TABLE base AS SELECT range AS x FROM range(5)")
    return con


def test_stages_run_two_at_a_time_each_after_what_it_reads() -> None:
    """``_run_dag``: every stage is created once its inputs exist (a stage run early would fail: its input table
    would not exist yet), whatever the plan's order; the longest chain of stages after a stage, weighed by
    SQL size (``_chain``), orders those ready; a stage's error reaches the caller; stages that wait on each
    other stop the run with an error naming them instead of waiting forever."""
    from mgaki.surveillance import pipeline

    work = [("c", "SELECT x + 1 AS x FROM b"), ("a", "SELECT x FROM base"), ("b", "SELECT x * 2 AS x FROM a"),
            ("side", "SELECT count(*) AS n FROM base"), ("d", "SELECT a.x + c.x AS x FROM a JOIN c USING (x)")]
    deps = {"a": set(), "b": {"a"}, "c": {"b"}, "d": {"a", "c"}, "side": set()}
    chain = pipeline._chain(work, pipeline._readers(work, deps))
    size = {n: len(q) for n, q in work}
    assert chain["d"] == size["d"] and chain["c"] == size["c"] + size["d"]
    assert chain["a"] == size["a"] + size["b"] + size["c"] + size["d"] and chain["side"] == size["side"]
    con = _scratch()
    seen: list[tuple[str, int, int]] = []
    seconds: dict[str, float] = {}
    pipeline._run_dag(con, work, deps, seconds, lambda n, i, t: seen.append((n, i, t)), len(work))
    assert set(seconds) == {n for n, _ in work}
    assert sorted(i for _, i, _ in seen) == [1, 2, 3, 4, 5] and {t for _, _, t in seen} == {5}
    assert con.sql("SELECT x FROM c ORDER BY x").fetchall() == [(1,), (3,), (5,), (7,), (9,)]
    assert con.sql("SELECT n FROM side").fetchall() == [(5,)]

    broken = [*work[:4], ("d", "SELECT no_such_column FROM c")]
    with pytest.raises(duckdb.BinderException, match="no_such_column"):
        pipeline._run_dag(_scratch(), broken, deps, {}, None, len(broken))
    loop = {**deps, "a": {"c"}}
    with pytest.raises(RuntimeError, match="wait on each other"):
        pipeline._run_dag(_scratch(), work, loop, {}, None, len(work))

    def interrupted(name: str, i: int, total: int) -> None:  # e.g. Ctrl-C reaching a progress bar
        raise KeyboardInterrupt
    started: dict[str, float] = {}
    with pytest.raises(KeyboardInterrupt):
        pipeline._run_dag(_scratch(), work, deps, started, interrupted, len(work))
    assert len(started) < len(work)  # no stage starts after it
