"""MIMIC-IV (raw ``hosp/*.csv.gz``, ``icu/*.csv.gz``) <-> mgaki cohort tables.

``read_mimic`` reads the files with DuckDB, every column as text so nothing is
coerced on the way in, keeps only the items of ``adapters/maps/mimic_iv.yaml``
(in SQL, never row by row) and hands over RAW tables (``mgaki.events.RAW``):
values and units as MIMIC recorded them, for ``mgaki.events.normalize`` to
convert, check and quarantine. ``write_mimic`` goes the other way, so that a
synthetic cohort can be emitted in the MIMIC layout (only the files and
columns the reader uses). Why each item is read, and the quirks of the real
data: ``docs/adapters/mimic-iv.md``.

Encounters: an admission (``hadm_id``) is kind ``inpatient``; an ICU stay
(``stay_id``) is kind ``icu`` with the admission as parent. Labs and drugs
belong to the admission, ICU charting (urine output, RRT) to the ICU stay.
In-hospital death is ``admissions.deathtime``, read as the death row of
``mgaki.events.schema`` (code ``MEDS_DEATH``) on that admission; ``patients.dod``
(date only, mostly deaths after discharge) is not read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import duckdb
import pyarrow as pa

from mgaki.adapters._cohort import gather
from mgaki.adapters.maps import CodeMapFile, load_map
from mgaki.errors import InputError, UnitError
from mgaki.events.normalize import connect
from mgaki.events.schema import DEATH, DEATH_CODE, RAW, TABLES
from mgaki.events.stream import DEFAULT_CHUNK_ROWS, RawChunk
from mgaki.knowledge import load
from mgaki.units import factor, normalize_unit

__all__ = ["FILES", "iter_mimic", "read_mimic", "write_mimic"]

# The files (module/table) and the columns the adapter reads; write_mimic writes exactly these.
FILES: dict[str, tuple[str, ...]] = {
    "hosp/patients": ("subject_id", "gender", "anchor_age", "anchor_year"),
    "hosp/admissions": ("subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "edregtime", "edouttime"),
    "hosp/diagnoses_icd": ("subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"),
    "hosp/labevents": ("labevent_id", "subject_id", "hadm_id", "itemid", "charttime", "value", "valuenum",
                       "valueuom"),
    "hosp/omr": ("subject_id", "chartdate", "seq_num", "result_name", "result_value"),
    "hosp/emar": ("subject_id", "hadm_id", "emar_id", "charttime", "medication", "event_txt"),
    "hosp/emar_detail": ("subject_id", "emar_id", "parent_field_ordinal", "dose_given", "dose_given_unit", "route"),
    "hosp/prescriptions": ("subject_id", "hadm_id", "pharmacy_id", "starttime", "stoptime", "drug", "dose_val_rx",
                           "dose_unit_rx", "route"),
    "icu/icustays": ("subject_id", "hadm_id", "stay_id", "intime", "outtime"),
    "icu/outputevents": ("subject_id", "hadm_id", "stay_id", "charttime", "itemid", "value", "valueuom"),
    "icu/procedureevents": ("subject_id", "hadm_id", "stay_id", "starttime", "endtime", "itemid", "value",
                            "orderid"),
    "icu/inputevents": ("subject_id", "hadm_id", "stay_id", "starttime", "endtime", "itemid", "amount", "amountuom",
                        "statusdescription", "orderid", "patientweight"),
}
# Without these two there is no cohort: a wrong root fails loudly instead of reading nothing.
REQUIRED = ("hosp/patients", "hosp/admissions")
_MAP = "mimic_iv"
_TS = "'%Y-%m-%d %H:%M:%S'"


def _view(rel: str) -> str:
    return "src_" + rel.split("/")[1]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _codemap_table(codes: CodeMapFile) -> pa.Table:
    """The map as rows: source table, key (item id, column or text), kind, target, unit, placeholders."""
    rows: dict[str, list[object]] = {k: [] for k in ("tbl", "key", "maps_to", "target", "unit", "placeholders",
                                                      "ord")}
    for i, e in enumerate(codes.entries):
        tbl, _, key = e.code.partition("/")
        for k, v in zip(rows, (tbl, key or None, e.maps_to, e.target, e.unit, list(e.placeholder_units), i),
                        strict=True):
            rows[k].append(v)
    return pa.table(rows, schema=pa.schema([
        ("tbl", pa.string()), ("key", pa.string()), ("maps_to", pa.string()), ("target", pa.string()),
        ("unit", pa.string()), ("placeholders", pa.list_(pa.string())), ("ord", pa.int32()),
    ]))


def _register_sources(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """One text-only view per MIMIC file; a missing optional file reads as no rows."""
    if not root.is_dir():
        raise InputError(str(root), "is not a directory (expected a MIMIC-IV root with hosp/ and icu/)")
    for rel, cols in FILES.items():
        path = root / f"{rel}.csv.gz"
        if not path.exists():
            if rel in REQUIRED:
                raise InputError(str(path), "missing; a MIMIC-IV root needs hosp/patients and hosp/admissions")
            con.execute(f"CREATE TEMP VIEW {_view(rel)} AS SELECT "
                        + ", ".join(f"NULL::VARCHAR AS {c}" for c in cols) + " WHERE false")
            continue
        scan = f"read_csv({_quote(str(path))}, all_varchar = true, header = true, delim = ',', quote = '\"')"
        try:
            header = {d[0].lower() for d in con.execute(f"SELECT * FROM {scan} LIMIT 0").description}
        except duckdb.Error as exc:
            raise InputError(str(path), f"cannot be read as CSV: {exc}") from None
        missing = [c for c in cols if c not in header]
        if missing:
            raise InputError(str(path), f"missing column(s) {', '.join(missing)}")
        con.execute(f"CREATE TEMP VIEW {_view(rel)} AS SELECT "
                    + ", ".join(f"nullif(trim({c}), '') AS {c}" for c in cols) + f" FROM {scan}")


def _dose_units(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Each distinct dose-unit string -> its UCUM code where the unit layer knows it (e.g. 'gm' -> 'g')."""
    units = [r[0] for r in con.execute("""
        SELECT DISTINCT dose_given_unit FROM src_emar_detail WHERE dose_given_unit IS NOT NULL
        UNION SELECT DISTINCT dose_unit_rx FROM src_prescriptions WHERE dose_unit_rx IS NOT NULL
        UNION SELECT DISTINCT amountuom FROM src_inputevents WHERE amountuom IS NOT NULL""").fetchall()]
    ucum: list[str | None] = []
    for u in units:
        try:
            ucum.append(normalize_unit(u, "dose unit"))
        except UnitError:
            ucum.append(None)  # not a unit the layer knows ('mg', 'TAB', 'UNIT'): passed on as written
    return pa.table({"unit": pa.array(units, pa.string()), "ucum": pa.array(ucum, pa.string())})


