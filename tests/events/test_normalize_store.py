"""Canonical event model: unit normalisation, quarantine reasons, idempotent store."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from mgaki.events import EventStore, normalize


def _raw_events(rows: list[tuple[str, str, str, str, str]]) -> pa.Table:
    subj, time, analyte, value, unit = zip(*rows, strict=True)
    n = len(rows)
    return pa.table({"subject_id": list(subj), "encounter_id": ["e1"] * n, "time": list(time),
                     "code": ["test"] * n, "analyte": list(analyte), "value": list(value),
                     "unit": list(unit), "source": [f"row{i}" for i in range(n)]})


def test_units_converted_through_the_unit_layer() -> None:
    out = normalize({"events": _raw_events([
        ("1", "2024-01-01 10:00", "magnesium", "0.7", "mmol/L"),
        ("1", "2024-01-01T12:00:00+02:00", "creatinine", "88.4", "umol/L"),
        ("1", "2024-01-01 13:00", "weight", "154", "lb"),
    ])})
    ev = {r["analyte"]: r for r in out["events"].to_pylist()}
    assert ev["magnesium"]["numeric_value"] == pytest.approx(0.7 * 24.305 / 10, rel=1e-3)
    assert ev["magnesium"]["unit"] == "mg/dL"
    assert ev["creatinine"]["numeric_value"] == pytest.approx(1.0, rel=1e-3)
    assert ev["creatinine"]["time"].hour == 10  # +02:00 offset honoured, stored as UTC
    assert out["weights"].column("weight_kg").to_pylist() == [pytest.approx(69.85, rel=1e-3)]
    assert out["quarantine"].num_rows == 0


def test_death_is_a_marker_row_without_value_or_unit() -> None:
    out = normalize({"events": _raw_events([
        ("1", "2024-01-01T10:00:00+01:00", "death", "", ""),
        ("2", "2024-01-02 03:00", "death", "1", "furlong"),  # a stray value/unit is dropped, not checked
        ("3", "never", "death", "", ""),
    ])})
    assert sorted((r["subject_id"], r["time"].isoformat(), r["analyte"], r["numeric_value"], r["unit"])
                  for r in out["events"].to_pylist()) == [("1", "2024-01-01T09:00:00", "death", None, None),
                                                   ("2", "2024-01-02T03:00:00", "death", None, None)]
    assert [(r["source"], r["reason"]) for r in out["quarantine"].to_pylist()] == [("row2", "unparseable time 'never'")]


@pytest.mark.parametrize(("row", "reason"), [
    (("1", "yesterday", "magnesium", "1.8", "mg/dL"), "unparseable time 'yesterday'"),
    (("1", "2024-01-01", "magnesium", "<0.5", "mg/dL"), "non-numeric value '<0.5'"),
    (("1", "2024-01-01", "magnesium", "1.8", "furlong"), "unknown unit 'furlong'"),
    (("1", "2024-01-01", "magnesium", "1.8", ""), "unit is missing"),
    (("1", "2024-01-01", "magnesium", "18", "mmol/L"), "outside the possible range"),
    (("1", "2024-01-01", "urine_output", "-50", "mL"), "outside the possible range"),
    (("", "2024-01-01", "magnesium", "1.8", "mg/dL"), "no subject id"),
])
def test_unusable_rows_are_quarantined_with_the_reason(row: tuple[str, ...], reason: str) -> None:
    good = ("1", "2024-01-01 08:00", "magnesium", "1.9", "mg/dL")
    out = normalize({"events": _raw_events([good, row])})  # type: ignore[list-item]
    assert out["events"].num_rows == 1
    q = out["quarantine"].to_pylist()
    assert len(q) == 1 and reason in q[0]["reason"], q
    assert q[0]["table"] == "events" and q[0]["source"] == "row1"


def test_magnesium_doses_become_mmol_and_drugs_are_recognised() -> None:
    meds = pa.table({"subject_id": ["1", "1", "1"], "start": ["2024-01-01 10:00"] * 3,
                     "name": ["Magnesium Sulfate 2 g/50 mL IV", "pantoprazole", "unknownium"],
                     "dose_value": ["2", "40", "1"], "dose_unit": ["g", "mg", "g"], "source": ["a", "b", "c"]})
    out = normalize({"medications": meds})["medications"].to_pylist()
    assert [m["drug"] for m in out] == ["magnesium sulfate", "pantoprazole", None]
    assert out[0]["mg_mmol"] == pytest.approx(2000 / 246.47, rel=1e-4)  # 8.11 mmol per 2 g (label 4.06/g)
    assert out[1]["mg_mmol"] is None


def test_store_append_is_idempotent_and_names_affected_subjects(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    first = normalize({"events": _raw_events([("1", "2024-01-01", "magnesium", "1.8", "mg/dL"),
                                              ("2", "2024-01-01", "magnesium", "bad", "mg/dL")])})
    s1 = store.append(first)
    assert s1.added["events"] == 1 and s1.quarantined == 1 and s1.affected_subjects == {"1"}
    s2 = store.append(first)
    assert s2.added["events"] == 0 and s2.quarantined == 0 and s2.affected_subjects == frozenset()
    more = normalize({"events": _raw_events([("1", "2024-01-01", "magnesium", "1.8", "mg/dL"),
                                             ("3", "2024-01-02", "creatinine", "1.1", "mg/dL")])})
    s3 = store.append(more)
    assert s3.added["events"] == 1 and s3.affected_subjects == {"3"}
    assert store.counts()["events"] == 2
    assert store.read("events").schema == first["events"].schema


def test_an_interrupted_append_loses_nothing_acknowledged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash after the pending list and the first table: re-running the append completes it exactly."""
    import mgaki.events.store as store_mod

    tables = normalize({"events": _raw_events([("1", "2024-01-01", "magnesium", "1.8", "mg/dL")]),
                        "medications": pa.table({"subject_id": ["1"], "start": ["2024-01-01"],
                                                 "name": ["furosemide"], "source": ["m"]})})
    store = EventStore(tmp_path)
    real = store_mod._write_atomic
    calls: list[str] = []

    def crash_on_second_table(tab: pa.Table, folder: Path) -> Path:
        calls.append(folder.name)
        if len(calls) == 3:  # pending, events, then the crash
            raise OSError("disk gone")
        return real(tab, folder)

    monkeypatch.setattr(store_mod, "_write_atomic", crash_on_second_table)
    with pytest.raises(OSError):
        store.append(tables)
    monkeypatch.setattr(store_mod, "_write_atomic", real)
    assert calls[0] == "pending" and store.pending()[0] == {"1"}
    assert not list(tmp_path.rglob("*.tmp"))
    retry = store.append(tables)
    assert retry.added["events"] == 0 and retry.added["medications"] == 1
    assert store.counts()["events"] == 1 and store.counts()["medications"] == 1


