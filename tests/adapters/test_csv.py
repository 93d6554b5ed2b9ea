"""CSV folder layout: round trip (also as a Hypothesis property), quarantine, clear errors."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.cohort import assert_same, canonical_cohort, rows
from mgaki.adapters.csv_layout import read_csv_layout, write_csv_layout
from mgaki.errors import InputError
from mgaki.events import normalize


def test_round_trip_keeps_codes_and_sources(tmp_path: Path) -> None:
    original = canonical_cohort()
    write_csv_layout(original, tmp_path)
    back = normalize(read_csv_layout(tmp_path))
    assert_same(original, back)
    assert rows(back["events"], ("source", "code")) == rows(original["events"], ("source", "code"))


def test_analyte_from_code_unknown_code_not_read_bad_rows_quarantined(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text(
        "subject_id,time,code,value,unit\n"
        "1,2024-01-01T10:00:00Z,LOINC/2601-3,0.8,mmol/L\n"      # analyte from codes.yaml
        "1,2024-01-01T10:00:00Z,LOINC/2345-7,104,mg/dL\n"       # glucose: not an mgaki code, not read
        "1,2024-01-01T11:00:00Z,LOINC/2160-0,1.2,mg/mL\n"       # mapped, bad unit
        "1,yesterday,LOINC/2160-0,1.2,mg/dL\n"                   # mapped, bad time
        "1,2024-01-01T12:00:00Z,,1.2,mg/dL\n")                   # no code at all
    out = normalize(read_csv_layout(tmp_path))
    assert out["events"].column("numeric_value").to_pylist() == [pytest.approx(0.8 * 2.4305)]
    reasons = sorted(out["quarantine"].column("reason").to_pylist())
    assert len(reasons) == 3
    assert reasons[0] == "code (none) is not mapped to an analyte"
    assert reasons[1].startswith("unknown unit 'mg/mL'") and reasons[2] == "unparseable time 'yesterday'"
    assert out["quarantine"].column("source").to_pylist()[0].startswith("events.csv:")


def test_missing_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text("subject_id,time,code,value\n1,2024-01-01,LOINC/2160-0,1\n")
    with pytest.raises(InputError, match="missing column"):
        read_csv_layout(tmp_path)


_value = st.floats(min_value=0.2, max_value=5.0, allow_nan=False).map(lambda v: round(v, 3))


@settings(max_examples=25)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c,d", 'q"e']), st.integers(0, 10_000), _value),
                min_size=1, max_size=12))
def test_round_trip_property(data: list[tuple[str, int, float]]) -> None:
    """Any ids (commas, quotes), times and values survive write -> read -> normalize."""
    n = len(data)
    raw = pa.table({"subject_id": [d[0] for d in data], "encounter_id": [None] * n,
                    "time": [f"2024-01-01T00:00:00Z::TIMESTAMPTZ + INTERVAL {d[1]} MINUTE" for d in data],
                    "code": ["LOINC/19123-9"] * n, "analyte": ["magnesium"] * n,
                    "value": [repr(d[2]) for d in data], "unit": ["mg/dL"] * n, "source": [str(i) for i in range(n)]})
    times = [f"2024-01-{1 + d[1] // 1440:02d}T{d[1] % 1440 // 60:02d}:{d[1] % 60:02d}:00Z" for d in data]
    raw = raw.set_column(2, "time", pa.array(times))
    original = normalize({"events": raw})
    with tempfile.TemporaryDirectory() as tmp:
        write_csv_layout(original, tmp)
        back = normalize(read_csv_layout(tmp))
    assert_same(original, back)
    assert back["events"].num_rows == n


def test_death_row_analyte_from_its_code(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text("subject_id,time,code,value,unit\n"
                                         "5,2024-01-01T10:00:00+02:00,MEDS_DEATH,,\n"
                                         "5,not a time,MEDS_DEATH,,\n")
    out = normalize(read_csv_layout(tmp_path))
    assert [(r["analyte"], r["time"].isoformat(), r["numeric_value"], r["unit"])
            for r in out["events"].to_pylist()] == [("death", "2024-01-01T08:00:00", None, None)]
    assert out["quarantine"].column("reason").to_pylist() == ["unparseable time 'not a time'"]