_UNIT = ("CASE WHEN {u} IS NULL OR list_contains(m.placeholders, {u}) THEN m.unit ELSE {u} END")

_EVENTS_SQL = f"""
SELECT l.subject_id, l.hadm_id AS encounter_id, l.charttime AS time,
       'MIMIC-IV/labevents/' || l.itemid AS code, m.target AS analyte,
       coalesce(l.valuenum, l.value) AS value, {_UNIT.format(u='l.valueuom')} AS unit,
       'labevents:labevent_id=' || l.labevent_id AS source
FROM src_labevents l JOIN codemap m ON m.tbl = 'labevents' AND m.maps_to = 'analyte' AND m.key = l.itemid
UNION ALL
SELECT o.subject_id, o.stay_id, o.charttime, 'MIMIC-IV/outputevents/' || o.itemid, m.target,
       CASE WHEN m.target = 'urine_irrigant' THEN ltrim(o.value, '-') ELSE o.value END,
       {_UNIT.format(u='o.valueuom')},
       'outputevents:stay_id=' || coalesce(o.stay_id, '') || ',charttime=' || coalesce(o.charttime, '')
           || ',itemid=' || o.itemid
FROM src_outputevents o JOIN codemap m ON m.tbl = 'outputevents' AND m.maps_to = 'analyte' AND m.key = o.itemid
UNION ALL
SELECT p.subject_id, p.stay_id, p.starttime, 'MIMIC-IV/procedureevents/' || p.itemid, m.target, NULL, NULL,
       'procedureevents:orderid=' || coalesce(p.orderid, '')
FROM src_procedureevents p JOIN codemap m ON m.tbl = 'procedureevents' AND m.maps_to = 'rrt' AND m.key = p.itemid
UNION ALL
SELECT w.subject_id, NULL, w.chartdate, 'MIMIC-IV/omr/' || w.result_name, m.target, w.result_value, m.unit,
       'omr:subject_id=' || w.subject_id || ',chartdate=' || coalesce(w.chartdate, '')
           || ',seq_num=' || coalesce(w.seq_num, '')
FROM src_omr w JOIN codemap m ON m.tbl = 'omr' AND m.maps_to = 'weight' AND m.key = w.result_name
UNION ALL
SELECT i.subject_id, i.stay_id, arg_min(i.starttime, TRY_CAST(i.starttime AS TIMESTAMP)),
       'MIMIC-IV/inputevents/patientweight', m.target, i.patientweight, m.unit,
       'inputevents:orderid=' || coalesce(arg_min(i.orderid, TRY_CAST(i.starttime AS TIMESTAMP)), '')
FROM src_inputevents i JOIN codemap m ON m.tbl = 'inputevents' AND m.maps_to = 'weight'
     AND m.key = 'patientweight'
WHERE i.patientweight IS NOT NULL
GROUP BY i.subject_id, i.stay_id, i.patientweight, m.target, m.unit,
         CASE WHEN i.stay_id IS NULL THEN i.orderid END  -- no stay to group by: each row is its own weight
UNION ALL
SELECT a.subject_id, a.hadm_id, a.deathtime, '{DEATH_CODE}', m.target, NULL, NULL,
       'admissions:hadm_id=' || coalesce(a.hadm_id, '') || ',deathtime'
FROM src_admissions a JOIN codemap m ON m.tbl = 'admissions' AND m.maps_to = 'death' AND m.key = 'deathtime'
WHERE a.deathtime IS NOT NULL
"""

