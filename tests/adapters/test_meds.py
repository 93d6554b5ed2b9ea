"""MEDS adapter: round trip, the written layout, LAB//..//UNIT codes, unknown codes, string ids."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adapters.cohort import assert_same, canonical_cohort
from mgaki.adapters.meds import read_meds, write_meds
from mgaki.events import normalize


def test_round_trip_and_layout(tmp_path: Path) -> None:
    original = canonical_cohort()
    write_meds(original, tmp_path, splits={"2": "held_out"})
    data = pq.read_table(tmp_path / "data" / "train" / "0.parquet")
    assert data.schema.field("subject_id").type == pa.int64()
    assert data.schema.field("numeric_value").type == pa.float32()
    assert data.schema.field("time").type == pa.timestamp("us")
    assert set(data.column("subject_id").to_pylist()) == {1}
    splits = pq.read_table(tmp_path / "metadata" / "subject_splits.parquet").to_pylist()
    assert splits == [{"subject_id": 1, "split": "train"}, {"subject_id": 2, "split": "held_out"}]
    codes = {r["code"]: r["description"] for r in pq.read_table(tmp_path / "metadata" / "codes.parquet").to_pylist()}
    assert codes["LOINC/2160-0"] == "Creatinine [Mass/volume] in Serum or Plasma"
    assert (tmp_path / "metadata" / "dataset.json").is_file()
    death = [(r["subject_id"], r["time"], r["numeric_value"]) for r in data.to_pylist() if r["code"] == "MEDS_DEATH"]
    assert death == [(1, datetime.fromisoformat("2024-03-09 12:00:00"), None)]  # MEDS's own death code, no value
    assert_same(original, normalize(read_meds(tmp_path)))


def test_foreign_meds_death_row_is_read(tmp_path: Path) -> None:
    _write(tmp_path, [(7, "2130-01-02 03:04:05", "MEDS_DEATH", None, None),
                      (7, "2130-01-01 00:00:00", "LAB//50912//mg/dL", 1.0, None)])
    ev = normalize(read_meds(tmp_path))["events"].to_pylist()
    assert sorted((e["analyte"], e["time"], e["numeric_value"]) for e in ev) == [
        ("creatinine", datetime.fromisoformat("2130-01-01"), 1.0),
        ("death", datetime.fromisoformat("2130-01-02 03:04:05"), None)]


def _write(tmp_path: Path, rows: list[tuple[int, str, str, float | None, str | None]]) -> None:
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({
        "subject_id": pa.array([r[0] for r in rows], pa.int64()),
        "time": pa.array([datetime.fromisoformat(r[1]) for r in rows], pa.timestamp("us")),
        "code": [r[2] for r in rows], "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
        "unit": [r[4] for r in rows]}), tmp_path / "data" / "0.parquet")


def test_foreign_meds_codes_units_and_quarantine(tmp_path: Path) -> None:
    _write(tmp_path, [
        (7, "2024-01-01 10:00", "LOINC/2601-3", 0.8, "mmol/L"),
        (7, "2024-01-01 11:00", "LAB//LOINC/2160-0//umol/L", 88.42, None),  # unit parsed from the code
        (7, "2024-01-01 12:00", "LOINC/2345-7", 104.0, "mg/dL"),  # glucose: not read
        (7, "2024-01-01 13:00", "LOINC/2823-3", 3.9, "furlong"),  # mapped, bad unit: quarantined
        (7, "2024-01-01 14:00", "LOINC/2823-3", None, "mmol/L"),  # mapped, no value: quarantined
    ])
    out = normalize(read_meds(tmp_path))
    ev = sorted(out["events"].to_pylist(), key=lambda e: e["time"])  # DuckDB reads in parallel: any row order
    assert [(e["analyte"], round(e["numeric_value"], 3)) for e in ev] == [("magnesium", 1.944), ("creatinine", 1.0)]
    assert ev[0]["subject_id"] == "7" and ev[0]["source"] == "meds:data/0.parquet#0"
    reasons = sorted(out["quarantine"].column("reason").to_pylist())
    assert reasons[0] == "non-numeric value (missing)" and reasons[1].startswith("unknown unit 'furlong'")
    assert len(reasons) == 2


def test_string_subject_ids_are_mapped_and_restored(tmp_path: Path) -> None:
    raw = {"events": pa.table({"subject_id": ["P-001", "P-002"], "time": ["2024-01-01", "2024-01-02"],
                               "analyte": ["creatinine"] * 2, "code": ["LOINC/2160-0"] * 2,
                               "value": ["1.0", "2.0"], "unit": ["mg/dL"] * 2})}
    original = normalize(raw)
    write_meds(original, tmp_path)
    assert pq.read_table(tmp_path / "data" / "train" / "0.parquet").column("subject_id").to_pylist() == [1, 2]
    back = normalize(read_meds(tmp_path))
    assert sorted(back["events"].column("subject_id").to_pylist()) == ["P-001", "P-002"]


def test_empty_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no MEDS data files"):
        read_meds(tmp_path)
