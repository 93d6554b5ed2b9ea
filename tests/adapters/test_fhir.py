"""FHIR R4 bulk adapter: a hand-written export, the same data as a Bundle, and the round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.cohort import assert_same, canonical_cohort
from mgaki.adapters.fhir_bulk import read_fhir, write_fhir
from mgaki.events import normalize

EXPORT = Path(__file__).parent / "data" / "fhir-export"


@pytest.fixture(scope="module")
def export() -> dict:
    return normalize(read_fhir(EXPORT))


def _ident(source: str) -> str:
    """A row's resource identity: its source without the ``/_history/<version>`` suffix."""
    ident, sep, version = source.partition("/_history/")
    assert sep and version, source
    return ident


def test_sources_are_versioned_references(export: dict) -> None:
    subj = {r["subject_id"]: r["source"] for r in export["subjects"].to_pylist()}
    assert subj["pat-7"] == "Patient/pat-7/_history/2024-06-01T00:00:00Z"  # meta.lastUpdated
    assert subj["pat-8"].startswith("Patient/pat-8/_history/h")  # no meta: a hash of the content
    again = normalize(read_fhir(EXPORT))["subjects"]
    assert sorted(again.column("source").to_pylist()) == sorted(subj.values())  # the hash is stable


def test_export_measurements_converted_and_unknown_codes_not_read(export: dict) -> None:
    ev = {_ident(r["source"]): r for r in export["events"].to_pylist()}
    # glucose (LOINC 2345-7) and the cardiac catheterisation are not mgaki codes: not read, not quarantined
    assert set(ev) == {"Observation/mg-1", "Observation/cr-1", "Observation/uo-1", "Procedure/crrt-1"}
    mg = ev["Observation/mg-1"]
    assert mg["analyte"] == "magnesium" and mg["code"] == "LOINC/2601-3"  # the LOINC coding, not the local one
    assert mg["numeric_value"] == pytest.approx(0.55 * 24.305 / 10, rel=1e-6)
    assert mg["time"].isoformat() == "2024-04-02T08:00:00"  # +02:00 -> UTC
    assert ev["Observation/cr-1"]["numeric_value"] == pytest.approx(176.8 / 88.42, rel=1e-3)
    assert ev["Observation/cr-1"]["encounter_id"] == "enc-1-icu"
    assert ev["Procedure/crrt-1"]["analyte"] == "rrt"
    assert export["weights"].column("weight_kg").to_pylist() == [61.5]


def test_export_encounters_patients_and_medications(export: dict) -> None:
    enc = {r["encounter_id"]: r for r in export["encounters"].to_pylist()}
    assert enc["enc-1-icu"]["kind"] == "icu" and enc["enc-1-icu"]["parent_id"] == "enc-1"
    assert enc["enc-2"]["kind"] == "emergency" and enc["enc-2"]["end"] is None
    assert enc["enc-1"]["start"].isoformat() == "2024-04-02T07:15:00"
    subj = {r["subject_id"]: (r["sex"], r["birth_year"]) for r in export["subjects"].to_pylist()}
    assert subj == {"pat-7": ("female", 1948), "pat-8": ("male", 1990)}
    meds = {_ident(r["source"]): r for r in export["medications"].to_pylist()}
    mg = meds["MedicationAdministration/ma-1"]
    assert mg["drug"] == "magnesium sulfate" and mg["mg_mmol"] == pytest.approx(2000 / 246.47, rel=1e-4)
    ppi = meds["MedicationRequest/mr-1"]  # medicationReference resolved to the Medication resource
    assert (ppi["drug"], ppi["rxcui"], ppi["dose_value"], ppi["route"]) == ("pantoprazole", "40790", 40.0, "oral")


def test_export_bad_rows_quarantined_with_reason(export: dict) -> None:
    q = {_ident(r["source"]): r["reason"] for r in export["quarantine"].to_pylist()}
    # 'mg' is an amount (a dose unit), not a concentration: not a unit of serum Mg
    assert q["Observation/mg-bad-unit"].startswith("mg cannot be converted to mg/dL for Magnesium")
    assert q["Observation/mg-lt"] == "non-numeric value '<0.5'"
    assert q["Observation/cr-bad-time"] == "unparseable time '2024-13-45'"
    assert q["Observation/k-void"] == "Observation status 'entered-in-error'"
    assert q["Encounter/enc-void"] == "Encounter status 'entered-in-error'"
    assert q["MedicationAdministration/ma-void"] == "MedicationAdministration status 'not-done'"
    assert len(q) == 6


