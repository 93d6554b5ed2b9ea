"""OMOP CDM v5.4 in and out: person, visit_occurrence, visit_detail, measurement, drug_exposure,
procedure_occurrence, observation (contexts), death, from CSV or Parquet files.

Concepts map to analytes through ``maps/omop.yaml`` or, when the folder ships
the vocabulary (``concept``), through the LOINC/SNOMED/CPT4 code in
codes.yaml; a ``*_source_value`` holding an mgaki code (``LOINC/2160-0``) is
understood too. Units: unit_concept_id via ``maps/omop_vocab.yaml``, else
unit_source_value. See docs/adapters/omop.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from mgaki.adapters._cohort import canonical, conform, iter_relations, register, sql_str
from mgaki.adapters.maps import load_map
from mgaki.errors import InputError
from mgaki.events.normalize import NO_VALUE_ANALYTES, connect
from mgaki.events.schema import DEATH, DEATH_CODE
from mgaki.events.stream import DEFAULT_CHUNK_ROWS, RawChunk
from mgaki.knowledge import load, load_validated
from mgaki.knowledge.schema import Source

__all__ = ["COLUMNS", "OmopVocab", "iter_omop", "load_vocab", "read_omop", "write_omop"]

# The CDM columns mgaki reads (and writes); others in the files are ignored.
COLUMNS: dict[str, tuple[str, ...]] = {
    "person": ("person_id", "gender_concept_id", "year_of_birth", "gender_source_value", "person_source_value"),
    "visit_occurrence": ("visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date",
                         "visit_start_datetime", "visit_end_date", "visit_end_datetime", "visit_source_value",
                         "preceding_visit_occurrence_id"),
    "visit_detail": ("visit_detail_id", "person_id", "visit_detail_concept_id", "visit_detail_start_date",
                     "visit_detail_start_datetime", "visit_detail_end_date", "visit_detail_end_datetime",
                     "visit_occurrence_id", "visit_detail_source_value"),
    "measurement": ("measurement_id", "person_id", "measurement_concept_id", "measurement_date",
                    "measurement_datetime", "value_as_number", "unit_concept_id", "visit_occurrence_id",
                    "visit_detail_id", "measurement_source_value", "unit_source_value", "value_source_value"),
    "drug_exposure": ("drug_exposure_id", "person_id", "drug_concept_id", "drug_exposure_start_date",
                      "drug_exposure_start_datetime", "drug_exposure_end_date", "drug_exposure_end_datetime",
                      "quantity", "visit_occurrence_id", "visit_detail_id", "drug_source_value",
                      "route_source_value", "dose_unit_source_value"),
    "procedure_occurrence": ("procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date",
                             "procedure_datetime", "visit_occurrence_id", "visit_detail_id",
                             "procedure_source_value"),
    "observation": ("observation_id", "person_id", "observation_concept_id", "observation_date",
                    "observation_datetime", "visit_occurrence_id", "visit_detail_id", "observation_source_value"),
    "condition_occurrence": ("condition_occurrence_id", "person_id", "condition_concept_id", "condition_start_date",
                             "condition_start_datetime", "visit_occurrence_id", "visit_detail_id",
                             "condition_source_value"),
    "death": ("person_id", "death_date", "death_datetime", "death_type_concept_id"),
    "concept": ("concept_id", "concept_name", "vocabulary_id", "concept_code"),
}
CONTEXT_PREFIX = "mgaki-context:"  # observation_source_value of a clinical context (no standard concept)


class _UnitConcept(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    concept_id: int
    ucum: str
    source: Source


class _GenderConcept(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    concept_id: int
    sex: Literal["male", "female"]
    source: Source


class _TypeConcept(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    concept_id: int
    name: str
    source: Source


class OmopVocab(BaseModel):
    """Unit and gender concepts (``maps/omop_vocab.yaml``), each with its source."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str
    units: tuple[_UnitConcept, ...]
    genders: tuple[_GenderConcept, ...]
    record_type: _TypeConcept  # *_type_concept_id of the rows mgaki writes


@cache
def load_vocab() -> OmopVocab:
    return load_validated(OmopVocab, files("mgaki.adapters") / "maps" / "omop_vocab.yaml",
                          "adapters/maps/omop_vocab.yaml")


