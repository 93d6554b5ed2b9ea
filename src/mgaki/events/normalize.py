"""Raw adapter rows -> canonical tables, vectorised in DuckDB, with a quarantine.

Every adapter hands over its rows as recorded (times and values as text, units
as written); this module is the one place that parses times, maps drug names,
converts units (one cached factor per distinct analyte/unit pair, from
mgaki.units) and checks plausibility. A row that cannot be used goes to the
``quarantine`` table with the reason and the raw row, never silently away.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from functools import cache

import duckdb
import pyarrow as pa

from mgaki.errors import MgakiError
from mgaki.events.schema import DEATH, RAW, TABLES
from mgaki.knowledge import KnowledgeBase, load
from mgaki.units import factor, normalize_unit

__all__ = ["NO_VALUE_ANALYTES", "connect", "cursor", "drug_regex", "normalize"]

# Analytes that are markers, not measurements: no value, no unit, no plausibility check
# (RRT sessions; death, see mgaki.events.schema). A value or unit sent with one is dropped.
NO_VALUE_ANALYTES = frozenset({"rrt", DEATH})


def connect() -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the session settings mgaki's SQL assumes (a database of its own)."""
    con = duckdb.connect()
    _settings(con)
    return con


def _settings(con: duckdb.DuckDBPyConnection, scope: str = "") -> None:
    con.execute(f"SET {scope} TimeZone = 'UTC'")
    # Row order is never relied on (every query orders what it needs): lets DuckDB stream and spill.
    con.execute(f"SET {scope} preserve_insertion_order = false")
    # Intermediate tables live for one run: compressing them at automatic checkpoints cost seconds.
    con.execute(f"SET {scope} checkpoint_threshold = '1TB'")


_SHARED: dict[int, duckdb.DuckDBPyConnection] = {}  # process id -> the process's database (a fork gets its own)
_SHARED_LOCK = threading.Lock()


def cursor() -> duckdb.DuckDBPyConnection:
    """A connection to this process's shared in-memory database, with mgaki's settings.

    Opening a database costs ~12 ms (DuckDB 2.0), a cursor on an open one microseconds: the
    difference is most of the cost of storing one HL7 message. Its registered Arrow tables and
    TEMP tables are its own; it must not create persistent tables, views or macros (other
    cursors, in other threads, would see them): code that does uses ``connect``.
    """
    with _SHARED_LOCK:
        db = _SHARED.get(os.getpid())
        if db is None:
            _SHARED.clear()
            db = _SHARED[os.getpid()] = duckdb.connect()
            _settings(db, "GLOBAL")  # every cursor inherits them
    return db.cursor()


def _conform(table: pa.Table | None, schema: pa.Schema) -> pa.Table:
    """Missing columns become nulls, columns are cast to the raw schema's types."""
    if table is None:
        return schema.empty_table()
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _time_sql(col: str) -> str:
    """Text time -> naive UTC timestamp (offset honoured; a naive text is taken as UTC)."""
    return f"date_trunc('second', TRY_CAST(TRY_CAST({col} AS TIMESTAMPTZ) AS TIMESTAMP))"


@cache
def _unit_map(pairs: tuple[tuple[str, str | None], ...]) -> pa.Table:
    """Factor to the canonical unit, or the reason there is none, per (analyte, unit)."""
    kb = load()
    known = {a.id: a for a in kb.units.analytes}
    rows: dict[str, list[object]] = {k: [] for k in ("analyte", "unit", "factor", "canonical", "reason",
                                                       "lo", "hi")}
    for analyte, unit in pairs:
        f: float | None = None
        canonical: str | None = None
        reason: str | None = None
        lo = hi = None
        if analyte in NO_VALUE_ANALYTES:
            f = 1.0
        elif analyte not in known:
            reason = f"unknown analyte {analyte!r}"
        else:
            a = known[analyte]
            canonical, lo, hi = a.canonical_unit, a.plausible_min, a.plausible_max
            try:
                f = factor(analyte, normalize_unit(unit, analyte), a.canonical_unit)
            except MgakiError as exc:
                reason = getattr(exc, "problem", str(exc))
        for k, v in zip(rows, (analyte, unit, f, canonical, reason, lo, hi), strict=True):
            rows[k].append(v)
    return pa.table(rows, schema=pa.schema([
        ("analyte", pa.string()), ("unit", pa.string()), ("factor", pa.float64()),
        ("canonical", pa.string()), ("reason", pa.string()), ("lo", pa.float64()), ("hi", pa.float64()),
    ]))


