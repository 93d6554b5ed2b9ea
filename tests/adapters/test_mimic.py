"""MIMIC-IV adapter on the real 12-patient demo subset (tests/data/mimic-iv-demo-subset).

Expected counts were read off the raw files independently of the adapter's DuckDB SQL:
``zcat hosp/labevents.csv.gz | awk -F, 'NR>1 {c[$5]++} END {for (k in c) print k, c[k]}'``
(and the same for icu/outputevents on $7), and again here with Python's csv module
(``_csv_rows``), which shares no code with the adapter.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

import pyarrow as pa
import pytest

from mgaki.adapters.maps import load_map
from mgaki.adapters.mimic import FILES, read_mimic, write_mimic
from mgaki.adapters.omop import load_vocab
from mgaki.errors import InputError
from mgaki.events import TABLES, normalize

ROOT = Path(__file__).resolve().parents[1] / "data" / "mimic-iv-demo-subset"

LAB_COUNTS = {  # itemid -> (analyte, rows in the subset)
    "50960": ("magnesium", 506), "50912": ("creatinine", 645), "50971": ("potassium", 610),
    "50893": ("calcium", 515), "50808": ("ionized_calcium", 84), "50862": ("albumin", 203),
    "50970": ("phosphate", 486), "50882": ("bicarbonate", 571), "50820": ("ph", 166),
    "51088": ("urine_magnesium", 1), "51082": ("urine_creatinine", 20), "51077": ("urine_calcium", 1),
}
URINE_COUNTS = {"226559": 1215, "226560": 135, "226561": 1, "226567": 9}  # Foley, Void, Condom Cath, Straight Cath
IRRIGANT_ITEMS = {"227488", "227489", "226566"}


def _naive_utc(*parts: int) -> datetime:
    """The event model's timestamps: UTC, stored naive (MEDS convention)."""
    return datetime(*parts, tzinfo=UTC).replace(tzinfo=None)  # type: ignore[misc]


def _csv_rows(rel: str, root: Path = ROOT) -> Iterator[dict[str, str]]:
    with gzip.open(root / f"{rel}.csv.gz", "rt", newline="") as f:
        yield from csv.DictReader(f)


@pytest.fixture(scope="module")
def raw() -> dict[str, pa.Table]:
    return read_mimic(ROOT)


@pytest.fixture(scope="module")
def canon(raw: dict[str, pa.Table]) -> dict[str, pa.Table]:
    return normalize(raw)


def test_every_adapter_map_loads() -> None:
    names = [p.name.removesuffix(".yaml") for p in (files("mgaki.adapters") / "maps").iterdir()
             if p.name.endswith(".yaml")]
    assert "mimic_iv" in names
    own_schema = {"omop_vocab": lambda: load_vocab().units}  # files validated by their adapter's own model
    for name in names:
        loaded = own_schema[name]() if name in own_schema else load_map(name).entries
        assert len(loaded) > 0, name


def test_lab_counts_per_analyte_match_an_independent_count(canon: dict[str, pa.Table]) -> None:
    by_item = Counter(r["itemid"] for r in _csv_rows("hosp/labevents") if r["itemid"] in LAB_COUNTS)
    assert dict(by_item) == {k: n for k, (_, n) in LAB_COUNTS.items()}
    got = Counter(zip(canon["events"].column("code").to_pylist(), canon["events"].column("analyte").to_pylist(),
                      strict=True))
    for item, (analyte, n) in LAB_COUNTS.items():
        assert got[(f"MIMIC-IV/labevents/{item}", analyte)] == n, item
    analytes = Counter(canon["events"].column("analyte").to_pylist())
    assert analytes["creatinine"] == 645 and analytes["magnesium"] == 506
    ph = [r for r in canon["events"].to_pylist() if r["analyte"] == "ph"]
    assert {r["unit"] for r in ph} == {"[pH]"}  # MIMIC writes 'units'; the map's placeholder resolves it


def test_potassium_in_meq_per_litre_resolves_through_the_unit_layer(canon: dict[str, pa.Table]) -> None:
    k = [r for r in canon["events"].to_pylist() if r["analyte"] == "potassium"]
    assert {r["unit"] for r in k} == {"mmol/L"}
    assert min(r["numeric_value"] for r in k) == pytest.approx(2.8) and max(r["numeric_value"] for r in k) == 6.9