# eMAR administrations (dose summed over the product rows when they share one unit and are all
# numeric); prescriptions (orders) only for admissions that have no eMAR record at all.
_MEDS_SQL = """
WITH given AS (
    SELECT e.* FROM src_emar e
    JOIN codemap m ON m.tbl = 'emar' AND m.maps_to = 'administration' AND m.target = 'given'
                   AND m.key = e.event_txt
), det AS (
    SELECT d.emar_id,
           max(d.route) FILTER (WHERE d.parent_field_ordinal IS NULL) AS route,
           count(*) FILTER (WHERE d.parent_field_ordinal IS NOT NULL) AS n,
           count(TRY_CAST(d.dose_given AS DOUBLE)) FILTER (WHERE d.parent_field_ordinal IS NOT NULL) AS n_num,
           count(DISTINCT d.dose_given_unit) FILTER (WHERE d.parent_field_ordinal IS NOT NULL) AS n_units,
           sum(TRY_CAST(d.dose_given AS DOUBLE)) FILTER (WHERE d.parent_field_ordinal IS NOT NULL) AS dose,
           max(d.dose_given_unit) FILTER (WHERE d.parent_field_ordinal IS NOT NULL) AS unit
    FROM src_emar_detail d SEMI JOIN given g ON g.emar_id = d.emar_id
    GROUP BY d.emar_id
)
SELECT g.subject_id, g.hadm_id AS encounter_id, g.charttime AS start, NULL::VARCHAR AS "end",
       g.medication AS name, NULL::VARCHAR AS rxcui, d.route,
       CASE WHEN d.n > 0 AND d.n_num = d.n AND d.n_units = 1 THEN CAST(d.dose AS VARCHAR) END AS dose_value,
       CASE WHEN d.n_units = 1 THEN coalesce(u.ucum, d.unit) END AS dose_unit,
       'emar:emar_id=' || g.emar_id AS source
FROM given g LEFT JOIN det d ON d.emar_id = g.emar_id LEFT JOIN dose_units u ON u.unit = d.unit
UNION ALL
SELECT r.subject_id, r.hadm_id, r.starttime, r.stoptime, r.drug, NULL, r.route, r.dose_val_rx,
       coalesce(u.ucum, r.dose_unit_rx),
       'prescriptions:pharmacy_id=' || coalesce(r.pharmacy_id, '') || ',drug=' || coalesce(r.drug, '')
FROM src_prescriptions r LEFT JOIN dose_units u ON u.unit = r.dose_unit_rx
WHERE NOT EXISTS (SELECT 1 FROM src_emar e WHERE e.hadm_id = r.hadm_id)
UNION ALL
-- ICU infusions and pushes (icu/inputevents; the ICU charts them here, not in the eMAR): start to end, the
-- amount given; a 'Rewritten' row was replaced by a corrected one and is not read
SELECT i.subject_id, i.hadm_id, i.starttime, i.endtime, m.target, NULL, 'IV', i.amount,
       coalesce(u.ucum, i.amountuom),
       'inputevents:orderid=' || coalesce(i.orderid, '') || ',itemid=' || i.itemid || ',starttime='
           || coalesce(i.starttime, '')
FROM src_inputevents i JOIN codemap m ON m.tbl = 'inputevents' AND m.maps_to = 'drug' AND m.key = i.itemid
LEFT JOIN dose_units u ON u.unit = i.amountuom
WHERE coalesce(i.statusdescription, '') <> 'Rewritten'
"""