@cache
def drug_regex(kb: KnowledgeBase) -> str:
    """One RE2/Java-compatible pattern matching every ingredient and synonym as a whole word."""
    import re

    names = sorted({n.lower() for d in kb.drugs.drugs for n in (d.ingredient, *d.synonyms)},
                   key=len, reverse=True)
    return "(?:^|[^a-z])(" + "|".join(re.escape(n) for n in names) + ")(?:[^a-z]|$)"


@cache
def _drug_table(kb: KnowledgeBase) -> pa.Table:
    """name (lower-case ingredient, synonym or rxcui:N) -> ingredient, mmol Mg per g of salt."""
    names: list[str] = []
    ingredients: list[str] = []
    mmol_per_g: list[float | None] = []
    for d in kb.drugs.drugs:
        per_g = None
        if d.salt:
            s = kb.salt(d.salt)
            per_g = 1000.0 / s.molar_mass_g_per_mol * s.mg_per_formula_unit
        keys = [d.ingredient.lower(), *(x.lower() for x in d.synonyms)]
        if d.rxcui:
            keys.append(f"rxcui:{d.rxcui}")
        for k in keys:
            names.append(k)
            ingredients.append(d.ingredient)
            mmol_per_g.append(per_g)
    return pa.table({"key": names, "ingredient": ingredients, "mmol_per_g": mmol_per_g})


def _quarantine_sql(table: str, raw_cols: list[str], reason_expr: str, src: str) -> str:
    struct = ", ".join(f"{c} := {c}" for c in raw_cols)
    return (f"SELECT '{table}' AS \"table\", subject_id, source, to_json(struct_pack({struct})) AS raw, "
            f"{reason_expr} AS reason FROM {src} WHERE {reason_expr} IS NOT NULL")


def normalize(raw: Mapping[str, pa.Table | None], kb: KnowledgeBase | None = None) -> dict[str, pa.Table]:
    """Canonical tables (schema.TABLES) from raw adapter tables (schema.RAW)."""
    kb = kb or load()
    con = cursor()  # registered tables only
    try:
        return _normalize(con, raw, kb)
    finally:
        con.close()


