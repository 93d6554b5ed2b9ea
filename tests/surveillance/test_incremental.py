"""Incremental surveillance: same results as a full run, alerts once, re-ingest changes nothing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
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