_ENCOUNTERS_SQL = """
SELECT a.subject_id, a.hadm_id AS encounter_id, m.target AS kind, a.admittime AS start, a.dischtime AS "end",
       NULL::VARCHAR AS parent_id, 'admissions:hadm_id=' || coalesce(a.hadm_id, '') AS source
FROM src_admissions a JOIN codemap m ON m.tbl = 'admissions' AND m.maps_to = 'encounter_kind' AND m.key IS NULL
UNION ALL
-- the emergency-department stay before the admission: its labs carry no hadm_id
SELECT a.subject_id, a.hadm_id || '-ed', m.target, a.edregtime, coalesce(a.edouttime, a.admittime), a.hadm_id,
       'admissions:hadm_id=' || a.hadm_id || ',edregtime'
FROM src_admissions a JOIN codemap m ON m.tbl = 'admissions' AND m.maps_to = 'encounter_kind' AND m.key = 'edregtime'
WHERE a.edregtime IS NOT NULL AND a.hadm_id IS NOT NULL
UNION ALL
SELECT s.subject_id, s.stay_id, m.target, s.intime, s.outtime, s.hadm_id,
       'icustays:stay_id=' || coalesce(s.stay_id, '')
FROM src_icustays s JOIN codemap m ON m.tbl = 'icustays' AND m.maps_to = 'encounter_kind'
"""

_SUBJECTS_SQL = """
SELECT subject_id, gender AS sex,
       CAST(TRY_CAST(anchor_year AS INTEGER) - TRY_CAST(anchor_age AS INTEGER) AS INTEGER) AS birth_year,
       'patients:subject_id=' || subject_id AS source, NULL::VARCHAR AS birth_date
FROM src_patients

"""

_CONTEXTS_SQL = """
SELECT s.subject_id, s.stay_id AS encounter_id, s.intime AS time, m.target AS context,
       'icustays:stay_id=' || coalesce(s.stay_id, '') AS source
FROM src_icustays s JOIN codemap m ON m.tbl = 'icustays' AND m.maps_to = 'context'
UNION ALL
-- maintenance dialysis from the admission's diagnoses (kidney.yaml codes): billing codes are assigned at
-- discharge, so the context is placed at the admission's start (a chronic state present on admission)
SELECT d.subject_id, d.hadm_id, a.admittime, k.context,
       'diagnoses_icd:hadm_id=' || d.hadm_id || ',icd_code=' || d.icd_code || ',icd_version=' || d.icd_version
FROM src_diagnoses_icd d JOIN dialysis_codes k ON k.icd_version = d.icd_version
     AND k.code = upper(replace(d.icd_code, '.', ''))
LEFT JOIN src_admissions a ON a.hadm_id = d.hadm_id
"""


