"""``subject_in``: the subject filter of a few subjects' reads (appends, incremental runs), as literals so that
DuckDB skips the row groups holding none of them; exact for any id, a subquery past ``IN_LIST_MAX``."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgaki.events import EventStore
from mgaki.events import store as store_mod
from mgaki.events.schema import TABLES
from mgaki.events.store import IN_LIST_MAX, subject_in

AWKWARD = ["O'Brien", "''", "'; DROP TABLE t; --", "a\\b", "naïve-患者", " lead", "trail ", "%_*", "P1", ""]


def _selected(con: duckdb.DuckDBPyConnection, wanted: list[str]) -> list[str]:
    con.register("wanted", pa.table({"subject_id": pa.array(wanted, pa.string())}))
    rows = con.sql(f"SELECT subject_id FROM t WHERE {subject_in(wanted, 'wanted')} ORDER BY 1").fetchall()
    con.unregister("wanted")
    return [r[0] for r in rows]


def _table(ids: list[str]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("t_arrow", pa.table({"subject_id": pa.array(ids, pa.string())}))
    con.execute("CREATE TABLE t AS SELECT * FROM t_arrow")
    return con


def test_ids_with_quotes_and_sql_select_exactly_themselves() -> None:
    con = _table([*AWKWARD, "x", "O''Brien"])
    for wanted in ([a] for a in AWKWARD):
        assert _selected(con, wanted) == wanted
    assert _selected(con, AWKWARD) == sorted(AWKWARD)
    assert con.sql("SELECT count(*) FROM t").fetchall()[0][0] == len(AWKWARD) + 2  # nothing was run by an id


def test_an_empty_list_selects_nothing_and_a_nul_or_a_long_list_falls_back_to_the_subquery() -> None:
    assert subject_in([], "w") == "false"
    assert subject_in(["a\x00b"], "w") == "subject_id IN (SELECT subject_id FROM w)"
    many = [f"P{i}" for i in range(IN_LIST_MAX + 1)]
    assert subject_in(many, "w") == "subject_id IN (SELECT subject_id FROM w)"
    assert subject_in(many[:IN_LIST_MAX], "w").count("'") == 2 * IN_LIST_MAX
    con = _table(["a\x00b", "ab", "a"])
    assert _selected(con, ["a\x00b"]) == ["a\x00b"]


# Ids any text a store can hold: UTF-8 (st.characters without a codec also draws lone surrogates, which no
# Arrow string holds: the test then failed in pa.array when one was drawn), NUL aside (its own test above).
_ID = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)


@settings(max_examples=60, deadline=None)
@given(stored=st.lists(_ID, max_size=30), extra=st.lists(_ID, max_size=5),
       data=st.data())
def test_the_literal_list_selects_what_the_subquery_selects(stored: list[str], extra: list[str],
                                                            data: st.DataObject) -> None:
    con = _table(stored)
    wanted = sorted(set(data.draw(st.lists(st.sampled_from(stored), max_size=8)) if stored else []) | set(extra))
    con.register("wanted", pa.table({"subject_id": pa.array(wanted, pa.string())}))
    expect = con.sql("SELECT subject_id FROM t WHERE subject_id IN (SELECT subject_id FROM wanted) "
                     "ORDER BY 1").fetchall()
    con.unregister("wanted")
    assert [(s,) for s in _selected(con, wanted)] == expect


def _row_groups_scanned(con: duckdb.DuckDBPyConnection, sql: str, tmp: Path) -> tuple[int, int, int]:
    """(rows, row groups scanned, row groups in the files) of `sql`, by DuckDB's profiler."""
    out = tmp / "profile.json"
    con.execute(f"SET enable_profiling = 'json'; SET profiling_output = '{out.as_posix()}'")
    rows = len(con.sql(sql).fetchall())
    con.execute("SET enable_profiling = 'no_output'")
    q = json.loads(out.read_text())["query"]
    return rows, q["total_row_groups_scanned"], q["total_row_groups_to_scan"]


def test_a_parquet_read_of_a_few_subjects_scans_only_their_row_groups(tmp_path: Path) -> None:
    """200 subjects of 40,000 in 400 row groups: their row groups only (a subquery gets this pruning from DuckDB
    for at most about 50 subjects; a feed's run covers hundreds)."""
    ids = [f"P{i:05d}" for i in range(40_000)]
    pq.write_table(pa.table({"subject_id": ids, "v": range(len(ids))}), tmp_path / "x.parquet", row_group_size=100)
    wanted = ids[::200]
    con = duckdb.connect()
    src = f"read_parquet('{(tmp_path / 'x.parquet').as_posix()}')"
    rows, scanned, groups = _row_groups_scanned(con, f"SELECT * FROM {src} WHERE {subject_in(wanted, 'w')}",
                                                tmp_path)
    assert (rows, scanned, groups) == (200, 200, 400)


def test_the_store_s_few_views_with_a_replaced_version_pass_the_pruning_through(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    """A store whose parts hold many row groups, one record replaced by a newer version (the views then filter
    the hidden versions): an incremental run's read of two subjects scans their row groups, not the store's,
    and finds the current version only."""
    monkeypatch.setattr(store_mod, "ROW_GROUP", 200)
    store = EventStore(tmp_path / "s")
    t0 = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)  # the events schema is naive UTC
    n = 400
    rows = pa.table({"subject_id": [f"P{i // 10:04d}" for i in range(10 * n)],
                     "encounter_id": [f"H{i // 10:04d}" for i in range(10 * n)],
                     "time": [t0 + timedelta(hours=i % 10) for i in range(10 * n)],
                     "code": ["LOINC/2160-0"] * (10 * n), "analyte": ["creatinine"] * (10 * n),
                     "numeric_value": [1.0] * (10 * n), "unit": ["mg/dL"] * (10 * n),
                     "source": [f"lab/{i}/_history/1" for i in range(10 * n)]}).cast(TABLES["events"])
    store.append({"events": rows})
    fix = rows.slice(10 * 123, 1).set_column(5, "numeric_value", pa.array([2.5]))  # P0123's first, corrected
    fix = fix.set_column(7, "source", pa.array(["lab/1230/_history/2"]))
    assert store.append({"events": fix}).superseded
    con = store.connect(prefix="all_", few=["P0123", "P0300"], few_prefix="few_")
    got, scanned, groups = _row_groups_scanned(
        con, f"SELECT * FROM few_events WHERE {subject_in(['P0123', 'P0300'], 'x')}", tmp_path)
    values = con.sql(f"SELECT numeric_value FROM few_events WHERE {subject_in(['P0123'], 'x')} "
                     "AND source LIKE 'lab/1230/%'").fetchall()
    assert got == 20 and groups >= 20 and scanned <= 4
    assert values == [(2.5,)]