def test_urine_output_items_and_gu_irrigant(canon: dict[str, pa.Table]) -> None:
    rows = list(_csv_rows("icu/outputevents"))
    assert not [r for r in rows if r["itemid"] in IRRIGANT_ITEMS]  # the subset has no irrigant rows at all
    assert not [r for r in rows if float(r["value"]) < 0]  # ... and no negative output
    uo = [r for r in canon["events"].to_pylist() if r["analyte"] == "urine_output"]
    assert Counter(r["code"].rsplit("/", 1)[1] for r in uo) == URINE_COUNTS
    assert {r["unit"] for r in uo} == {"mL"}
    # drains, chest tubes, OR/PACU urine are output but not urine
    assert len([r for r in rows if r["itemid"] not in URINE_COUNTS]) == 1705 - 1360


def _mini_root(tmp: Path, tables: dict[str, list[dict[str, str]]]) -> Path:
    """A MIMIC root with just the given rows (and the two required files)."""
    tables = {"hosp/patients": [{"subject_id": "1", "gender": "F", "anchor_age": "60", "anchor_year": "2150"}],
              "hosp/admissions": [{"subject_id": "1", "hadm_id": "20000001", "admittime": "2150-01-01 00:00:00",
                                   "dischtime": "2150-01-05 00:00:00"}], **tables}
    for rel, rows in tables.items():
        path = tmp / f"{rel}.csv.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FILES[rel])
            w.writeheader()
            w.writerows(rows)
    return tmp


def test_irrigant_read_for_netting_and_negative_urine_quarantined(tmp_path: Path) -> None:
    """GU irrigation (issue 13 point 2): outputs holding irrigant (227489, 226566) and irrigant in (227488: a
    positive volume whatever its sign, as mimic-code reads it) are read, each as its own analyte, for KDIGO to
    net."""
    def oe(item: str, value: str, minute: int) -> dict[str, str]:
        return {"subject_id": "1", "hadm_id": "20000001", "stay_id": "30000001",
                "charttime": f"2150-01-02 10:{minute:02d}:00", "itemid": item, "value": value, "valueuom": "ml"}

    root = _mini_root(tmp_path, {"icu/outputevents": [
        oe("226559", "100", 0), oe("227488", "500", 1), oe("227489", "600", 2), oe("226566", "50", 3),
        oe("226559", "-20", 4), oe("227488", "-40", 5)]})
    out = normalize(read_mimic(root))
    got = sorted(zip(out["events"].column("analyte").to_pylist(), out["events"].column("numeric_value").to_pylist(),
                     strict=True))
    assert got == [("urine_irrigant", 40.0), ("urine_irrigant", 500.0), ("urine_irrigant_out", 50.0),
                   ("urine_irrigant_out", 600.0), ("urine_output", 100.0)]
    q = out["quarantine"].to_pylist()
    assert len(q) == 1 and "urine_output -20 ml" in q[0]["reason"] and "outside the possible range" in q[0]["reason"]
    assert q[0]["source"] == "outputevents:stay_id=30000001,charttime=2150-01-02 10:04:00,itemid=226559"


def test_lab_text_values_reach_the_quarantine(tmp_path: Path) -> None:
    def lab(i: int, value: str, valuenum: str, uom: str = "mg/dL", item: str = "50960") -> dict[str, str]:
        return {"labevent_id": str(i), "subject_id": "1", "hadm_id": "20000001", "itemid": item,
                "charttime": "2150-01-02 06:00:00", "value": value, "valuenum": valuenum, "valueuom": uom}

    root = _mini_root(tmp_path, {"hosp/labevents": [
        lab(1, "2.0", "2"), lab(2, "<0.2", ""), lab(3, "___", ""), lab(4, "___", "1.8"),
        lab(5, "7.40", "7.4", "units", "50820"), lab(6, "1.9", "1.9", "", "50960"), lab(7, "9", "9", "mg/dL", "99999"),
    ]})
    out = normalize(read_mimic(root))
    ev = {r["source"]: r for r in out["events"].to_pylist()}
    assert set(ev) == {"labevents:labevent_id=1", "labevents:labevent_id=4", "labevents:labevent_id=5"}
    assert ev["labevents:labevent_id=4"]["numeric_value"] == 1.8  # '___' text, number kept in valuenum
    assert ev["labevents:labevent_id=5"]["unit"] == "[pH]"
    reasons = {r["source"]: r["reason"] for r in out["quarantine"].to_pylist()}
    assert reasons == {"labevents:labevent_id=2": "non-numeric value '<0.2'",
                       "labevents:labevent_id=3": "non-numeric value '___'",
                       "labevents:labevent_id=6": "unit is missing; mgaki never guesses a unit"}


