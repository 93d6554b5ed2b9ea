"""Issue 13.1 in the batch pipeline, on real MIMIC-IV rows and hand-built FHIR: a patient on maintenance
dialysis gets the explicit status, no stage and no AKI alert; bedside and SQL agree encounter by encounter."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.kidney.conftest import MIMIC, MIMIC_ESKD, store_of

from mgaki.adapters.fhir_bulk import read_fhir
from mgaki.adapters.mimic import read_mimic, write_mimic
from mgaki.engine import kidney as kd
from mgaki.events import EventStore, normalize
from mgaki.knowledge import KnowledgeBase
from mgaki.record import Condition, PatientRecord, Stay
from mgaki.surveillance.pipeline import run
from mgaki.synth.fhir import BundleBuilder

STATUS = "ESKD on maintenance dialysis: KDIGO AKI staging not applicable"


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else t.replace(tzinfo=UTC)


def test_mimic_dialysis_patient_gets_the_status_and_no_aki_alert(tmp_path: Path) -> None:
    res = run(store_of(tmp_path, read_mimic(MIMIC_ESKD)))
    status = {r["encounter_id"]: r for r in res.tables["kidney_status"].to_pylist()}
    assert set(status) == {"29842315", "21322534"}  # both admissions carry N18.6 and Z99.2
    for r in status.values():
        assert r["kdigo_status"] == STATUS and "diagnoses_icd:" in r["status_evidence"]
    cr = res.tables["kdigo_creatinine"].to_pylist()
    inside = [r for r in cr if r["encounter_id"] is not None]
    assert len(inside) >= 9
    assert all(r["stage"] is None and r["kdigo_status"] == STATUS for r in inside)
    assert res.tables["aki_episodes"].num_rows == 0
    kinds = [a["kind"] for a in res.tables["alerts"].to_pylist()]
    assert not {"aki_onset", "aki_worsening"} & set(kinds)
    assert kinds.count("kdigo_not_applicable") == 2
    traj = res.tables["mg_trajectory"].to_pylist()
    assert traj and all(t["kdigo_status"] == STATUS for t in traj if t["encounter_id"] in status)
    # the same rows without the diagnoses: today's behaviour, a stage-3 AKI with critical alerts
    raw = read_mimic(MIMIC_ESKD)
    raw["contexts"] = raw["contexts"].filter([c != "maintenance_dialysis" for c in
                                              raw["contexts"].column("context").to_pylist()])
    plain = run(store_of(tmp_path / "plain", raw))
    assert max(r["peak_stage"] for r in plain.tables["aki_episodes"].to_pylist()) == 3
    assert "aki_onset" in {a["kind"] for a in plain.tables["alerts"].to_pylist()}
    # Mg-AKI risk evidence is not applied to a patient on dialysis (it is, to the same rows without the codes)
    assert res.tables["evidence_flags"].num_rows == 0 < plain.tables["evidence_flags"].num_rows


def test_status_survives_the_mimic_writer(tmp_path: Path) -> None:
    tables = normalize(read_mimic(MIMIC_ESKD))
    write_mimic(tables, tmp_path / "out")
    again = normalize(read_mimic(tmp_path / "out"))
    ctx = sorted({(r["encounter_id"], r["context"]) for r in again["contexts"].to_pylist()
                  if r["context"] == "maintenance_dialysis"})
    assert ctx == [("21322534", "maintenance_dialysis"), ("29842315", "maintenance_dialysis")]


def _bedside_status(store: EventStore, kb: KnowledgeBase) -> dict[tuple[str, str], bool]:
    """Per hospital encounter: does the bedside rule find maintenance dialysis on a record of what was known
    by the encounter's end (contexts as Conditions, RRT times, the patient's hospital stays)?"""
    con = store.connect(("events", "encounters", "contexts"))
    try:
        enc = con.sql('SELECT DISTINCT subject_id, encounter_id, kind, start, "end", parent_id FROM encounters'
                      ).to_arrow_table().to_pylist()
        ctx = con.sql("SELECT subject_id, encounter_id, time, context, source FROM contexts"
                      ).to_arrow_table().to_pylist()
        rrt = con.sql("SELECT subject_id, time FROM events WHERE analyte = 'rrt'").to_arrow_table().to_pylist()
    finally:
        con.close()
    hosp = [h for h in enc if not (h["kind"] in ("icu", "emergency") and h["parent_id"] is not None)]
    by_subject = defaultdict(list)
    for h in hosp:
        by_subject[h["subject_id"]].append(Stay("hospital", _utc(h["start"]), _utc(h["end"]), h["encounter_id"]))
    out = {}
    for h in hosp:
        sid, eid, end = h["subject_id"], h["encounter_id"], _utc(h["end"])
        start = {s.source_id: s.start for s in by_subject[sid]}
        conds = tuple(Condition(None, c["context"], c["source"], (("urn:mgaki:context", c["context"]),))
                      for c in ctx if c["subject_id"] == sid and c["context"] == "maintenance_dialysis"
                      and (c["encounter_id"] == eid or (_utc(c["time"]) or start.get(c["encounter_id"]) or end)
                           <= (end or datetime.max.replace(tzinfo=UTC))))
        contexts = frozenset({"maintenance_dialysis"} if conds else set())
        stays = tuple(s for s in by_subject[sid] if s.start <= _utc(h["start"]))
        rec = PatientRecord(sid, stays=stays, contexts=contexts,
                            rrt_times=tuple(_utc(r["time"]) for r in rrt if r["subject_id"] == sid))
        out[(sid, eid)] = bool(kd.maintenance_dialysis(kb, rec, contexts, _utc(h["start"])))
    return out


@pytest.mark.parametrize("sources", [("subset",), ("subset", "eskd")])
def test_bedside_and_sql_agree_per_encounter_on_mimic(sources: tuple[str, ...], tmp_path: Path,
                                                      kb: KnowledgeBase) -> None:
    raws = [read_mimic({"subset": MIMIC, "eskd": MIMIC_ESKD}[s]) for s in sources]
    store = store_of(tmp_path, *raws)
    sql = {(r["subject_id"], r["encounter_id"]): r["kdigo_status"] != "applicable"
           for r in run(store, outputs=("kidney_status",)).tables["kidney_status"].to_pylist()}
    assert sql == _bedside_status(store, kb)
    assert sum(sql.values()) == (2 if "eskd" in sources else 0)


def _fhir_patient(pid: str, dialysis: str | None, rrt_hours: float | None = None) -> BundleBuilder:
    b = BundleBuilder("male", "1950-02-01", pid, id_prefix=f"{pid}-")
    b.encounter(0, icu=False, eid=f"{pid}-adm", end_hours=96)
    b.series("creatinine", "mg/dL", [(2, 4.1), (20, 7.9), (26, 3.9), (44, 8.2), (70, 4.0)])
    if dialysis == "condition":
        b.entries.append({"resource": {
            "resourceType": "Condition", "id": f"{pid}-c1", "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{pid}-adm"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "105502003"}]}}})
    if rrt_hours is not None:
        b.rrt(rrt_hours)
    return b


@pytest.mark.parametrize(("dialysis", "rrt_hours", "expected"), [
    ("condition", None, True),  # problem-list Condition (SNOMED)
    (None, -48.0, True),  # outpatient session two days before admission
    (None, 30.0, False),  # AKI-RRT started in hospital: stage 3 stays
])
def test_fhir_bundle_same_status_bedside_and_cohort(dialysis: str | None, rrt_hours: float | None,
                                                    expected: bool, tmp_path: Path) -> None:
    import json

    import mgaki
    b = _fhir_patient("f1", dialysis, rrt_hours)
    bedside = mgaki.assess(b.build()).kidney
    assert bedside is not None and (bedside.status == STATUS) is expected
    (tmp_path / "b.json").write_text(json.dumps(b.build()))
    store = EventStore(tmp_path / "store")
    store.append(normalize(read_fhir(tmp_path / "b.json")))
    res = run(store)
    st = res.tables["kidney_status"].to_pylist()
    assert [r["kdigo_status"] == STATUS for r in st] == [expected]
    kinds = {a["kind"] for a in res.tables["alerts"].to_pylist()}
    assert ("aki_onset" in kinds) is (not expected)
    if not expected:
        assert max(r["peak_stage"] for r in res.tables["aki_episodes"].to_pylist()) == 3
        assert bedside.aki_stage == 3


def test_omop_condition_occurrence_gives_the_status(tmp_path: Path) -> None:
    """An OMOP folder without vocabulary: the ICD-10-CM source value N18.6 is enough."""
    root = tmp_path / "omop"
    root.mkdir()
    (root / "person.csv").write_text("person_id,gender_concept_id,year_of_birth\n1,8507,1950\n2,8507,1950\n")
    (root / "visit_occurrence.csv").write_text(
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_datetime,visit_end_datetime\n"
        "11,1,9201,2024-01-01 08:00:00,2024-01-06 08:00:00\n21,2,9201,2024-01-01 08:00:00,2024-01-06 08:00:00\n")
    rows = ["measurement_id,person_id,measurement_datetime,value_as_number,unit_source_value,visit_occurrence_id,"
            "measurement_source_value"]
    for p in (1, 2):
        for i, (h, v) in enumerate([(2, 4.1), (20, 7.9), (26, 3.9), (44, 8.2)]):
            rows.append(f"{p}{i},{p},2024-01-0{1 + (8 + h) // 24} {(8 + h) % 24:02d}:00:00,{v},mg/dL,{p}1,"
                        "LOINC/2160-0")
    (root / "measurement.csv").write_text("\n".join(rows) + "\n")
    (root / "condition_occurrence.csv").write_text(
        "condition_occurrence_id,person_id,condition_concept_id,condition_start_date,visit_occurrence_id,"
        "condition_source_value\n1,1,0,2024-01-01,11,N18.6\n2,2,0,2024-01-01,21,I10\n")
    from mgaki.adapters.omop import read_omop
    store = EventStore(tmp_path / "store")
    store.append(normalize(read_omop(root)))
    res = run(store)
    st = {r["subject_id"]: r["kdigo_status"] for r in res.tables["kidney_status"].to_pylist()}
    assert st == {"1": STATUS, "2": "applicable"}
    onsets = {a["subject_id"] for a in res.tables["alerts"].to_pylist() if a["kind"] == "aki_onset"}
    assert onsets == {"2"}
