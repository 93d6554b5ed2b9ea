"""Issue 13.5: the weight urine output is staged with is chosen robustly (outliers rejected with a reason) and
stored with each urine-output stage; bedside and SQL choose the same weight, on MIMIC-IV and FHIR."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from tests.kidney.conftest import MIMIC, store_of

import mgaki
from mgaki.adapters.fhir_bulk import read_fhir
from mgaki.adapters.mimic import read_mimic
from mgaki.engine.kidney import choose_weight
from mgaki.events import EventStore, normalize
from mgaki.knowledge import KnowledgeBase
from mgaki.surveillance import run
from mgaki.synth.fhir import BundleBuilder


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC)


def _oliguric(pid: str) -> BundleBuilder:
    """Charted weights 83.6-89 kg (clinic, ward), one 60 kg weight on an infusion order at ICU admission, and
    urine output of 38 mL/h for 14 h: 0.45 mL/kg/h at 85 kg (KDIGO stage 2), 0.63 at 60 kg (no stage)."""
    b = BundleBuilder("male", "1955-03-01", pid, id_prefix=f"{pid}-")
    b.encounter(0, icu=True, eid=f"{pid}-icu", end_hours=48)
    for h, kg in ((-24 * 60, 89.0), (-24 * 20, 86.2), (-24 * 2, 84.1), (-3, 83.6)):
        b.obs("weight", kg, "kg", h)
    b.obs("weight", 60.0, "kg", 0.5)  # the order-entry weight, the latest before the first charting
    b.series("urine_output", "mL", [(1 + h, 38.0) for h in range(15)])
    b.series("creatinine", "mg/dL", [(0, 1.0), (24, 1.1)])
    return b


def test_outlying_order_weight_is_rejected_and_oliguria_found(tmp_path: Path) -> None:
    b = _oliguric("w1")
    bedside = mgaki.assess(b.build()).kidney
    assert bedside is not None
    assert bedside.uo_weight_kg == 83.6 and bedside.aki_stage == 2
    assert len(bedside.uo_weights_rejected) == 1 and bedside.uo_weights_rejected[0].startswith("60 kg")
    (tmp_path / "b.json").write_text(json.dumps(b.build()))
    store = EventStore(tmp_path / "store")
    store.append(normalize(read_fhir(tmp_path / "b.json")))
    res = run(store)
    uo = res.tables["kdigo_urine"].to_pylist()
    assert {(r["weight_kg"], r["weights_considered"], r["weights_rejected"]) for r in uo} == {(83.6, 5, 1)}
    assert max(r["stage"] for r in uo) == 2 and all(r["weight_source"] and r["weight_time"] for r in uo)
    rej = res.tables["uo_weight_rejected"].to_pylist()
    assert [(r["weight_kg"], r["median_kg"]) for r in rej] == [(60.0, 84.1)] and "outlier" in rej[0]["reason"]
    assert max(e["peak_stage"] for e in res.tables["aki_episodes"].to_pylist()) == 2


def test_two_disagreeing_weights_are_both_kept(kb: KnowledgeBase) -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    w = [(t0.replace(hour=0), 60.0, "a"), (t0.replace(hour=2), 85.0, "b")]
    c = choose_weight(kb, w, t0.replace(hour=3), t0.replace(hour=20))
    assert c is not None and c.weight_kg == 85.0 and c.rejected == () and c.considered == 2


def test_no_weight_in_the_look_back_falls_back_to_the_latest_older_one(kb: KnowledgeBase) -> None:
    t0 = datetime(2024, 6, 1, tzinfo=UTC)
    old = [(datetime(2023, 1, 1, tzinfo=UTC), 70.0, "omr"), (datetime(2023, 6, 1, tzinfo=UTC), 72.0, "omr")]
    c = choose_weight(kb, old, t0, t0)
    assert c is not None and c.weight_kg == 72.0 and c.considered == 0


def test_bedside_and_sql_choose_the_same_weight_on_mimic(tmp_path: Path, kb: KnowledgeBase) -> None:
    store = store_of(tmp_path, read_mimic(MIMIC))
    res = run(store, outputs=("kdigo_urine", "uo_weight_rejected"))
    uo = res.tables["kdigo_urine"].to_pylist()
    con = store.connect(("weights",))
    try:
        ws = con.sql("SELECT subject_id, time, weight_kg, source FROM weights").to_arrow_table().to_pylist()
    finally:
        con.close()
    weights = defaultdict(list)
    for r in ws:
        weights[r["subject_id"]].append((_utc(r["time"]), r["weight_kg"], r["source"]))
    stays = defaultdict(list)
    for r in uo:
        stays[(r["subject_id"], r["stay_id"])].append(r)
    rejected_sql = {(r["stay_id"], r["source"]) for r in res.tables["uo_weight_rejected"].to_pylist()}
    rejected_engine = set()
    for (sid, stay), rows in stays.items():
        times = sorted(_utc(r["time"]) for r in rows)
        # the stay's first charting is the start of the first interval (uo rows begin at the second charting)
        c = choose_weight(kb, weights[sid], _first_charting(store, stay), times[-1])
        assert c is not None
        assert {(round(r["weight_kg"], 6), r["weight_source"], r["weights_considered"]) for r in rows} == {
            (round(c.weight_kg, 6), c.source, c.considered)}, stay
        rejected_engine |= {(stay, src) for _, _, src, _ in c.rejected}
    assert rejected_sql == rejected_engine
    assert len(stays) >= 20


def _first_charting(store: EventStore, stay: str) -> datetime:
    """The stay's first urine charting inside the ICU stay's own time (MIMIC times a few chartings before
    intime: those belong to no ICU stay, docs/peers.md)."""
    con = store.connect(("events", "encounters"))
    try:
        t = con.execute("""SELECT MIN(e.time) FROM events e JOIN encounters i ON i.encounter_id = ?
                           AND i.subject_id = e.subject_id AND e.time BETWEEN i.start AND i."end"
                           WHERE e.analyte = 'urine_output'""", [stay]).fetchone()
    finally:
        con.close()
    assert t is not None
    return _utc(t[0])