def test_quarantine_counts_by_reason(canon: dict[str, pa.Table]) -> None:
    reasons = Counter((r["table"], r["reason"]) for r in canon["quarantine"].to_pylist())
    assert reasons == {("medications", "ends before it starts"): 23}
    # independent: prescriptions of admissions without eMAR whose stoptime precedes starttime
    emar_hadm = {r["hadm_id"] for r in _csv_rows("hosp/emar") if r["hadm_id"]}
    rx = [r for r in _csv_rows("hosp/prescriptions") if r["hadm_id"] not in emar_hadm]
    assert len(rx) == 1143 and sum(r["stoptime"] < r["starttime"] for r in rx) == 23


def test_creatinine_series_of_a_known_patient(canon: dict[str, pa.Table]) -> None:
    cr = sorted((r for r in canon["events"].to_pylist()
                 if r["subject_id"] == "10020187" and r["analyte"] == "creatinine"), key=lambda r: r["time"])
    assert len(cr) == 17
    assert [(r["time"], r["numeric_value"], r["encounter_id"]) for r in cr[:4]] == [
        (_naive_utc(2169, 1, 15, 0, 45), 0.6, None),  # drawn before admission: no hadm_id
        (_naive_utc(2169, 1, 15, 8, 30), 0.5, "24104168"),
        (_naive_utc(2169, 1, 16, 1, 30), 0.4, "24104168"),
        (_naive_utc(2169, 1, 17, 2, 9), 0.6, "24104168"),
    ]
    assert cr[0]["source"] == "labevents:labevent_id=240982" and cr[0]["unit"] == "mg/dL"


def test_encounters_icu_stays_contexts_subjects(canon: dict[str, pa.Table]) -> None:
    enc = canon["encounters"].to_pylist()
    kinds = Counter(e["kind"] for e in enc)
    assert kinds == {"inpatient": 49, "icu": 22, "emergency": 35}
    assert kinds["inpatient"] == sum(1 for _ in _csv_rows("hosp/admissions"))
    assert kinds["emergency"] == sum(1 for r in _csv_rows("hosp/admissions") if r["edregtime"])  # ED stays
    hadm = {e["encounter_id"] for e in enc if e["kind"] == "inpatient"}
    assert all(e["parent_id"] in hadm for e in enc if e["kind"] in ("icu", "emergency"))
    ctx = canon["contexts"].to_pylist()
    assert len(ctx) == 22 and {c["context"] for c in ctx} == {"icu"}
    subj = {s["subject_id"]: s for s in canon["subjects"].to_pylist()}
    assert len(subj) == 12
    assert subj["10008454"]["sex"] == "female" and subj["10008454"]["birth_year"] == 2110 - 26


def test_weights_found_for_every_subject(canon: dict[str, pa.Table]) -> None:
    w = canon["weights"].to_pylist()
    assert Counter(r["source"].split(":")[0] for r in w) == {"omr": 252, "inputevents": 23}
    assert len({r["subject_id"] for r in w}) == 12
    omr_lbs = next(r for r in _csv_rows("hosp/omr") if r["result_name"] == "Weight (Lbs)")
    key = f"omr:subject_id={omr_lbs['subject_id']},chartdate={omr_lbs['chartdate']},seq_num={omr_lbs['seq_num']}"
    row = next(r for r in w if r["source"] == key)
    assert row["weight_kg"] == pytest.approx(float(omr_lbs["result_value"]) * 0.45359237)
    icu = [r for r in w if r["subject_id"] == "10029291" and r["source"].startswith("inputevents")]
    assert [(r["time"], r["weight_kg"]) for r in icu] == [(_naive_utc(2123, 2, 20, 4, 29), 83.5),
                                                          (_naive_utc(2123, 2, 26, 3, 49), 83.5)]


def test_medications_from_emar_and_orders(canon: dict[str, pa.Table]) -> None:
    meds = canon["medications"].to_pylist()
    assert len(meds) == 6771
    src = Counter(m["source"].split(":")[0] for m in meds)
    assert src == {"emar": 5651, "prescriptions": 1143 - 23}
    mg = next(m for m in meds if m["source"] == "emar:emar_id=10014354-1600")
    assert (mg["drug"], mg["dose_value"], mg["dose_unit"]) == ("magnesium sulfate", 2.0, "g")  # 'gm' in MIMIC
    assert mg["mg_mmol"] == pytest.approx(2000 / 246.47, rel=1e-4)
    aspirin = next(m for m in meds if m["source"] == "emar:emar_id=10014354-604")  # 3 product rows of 81 mg
    assert (aspirin["dose_value"], aspirin["dose_unit"], aspirin["route"]) == (243.0, "mg", "po")
    not_given = next(m for m in _csv_rows("hosp/emar") if m["emar_id"] == "10014354-2213")
    assert not_given["event_txt"] == "Not Given"
    assert not [m for m in meds if m["source"] == "emar:emar_id=10014354-2213"]


