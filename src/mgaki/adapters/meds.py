"""MEDS datasets (v0.4 layout) in and out: ``data/**/*.parquet`` + ``metadata/``.

MEDS is one long table (subject_id int64, time, code, numeric_value float32,
text_value large_string, extra columns allowed). mgaki's measurements are its
natural rows; the other canonical tables travel as coded rows (``GENDER//F``,
``MEDS_BIRTH``, ``VISIT//<kind>`` at the start and ``VISIT_END//<kind>`` at the
end of an encounter, ``MEDICATION//<name>`` / ``RxNorm/<rxcui>``,
``MGAKI_CONTEXT//<context>``) with the extra columns ``encounter_id``,
``unit``, ``end`` and ``route``. A writer may add derived rows (``extra``, e.g.
the KDIGO stages `mgaki export meds` adds). See docs/adapters/meds.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mgaki._version import __version__
from mgaki.adapters._cohort import canonical, conform, iter_relations, register, sql_str
from mgaki.errors import InputError, KnowledgeError
from mgaki.events.normalize import NO_VALUE_ANALYTES, connect
from mgaki.events.stream import DEFAULT_CHUNK_ROWS, RawChunk

__all__ = ["EXTRA_SCHEMA", "MEDS_VERSION", "SUBJECT_MAP", "iter_meds", "read_meds", "write_meds"]

MEDS_VERSION = "0.4.1"  # layout: data/<split>/*.parquet, metadata/{codes,subject_splits}.parquet, dataset.json
SUBJECT_MAP = "metadata/mgaki_subject_ids.parquet"  # only when the mgaki ids are not integers
_OPTIONAL = {"unit": "VARCHAR", "text_value": "VARCHAR", "encounter_id": "VARCHAR", "end": "TIMESTAMP",
             "route": "VARCHAR"}


def _lab_codes() -> pa.Table:
    """``LAB//<itemid>`` -> analyte for MIMIC-IV MEDS exports, if the MIMIC map is installed."""
    keys: list[str] = []
    analytes: list[str] = []
    try:
        from mgaki.adapters.maps import load_map

        for e in load_map("mimic_iv").entries:
            if e.code.startswith("labevents/") and e.maps_to == "analyte":
                keys.append("LAB//" + e.code.split("/", 1)[1])
                analytes.append(e.target)
    except KnowledgeError:
        pass
    return pa.table({"key": pa.array(keys, pa.string()), "analyte": pa.array(analytes, pa.string())})


def read_meds(root: str | Path) -> dict[str, pa.Table]:
    """RAW tables from a MEDS dataset; codes mgaki does not use are not read."""
    con = connect()
    try:
        return {name: conform(rel.to_arrow_table(), name) for name, rel in _relations(con, Path(root)).items()}
    finally:
        con.close()