def _dialysis_codes() -> pa.Table:
    """ICD-9-CM / ICD-10-CM codes of maintenance dialysis (kidney.yaml) as MIMIC writes them: no dot."""
    md = load().kidney.maintenance_dialysis
    versions = {"http://hl7.org/fhir/sid/icd-9-cm": "9", "http://hl7.org/fhir/sid/icd-10-cm": "10"}
    rows = [(versions[c.system], c.code.replace(".", "").upper()) for c in md.codes if c.system in versions]
    return pa.table({"icd_version": [r[0] for r in rows], "code": [r[1] for r in rows],
                     "context": [md.context] * len(rows)})


_SQL = {"events": _EVENTS_SQL, "medications": _MEDS_SQL, "encounters": _ENCOUNTERS_SQL,
        "subjects": _SUBJECTS_SQL, "contexts": _CONTEXTS_SQL}


def _open(root: Path, codes: CodeMapFile | None) -> duckdb.DuckDBPyConnection:
    con = connect()
    try:
        _register_sources(con, Path(root))
        con.register("codemap", _codemap_table(codes or load_map(_MAP)))
        con.register("dose_units", _dose_units(con))
        con.register("dialysis_codes", _dialysis_codes())
    except BaseException:
        con.close()
        raise
    return con


def read_mimic(root: Path, codes: CodeMapFile | None = None) -> dict[str, pa.Table]:
    """RAW tables (events, medications, encounters, subjects, contexts) from a MIMIC-IV root folder."""
    con = _open(root, codes)
    try:
        return {name: con.sql(q).to_arrow_table().rename_columns(RAW[name].names).cast(RAW[name])
                for name, q in _SQL.items()}
    finally:
        con.close()


def iter_mimic(root: Path, chunk_rows: int = DEFAULT_CHUNK_ROWS, codes: CodeMapFile | None = None,
               ) -> Iterator[RawChunk]:
    """``read_mimic``'s rows as chunks of at most ``chunk_rows`` rows of one table each (streaming ingest).

    DuckDB reads the files as the chunks are taken, so memory holds one chunk, not labevents. Sources are
    MIMIC's own ids (``labevents:labevent_id=...``): each chunk is compared with everything stored.
    """
    con = _open(root, codes)
    try:
        for name, q in _SQL.items():
            rel = con.sql(q)
            for table in gather(rel.to_arrow_reader(min(chunk_rows, 1 << 17)), chunk_rows):
                yield RawChunk({name: table.rename_columns(RAW[name].names).cast(RAW[name])}, rows=table.num_rows)
    finally:
        con.close()


# --- writer ------------------------------------------------------------------------------------

def _conform(table: pa.Table | None, schema: pa.Schema) -> pa.Table:
    if table is None:
        return schema.empty_table()
    return table.select(schema.names).cast(schema)


def _check_writable(con: duckdb.DuckDBPyConnection) -> None:
    """Rows MIMIC has no place for fail loudly (never dropped on the way out)."""
    checks = {
        "events": ("SELECT DISTINCT analyte FROM ev_route WHERE tbl IS NULL",
                   "analyte(s) with no MIMIC-IV item in adapters/maps/mimic_iv.yaml: {}"),
        "encounters": ("SELECT DISTINCT kind FROM w_encounters WHERE kind NOT IN (SELECT target FROM codemap "
                       "WHERE maps_to = 'encounter_kind') OR (kind IN (SELECT target FROM codemap WHERE "
                       "tbl = 'admissions' AND key = 'edregtime') AND parent_id IS NULL)",
                       "encounter kind(s) MIMIC-IV cannot hold (admissions, ICU stays, and emergency-department "
                       "stays that name their admission): {}"),
        "contexts": ("SELECT DISTINCT context FROM w_contexts WHERE context NOT IN (SELECT target FROM codemap "
                     "WHERE maps_to = 'context') AND context NOT IN (SELECT context FROM dialysis_codes) "
                     "OR (context IN (SELECT context FROM dialysis_codes) AND encounter_id IS NULL)",
                     "context(s) MIMIC-IV does not record (the reader derives 'icu' from ICU stays); "
                     "drop them before writing: {}"),
        "deaths": ("SELECT DISTINCT subject_id FROM death_route WHERE hadm_id IS NULL",
                   "death(s) outside every admission (MIMIC-IV holds in-hospital deaths, admissions.deathtime) "
                   "for subject(s): {}"),
        "medications": ("SELECT DISTINCT encounter_id FROM med_route WHERE tbl <> 'inputevents' GROUP BY encounter_id "
                        "HAVING count(DISTINCT tbl) > 1 AND encounter_id IS NOT NULL",
                        "admission(s) mix administrations (no end) with orders (with an end); the reader takes "
                        "prescriptions only for admissions without eMAR rows: {}"),
    }
    for where, (sql, problem) in checks.items():
        bad = sorted(str(r[0]) for r in con.execute(sql).fetchall())
        if bad:
            raise InputError(where, problem.format(", ".join(bad)))