def test_every_emar_status_in_the_subset_is_classified() -> None:
    statuses = {r["event_txt"].strip() for r in _csv_rows("hosp/emar") if r["event_txt"].strip()}
    classified = {e.code.removeprefix("emar/") for e in load_map("mimic_iv").entries if e.maps_to == "administration"}
    assert statuses <= classified, statuses - classified


def _rows(t: pa.Table) -> list[tuple[object, ...]]:
    cols = [c for c in t.column_names if c != "source"]
    return sorted((tuple(r[c] for c in cols) for r in t.to_pylist()), key=repr)


def _same_row(x: tuple[object, ...], y: tuple[object, ...], rel: float) -> bool:
    """Equal row, floats within ``rel`` (the lbs/kg and text round trips are not bit-exact)."""
    return len(x) == len(y) and all(
        math.isclose(a, b, rel_tol=rel) if isinstance(a, float) and isinstance(b, float) else a == b
        for a, b in zip(x, y, strict=True))


def _assert_same(a: dict[str, pa.Table], b: dict[str, pa.Table], rel: float = 1e-9) -> None:
    for name in ("subjects", "encounters", "events", "weights", "medications", "contexts"):
        ra, rb = _rows(a[name]), _rows(b[name])
        assert len(ra) == len(rb), name
        bad = [(x, y) for x, y in zip(ra, rb, strict=True) if not _same_row(x, y, rel)]
        assert not bad, (name, bad[:3])


def test_in_hospital_death_of_the_subset(canon: dict[str, pa.Table]) -> None:
    # one of the 12 patients died in hospital (admissions.deathtime, hospital_expire_flag = 1), read
    # independently with the csv module; patients.dod (set for 3 patients, two of them without an
    # in-hospital death) is not read
    expected = sorted((r["subject_id"], r["hadm_id"], r["deathtime"]) for r in _csv_rows("hosp/admissions")
                      if r["deathtime"])
    assert expected == [("10005817", "28661809", "2135-01-19 18:36:00")]
    assert all(r["hospital_expire_flag"] == ("1" if r["deathtime"] else "0") for r in _csv_rows("hosp/admissions"))
    death = [r for r in canon["events"].to_pylist() if r["analyte"] == "death"]
    assert [(r["subject_id"], r["encounter_id"], r["time"], r["code"], r["numeric_value"], r["unit"])
            for r in death] == [("10005817", "28661809", _naive_utc(2135, 1, 19, 18, 36), "MEDS_DEATH", None, None)]


def test_round_trip_of_the_real_subset(tmp_path: Path, canon: dict[str, pa.Table]) -> None:
    write_mimic(canon, tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.csv.gz")) == sorted(
        f"{rel}.csv.gz" for rel in FILES)
    back = normalize(read_mimic(tmp_path))
    assert back["quarantine"].num_rows == 0
    _assert_same(canon, back)
    assert sum(r["analyte"] == "death" for r in back["events"].to_pylist()) == 1