def test_the_fast_reading_of_iso_z_times_is_the_time_zone_cast() -> None:
    """``_time_sql`` reads 20-character ``...Z`` texts with strptime: for every such text, valid or not (day 30
    of February, hour 24, second 60, year 0, signs, wide digits), the result is the time-zone cast's."""
    import duckdb
    import numpy as np

    from mgaki.events.normalize import _time_sql

    rng = np.random.default_rng(18)
    n = 50_000
    parts = [rng.integers(0, 10_000, n), rng.integers(0, 14, n), rng.integers(0, 33, n), rng.integers(0, 26, n),
             rng.integers(0, 62, n), rng.integers(0, 62, n)]
    texts = [f"{y:04d}-{m:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z" for y, m, d, h, mi, s in zip(*parts, strict=True)]
    texts += ["2024-01-01T23:59:60Z", "2024-02-30T00:00:00Z", "2024-01-01t00:00:00z", "+024-01-01T00:00:00Z",
              "-024-01-01T00:00:00Z", "2024-01-01T00:00:-1Z", "\uff12\uff10\uff12\uff14-01-01T00:00:00Z",
              "2024-01-01 00:00:00Z", "2024-03-01T20:00:00+01:00", "infinity", "2024-01-01T00:00:00.5Z"]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("s", pa.table({"t": texts}))
    cast = "date_trunc('second', TRY_CAST(TRY_CAST(t AS TIMESTAMPTZ) AS TIMESTAMP))"
    differ, parsed = con.sql(f"SELECT count(*) FILTER (WHERE {_time_sql('t')} IS DISTINCT FROM {cast}), "
                             f"count({cast}) FROM s").fetchall()[0]
    assert differ == 0 and 10_000 < parsed < n  # valid and invalid texts both well represented