def _normalize(con: duckdb.DuckDBPyConnection, raw: Mapping[str, pa.Table | None],
               kb: KnowledgeBase) -> dict[str, pa.Table]:
    out: dict[str, pa.Table] = {name: TABLES[name].empty_table() for name in TABLES}
    quarantine: list[str] = []
    # a section whose raw table is empty is skipped: its outputs stay empty (one HL7 message has no
    # medications or contexts, and each statement on a tiny table still costs a millisecond or more)
    present = {name for name, table in raw.items() if table is not None and table.num_rows}
    for name, schema in RAW.items():
        con.register(f"raw_{name}", _conform(raw.get(name), schema))

    # --- events (and weights, which arrive as events of analyte 'weight') -------------------
    pairs = con.execute("SELECT DISTINCT analyte, unit FROM raw_events WHERE analyte IS NOT NULL").fetchall()
    con.register("unit_map", _unit_map(tuple(sorted(pairs, key=lambda p: (p[0], p[1] or "")))))
    con.execute(f"""
        CREATE TEMP TABLE ev AS
        SELECT r.*, {_time_sql('r.time')} AS t, TRY_CAST(r.value AS DOUBLE) AS v,
               u.factor, u.canonical, u.reason AS unit_reason, u.lo, u.hi
        FROM raw_events r LEFT JOIN unit_map u
          ON r.analyte = u.analyte AND r.unit IS NOT DISTINCT FROM u.unit
    """)
    no_value = ", ".join(f"'{a}'" for a in sorted(NO_VALUE_ANALYTES))
    ev_reason = f"""CASE
        WHEN subject_id IS NULL OR subject_id = '' THEN 'no subject id'
        WHEN analyte IS NULL THEN 'code ' || coalesce(code, '(none)') || ' is not mapped to an analyte'
        WHEN t IS NULL THEN 'unparseable time ' || coalesce('''' || time || '''', '(missing)')
        WHEN analyte IN ({no_value}) THEN NULL
        WHEN v IS NULL THEN 'non-numeric value ' || coalesce('''' || value || '''', '(missing)')
        WHEN unit_reason IS NOT NULL THEN unit_reason
        WHEN v * factor < lo OR v * factor > hi THEN
            analyte || ' ' || value || ' ' || coalesce(unit, '') || ' (= ' || round(v * factor, 4)
            || ' ' || canonical || ') is outside the possible range ' || lo || ' to ' || hi || ' ' || canonical
        END"""
    con.execute(f"CREATE TEMP TABLE ev2 AS SELECT *, {ev_reason} AS why FROM ev")
    quarantine.append(_quarantine_sql("events", ["time", "code", "value", "unit"], "why", "ev2"))
    out["events"] = con.sql(f"""
        SELECT subject_id, nullif(encounter_id, '') AS encounter_id, t AS time, code, analyte,
               CASE WHEN analyte NOT IN ({no_value}) THEN v * factor END AS numeric_value, canonical AS unit,
               source
        FROM ev2 WHERE why IS NULL AND analyte <> 'weight'
    """).to_arrow_table()
    out["weights"] = con.sql("""
        SELECT subject_id, t AS time, v * factor AS weight_kg, source
        FROM ev2 WHERE why IS NULL AND analyte = 'weight'
    """).to_arrow_table()

    if "medications" in present:
        _medications(con, kb, out, quarantine)
    if "encounters" in present:
        _encounters(con, out, quarantine)
    out["subjects"] = con.sql("""
        SELECT subject_id, CASE lower(sex) WHEN 'f' THEN 'female' WHEN 'female' THEN 'female'
                                          WHEN 'm' THEN 'male' WHEN 'male' THEN 'male' END AS sex,
               birth_year, source FROM raw_subjects WHERE subject_id IS NOT NULL AND subject_id <> ''
    """).to_arrow_table()
    if "contexts" in present:
        _contexts(con, out, quarantine)
    out["quarantine"] = con.sql(" UNION ALL ".join(quarantine)).to_arrow_table()
    # rows an adapter already set aside (e.g. a FHIR status 'entered-in-error'), with its reason
    given = raw.get("quarantine")
    if given is not None and given.num_rows:
        out["quarantine"] = pa.concat_tables([
            out["quarantine"].cast(TABLES["quarantine"]), _conform(given, TABLES["quarantine"])])
    return {name: out[name].cast(TABLES[name]) for name in TABLES}


