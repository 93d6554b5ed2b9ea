"""Issue 13.3: labs of the visit that led to admission (ED labs, without an admission id in MIMIC-IV) belong to
the admission for staging, trajectories and alerts; in both engines, on real MIMIC-IV rows, FHIR and OMOP."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from tests.kidney.conftest import MIMIC, store_of

import mgaki
from mgaki.adapters.fhir_bulk import read_fhir
from mgaki.adapters.mimic import read_mimic, write_mimic
from mgaki.engine.kidney import stage_creatinine
from mgaki.events import EventStore, normalize
from mgaki.knowledge import KnowledgeBase
from mgaki.surveillance import run
from mgaki.synth.fhir import BundleBuilder

ED_ONSET = datetime(2153, 3, 27, 22, 50, tzinfo=UTC).replace(tzinfo=None)  # naive UTC, as the tables hold it


def _ed_creatinine() -> dict[str, str]:
    """Straight from the MIMIC-IV files: each creatinine without hadm_id drawn between an admission's ED
    registration and its admission time -> that admission (labevent_id -> hadm_id)."""
    rows = duckdb.sql(f"""
        SELECT l.labevent_id, a.hadm_id FROM read_csv('{MIMIC}/hosp/labevents.csv.gz', all_varchar=true) l
        JOIN read_csv('{MIMIC}/hosp/admissions.csv.gz', all_varchar=true) a ON a.subject_id = l.subject_id
          AND CAST(l.charttime AS TIMESTAMP) >= CAST(a.edregtime AS TIMESTAMP)
          AND CAST(l.charttime AS TIMESTAMP) < CAST(a.admittime AS TIMESTAMP)
        WHERE l.itemid = '50912' AND l.hadm_id IS NULL""").fetchall()
    return {f"labevents:labevent_id={lid}": hadm for lid, hadm in rows}


@pytest.fixture(scope="module")
def mimic(tmp_path_factory: pytest.TempPathFactory) -> tuple[EventStore, object]:
    store = store_of(tmp_path_factory.mktemp("mimic"), read_mimic(MIMIC))
    return store, run(store)


def test_every_ed_creatinine_is_attached_to_its_admission(mimic: tuple) -> None:  # type: ignore[type-arg]
    store, res = mimic
    expected = _ed_creatinine()
    assert len(expected) >= 20
    con = store.connect(("events",))
    try:
        times = {r[0]: (r[1], r[2]) for r in con.execute(
            "SELECT source, subject_id, time FROM events WHERE analyte = 'creatinine'").fetchall()}
    finally:
        con.close()
    by_time = {(r["subject_id"], r["time"]): r["encounter_id"] for r in res.tables["kdigo_creatinine"].to_pylist()}
    got = {src: by_time[times[src]] for src in expected}
    assert got == expected
    subjects = {times[src][0] for src in expected}
    assert {"10019003", "10014354"} <= subjects  # the issue's two patients


def test_ed_creatinine_stages_the_episode(mimic: tuple, kb: KnowledgeBase) -> None:  # type: ignore[type-arg]
    """10019003, admission 29279905: the ED creatinine of 3.2 mg/dL is stage 3 (the in-hospital peak is
    2.5 mg/dL, stage 1 by itself); the episode's onset is in the ED, before the admission time."""
    _, res = mimic
    ep = [e for e in res.tables["aki_episodes"].to_pylist() if e["encounter_id"] == "29279905"]
    assert len(ep) == 1 and ep[0]["peak_stage"] == 3 and ep[0]["onset"] == ED_ONSET
    cr = [r for r in res.tables["kdigo_creatinine"].to_pylist() if r["encounter_id"] == "29279905"]
    assert max(cr, key=lambda r: r["value"])["value"] == 3.2
    # the engine, on the patient's series, stages that value 3 too (bedside = SQL)
    series = sorted({(r["time"].replace(tzinfo=UTC), r["value"]) for r in res.tables["kdigo_creatinine"].to_pylist()
                     if r["subject_id"] == "10019003"})
    engine = {x.time.replace(tzinfo=None): x.stage for x in stage_creatinine(kb, series)}
    assert all(engine[r["time"]] == r["stage"] for r in cr)
    # alerts and trajectories: the onset alert is at the ED time; Mg of the ED visit is in the trajectory
    onset = [a for a in res.tables["alerts"].to_pylist() if a["kind"] == "aki_onset"
             and a["encounter_id"] == "29279905"]
    assert [a["time"] for a in onset] == [ED_ONSET]


def test_trajectory_starts_with_the_ed_magnesium(mimic: tuple) -> None:  # type: ignore[type-arg]
    _, res = mimic
    enc = {r[0]: r[1] for r in duckdb.sql(f"SELECT hadm_id, CAST(admittime AS TIMESTAMP) FROM read_csv("
                                          f"'{MIMIC}/hosp/admissions.csv.gz', all_varchar=true)").fetchall()}
    early = [t for t in res.tables["mg_trajectory"].to_pylist() if t["first_time"] < enc[t["encounter_id"]]]
    assert len(early) >= 10  # ED magnesium is the first value of many admissions


