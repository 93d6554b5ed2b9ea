"""A small hand-made cohort (RAW rows as a hospital would record them) and a comparison helper."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from mgaki.events import normalize

# Compared per table; ``source`` and ``code`` are format provenance and differ by design.
KEYS: dict[str, tuple[str, ...]] = {
    "subjects": ("subject_id", "sex", "birth_year"),
    "encounters": ("subject_id", "encounter_id", "kind", "start", "end", "parent_id"),
    "events": ("subject_id", "encounter_id", "time", "analyte", "numeric_value", "unit"),
    "weights": ("subject_id", "time", "weight_kg"),
    "medications": ("subject_id", "encounter_id", "start", "end", "drug", "route", "dose_value", "dose_unit",
                    "mg_mmol"),
    "contexts": ("subject_id", "encounter_id", "time", "context"),
}


def raw_cohort() -> dict[str, pa.Table]:
    """Two patients, one with an ICU stay inside the admission; units as recorded (mmol/L, umol/L, lb)."""
    ev = [  # subject, encounter, time, code, analyte, value, unit
        ("1", "100", "2024-03-01T08:00:00Z", "LOINC/19123-9", "magnesium", "1.9", "mg/dL"),
        ("1", "100", "2024-03-01T20:00:00+01:00", "LOINC/2601-3", "magnesium", "0.55", "mmol/L"),
        ("1", "101", "2024-03-02T06:00:00Z", "LOINC/14682-9", "creatinine", "132.6", "umol/L"),
        ("1", "101", "2024-03-02T07:00:00Z", "LOINC/2823-3", "potassium", "3.1", "mmol/L"),
        ("1", "101", "2024-03-02T09:00:00Z", "LOINC/9187-6", "urine_output", "35", "mL"),
        ("1", "101", "2024-03-02T10:00:00Z", "SNOMED/714749008", "rrt", None, None),
        ("1", None, "2024-03-01T07:00:00Z", "LOINC/29463-7", "weight", "154", "lb"),
        ("2", "200", "2024-05-10T11:30:00Z", "LOINC/2160-0", "creatinine", "0.9", "mg/dL"),
        ("2", "200", "2024-05-11T11:30:00Z", "LOINC/2160-0", "creatinine", "1.6", "mg/dL"),
        ("2", "200", "2024-05-11T12:00:00Z", "LOINC/17861-6", "calcium", "8.1", "mg/dL"),
        # in-hospital death at the end of admission 100, subject-level as in MEDS (no encounter)
        ("1", None, "2024-03-09T12:00:00Z", "MEDS_DEATH", "death", None, None),
    ]
    cols = ("subject_id", "encounter_id", "time", "code", "analyte", "value", "unit")
    events = pa.table({c: [r[i] for r in ev] for i, c in enumerate(cols)}
                      | {"source": [f"e{i}" for i in range(len(ev))]})
    meds = pa.table({
        "subject_id": ["1", "1", "2"], "encounter_id": ["101", "100", "200"],
        "start": ["2024-03-02T08:00:00Z", "2024-03-01T09:00:00Z", "2024-05-10T12:00:00Z"],
        "end": ["2024-03-02T10:00:00Z", None, None],
        "name": ["Magnesium sulfate 2 g IV", "pantoprazole", "cisplatin"],
        "rxcui": [None, None, None], "route": ["IV", "oral", "IV"],
        "dose_value": ["2", "40", "75"], "dose_unit": ["g", "mg", "mg"], "source": ["m0", "m1", "m2"],
    })
    enc = pa.table({
        "subject_id": ["1", "1", "2"], "encounter_id": ["100", "101", "200"], "kind": ["inpatient", "icu", "inpatient"],
        "start": ["2024-03-01T06:00:00Z", "2024-03-02T00:00:00Z", "2024-05-10T10:00:00Z"],
        "end": ["2024-03-09T12:00:00Z", "2024-03-04T00:00:00Z", None],
        "parent_id": [None, "100", None], "source": ["a0", "a1", "a2"],
    })
    subj = pa.table({"subject_id": ["1", "2"], "sex": ["female", "male"],
                     "birth_year": pa.array([1950, 1981], pa.int32()),
                     "source": ["s1", "s2"]})
    ctx = pa.table({"subject_id": ["2"], "encounter_id": ["200"], "time": ["2024-05-10T12:00:00Z"],
                    "context": ["cisplatin"], "source": ["c0"]})
    return {"events": events, "medications": meds, "encounters": enc, "subjects": subj, "contexts": ctx}


def canonical_cohort() -> dict[str, pa.Table]:
    out = normalize(raw_cohort())
    assert out["quarantine"].num_rows == 0, out["quarantine"].to_pylist()
    assert deaths(out) == [("1", datetime(2024, 3, 9, 12, tzinfo=UTC).replace(tzinfo=None), "MEDS_DEATH", None, None)]
    return out


def rows(table: pa.Table, keys: tuple[str, ...]) -> list[tuple[object, ...]]:
    """Sorted tuples of ``keys``; floats rounded to 5 significant digits (MEDS stores float32)."""
    def norm(v: object) -> object:
        if isinstance(v, float):
            return float(f"{v:.5g}") if math.isfinite(v) else v
        return v
    data = table.select(list(keys)).to_pylist()
    return sorted((tuple(norm(r[k]) for k in keys) for r in data), key=repr)


def deaths(tables: dict[str, pa.Table]) -> list[tuple[object, ...]]:
    """(subject, time, code, value, unit) of the death rows."""
    ev = tables["events"].filter(pc.equal(tables["events"]["analyte"], "death"))
    return rows(ev, ("subject_id", "time", "code", "numeric_value", "unit"))


def assert_same(original: dict[str, pa.Table], back: dict[str, pa.Table]) -> None:
    for name, keys in KEYS.items():
        assert rows(back[name], keys) == rows(original[name], keys), name
    assert deaths(back) == deaths(original)  # death (code MEDS_DEATH, no value, no unit) survives the format
    assert back["quarantine"].num_rows == 0, back["quarantine"].to_pylist()
