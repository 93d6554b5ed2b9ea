"""The batch KDIGO SQL gives, row for row, the stages of the single-patient reference engine."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
from tests.surveillance.cohort import random_cohort

from mgaki.engine.kidney import stage_creatinine, stage_urine_output
from mgaki.events import EventStore
from mgaki.knowledge import KnowledgeBase
from mgaki.surveillance import run


@pytest.fixture(scope="module")
def cohort_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object]:  # type: ignore[type-arg]
    tables = random_cohort(150, seed=7)
    store = EventStore(tmp_path_factory.mktemp("store"))
    store.append(tables)
    return tables, run(store)


def _series(tables: dict, analyte: str) -> dict[str, list[tuple[datetime, float]]]:  # type: ignore[type-arg]
    out: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for r in tables["events"].to_pylist():
        if r["analyte"] == analyte:
            out[r["subject_id"]].append((r["time"], r["numeric_value"]))
    return out


def test_creatinine_stages_equal_the_engine_row_for_row(kb: KnowledgeBase, cohort_result: tuple) -> None:  # type: ignore[type-arg]
    tables, res = cohort_result
    cr = _series(tables, "creatinine")
    rrt = _series(tables, "rrt")
    sql = defaultdict(list)
    for r in res.tables["kdigo_creatinine"].to_pylist():
        sql[r["subject_id"]].append((r["time"], r["value"], r["stage"]))
    staged = 0
    for subject, series in cr.items():
        ref = stage_creatinine(kb, sorted(set(series)), rrt_times=[t for t, _ in rrt.get(subject, [])])
        expected = sorted((x.time, x.value, x.stage) for x in ref)
        assert sorted(sql[subject]) == expected, subject
        staged += sum(1 for x in ref if x.stage)
    assert staged > 50  # the cohort really exercises the rules
    assert {r["stage"] for r in res.tables["kdigo_creatinine"].to_pylist()} == {0, 1, 2, 3}


def test_urine_output_stages_equal_the_engine(kb: KnowledgeBase, cohort_result: tuple) -> None:  # type: ignore[type-arg]
    tables, res = cohort_result
    uo = _series(tables, "urine_output")
    weights = {r["subject_id"]: r["weight_kg"] for r in tables["weights"].to_pylist()}
    sql = defaultdict(list)
    for r in res.tables["kdigo_urine"].to_pylist():
        sql[r["subject_id"]].append((r["time"], r["stage"], r["rate_6h"]))
    compared = 0
    for subject, series in uo.items():
        ref = stage_urine_output(kb, series, weights[subject])
        got = sorted(sql[subject])
        assert [(x.time, x.stage) for x in ref] == [(t, s) for t, s, _ in got], subject
        for x, (_, _, r6) in zip(ref, got, strict=True):
            assert (x.rate_6h is None) == (r6 is None)
            if r6 is not None:
                assert r6 == pytest.approx(x.rate_6h, rel=1e-9, abs=1e-12)
        compared += len(ref)
    assert compared > 1000
    assert {r["stage"] for r in res.tables["kdigo_urine"].to_pylist()} >= {0, 1, 2, 3}


def test_urine_output_without_weight_is_not_staged(tmp_path: Path) -> None:
    tables = random_cohort(30, seed=3)
    no_weight = set(tables["encounters"].column("subject_id").to_pylist()) - set(
        tables["weights"].column("subject_id").to_pylist())
    store = EventStore(tmp_path)
    store.append(tables)
    res = run(store)
    rows = [r for r in res.tables["kdigo_urine"].to_pylist() if r["subject_id"] in no_weight]
    assert all(r["stage"] is None and r["criterion"] == "no_weight" for r in rows)


def test_only_the_stages_an_output_needs_run(tmp_path: Path) -> None:
    tables = random_cohort(40, seed=9)
    store = EventStore(tmp_path)
    store.append(tables)
    full = run(store)
    only = run(store, outputs=("kdigo_creatinine",))
    assert set(only.tables) == {"kdigo_creatinine"}
    assert "uo_win" not in only.seconds and "alerts" not in only.seconds and "baseline" in only.seconds
    key = ["subject_id", "time", "value"]
    assert only.tables["kdigo_creatinine"].sort_by([(k, "ascending") for k in key]).equals(
        full.tables["kdigo_creatinine"].sort_by([(k, "ascending") for k in key]))
    with pytest.raises(ValueError, match="unknown surveillance output"):
        run(store, outputs=("kdigo",))


def test_duckdb_settings_bound_memory_and_keep_the_outputs(tmp_path: Path) -> None:
    """memory_limit/temp_directory (how a cohort larger than RAM runs) change where DuckDB works, not results."""
    store = EventStore(tmp_path / "store")
    store.append(random_cohort(25, seed=4))
    free = run(store)
    bounded = run(store, duckdb_settings={"memory_limit": "256MB", "temp_directory": str(tmp_path / "spill"),
                                          "threads": "1"})
    for name, tab in free.tables.items():
        cols = [(c, "ascending") for c in tab.column_names]
        assert bounded.tables[name].sort_by(cols).equals(tab.sort_by(cols)), name
    with pytest.raises(ValueError, match="DuckDB setting name"):
        run(store, duckdb_settings={"memory_limit; DROP TABLE x": "1GB"})
    with pytest.raises(duckdb.Error):
        run(store, duckdb_settings={"memory_limit": "a lot"})