def _medications(con: duckdb.DuckDBPyConnection, kb: KnowledgeBase, out: dict[str, pa.Table],
                 quarantine: list[str]) -> None:
    con.register("drug_map", _drug_table(kb))
    con.execute(f"""
        CREATE TEMP TABLE med AS
        SELECT r.*, {_time_sql('r.start')} AS t0, {_time_sql('r."end"')} AS t1,
               TRY_CAST(r.dose_value AS DOUBLE) AS dose,
               coalesce(dr.ingredient, dn.ingredient) AS ingredient,
               coalesce(dr.mmol_per_g, dn.mmol_per_g) AS mmol_per_g
        FROM raw_medications r
        LEFT JOIN drug_map dr ON dr.key = 'rxcui:' || r.rxcui
        LEFT JOIN drug_map dn ON dn.key = regexp_extract(lower(coalesce(r.name, '')), $pattern, 1)
    """, {"pattern": drug_regex(kb)})
    med_reason = """CASE
        WHEN subject_id IS NULL OR subject_id = '' THEN 'no subject id'
        WHEN t0 IS NULL THEN 'unparseable start time ' || coalesce('''' || start || '''', '(missing)')
        WHEN "end" IS NOT NULL AND t1 IS NULL THEN 'unparseable end time ''' || "end" || ''''
        WHEN t1 < t0 THEN 'ends before it starts'
        END"""
    con.execute(f"CREATE TEMP TABLE med2 AS SELECT *, {med_reason} AS why FROM med")
    quarantine.append(_quarantine_sql("medications", ["start", '"end"', "name", "rxcui", "dose_value",
                                                      "dose_unit"], "why", "med2"))
    out["medications"] = con.sql("""
        SELECT subject_id, nullif(encounter_id, '') AS encounter_id, t0 AS start, t1 AS "end",
               ingredient AS drug, name, rxcui, lower(route) AS route, dose AS dose_value, dose_unit,
               CASE WHEN mmol_per_g IS NULL OR dose IS NULL THEN NULL
                    WHEN lower(dose_unit) = 'g' THEN dose * mmol_per_g
                    WHEN lower(dose_unit) = 'mg' THEN dose / 1000.0 * mmol_per_g
                    WHEN lower(dose_unit) = 'mmol' THEN dose
                    WHEN lower(dose_unit) = 'meq' THEN dose / $valence
                    END AS mg_mmol,
               source
        FROM med2 WHERE why IS NULL
    """, params={"valence": float(kb.analyte("magnesium").valence or 2)}).to_arrow_table()


def _encounters(con: duckdb.DuckDBPyConnection, out: dict[str, pa.Table], quarantine: list[str]) -> None:
    enc_reason = """CASE
        WHEN subject_id IS NULL OR subject_id = '' THEN 'no subject id'
        WHEN encounter_id IS NULL OR encounter_id = '' THEN 'no encounter id'
        WHEN s IS NULL THEN 'unparseable start time ' || coalesce('''' || start || '''', '(missing)')
        WHEN "end" IS NOT NULL AND e IS NULL THEN 'unparseable end time ''' || "end" || ''''
        WHEN e < s THEN 'ends before it starts'
        END"""
    con.execute(f"""CREATE TEMP TABLE enc AS SELECT *, {enc_reason} AS why FROM (
        SELECT *, {_time_sql('start')} AS s, {_time_sql('"end"')} AS e FROM raw_encounters)""")
    quarantine.append(_quarantine_sql("encounters", ["encounter_id", "start", '"end"'], "why", "enc"))
    out["encounters"] = con.sql("""
        SELECT subject_id, encounter_id, coalesce(kind, 'inpatient') AS kind, s AS start, e AS "end",
               nullif(parent_id, '') AS parent_id, source FROM enc WHERE why IS NULL
    """).to_arrow_table()


def _contexts(con: duckdb.DuckDBPyConnection, out: dict[str, pa.Table], quarantine: list[str]) -> None:
    ctx_reason = """CASE WHEN subject_id IS NULL OR subject_id = '' THEN 'no subject id'
        WHEN context IS NULL OR context = '' THEN 'no context'
        WHEN time IS NOT NULL AND t IS NULL THEN 'unparseable time ''' || time || '''' END"""
    con.execute(f"""CREATE TEMP TABLE ctx AS SELECT *, {ctx_reason} AS why FROM (
        SELECT *, {_time_sql('time')} AS t FROM raw_contexts)""")
    quarantine.append(_quarantine_sql("contexts", ["encounter_id", "time", "context"], "why", "ctx"))
    out["contexts"] = con.sql("""
        SELECT subject_id, nullif(encounter_id, '') AS encounter_id, t AS time, context, source
        FROM ctx WHERE why IS NULL""").to_arrow_table()