def _synthetic() -> dict[str, pa.Table]:
    t = _naive_utc(2150, 3, 1, 8, 0)
    d = _naive_utc(2150, 3, 4)

    def table(name: str, rows: list[dict[str, object]]) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=TABLES[name])

    return {
        "subjects": table("subjects", [{"subject_id": "s1", "sex": "male", "birth_year": 1970, "source": "gen"},
                                       {"subject_id": "s2", "sex": None, "birth_year": None, "source": "gen"}]),
        "encounters": table("encounters", [
            {"subject_id": "s1", "encounter_id": "h1", "kind": "inpatient", "start": t, "end": d,
             "parent_id": None, "source": "gen"},
            {"subject_id": "s1", "encounter_id": "i1", "kind": "icu", "start": t, "end": None,
             "parent_id": "h1", "source": "gen"}]),
        "events": table("events", [
            {"subject_id": "s1", "encounter_id": "h1", "time": t, "code": "MIMIC-IV/labevents/50960",
             "analyte": "magnesium", "numeric_value": 1.23456789, "unit": "mg/dL", "source": "gen"},
            {"subject_id": "s1", "encounter_id": "i1", "time": t, "code": "MIMIC-IV/outputevents/226560",
             "analyte": "urine_output", "numeric_value": 35.5, "unit": "mL", "source": "gen"},
            {"subject_id": "s1", "encounter_id": "i1", "time": d, "code": "MIMIC-IV/procedureevents/225802",
             "analyte": "rrt", "numeric_value": None, "unit": None, "source": "gen"},
            {"subject_id": "s2", "encounter_id": None, "time": d, "code": "MIMIC-IV/labevents/50912",
             "analyte": "creatinine", "numeric_value": 3.3, "unit": "mg/dL", "source": "gen"},
            {"subject_id": "s1", "encounter_id": "h1", "time": d, "code": "MEDS_DEATH",
             "analyte": "death", "numeric_value": None, "unit": None, "source": "gen"}]),
        "weights": table("weights", [{"subject_id": "s1", "time": t, "weight_kg": 80.25, "source": "gen"},
                                     {"subject_id": "s1", "time": d, "weight_kg": 79.0, "source": "gen"}]),
        "medications": table("medications", [
            {"subject_id": "s1", "encounter_id": "h1", "start": t, "end": None, "drug": "magnesium sulfate",
             "name": "Magnesium Sulfate", "rxcui": None, "route": "iv", "dose_value": 4.0, "dose_unit": "g",
             "mg_mmol": 4000 / 246.47, "source": "gen"},
            {"subject_id": "s2", "encounter_id": None, "start": t, "end": d, "drug": "furosemide",
             "name": "Furosemide", "rxcui": None, "route": "po", "dose_value": 40.0, "dose_unit": "mg",
             "mg_mmol": None, "source": "gen"}]),
        "contexts": table("contexts", [{"subject_id": "s1", "encounter_id": "i1", "time": t, "context": "icu",
                                        "source": "gen"}]),
    }


def test_round_trip_of_a_synthetic_cohort(tmp_path: Path) -> None:
    syn = _synthetic()
    write_mimic(syn, tmp_path)
    back = normalize(read_mimic(tmp_path))
    assert back["quarantine"].num_rows == 0
    _assert_same(syn, back, rel=1e-12)
    assert back["subjects"].to_pylist()[0]["birth_year"] == 1970
    adm = {r["hadm_id"]: r["deathtime"] for r in _csv_rows("hosp/admissions", tmp_path)}
    assert adm == {"h1": "2150-03-04 00:00:00"}  # the death went to admissions.deathtime


def test_death_found_by_time_when_the_row_names_no_admission(tmp_path: Path) -> None:
    syn = _synthetic()
    ev = syn["events"].to_pylist()
    ev[-1] = {**ev[-1], "encounter_id": None, "time": _naive_utc(2150, 3, 2, 5, 30)}
    syn["events"] = pa.Table.from_pylist(ev, schema=TABLES["events"])
    write_mimic(syn, tmp_path)
    death = [r for r in normalize(read_mimic(tmp_path))["events"].to_pylist() if r["analyte"] == "death"]
    assert [(r["subject_id"], r["encounter_id"], r["time"]) for r in death] == [
        ("s1", "h1", _naive_utc(2150, 3, 2, 5, 30))]


@pytest.mark.parametrize(("table", "change", "problem"), [
    ("events", {"analyte": "qtc", "code": "x", "unit": "ms", "numeric_value": 450.0}, "no MIMIC-IV item"),
    ("contexts", {"context": "cisplatin"}, "does not record"),
    ("encounters", {"kind": "ed"}, "cannot hold"),
    ("events", {"analyte": "death", "code": "MEDS_DEATH", "numeric_value": None, "unit": None,
                "encounter_id": None, "time": _naive_utc(2160, 1, 1)}, "outside every admission"),
])
def test_write_refuses_rows_mimic_cannot_hold(tmp_path: Path, table: str, change: dict[str, object],
                                              problem: str) -> None:
    syn = _synthetic()
    row = {**syn[table].to_pylist()[0], **change}
    syn[table] = pa.Table.from_pylist([*syn[table].to_pylist(), row], schema=TABLES[table])
    with pytest.raises(InputError, match=problem):
        write_mimic(syn, tmp_path)


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a directory"):
        read_mimic(tmp_path / "nope")
    with pytest.raises(InputError, match=r"patients\.csv\.gz: missing"):
        read_mimic(tmp_path)
    root = _mini_root(tmp_path, {})
    with gzip.open(root / "hosp/labevents.csv.gz", "wt") as f:
        f.write("labevent_id,subject_id,itemid\n1,1,50960\n")
    with pytest.raises(InputError, match=r"labevents\.csv\.gz: missing column\(s\) hadm_id, charttime"):
        read_mimic(root)
