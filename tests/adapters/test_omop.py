"""OMOP CDM adapter: round trip, a hand-written CDM extract, the vocabulary path, map consistency."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.cohort import assert_same, canonical_cohort
from mgaki.adapters.maps import load_map
from mgaki.adapters.omop import load_vocab, read_omop, write_omop
from mgaki.events import normalize
from mgaki.knowledge import KnowledgeBase


def test_round_trip(tmp_path: Path) -> None:
    original = canonical_cohort()
    write_omop(original, tmp_path)
    header = (tmp_path / "measurement.csv").read_text().splitlines()[0]
    assert header.startswith("measurement_id,person_id,measurement_concept_id")
    assert "32037" in (tmp_path / "visit_detail.csv").read_text()  # the ICU stay as a visit_detail
    death = (tmp_path / "death.csv").read_text().splitlines()
    assert death[0] == "person_id,death_date,death_datetime,death_type_concept_id"
    assert death[1:] == [f"1,2024-03-09,2024-03-09 12:00:00,{load_vocab().record_type.concept_id}"]
    assert len((tmp_path / "procedure_occurrence.csv").read_text().splitlines()) == 2  # header + the RRT session
    assert_same(original, normalize(read_omop(tmp_path)))


def _cdm(root: Path, concept: bool = False) -> None:
    (root / "person.csv").write_text("person_id,gender_concept_id,year_of_birth\n11,8532,1960\n")
    (root / "visit_occurrence.csv").write_text(
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_start_datetime,visit_end_date\n"
        "500,11,9201,2024-02-01,2024-02-01 08:00:00,2024-02-06\n")
    (root / "measurement.csv").write_text(
        "measurement_id,person_id,measurement_concept_id,measurement_date,measurement_datetime,value_as_number,"
        "unit_concept_id,unit_source_value,visit_occurrence_id,value_source_value\n"
        "1,11,3016723,2024-02-01,2024-02-01 09:00:00,132.6,8749,,500,\n"        # creatinine umol/L by unit concept
        "2,11,3023103,2024-02-01,,4.1,0,mmol/L,500,\n"                          # potassium, date only, unit text
        "3,11,3004501,2024-02-01,,104,8840,,500,\n"                             # glucose: not read
        "4,11,3016723,2024-02-02,,1.1,0,,500,\n"                                # creatinine, no unit
        "5,11,3016723,2024-02-03,,,8840,,500,<0.2\n"                            # creatinine, text value
        "6,11,40000001,2024-02-03,,0.7,8753,,500,\n")                           # local concept (via vocabulary)
    (root / "procedure_occurrence.csv").write_text(
        "procedure_occurrence_id,person_id,procedure_concept_id,procedure_datetime,procedure_source_value\n"
        "1,11,0,2024-02-02 10:00:00,SNOMED/302497006\n2,11,4000000,2024-02-02 11:00:00,XRAY\n")
    (root / "drug_exposure.csv").write_text(
        "drug_exposure_id,person_id,drug_concept_id,drug_exposure_start_datetime,quantity,dose_unit_source_value,"
        "drug_source_value\n1,11,19000001,2024-02-01 12:00:00,2,g,\n")
    (root / "death.csv").write_text("person_id,death_date,death_datetime,death_type_concept_id,cause_concept_id\n"
                                    "11,2024-02-06,,32817,0\n")  # date only: read as midnight UTC
    if concept:
        (root / "concept.csv").write_text(
            "concept_id,concept_name,domain_id,vocabulary_id,concept_code\n"
            "40000001,Magnesium [Moles/volume] in Serum or Plasma,Measurement,LOINC,2601-3\n"
            "19000001,magnesium sulfate,Drug,RxNorm,6585\n")


def test_hand_written_cdm(tmp_path: Path) -> None:
    _cdm(tmp_path, concept=True)
    out = normalize(read_omop(tmp_path))
    ev = {r["source"]: r for r in out["events"].to_pylist()}
    assert set(ev) == {"omop:measurement/1", "omop:measurement/2", "omop:measurement/6",
                       "omop:procedure_occurrence/1", "omop:death/11"}
    d = ev["omop:death/11"]
    assert (d["analyte"], d["code"], d["time"].isoformat(), d["numeric_value"]) == (
        "death", "MEDS_DEATH", "2024-02-06T00:00:00", None)
    assert ev["omop:measurement/1"]["numeric_value"] == pytest.approx(1.4997, rel=1e-3)
    assert ev["omop:measurement/2"]["time"].isoformat() == "2024-02-01T00:00:00"
    assert ev["omop:measurement/6"]["analyte"] == "magnesium"  # concept 40000001 -> LOINC 2601-3 -> codes.yaml
    assert ev["omop:procedure_occurrence/1"]["analyte"] == "rrt"
    q = {r["source"]: r["reason"] for r in out["quarantine"].to_pylist()}
    assert q == {"omop:measurement/4": "unit is missing; mgaki never guesses a unit",
                 "omop:measurement/5": "non-numeric value '<0.2'"}
    assert out["subjects"].to_pylist()[0]["sex"] == "female"
    assert out["encounters"].to_pylist()[0]["kind"] == "inpatient"
    med = out["medications"].to_pylist()[0]
    assert (med["drug"], med["rxcui"], med["encounter_id"]) == ("magnesium sulfate", "6585", None)


def test_without_vocabulary_local_concepts_are_not_read(tmp_path: Path) -> None:
    _cdm(tmp_path, concept=False)
    out = normalize(read_omop(tmp_path))
    assert "omop:measurement/6" not in out["events"].column("source").to_pylist()
    assert out["events"].num_rows == 4  # 2 measurements, the RRT procedure, the death


def test_omop_map_agrees_with_codes_yaml(kb: KnowledgeBase) -> None:
    loinc = {c.code: c.analyte for c in kb.codes.observations if c.system == "http://loinc.org"}
    entries = [e for e in load_map("omop").entries if e.maps_to == "analyte"]
    assert len(entries) >= 6
    for e in entries:
        code = e.note.removeprefix("LOINC ")
        assert loinc[code] == e.target, e
    assert {u.ucum for u in load_vocab().units} >= {"mg/dL", "mmol/L", "umol/L"}