def test_mimic_writer_keeps_the_ed_stay(tmp_path: Path) -> None:
    tables = normalize(read_mimic(MIMIC))
    write_mimic(tables, tmp_path / "out")
    again = normalize(read_mimic(tmp_path / "out"))
    ed = lambda t: sorted((r["encounter_id"], r["parent_id"], r["start"]) for r in t["encounters"].to_pylist()  # noqa: E731
                          if r["kind"] == "emergency")
    assert ed(again) == ed(tables) and len(ed(tables)) > 20


def _bundle(with_ed: bool) -> BundleBuilder:
    """ED visit (-6 h to 0 h) part of the admission; creatinine 1.0 three days before (outpatient), 3.2 in the
    ED (no encounter reference, as an ED lab system sends it), 2.0 and 1.4 in hospital."""
    b = BundleBuilder("male", "1950-02-01", "e1", id_prefix="e1-")
    b.encounter(0, icu=False, eid="e1-adm", end_hours=96)
    if with_ed:
        b.entries.append({"resource": {
            "resourceType": "Encounter", "id": "e1-ed", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER",
                      "display": "emergency"},
            "subject": {"reference": "Patient/e1"}, "partOf": {"reference": "Encounter/e1-adm"},
            "period": {"start": "2024-02-29T20:00:00+00:00", "end": "2024-03-01T08:00:00+00:00"}}})
    b.series("creatinine", "mg/dL", [(-72, 1.0), (-4, 3.2), (10, 2.0), (30, 1.4)])
    return b


@pytest.mark.parametrize("with_ed", [True, False])
def test_fhir_ed_lab_bedside_equals_cohort(with_ed: bool, tmp_path: Path) -> None:
    b = _bundle(with_ed)
    bedside = mgaki.assess(b.build()).kidney
    assert bedside is not None and bedside.aki_stage == 3  # the ED value: 3.2 / 1.0
    (tmp_path / "b.json").write_text(json.dumps(b.build()))
    store = EventStore(tmp_path / "store")
    store.append(normalize(read_fhir(tmp_path / "b.json")))
    res = run(store)
    eps = res.tables["aki_episodes"].to_pylist()
    assert [(e["encounter_id"], e["peak_stage"]) for e in eps] == [("e1-adm", 3)]  # with or without the ED
    assert {r["encounter_id"] for r in res.tables["kidney_status"].to_pylist()} == {"e1-adm"}


@pytest.mark.parametrize(("er_end", "preceding"), [("2024-01-01 07:30:00", ""),  # admitted 30 min after the ER
                                                  ("2023-12-31 20:00:00", "10")])  # 12 h after, named preceding
def test_omop_er_visit_preceding_the_admission(er_end: str, preceding: str, tmp_path: Path) -> None:
    root = tmp_path / "omop"
    root.mkdir()
    (root / "person.csv").write_text("person_id,gender_concept_id,year_of_birth\n1,8507,1950\n")
    er_start = "2024-01-01 02:00:00" if not preceding else "2023-12-31 18:00:00"
    (root / "visit_occurrence.csv").write_text(
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_datetime,visit_end_datetime,"
        "preceding_visit_occurrence_id\n"
        f"10,1,9203,{er_start},{er_end},\n"  # ER visit
        f"11,1,9201,2024-01-01 08:00:00,2024-01-06 08:00:00,{preceding}\n")  # inpatient visit
    (root / "measurement.csv").write_text(
        "measurement_id,person_id,measurement_datetime,value_as_number,unit_source_value,visit_occurrence_id,"
        "measurement_source_value\n"
        "1,1,2023-12-29 08:00:00,1.0,mg/dL,,LOINC/2160-0\n"
        f"2,1,{'2024-01-01 03:00:00' if not preceding else '2023-12-31 19:00:00'},3.2,mg/dL,10,LOINC/2160-0\n"
        "3,1,2024-01-01 18:00:00,2.0,mg/dL,11,LOINC/2160-0\n")
    from mgaki.adapters.omop import read_omop
    store = EventStore(tmp_path / "store")
    store.append(normalize(read_omop(root)))
    res = run(store)
    assert [(e["encounter_id"], e["peak_stage"]) for e in res.tables["aki_episodes"].to_pylist()] == [("11", 3)]
    assert [r["encounter_id"] for r in res.tables["kidney_status"].to_pylist()] == ["11"]


def test_default_window_without_an_ed_record(tmp_path: Path, kb: KnowledgeBase) -> None:
    """No ED visit recorded: a lab naming no encounter 5 h before admission is the admission's; one 30 h
    before is not (pre_admission_attach_hours = 24)."""
    hours = kb.value("pre_admission_attach_hours")
    assert hours == 24
    b = BundleBuilder("male", "1950-02-01", "w1", id_prefix="w1-")
    b.encounter(0, icu=False, eid="w1-adm", end_hours=96)
    b.series("creatinine", "mg/dL", [(-30, 0.9), (-5, 1.0), (10, 1.1)])
    (tmp_path / "b.json").write_text(json.dumps(b.build()))
    store = EventStore(tmp_path / "store")
    store.append(normalize(read_fhir(tmp_path / "b.json")))
    rows = sorted((r["time"], r["encounter_id"]) for r in run(store).tables["kdigo_creatinine"].to_pylist())
    assert [e for _, e in rows] == [None, "w1-adm", "w1-adm"]