def _register_maps(con: duckdb.DuckDBPyConnection) -> None:
    m = load_map("omop")
    con.register("concept_map", pa.table({
        "concept_id": [e.code for e in m.entries], "maps_to": [e.maps_to for e in m.entries],
        "target": [e.target for e in m.entries],
        "first": [i == next(j for j, f in enumerate(m.entries) if f.maps_to == e.maps_to and f.target == e.target)
                  for i, e in enumerate(m.entries)]}))
    v = load_vocab()
    con.register("unit_concepts", pa.table({"concept_id": [str(u.concept_id) for u in v.units],
                                            "ucum": [u.ucum for u in v.units]}))
    con.register("gender_concepts", pa.table({"concept_id": [str(g.concept_id) for g in v.genders],
                                              "sex": [g.sex for g in v.genders]}))


def _scan(con: duckdb.DuckDBPyConnection, root: Path, table: str) -> bool:
    """View ``t_<table>`` with every mgaki column as text (absent columns null); False if no file."""
    cols = COLUMNS[table]
    csv = [p for p in (root / f"{table}.csv", root / f"{table.upper()}.csv") if p.is_file()]
    parquet = sorted(root.glob(f"{table}/*.parquet")) + [p for p in (root / f"{table}.parquet",) if p.is_file()]
    if csv:
        src = f"read_csv({sql_str(csv[0])}, header = true, all_varchar = true)"
    elif parquet:
        src = f"read_parquet([{', '.join(sql_str(p) for p in parquet)}], union_by_name = true)"
    else:
        empty = ", ".join(f'NULL::VARCHAR AS "{c}"' for c in cols)
        con.execute(f"CREATE TEMP VIEW t_{table} AS SELECT {empty} WHERE false")
        return False
    have = {c.lower(): c for c in con.sql(f"SELECT * FROM {src} LIMIT 0").columns}
    sel = ", ".join(f'CAST("{have[c]}" AS VARCHAR) AS "{c}"' if c in have else f'NULL::VARCHAR AS "{c}"'
                    for c in cols)
    con.execute(f"CREATE TEMP VIEW t_{table} AS SELECT {sel} FROM {src}")
    return True


def read_omop(root: str | Path) -> dict[str, pa.Table]:
    """RAW tables from an OMOP CDM folder (``<table>.csv`` or ``<table>.parquet`` / ``<table>/*.parquet``)."""
    con = connect()
    try:
        return {name: conform(rel.to_arrow_table(), name) for name, rel in _relations(con, Path(root)).items()}
    finally:
        con.close()