def iter_meds(root: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[RawChunk]:
    """``read_meds``'s rows as chunks of at most ``chunk_rows`` rows of one table each (streaming ingest);
    DuckDB reads the Parquet files as the chunks are taken (each table's query scans them once)."""
    return iter_relations(_relations, root, chunk_rows)


def _relations(con: duckdb.DuckDBPyConnection, root: Path) -> dict[str, duckdb.DuckDBPyRelation]:
    """The RAW tables of a MEDS dataset as DuckDB relations on ``con`` (views: nothing is read yet)."""
    data = sorted((root / "data").glob("**/*.parquet"))
    if not data:
        raise InputError(str(root), "no MEDS data files (data/**/*.parquet)")
    register(con, {})
    con.register("lab_map", _lab_codes())
    files = "[" + ", ".join(sql_str(f) for f in data) + "]"
    con.execute(f"CREATE TEMP VIEW m0 AS SELECT * FROM read_parquet({files}, union_by_name = true, "
                "filename = true, file_row_number = true)")
    cols = set(con.sql("SELECT * FROM m0 LIMIT 0").columns)
    for need in ("subject_id", "time", "code"):
        if need not in cols:
            raise InputError(str(root / "data"), f"MEDS data has no {need!r} column")
    extra = ", ".join(f'NULL::{t} AS "{c}"' for c, t in _OPTIONAL.items() if c not in cols)
    value = "numeric_value" if "numeric_value" in cols else "NULL::FLOAT"
    subject = "CAST(d.subject_id AS VARCHAR)"
    idmap = root / SUBJECT_MAP
    join = ""
    if idmap.is_file():
        con.execute(f"CREATE TEMP VIEW idmap AS SELECT * FROM read_parquet({sql_str(idmap)})")
        join = "LEFT JOIN idmap ON idmap.subject_id = d.subject_id"
        subject = f"coalesce(idmap.mgaki_subject_id, {subject})"
    root_len = len(root.as_posix()) + 2
    con.execute(f"""CREATE TEMP VIEW m AS
        SELECT {subject} AS sid, d.*, {value} AS nv{',' if extra else ''} {extra},
               'meds:' || substr(replace(d.filename, '\\', '/'), {root_len}) || '#' || d.file_row_number AS src
        FROM m0 d {join}""")
    # LAB//<id>//<unit>: the middle part is the test, the last part its unit
    con.execute("""CREATE TEMP VIEW ev AS
        SELECT m.*, coalesce(c.analyte, c2.analyte, l.analyte) AS analyte,
               CASE WHEN m.code LIKE 'LAB//%//%' THEN split_part(m.code, '//', 3) END AS code_unit
        FROM m LEFT JOIN code_map c ON c.key = m.code
               LEFT JOIN code_map c2 ON m.code LIKE 'LAB//%' AND c2.key = split_part(m.code, '//', 2)
               LEFT JOIN lab_map l ON m.code LIKE 'LAB//%' AND l.key = 'LAB//' || split_part(m.code, '//', 2)
        WHERE coalesce(c.analyte, c2.analyte, l.analyte) IS NOT NULL""")
    out = {
        "events": con.sql("""SELECT sid AS subject_id, encounter_id, CAST(time AS VARCHAR) AS time, code,
                analyte, coalesce(CAST(nv AS VARCHAR), text_value) AS value,
                coalesce(nullif(unit, ''), nullif(code_unit, '')) AS unit, src AS source FROM ev"""),
        "encounters": con.sql("""SELECT sid AS subject_id, encounter_id, split_part(code, '//', 2) AS kind,
                CAST(time AS VARCHAR) AS start, CAST("end" AS VARCHAR) AS "end", text_value AS parent_id,
                src AS source FROM m WHERE code LIKE 'VISIT//%'"""),
        "medications": con.sql("""SELECT sid AS subject_id, encounter_id, CAST(time AS VARCHAR) AS start,
                CAST("end" AS VARCHAR) AS "end",
                coalesce(text_value, CASE WHEN code LIKE 'MEDICATION//%' THEN substr(code, 13) END) AS name,
                CASE WHEN code LIKE 'RxNorm/%' THEN substr(code, 8) END AS rxcui, route,
                CAST(nv AS VARCHAR) AS dose_value, unit AS dose_unit, src AS source
                FROM m WHERE code LIKE 'MEDICATION//%' OR code LIKE 'RxNorm/%'"""),
        "subjects": con.sql("""SELECT sid AS subject_id,
                max(CASE code WHEN 'GENDER//F' THEN 'female' WHEN 'GENDER//M' THEN 'male' END) AS sex,
                CAST(year(min(time) FILTER (WHERE code = 'MEDS_BIRTH')) AS INTEGER) AS birth_year,
                'meds:' || sid AS source
                FROM m WHERE code LIKE 'GENDER//%' OR code = 'MEDS_BIRTH' GROUP BY sid"""),
        "contexts": con.sql("""SELECT sid AS subject_id, encounter_id, CAST(time AS VARCHAR) AS time,
                substr(code, 16) AS context, src AS source FROM m WHERE code LIKE 'MGAKI_CONTEXT//%'"""),
    }
    return out


def _rows_sql() -> str:
    """All canonical tables as one MEDS long table (string subject ids still)."""
    no_value = ", ".join(f"'{a}'" for a in sorted(NO_VALUE_ANALYTES))
    return f"""
        SELECT subject_id, NULL::TIMESTAMP AS time, 'GENDER//' || upper(left(sex, 1)) AS code,
               NULL::DOUBLE AS numeric_value, NULL AS unit, NULL AS text_value, NULL AS encounter_id,
               NULL::TIMESTAMP AS "end", NULL AS route FROM subjects WHERE sex IS NOT NULL
        UNION ALL
        SELECT subject_id, make_timestamp(birth_year, 1, 1, 0, 0, 0), 'MEDS_BIRTH', NULL, NULL, NULL, NULL, NULL,
               NULL FROM subjects WHERE birth_year IS NOT NULL
        UNION ALL
        SELECT subject_id, start, 'VISIT//' || kind, NULL, NULL, parent_id, encounter_id, "end", NULL
        FROM encounters
        UNION ALL
        SELECT subject_id, "end", 'VISIT_END//' || kind, NULL, NULL, NULL, encounter_id, NULL, NULL
        FROM encounters WHERE "end" IS NOT NULL
        UNION ALL
        SELECT e.subject_id, e.time,
               CASE WHEN e.analyte IN ({no_value}) AND own.key IS NOT NULL THEN own.key ELSE p.key END,
               e.numeric_value, e.unit, NULL, e.encounter_id, NULL, NULL
        FROM events e LEFT JOIN code_map own ON own.key = e.code AND own.analyte = e.analyte
                      LEFT JOIN code_map p ON p.analyte = e.analyte AND p.preferred
        UNION ALL
        SELECT w.subject_id, w.time, p.key, w.weight_kg, 'kg', NULL, NULL, NULL, NULL
        FROM weights w JOIN code_map p ON p.analyte = 'weight' AND p.preferred
        UNION ALL
        SELECT subject_id, start, CASE WHEN rxcui IS NOT NULL THEN 'RxNorm/' || rxcui
                                       ELSE 'MEDICATION//' || coalesce(name, 'unknown') END,
               dose_value, dose_unit, name, encounter_id, "end", route FROM medications
        UNION ALL
        SELECT subject_id, time, 'MGAKI_CONTEXT//' || context, NULL, NULL, NULL, encounter_id, NULL, NULL
        FROM contexts"""


EXTRA_SCHEMA = pa.schema([("subject_id", pa.string()), ("time", pa.timestamp("us")), ("code", pa.string()),
                          ("numeric_value", pa.float64()), ("encounter_id", pa.string())])


def write_meds(tables: Mapping[str, pa.Table | None], root: str | Path,
               splits: Mapping[str, str] | None = None, dataset_name: str = "mgaki",
               extra: pa.Table | None = None, extra_codes: Mapping[str, str] | None = None) -> None:
    """Canonical tables -> a MEDS dataset; every subject in split ``train`` unless ``splits`` says otherwise.

    ``extra``: derived rows to add (``EXTRA_SCHEMA``: mgaki subject id, time, code, value, encounter);
    ``extra_codes`` describes their codes in metadata/codes.parquet.
    """
    root = Path(root)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    con = connect()
    try:
        tabs = canonical(tables)
        register(con, tabs)
        con.register("extra_rows", (extra if extra is not None else EXTRA_SCHEMA.empty_table()).select(
            EXTRA_SCHEMA.names).cast(EXTRA_SCHEMA))
        codes = dict(extra_codes or {})
        con.register("extra_codes", pa.table({"code": pa.array(list(codes), pa.string()),
                                              "description": pa.array(list(codes.values()), pa.string())}))
        con.execute(f"""CREATE TEMP TABLE long AS {_rows_sql()}
            UNION ALL SELECT subject_id, time, code, numeric_value, NULL, NULL, encounter_id, NULL, NULL
            FROM extra_rows""")
        if con.execute("SELECT count(*) FROM long WHERE code IS NULL").fetchall()[0][0]:
            bad = con.sql("SELECT DISTINCT analyte FROM events e WHERE NOT EXISTS "
                          "(SELECT 1 FROM code_map p WHERE p.analyte = e.analyte)").fetchall()
            raise InputError("events", f"no code for analyte(s) {sorted(str(b[0]) for b in bad)} in codes.yaml")
        numeric = con.execute("SELECT bool_and(regexp_full_match(subject_id, '-?[0-9]{1,18}')) FROM "
                          "(SELECT DISTINCT subject_id FROM long)").fetchone()
        if numeric is not None and numeric[0] is False:
            con.execute("""CREATE TEMP TABLE ids AS SELECT subject_id AS mgaki_subject_id,
                CAST(row_number() OVER (ORDER BY subject_id) AS BIGINT) AS subject_id
                FROM (SELECT DISTINCT subject_id FROM long)""")
            con.execute(f"COPY (SELECT subject_id, mgaki_subject_id FROM ids ORDER BY subject_id) "
                        f"TO {sql_str(root / SUBJECT_MAP)} (FORMAT parquet)")
        else:
            con.execute("CREATE TEMP TABLE ids AS SELECT DISTINCT subject_id AS mgaki_subject_id, "
                        "CAST(subject_id AS BIGINT) AS subject_id FROM long")
        split_tab = pa.table({"mgaki_subject_id": list((splits or {}).keys()),
                              "split": list((splits or {}).values())},
                             schema=pa.schema([("mgaki_subject_id", pa.string()), ("split", pa.string())]))
        con.register("given_splits", split_tab)
        con.execute("""CREATE TEMP TABLE subject_splits AS SELECT i.subject_id, coalesce(g.split, 'train') AS split,
                       i.mgaki_subject_id FROM ids i LEFT JOIN given_splits g USING (mgaki_subject_id)""")
        con.execute(f"COPY (SELECT subject_id, split FROM subject_splits ORDER BY subject_id) "
                    f"TO {sql_str(root / 'metadata' / 'subject_splits.parquet')} (FORMAT parquet)")
        _write_data(con, root)
        con.execute(f"""COPY (SELECT l.code, coalesce(any_value(c.display), any_value(x.description),
                               {_describe_sql('l.code')}) AS description, []::VARCHAR[] AS parent_codes
                        FROM (SELECT DISTINCT code FROM long) l LEFT JOIN code_map c ON c.key = l.code
                        LEFT JOIN extra_codes x ON x.code = l.code
                        GROUP BY l.code ORDER BY l.code)
                        TO {sql_str(root / 'metadata' / 'codes.parquet')} (FORMAT parquet)""")
        (root / "metadata" / "dataset.json").write_text(json.dumps({
            "dataset_name": dataset_name, "dataset_version": "1", "etl_name": "mgaki.adapters.meds",
            "etl_version": __version__, "meds_version": MEDS_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "raw_source_id_columns": ["encounter_id"], "code_modifier_columns": ["unit", "route"],
            "other_extension_columns": ["end"],
        }, indent=2) + "\n", encoding="utf-8")
    finally:
        con.close()


def _describe_sql(code: str) -> str:
    """A description for the structural codes mgaki writes (codes.yaml describes the measurement codes)."""
    return (f"CASE WHEN {code} LIKE 'VISIT//%' THEN 'start of an encounter of kind ' || substr({code}, 8) "
            f"WHEN {code} LIKE 'VISIT_END//%' THEN 'end of an encounter of kind ' || substr({code}, 12) "
            f"WHEN {code} LIKE 'GENDER//%' THEN 'administrative sex ' || substr({code}, 9) "
            f"WHEN {code} = 'MEDS_BIRTH' THEN 'birth (mgaki keeps the year: 1 January)' "
            f"WHEN {code} = 'MEDS_DEATH' THEN 'death' "
            f"WHEN {code} LIKE 'MGAKI_CONTEXT//%' THEN 'clinical context ' || substr({code}, 16) "
            f"WHEN {code} LIKE 'MEDICATION//%' THEN 'medication ' || substr({code}, 13) "
            f"WHEN {code} LIKE 'RxNorm/%' THEN 'RxNorm concept ' || substr({code}, 8) END")


def _write_data(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """One shard per split, rows contiguous per subject and sorted by time (static rows first)."""
    schema = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                        ("numeric_value", pa.float32()), ("unit", pa.string()), ("text_value", pa.large_string()),
                        ("encounter_id", pa.string()), ("end", pa.timestamp("us")), ("route", pa.string())])
    for (split,) in con.sql("SELECT DISTINCT split FROM subject_splits ORDER BY split").fetchall():
        table = con.sql("""SELECT s.subject_id, l.time, l.code, l.numeric_value, l.unit, l.text_value,
                l.encounter_id, l."end", l.route
            FROM long l JOIN subject_splits s ON s.mgaki_subject_id = l.subject_id
            WHERE s.split = $split ORDER BY s.subject_id, l.time NULLS FIRST, l.code""",
                        params={"split": split}).to_arrow_table().cast(schema)
        out = root / "data" / str(split)
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / "0.parquet")


