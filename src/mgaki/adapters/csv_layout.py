"""The documented CSV folder layout (docs/adapters/csv.md): one file per RAW table.

The columns are exactly those of ``mgaki.events.schema.RAW``, so a hospital
extract in this layout needs no mapping beyond its codes; everything is read as
text and parsed once, in ``mgaki.events.normalize``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

from mgaki.adapters._cohort import canonical, conform, iso_utc, register, sql_str
from mgaki.errors import InputError
from mgaki.events.normalize import connect
from mgaki.events.schema import RAW

__all__ = ["FILES", "REQUIRED", "read_csv_layout", "write_csv_layout"]

FILES: dict[str, str] = {name: f"{name}.csv" for name in RAW}

# Columns a file must have; the others of RAW[name] may be absent (read as empty).
REQUIRED: dict[str, tuple[str, ...]] = {
    "events": ("subject_id", "time", "value", "unit"),
    "medications": ("subject_id", "start"),
    "encounters": ("subject_id", "encounter_id", "start"),
    "subjects": ("subject_id",),
    "contexts": ("subject_id", "context"),
}


def read_csv_layout(root: str | Path) -> dict[str, pa.Table]:
    """RAW tables from ``<root>/<table>.csv``; an events row without analyte gets it from its code."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(str(root), "not a folder")
    present = {name: root / f for name, f in FILES.items() if (root / f).is_file()}
    if not present:
        raise InputError(str(root), f"no CSV layout files ({', '.join(FILES.values())})")
    con = connect()
    try:
        register(con, {})
        out: dict[str, pa.Table] = {}
        for name, path in present.items():
            rel = con.sql(f"SELECT * FROM read_csv({sql_str(path)}, header = true, all_varchar = true)")
            missing = [c for c in REQUIRED[name] if c not in rel.columns]
            if name == "events" and not {"code", "analyte"} & set(rel.columns):
                missing.append("code or analyte")
            if missing:
                raise InputError(str(path), f"missing column(s) {', '.join(missing)}")
            con.register(f"in_{name}", rel.to_arrow_table())
            cols = [c for c in RAW[name].names if c in rel.columns]
            src = f"coalesce(source, '{FILES[name]}:' || row_number() OVER ())" if "source" in cols \
                else f"'{FILES[name]}:' || row_number() OVER ()"
            sel = ", ".join(f'"{c}"' for c in cols if c != "source")
            if name == "subjects":
                sel = sel.replace('"birth_year"', 'TRY_CAST(birth_year AS INTEGER) AS birth_year')
            if name == "events":
                # the analyte comes from the file, else from the code ('LOINC/2160-0') via codes.yaml
                analyte = "coalesce(e.analyte, m.analyte)" if "analyte" in cols else "m.analyte"
                code = "e.code" if "code" in cols else "NULL"
                sel = ", ".join(f'e."{c}"' for c in cols if c not in {"source", "analyte"})
                # a row whose code mgaki does not use is not read; a row with no code at all is kept
                # (normalize quarantines it as unmapped)
                table = con.sql(f"""SELECT {sel}, {analyte} AS analyte, {src.replace('source', 'e.source')}
                    AS source FROM in_events e LEFT JOIN code_map m ON m.key = {code}
                    WHERE {analyte} IS NOT NULL OR coalesce({code}, '') = ''""").to_arrow_table()
            else:
                table = con.sql(f"SELECT {sel}, {src} AS source FROM in_{name}").to_arrow_table()
            out[name] = conform(table, name)
        return out
    finally:
        con.close()


def write_csv_layout(tables: Mapping[str, pa.Table | None], root: str | Path) -> None:
    """Canonical tables -> the CSV layout (times ISO 8601 UTC with Z, values in canonical units)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    con = connect()
    try:
        register(con, canonical(tables))
        queries = {
            "subjects": "SELECT subject_id, sex, birth_year, source FROM subjects",
            "encounters": f"""SELECT subject_id, encounter_id, kind, {iso_utc('start')} AS start,
                {iso_utc('"end"')} AS "end", parent_id, source FROM encounters""",
            "events": f"""
                SELECT subject_id, encounter_id, {iso_utc('time')} AS time, code, analyte,
                       CAST(numeric_value AS VARCHAR) AS value, unit, source FROM events
                UNION ALL
                SELECT w.subject_id, NULL, {iso_utc('w.time')}, m.key, 'weight', CAST(w.weight_kg AS VARCHAR),
                       'kg', w.source FROM weights w JOIN code_map m ON m.analyte = 'weight' AND m.preferred""",
            "medications": f"""SELECT subject_id, encounter_id, {iso_utc('start')} AS start,
                {iso_utc('"end"')} AS "end", name, rxcui, route, CAST(dose_value AS VARCHAR) AS dose_value,
                dose_unit, source FROM medications""",
            "contexts": f"SELECT subject_id, encounter_id, {iso_utc('time')} AS time, context, source FROM contexts",
        }
        for name, q in queries.items():
            con.execute(f"COPY ({q} ORDER BY ALL) TO {sql_str(root / FILES[name])} (HEADER, DELIMITER ',')")
    finally:
        con.close()