def _copy(con: duckdb.DuckDBPyConnection, root: Path, rel: str, select: str) -> None:
    path = root / f"{rel}.csv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ", ".join(f"CAST({c} AS VARCHAR) AS {c}" for c in FILES[rel])
    con.execute(f"COPY (SELECT {cols} FROM ({select})) TO {_quote(str(path))} "
                "(FORMAT csv, HEADER true, COMPRESSION gzip)")


def write_mimic(tables: Mapping[str, pa.Table | None], root: Path, codes: CodeMapFile | None = None) -> None:
    """Canonical tables (``mgaki.events.TABLES``) -> the raw MIMIC-IV files ``read_mimic`` reads.

    Values are written in mgaki's canonical units (``valueuom`` = canonical UCUM unit), weights with
    a clock time to ``icu/inputevents.patientweight`` without a stay (the weights table has no
    encounter; the reader keeps stay-less rows one by one), date-only weights to ``hosp/omr`` in lbs,
    medications without an end to ``hosp/emar``, IV ones with an end that the map reads from ICU infusions
    (``inputevents/<itemid>``, maps_to drug) to ``icu/inputevents``, the others with an end to
    ``hosp/prescriptions``.
    Fresh row ids are assigned, so ``source`` does not survive the round trip; MIMIC has no RxCUI.
    """
    codes = codes or load_map(_MAP)
    root = Path(root)
    con = connect()
    try:
        con.register("codemap", _codemap_table(codes))
        for name in ("events", "weights", "medications", "encounters", "subjects", "contexts"):
            con.register(f"w_{name}", _conform(tables.get(name), TABLES[name]))
        lb_per_kg = 1.0 / factor("weight", "[lb_av]", "kg")
        given = con.execute("SELECT key FROM codemap WHERE maps_to = 'administration' AND target = 'given' "
                            "ORDER BY ord LIMIT 1").fetchone()
        omr_name = con.execute("SELECT key FROM codemap WHERE tbl = 'omr' AND maps_to = 'weight' "
                               "ORDER BY ord LIMIT 1").fetchone()
        if given is None or omr_name is None:
            raise InputError("adapters/maps/mimic_iv.yaml", "needs a 'given' emar status and an omr weight")
        con.execute("""
            CREATE TEMP TABLE ev_route AS
            WITH routes AS (
                SELECT tbl, key, target, ord, row_number() OVER (PARTITION BY target ORDER BY ord) = 1 AS dflt
                FROM codemap WHERE maps_to IN ('analyte', 'rrt') AND tbl IN ('labevents', 'outputevents',
                                                                             'procedureevents'))
            SELECT e.*, row_number() OVER () AS rid,
                   coalesce(x.tbl, d.tbl) AS tbl, coalesce(x.key, d.key) AS itemid,
                   coalesce(enc.parent_id, e.encounter_id) AS hadm_id
            FROM (SELECT * FROM w_events WHERE analyte <> $death) e
            LEFT JOIN routes x ON e.code = 'MIMIC-IV/' || x.tbl || '/' || x.key AND x.target = e.analyte
            LEFT JOIN routes d ON d.target = e.analyte AND d.dflt
            LEFT JOIN w_encounters enc ON enc.encounter_id = e.encounter_id
        """, {"death": DEATH})
        # a death belongs to the admission it names (directly or through its ICU stay) or that contains it
        con.execute("""
            CREATE TEMP TABLE death_route AS
            SELECT d.subject_id, d.time, min(a.encounter_id) AS hadm_id
            FROM (SELECT * FROM w_events WHERE analyte = $death) d
            LEFT JOIN w_encounters icu ON icu.encounter_id = d.encounter_id AND icu.parent_id IS NOT NULL
            LEFT JOIN w_encounters a ON a.subject_id = d.subject_id AND a.parent_id IS NULL
                 AND a.kind = (SELECT target FROM codemap WHERE tbl = 'admissions' AND maps_to = 'encounter_kind'
                                AND key IS NULL)
                 AND (a.encounter_id = coalesce(icu.parent_id, d.encounter_id)
                      OR d.time BETWEEN a.start AND coalesce(a."end", d.time))
            GROUP BY d.subject_id, d.time
        """, {"death": DEATH})
        con.execute("""
            CREATE TEMP TABLE med_route AS
            SELECT m.*, row_number() OVER () AS rid, ic.key AS itemid,
                   CASE WHEN m."end" IS NULL THEN 'emar'
                        WHEN ic.key IS NOT NULL AND lower(m.route) = 'iv' THEN 'inputevents'
                        ELSE 'prescriptions' END AS tbl
            FROM w_medications m
            LEFT JOIN (SELECT target, arg_min(key, ord) AS key FROM codemap
                       WHERE tbl = 'inputevents' AND maps_to = 'drug' GROUP BY target) ic ON ic.target = m.name
        """)
        con.register("dialysis_codes", _dialysis_codes())
        _check_writable(con)
        ts = f"strftime({{}}, {_TS})"
        _copy(con, root, "hosp/patients", """
            SELECT s.subject_id, CASE s.sex WHEN 'female' THEN 'F' WHEN 'male' THEN 'M' END AS gender,
                   y.anchor_year - s.birth_year AS anchor_age, y.anchor_year
            FROM w_subjects s LEFT JOIN (
                SELECT s2.subject_id, coalesce(min(year(e.start)), any_value(s2.birth_year)) AS anchor_year
                FROM w_subjects s2 LEFT JOIN w_encounters e ON e.subject_id = s2.subject_id
                GROUP BY s2.subject_id) y ON y.subject_id = s.subject_id AND s.birth_year IS NOT NULL""")
        _copy(con, root, "hosp/admissions", f"""
            SELECT e.subject_id, e.encounter_id AS hadm_id, {ts.format('e.start')} AS admittime,
                   {ts.format('e."end"')} AS dischtime, {ts.format('d.time')} AS deathtime,
                   {ts.format('ed.start')} AS edregtime, {ts.format('ed."end"')} AS edouttime
            FROM w_encounters e LEFT JOIN (SELECT hadm_id, min(time) AS time FROM death_route GROUP BY hadm_id) d
              ON d.hadm_id = e.encounter_id
            LEFT JOIN (SELECT parent_id, min(start) AS start, max("end") AS "end" FROM w_encounters
                       WHERE kind = (SELECT target FROM codemap WHERE tbl = 'admissions' AND key = 'edregtime')
                       GROUP BY parent_id) ed ON ed.parent_id = e.encounter_id
            WHERE kind = (SELECT target FROM codemap WHERE tbl = 'admissions'
                                            AND maps_to = 'encounter_kind' AND key IS NULL)""")
        _copy(con, root, "icu/icustays", f"""
            SELECT subject_id, parent_id AS hadm_id, encounter_id AS stay_id, {ts.format('start')} AS intime,
                   {ts.format('"end"')} AS outtime
            FROM w_encounters WHERE kind = (SELECT target FROM codemap WHERE tbl = 'icustays'
                                            AND maps_to = 'encounter_kind')""")
        # maintenance dialysis -> a dependence-on-dialysis diagnosis of the admission (ICU stay: its parent)
        _copy(con, root, "hosp/diagnoses_icd", """
            SELECT c.subject_id, coalesce(e.parent_id, c.encounter_id) AS hadm_id,
                   row_number() OVER (PARTITION BY coalesce(e.parent_id, c.encounter_id) ORDER BY c.time) AS seq_num,
                   (SELECT max(code) FROM dialysis_codes WHERE icd_version = '10') AS icd_code, '10' AS icd_version
            FROM w_contexts c LEFT JOIN w_encounters e ON e.encounter_id = c.encounter_id AND e.parent_id IS NOT NULL
            WHERE c.context IN (SELECT context FROM dialysis_codes)""")
        _copy(con, root, "hosp/labevents", f"""
            SELECT rid AS labevent_id, subject_id, encounter_id AS hadm_id, itemid, {ts.format('time')} AS charttime,
                   numeric_value AS value, numeric_value AS valuenum, unit AS valueuom
            FROM ev_route WHERE tbl = 'labevents' ORDER BY rid""")
        _copy(con, root, "icu/outputevents", f"""
            SELECT subject_id, hadm_id, encounter_id AS stay_id, {ts.format('time')} AS charttime, itemid,
                   numeric_value AS value, unit AS valueuom
            FROM ev_route WHERE tbl = 'outputevents' ORDER BY rid""")
        _copy(con, root, "icu/procedureevents", f"""
            SELECT subject_id, hadm_id, encounter_id AS stay_id, {ts.format('time')} AS starttime,
                   NULL AS endtime, itemid, NULL AS value, rid AS orderid
            FROM ev_route WHERE tbl = 'procedureevents' ORDER BY rid""")
        # weights: a clock time goes to inputevents (no stay: the weights table has none), a date to omr
        con.execute("""
            CREATE TEMP TABLE w_route AS
            SELECT w.*, row_number() OVER () AS rid, CAST(w.time AS DATE) = w.time AS date_only FROM w_weights w""")
        _copy(con, root, "hosp/omr", f"""
            SELECT subject_id, strftime(time, '%Y-%m-%d') AS chartdate, rid AS seq_num,
                   {_quote(str(omr_name[0]))} AS result_name, weight_kg * {lb_per_kg!r} AS result_value
            FROM w_route WHERE date_only ORDER BY rid""")
        _copy(con, root, "icu/inputevents", f"""
            SELECT subject_id, NULL AS hadm_id, NULL AS stay_id, {ts.format('time')} AS starttime, NULL AS endtime,
                   NULL AS itemid, NULL AS amount, NULL AS amountuom, NULL AS statusdescription, rid AS orderid,
                   weight_kg AS patientweight
            FROM w_route WHERE NOT date_only
            UNION ALL  -- ICU infusions (an IV drug with an end that the map reads from inputevents)
            SELECT subject_id, encounter_id, NULL, {ts.format('start')}, {ts.format('"end"')}, itemid, dose_value,
                   dose_unit, 'FinishedRunning', 'm' || rid, NULL
            FROM med_route WHERE tbl = 'inputevents'
            ORDER BY orderid""")
        _copy(con, root, "hosp/emar", f"""
            SELECT subject_id, encounter_id AS hadm_id, subject_id || '-' || rid AS emar_id,
                   {ts.format('start')} AS charttime, name AS medication, {_quote(str(given[0]))} AS event_txt
            FROM med_route WHERE tbl = 'emar' ORDER BY rid""")
        _copy(con, root, "hosp/emar_detail", """
            SELECT subject_id, emar_id, parent_field_ordinal, dose_given, dose_given_unit, route FROM (
                SELECT rid, 0 AS k, subject_id, subject_id || '-' || rid AS emar_id, NULL AS parent_field_ordinal,
                       NULL AS dose_given, NULL AS dose_given_unit, route
                FROM med_route WHERE tbl = 'emar'
                UNION ALL
                SELECT rid, 1, subject_id, subject_id || '-' || rid, '1.1', dose_value, dose_unit, NULL
                FROM med_route WHERE tbl = 'emar' AND (dose_value IS NOT NULL OR dose_unit IS NOT NULL))
            ORDER BY rid, k""")
        _copy(con, root, "hosp/prescriptions", f"""
            SELECT subject_id, encounter_id AS hadm_id, rid AS pharmacy_id, {ts.format('start')} AS starttime,
                   {ts.format('"end"')} AS stoptime, name AS drug, dose_value AS dose_val_rx,
                   dose_unit AS dose_unit_rx, route
            FROM med_route WHERE tbl = 'prescriptions' ORDER BY rid""")
    finally:
        con.close()
