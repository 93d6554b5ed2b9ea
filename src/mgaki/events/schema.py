"""The canonical cohort tables (MEDS-aligned) every adapter writes and every batch stage reads.

Times are naive timestamps in UTC (MEDS convention), truncated to the second;
values are in the analyte's canonical unit (mgaki.units). ``code`` keeps the
source code (``LOINC/2160-0``, ``MIMIC-IV/labevents/50912``, ``RxNorm/6585``)
and ``analyte`` the mgaki id the rules use; ``source`` names the source row so
every alert can be traced back to what the hospital system recorded.

Death is an ``events`` row, the MEDS way (MEDS v0.3 reserves the code
``MEDS_DEATH`` for it): code ``MEDS_DEATH``, analyte ``death``, the time of
death, no value and no unit. Every adapter reads and writes it through these
two names; stages that filter events by analyte never see it.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["DEATH", "DEATH_CODE", "RAW", "TABLES", "empty", "table_names"]

_TS = pa.timestamp("us")

DEATH = "death"  # the analyte of a death row
DEATH_CODE = "MEDS_DEATH"  # its code: the MEDS v0.3 reserved code for death

TABLES: dict[str, pa.Schema] = {
    # one row per person
    "subjects": pa.schema([
        ("subject_id", pa.string()), ("sex", pa.string()), ("birth_year", pa.int32()),
        ("source", pa.string()),
    ]),
    # admissions and ICU stays; an ICU stay names its admission in parent_id
    "encounters": pa.schema([
        ("subject_id", pa.string()), ("encounter_id", pa.string()), ("kind", pa.string()),
        ("start", _TS), ("end", _TS), ("parent_id", pa.string()), ("source", pa.string()),
    ]),
    # measurements (labs, urine output, RRT markers): the MEDS data table
    "events": pa.schema([
        ("subject_id", pa.string()), ("encounter_id", pa.string()), ("time", _TS),
        ("code", pa.string()), ("analyte", pa.string()), ("numeric_value", pa.float64()),
        ("unit", pa.string()), ("source", pa.string()),
    ]),
    "weights": pa.schema([
        ("subject_id", pa.string()), ("time", _TS), ("weight_kg", pa.float64()),
        ("source", pa.string()),
    ]),
    # medication exposure; magnesium products carry their dose in mmol of Mg
    "medications": pa.schema([
        ("subject_id", pa.string()), ("encounter_id", pa.string()), ("start", _TS), ("end", _TS),
        ("drug", pa.string()), ("name", pa.string()), ("rxcui", pa.string()), ("route", pa.string()),
        ("dose_value", pa.float64()), ("dose_unit", pa.string()), ("mg_mmol", pa.float64()),
        ("source", pa.string()),
    ]),
    # clinical contexts (cardiac-surgery, cisplatin, icu, ...) per encounter
    "contexts": pa.schema([
        ("subject_id", pa.string()), ("encounter_id", pa.string()), ("time", _TS),
        ("context", pa.string()), ("source", pa.string()),
    ]),
    # every input row that could not be used, with the reason; nothing is dropped silently
    "quarantine": pa.schema([
        ("table", pa.string()), ("subject_id", pa.string()), ("source", pa.string()),
        ("raw", pa.string()), ("reason", pa.string()),
    ]),
}

# What adapters hand to mgaki.events.normalize: source values still as recorded.
RAW: dict[str, pa.Schema] = {
    "events": pa.schema([
        ("subject_id", pa.string()), ("encounter_id", pa.string()), ("time", pa.string()),
        ("code", pa.string()), ("analyte", pa.string()), ("value", pa.string()),
        ("unit", pa.string()), ("source", pa.string()),
    ]),
    "medications": pa.schema([
        ("subject_id", pa.string()), ("encounter_id", pa.string()), ("start", pa.string()),
        ("end", pa.string()), ("name", pa.string()), ("rxcui", pa.string()), ("route", pa.string()),
        ("dose_value", pa.string()), ("dose_unit", pa.string()), ("source", pa.string()),
    ]),
    "encounters": pa.schema([
        ("subject_id", pa.string()), ("encounter_id", pa.string()), ("kind", pa.string()),
        ("start", pa.string()), ("end", pa.string()), ("parent_id", pa.string()),
        ("source", pa.string()),
    ]),
    # birth_date: the date as recorded (FHIR date, or HL7 DTM rewritten as one), checked by normalize;
    # adapters that know only the year give birth_year
    "subjects": pa.schema([*TABLES["subjects"], ("birth_date", pa.string())]),

    "contexts": pa.schema([
        ("subject_id", pa.string()), ("encounter_id", pa.string()), ("time", pa.string()),
        ("context", pa.string()), ("source", pa.string()),
    ]),
}


def table_names() -> tuple[str, ...]:
    return tuple(TABLES)


def empty(name: str, raw: bool = False) -> pa.Table:
    return (RAW if raw else TABLES)[name].empty_table()