def test_bundle_with_uuid_references_reads_like_the_export(tmp_path: Path, export: dict) -> None:
    entries = []
    uuid = {"Patient/pat-7": "urn:uuid:0a1b", "Encounter/enc-1": "urn:uuid:0c2d"}
    for f in ("Patient", "Encounter", "Observation"):
        for line in (EXPORT / f"{f}.ndjson").read_text().splitlines():
            res = json.loads(line)
            key = f"{res['resourceType']}/{res['id']}"
            text = json.dumps(res)
            for ref, u in uuid.items():
                text = text.replace(f'"reference": "{ref}"', f'"reference": "{u}"')
            entries.append({"fullUrl": uuid.get(key, f"http://example.org/fhir/{key}"), "resource": json.loads(text)})
    (tmp_path / "bundle.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                                      "entry": entries}))
    got = normalize(read_fhir(tmp_path / "bundle.json"))
    assert '"reference": "urn:uuid:0a1b"' in (tmp_path / "bundle.json").read_text()
    key = ("subject_id", "encounter_id", "time", "analyte", "numeric_value")
    want = [r for r in export["events"].select(list(key)).to_pylist() if r["analyte"] != "rrt"]
    assert len(want) == 3
    assert sorted(got["events"].select(list(key)).to_pylist(), key=repr) == sorted(want, key=repr)


def test_round_trip(tmp_path: Path) -> None:
    original = canonical_cohort()
    write_fhir(original, tmp_path)
    lines = (tmp_path / "Observation.ndjson").read_text().splitlines()
    assert all("null" not in x for x in lines) and len(lines) == 9  # 8 labs/urine + 1 weight
    patients = {p["id"]: p for p in map(json.loads, (tmp_path / "Patient.ndjson").read_text().splitlines())}
    assert patients["1"]["deceasedDateTime"] == "2024-03-09T12:00:00Z" and "deceasedDateTime" not in patients["2"]
    assert len((tmp_path / "Procedure.ndjson").read_text().splitlines()) == 1  # the RRT session; death is not one
    assert_same(original, normalize(read_fhir(tmp_path)))


def _rows(tables: dict) -> dict[str, list]:
    return {name: sorted(t.to_pylist(), key=repr) for name, t in tables.items()}


def test_each_resource_type_read_alone_gives_its_share_of_the_whole(tmp_path: Path) -> None:
    """read_fhir plans a query only for the resource types its input holds: read one type at a time (a
    MedicationAdministration with the Medications it names), the rows are those of the whole read, none lost."""
    write_fhir(canonical_cohort(), tmp_path / "all")
    for f in (EXPORT).iterdir():
        (tmp_path / "all" / f"export-{f.name}").write_bytes(f.read_bytes())
    files = sorted((tmp_path / "all").iterdir())
    whole = _rows(read_fhir(tmp_path / "all"))
    assert all(whole[t] for t in ("events", "subjects", "encounters", "medications", "contexts", "quarantine"))
    parts: dict[str, list] = {name: [] for name in whole}
    for f in files:
        if "Medication.ndjson" in f.name:  # read beside what names it
            continue
        one = tmp_path / f"one-{f.name}"
        one.mkdir()
        (one / f.name).write_bytes(f.read_bytes())
        if "Medication" in f.name:
            for m in files:
                if m.name.endswith("Medication.ndjson"):
                    (one / m.name).write_bytes(m.read_bytes())
        for name, rows in _rows(read_fhir(one)).items():
            parts[name] += rows
    assert {k: sorted(v, key=repr) for k, v in parts.items()} == whole


def test_a_small_request_opens_no_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One Observation (a lab's POST /fhir) is read on a leased one-thread database, not a new one (opening
    one was a fifth of the request's cost)."""
    import duckdb

    (tmp_path / "Observation.ndjson").write_bytes((EXPORT / "Observation.ndjson").read_bytes())
    want = _rows(read_fhir(tmp_path))  # leases a database, returned to the pool

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("a new DuckDB database was opened for a small request")

    monkeypatch.setattr(duckdb, "connect", refuse)
    assert _rows(read_fhir(tmp_path)) == want


def test_not_a_fhir_folder(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(Exception, match="no FHIR files"):
        read_fhir(tmp_path)