def iter_omop(root: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[RawChunk]:
    """``read_omop``'s rows as chunks of at most ``chunk_rows`` rows of one table each (streaming ingest);
    DuckDB reads the tables as the chunks are taken. Sources are OMOP ids: compared with everything stored."""
    return iter_relations(_relations, root, chunk_rows)


def _relations(con: duckdb.DuckDBPyConnection, root: Path) -> dict[str, duckdb.DuckDBPyRelation]:
    """The RAW tables of an OMOP folder as DuckDB relations on ``con`` (not yet run)."""
    if not root.is_dir():
        raise InputError(str(root), "not a folder")
    register(con, {})
    _register_maps(con)
    md = load().kidney.maintenance_dialysis
    vocab = {"http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM", "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
             "http://hl7.org/fhir/sid/icd-10": "ICD10", "http://snomed.info/sct": "SNOMED"}
    con.register("dialysis_codes", pa.table({
        "vocabulary": [vocab.get(c.system) for c in md.codes],
        "code": [c.code.replace(".", "").upper() for c in md.codes], "context": [md.context] * len(md.codes)}))
    found = [t for t in COLUMNS if _scan(con, root, t)]
    if not set(found) - {"concept"}:
        raise InputError(str(root), f"no OMOP CDM tables ({', '.join(t for t in COLUMNS if t != 'concept')})")
    # concept_id -> analyte: the map, else the shipped vocabulary's code through codes.yaml
    con.execute("""CREATE TEMP TABLE concept_analyte AS
        SELECT concept_id, target AS analyte FROM concept_map WHERE maps_to = 'analyte'
        UNION ALL
        SELECT c.concept_id, m.analyte FROM t_concept c
        JOIN code_map m ON m.key = c.vocabulary_id || '/' || c.concept_code
        WHERE c.concept_id NOT IN (SELECT concept_id FROM concept_map WHERE maps_to = 'analyte')""")
    ts = "coalesce({0}_datetime, {0}_date)"
    enc = "coalesce(visit_detail_id, visit_occurrence_id)"
    out = {
        "subjects": con.sql("""SELECT person_id AS subject_id, coalesce(g.sex, gender_source_value) AS sex,
                TRY_CAST(year_of_birth AS INTEGER) AS birth_year, 'omop:person/' || person_id AS source
            FROM t_person p LEFT JOIN gender_concepts g ON g.concept_id = p.gender_concept_id"""),
        "encounters": con.sql(f"""
            SELECT v.person_id AS subject_id, v.visit_occurrence_id AS encounter_id,
                   coalesce(k.target, 'omop:' || v.visit_concept_id) AS kind,
                   {ts.format('v.visit_start')} AS start, {ts.format('v.visit_end')} AS "end",
                   -- an ER visit the admission names as its preceding visit is part of that admission
                   CASE WHEN k.target = 'emergency' THEN (
                     SELECT min(a.visit_occurrence_id) FROM t_visit_occurrence a
                     WHERE a.person_id = v.person_id AND a.preceding_visit_occurrence_id = v.visit_occurrence_id)
                   END AS parent_id, 'omop:visit_occurrence/' || v.visit_occurrence_id AS source
            FROM t_visit_occurrence v LEFT JOIN concept_map k
              ON k.maps_to = 'encounter_kind' AND k.concept_id = v.visit_concept_id
            UNION ALL
            SELECT person_id, visit_detail_id, coalesce(k.target, 'omop:' || visit_detail_concept_id),
                   {ts.format('visit_detail_start')}, {ts.format('visit_detail_end')}, visit_occurrence_id,
                   'omop:visit_detail/' || visit_detail_id
            FROM t_visit_detail v LEFT JOIN concept_map k
              ON k.maps_to = 'encounter_kind' AND k.concept_id = v.visit_detail_concept_id"""),
        "events": con.sql(f"""
            SELECT person_id AS subject_id, {enc} AS encounter_id, {ts.format('measurement')} AS time,
                   'OMOP/' || measurement_concept_id AS code, coalesce(a.analyte, s.analyte) AS analyte,
                   coalesce(value_as_number, value_source_value) AS value,
                   coalesce(u.ucum, nullif(unit_source_value, '')) AS unit,
                   'omop:measurement/' || coalesce(measurement_id, '?') AS source
            FROM t_measurement x LEFT JOIN concept_analyte a ON a.concept_id = x.measurement_concept_id
                 LEFT JOIN code_map s ON s.key = x.measurement_source_value
                 LEFT JOIN unit_concepts u ON u.concept_id = x.unit_concept_id
            WHERE coalesce(a.analyte, s.analyte) IS NOT NULL
            UNION ALL
            SELECT person_id, {enc}, {ts.format('procedure')}, 'OMOP/' || procedure_concept_id, 'rrt', NULL, NULL,
                   'omop:procedure_occurrence/' || coalesce(procedure_occurrence_id, '?')
            FROM t_procedure_occurrence x
            WHERE procedure_concept_id IN (SELECT concept_id FROM concept_map WHERE maps_to = 'rrt'
                                           UNION SELECT concept_id FROM concept_analyte WHERE analyte = 'rrt')
               OR procedure_source_value IN (SELECT key FROM code_map WHERE analyte = 'rrt')
            UNION ALL
            SELECT person_id, NULL, {ts.format('death')}, '{DEATH_CODE}', '{DEATH}', NULL, NULL,
                   'omop:death/' || coalesce(person_id, '?')
            FROM t_death"""),
        "medications": con.sql(f"""
            SELECT person_id AS subject_id, {enc} AS encounter_id,
                   {ts.format('drug_exposure_start')} AS start, {ts.format('drug_exposure_end')} AS "end",
                   coalesce(nullif(drug_source_value, ''), c.concept_name) AS name,
                   CASE WHEN c.vocabulary_id = 'RxNorm' THEN c.concept_code END AS rxcui,
                   route_source_value AS route, quantity AS dose_value, dose_unit_source_value AS dose_unit,
                   'omop:drug_exposure/' || coalesce(drug_exposure_id, '?') AS source
            FROM t_drug_exposure d LEFT JOIN t_concept c ON c.concept_id = d.drug_concept_id"""),
        "contexts": con.sql(f"""
            SELECT person_id AS subject_id, {enc} AS encounter_id, {ts.format('observation')} AS time,
                   substr(observation_source_value, {len(CONTEXT_PREFIX) + 1}) AS context,
                   'omop:observation/' || coalesce(observation_id, '?') AS source
            FROM t_observation WHERE observation_source_value LIKE '{CONTEXT_PREFIX}%'
            UNION ALL
            -- maintenance dialysis (kidney.yaml codes): the condition's concept through the shipped
            -- vocabulary (SNOMED / ICD10CM / ICD9CM concept_code), or its source value (an ICD code)
            SELECT DISTINCT x.person_id, {enc.replace('visit_', 'x.visit_')}, {ts.format('x.condition_start')},
                   k.context, 'omop:condition_occurrence/' || coalesce(x.condition_occurrence_id, '?')
            FROM t_condition_occurrence x LEFT JOIN t_concept c ON c.concept_id = x.condition_concept_id
            JOIN dialysis_codes k ON (k.vocabulary = c.vocabulary_id AND k.code = upper(replace(c.concept_code,
                                                                                                  '.', '')))
              OR k.code = upper(replace(x.condition_source_value, '.', ''))"""),
    }
    return out


def write_omop(tables: Mapping[str, pa.Table | None], root: str | Path) -> None:
    """Canonical tables -> OMOP CDM CSV files; non-integer mgaki ids get dense integer ids
    (the mgaki id kept in ``*_source_value``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    no_value = ", ".join(f"'{a}'" for a in sorted(NO_VALUE_ANALYTES))
    con = connect()
    try:
        register(con, canonical(tables))
        _register_maps(con)
        # integer ids: the mgaki id when it is one, else a dense number
        for kind, q in {"pid": "SELECT subject_id FROM subjects UNION SELECT subject_id FROM encounters "
                               "UNION SELECT subject_id FROM events UNION SELECT subject_id FROM weights "
                               "UNION SELECT subject_id FROM medications UNION SELECT subject_id FROM contexts",
                        "vid": "SELECT encounter_id FROM encounters UNION SELECT parent_id FROM encounters "
                               "UNION SELECT encounter_id FROM events UNION SELECT encounter_id FROM medications "
                               "UNION SELECT encounter_id FROM contexts"}.items():
            con.execute(f"""CREATE TEMP TABLE {kind} AS
                WITH ids AS (SELECT DISTINCT * FROM ({q}) t(id) WHERE id IS NOT NULL),
                     ok AS (SELECT coalesce(bool_and(regexp_full_match(id, '[0-9]{{1,18}}')), true) AS ints FROM ids)
                SELECT id, CASE WHEN (SELECT ints FROM ok) THEN CAST(id AS BIGINT)
                                ELSE row_number() OVER (ORDER BY id) END AS num FROM ids""")
        con.execute("""CREATE TEMP TABLE enc AS SELECT e.*, v.num, pv.num AS parent_num, p.num AS person_num,
                           e.parent_id IS NOT NULL AS is_detail FROM encounters e
                        JOIN vid v ON v.id = e.encounter_id LEFT JOIN vid pv ON pv.id = e.parent_id
                        JOIN pid p ON p.id = e.subject_id""")
        # an event's encounter: visit_occurrence_id of the admission, visit_detail_id too if an ICU stay
        vis = """LEFT JOIN enc x ON x.encounter_id = t.encounter_id AND x.subject_id = t.subject_id"""
        vcols = """CASE WHEN x.is_detail THEN x.parent_num ELSE x.num END AS visit_occurrence_id,
                   CASE WHEN x.is_detail THEN x.num END AS visit_detail_id"""
        kind_concept = ("(SELECT min(concept_id) FILTER (WHERE first) FROM concept_map "
                        "WHERE maps_to = 'encounter_kind' AND target = {0})")
        ehr = load_vocab().record_type.concept_id
        queries = {
            "person": """SELECT p.num AS person_id, coalesce(g.concept_id, '0') AS gender_concept_id,
                    s.birth_year AS year_of_birth, s.sex AS gender_source_value, s.subject_id AS person_source_value
                FROM subjects s JOIN pid p ON p.id = s.subject_id
                LEFT JOIN gender_concepts g ON g.sex = s.sex""",
            "visit_occurrence": f"""SELECT num AS visit_occurrence_id, person_num AS person_id,
                    coalesce({kind_concept.format('kind')}, '0') AS visit_concept_id,
                    CAST(start AS DATE) AS visit_start_date, start AS visit_start_datetime,
                    CAST("end" AS DATE) AS visit_end_date, "end" AS visit_end_datetime, {ehr} AS visit_type_concept_id,
                    encounter_id AS visit_source_value FROM enc WHERE NOT is_detail""",
            "visit_detail": f"""SELECT num AS visit_detail_id, person_num AS person_id,
                    coalesce({kind_concept.format('kind')}, '0') AS visit_detail_concept_id,
                    CAST(start AS DATE) AS visit_detail_start_date, start AS visit_detail_start_datetime,
                    CAST("end" AS DATE) AS visit_detail_end_date, "end" AS visit_detail_end_datetime,
                    {ehr} AS visit_detail_type_concept_id, parent_num AS visit_occurrence_id,
                    encounter_id AS visit_detail_source_value FROM enc WHERE is_detail""",
            "measurement": f"""
                WITH m AS (SELECT subject_id, encounter_id, time, analyte, numeric_value, unit FROM events
                           WHERE analyte NOT IN ({no_value})
                           UNION ALL SELECT subject_id, NULL, time, 'weight', weight_kg, 'kg' FROM weights)
                SELECT row_number() OVER (ORDER BY t.subject_id, t.time, t.analyte) AS measurement_id,
                       p.num AS person_id, coalesce(c.concept_id, '0') AS measurement_concept_id,
                       CAST(t.time AS DATE) AS measurement_date, t.time AS measurement_datetime,
                       {ehr} AS measurement_type_concept_id, t.numeric_value AS value_as_number,
                       coalesce(u.concept_id, '0') AS unit_concept_id, {vcols},
                       k.key AS measurement_source_value, t.unit AS unit_source_value
                FROM m t JOIN pid p ON p.id = t.subject_id {vis}
                LEFT JOIN concept_map c ON c.maps_to = 'analyte' AND c.target = t.analyte AND c.first
                LEFT JOIN code_map k ON k.analyte = t.analyte AND k.preferred
                LEFT JOIN (SELECT ucum, min(concept_id) AS concept_id FROM unit_concepts GROUP BY ucum) u
                  ON u.ucum = t.unit""",
            "procedure_occurrence": f"""
                SELECT row_number() OVER (ORDER BY t.subject_id, t.time) AS procedure_occurrence_id,
                       p.num AS person_id, 0 AS procedure_concept_id, CAST(t.time AS DATE) AS procedure_date,
                       t.time AS procedure_datetime, {ehr} AS procedure_type_concept_id, {vcols},
                       coalesce(own.key, k.key) AS procedure_source_value
                FROM events t JOIN pid p ON p.id = t.subject_id {vis}
                LEFT JOIN code_map own ON own.key = t.code AND own.analyte = t.analyte
                LEFT JOIN code_map k ON k.analyte = t.analyte AND k.preferred
                WHERE t.analyte IN ({no_value}) AND t.analyte <> '{DEATH}'""",
            # the CDM keeps one death per person: the earliest recorded
            "death": f"""
                SELECT p.num AS person_id, CAST(min(t.time) AS DATE) AS death_date, min(t.time) AS death_datetime,
                       {ehr} AS death_type_concept_id
                FROM events t JOIN pid p ON p.id = t.subject_id WHERE t.analyte = '{DEATH}'
                GROUP BY p.num""",
            "drug_exposure": f"""
                SELECT row_number() OVER (ORDER BY t.subject_id, t.start, t.name) AS drug_exposure_id,
                       p.num AS person_id, 0 AS drug_concept_id, CAST(t.start AS DATE) AS drug_exposure_start_date,
                       t.start AS drug_exposure_start_datetime, CAST(t."end" AS DATE) AS drug_exposure_end_date,
                       t."end" AS drug_exposure_end_datetime, {ehr} AS drug_type_concept_id,
                       t.dose_value AS quantity, {vcols}, t.name AS drug_source_value,
                       t.route AS route_source_value, t.dose_unit AS dose_unit_source_value
                FROM medications t JOIN pid p ON p.id = t.subject_id {vis}""",
            "observation": f"""
                SELECT row_number() OVER (ORDER BY t.subject_id, t.time, t.context) AS observation_id,
                       p.num AS person_id, 0 AS observation_concept_id, CAST(t.time AS DATE) AS observation_date,
                       t.time AS observation_datetime, {ehr} AS observation_type_concept_id, {vcols},
                       '{CONTEXT_PREFIX}' || t.context AS observation_source_value
                FROM contexts t JOIN pid p ON p.id = t.subject_id {vis}""",
        }
        for name, q in queries.items():
            con.execute(f"COPY ({q}) TO {sql_str(root / f'{name}.csv')} (HEADER, DELIMITER ',', "
                        "TIMESTAMPFORMAT '%Y-%m-%d %H:%M:%S')")
    finally:
        con.close()
