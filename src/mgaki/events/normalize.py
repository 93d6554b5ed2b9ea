"""Raw adapter rows -> canonical tables, vectorised in DuckDB, with a quarantine.

Every adapter hands over its rows as recorded (times and values as text, units
as written); this module is the one place that parses times, maps drug names,
converts units (one cached factor per distinct analyte/unit pair, from
mgaki.units) and checks plausibility: values against their analyte's bounds, times
and birth dates against the window of ``units.yaml`` ``plausibility`` (a live feed
also against its clock, ``now``). A row that cannot be used goes to the
``quarantine`` table with the reason and the raw row, never silently away.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from mgaki.errors import MgakiError
from mgaki.events.schema import DEATH, RAW, TABLES
from mgaki.knowledge import KnowledgeBase, load
from mgaki.units import factor, mmol_per_unit, normalize_unit

__all__ = ["NO_VALUE_ANALYTES", "TimeWindow", "connect", "cursor", "drug_regex", "give_back", "lease", "normalize",
           "time_window"]

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
    # Parquet parts are never rewritten in place (new names, atomic renames): their footers can be cached
    con.execute(f"SET {scope} parquet_metadata_cache = true")


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


_POOL: dict[int, list[duckdb.DuckDBPyConnection]] = {}  # process id -> idle one-thread databases (``lease``)


def lease() -> duckdb.DuckDBPyConnection:
    """An in-memory database of this process's own, one thread, mgaki's settings, for one caller until
    ``give_back``. For work on a few subjects' rows (an incremental surveillance run), whose statements
    cost their planning, not their rows: one thread per statement, and two such statements side by side
    on two cores, not two threads each competing for them. Kept open between callers (opening one costs
    ~12 ms)."""
    with _SHARED_LOCK:
        idle = _POOL.setdefault(os.getpid(), [])
        if len(_POOL) > 1:  # a fork: the parent's databases are not this process's
            for pid in [p for p in _POOL if p != os.getpid()]:
                del _POOL[pid]
        if idle:
            return idle.pop()
    db = duckdb.connect(config={"threads": 1})
    _settings(db, "GLOBAL")
    return db


def give_back(db: duckdb.DuckDBPyConnection) -> None:
    """Return a database of ``lease``; the caller must have removed what it created in it."""
    with _SHARED_LOCK:
        _POOL.setdefault(os.getpid(), []).append(db)


SMALL_WORK_ROWS = 50_000  # input rows up to which ``work_cursor`` computes on one thread


@contextlib.contextmanager
def work_cursor(rows: int) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor for statements over ``rows`` input rows that create only registrations and TEMP tables (gone
    with the cursor). Up to ``SMALL_WORK_ROWS``: on a leased one-thread database (``lease``); the statements of
    a lab message's store cost their planning, and the shared database's worker threads would only wake and
    spin beside them (measured on the HL7 feed: about a third of its CPU). Larger work: the shared database."""
    db = lease() if rows <= SMALL_WORK_ROWS else None
    con = db.cursor() if db is not None else cursor()
    try:
        yield con
    finally:
        con.close()
        if db is not None:
            give_back(db)


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
    """Text time -> naive UTC timestamp (offset honoured; a naive text is taken as UTC).

    The usual form of an export, ``2024-03-01T20:00:00Z`` (20 characters), is read by ``strptime`` first,
    at half the cost of the time-zone cast (bulk files hold tens of millions of times); the same instant,
    and any text ``strptime`` does not take falls to the cast (tests/events/test_normalize_store.py).
    """
    cast = f"date_trunc('second', TRY_CAST(TRY_CAST({col} AS TIMESTAMPTZ) AS TIMESTAMP))"
    return (f"CASE WHEN length({col}) = 20 THEN coalesce(try_strptime({col}, '%Y-%m-%dT%H:%M:%SZ'), {cast}) "
            f"ELSE {cast} END")


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


def _literal(v: object) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):  # as text: DuckDB reads a decimal text to the nearest double, the value repr wrote
        return f"CAST('{v!r}' AS DOUBLE)"
    return "'" + str(v).replace("'", "''") + "'"


def _lookup(table: pa.Table, analyte: str, unit: str, row: str) -> tuple[str, dict[str, str]]:
    """A left join of the (few) rows of ``_unit_map`` on analyte and unit (not distinct), without the join,
    which would cost the rows their order (streaming ingest keeps a file's patient order): SQL of the
    matching row's number (``row``, NULL for none), and per column SQL of its value given that number."""
    rows = table.to_pylist()
    conds = [f"{analyte} = {_literal(r['analyte'])} AND "
             + (f"{unit} IS NULL" if r["unit"] is None else f"{unit} = {_literal(r['unit'])}") for r in rows]
    idx = "CASE " + " ".join(f"WHEN {c} THEN {i + 1}" for i, c in enumerate(conds)) + " END" if rows else "NULL"
    types = {"factor": "DOUBLE", "lo": "DOUBLE", "hi": "DOUBLE", "canonical": "VARCHAR", "reason": "VARCHAR"}
    return f"CAST({idx} AS INTEGER)", {
        c: f"CAST([{', '.join(_literal(r[c]) for r in rows)}] AS {t}[])[{row}]" if rows else f"NULL::{t}"
        for c, t in types.items()}


@cache
def drug_regex(kb: KnowledgeBase) -> str:
    """One RE2/Java-compatible pattern matching every ingredient and synonym as a whole word."""
    import re

    names = sorted({n.lower() for d in kb.drugs.drugs for n in (d.ingredient, *d.synonyms)},
                   key=len, reverse=True)
    return "(?:^|[^a-z])(" + "|".join(re.escape(n) for n in names) + ")(?:[^a-z]|$)"


@cache
def _drug_table(kb: KnowledgeBase) -> pa.Table:
    """name (lower-case ingredient, synonym or rxcui:N) -> ingredient and its Mg salt (regimens.yaml id)."""
    names: list[str] = []
    ingredients: list[str] = []
    salts: list[str | None] = []
    for d in kb.drugs.drugs:
        keys = [d.ingredient.lower(), *(x.lower() for x in d.synonyms)]
        if d.rxcui:
            keys.append(f"rxcui:{d.rxcui}")
        for k in keys:
            names.append(k)
            ingredients.append(d.ingredient)
            salts.append(d.salt)
    return pa.table({"key": names, "ingredient": ingredients, "salt": pa.array(salts, pa.string())})


@cache
def _dose_map(pairs: tuple[tuple[str, str], ...]) -> pa.Table:
    """mmol of Mg per one dose unit as written, per (salt, unit), from mgaki.units; NULL if not an amount.

    A unit the unit layer does not read as an amount of salt or Mg (``mL`` of a suspension, ``TAB``) or
    one that needs the weight (``mg/kg``) leaves the dose unknown: the row is still an exposure.
    """
    rows: dict[str, list[object]] = {"salt": [], "dose_unit": [], "mmol_per_unit": []}
    for salt, unit in pairs:
        try:
            f: float | None = mmol_per_unit(unit, salt)
        except MgakiError:
            f = None
        for k, v in zip(rows, (salt, unit, f), strict=True):
            rows[k].append(v)
    return pa.table(rows, schema=pa.schema([("salt", pa.string()), ("dose_unit", pa.string()),
                                            ("mmol_per_unit", pa.float64())]))


@dataclass(frozen=True)
class TimeWindow:
    """When a record can have happened: ``start`` <= time < ``end`` (UTC); birth years from ``birth_min``."""

    start: datetime
    end: datetime
    birth_min: int

    def outside(self, t: str, text: str, label: str) -> str:
        """A SQL ``WHEN`` giving the reason when timestamp ``t`` (parsed from column ``text``) is outside."""
        lo, hi = f"TIMESTAMP '{self.start:%Y-%m-%d %H:%M:%S}'", f"TIMESTAMP '{self.end:%Y-%m-%d %H:%M:%S}'"
        return f"WHEN {t} < {lo} OR {t} >= {hi} THEN '{label} ''' || {text} || ''' is outside the plausible window " \
               f"{self.text()}'"

    def text(self) -> str:
        end = f"{self.end:%Y-%m-%d}" if self.end.time() == datetime.min.time() else f"{self.end:%Y-%m-%d %H:%M} UTC"
        return f"{self.start:%Y-%m-%d} to {end}"


def time_window(kb: KnowledgeBase, now: datetime | None = None) -> TimeWindow:
    """The plausible window of ``units.yaml`` ``plausibility``; with ``now`` (a live feed) it ends no later than
    ``now`` plus ``live_feed_future_tolerance_hours``."""
    end = datetime(int(kb.value("time_window_end_year")), 1, 1, tzinfo=UTC)
    if now is not None:  # a naive clock is read as UTC, the event model's convention
        clock = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
        end = min(end, (clock + timedelta(hours=kb.value("live_feed_future_tolerance_hours"))).replace(microsecond=0))
    start = datetime(int(kb.value("time_window_start_year")), 1, 1, tzinfo=UTC)
    return TimeWindow(start, end, int(kb.value("birth_year_min")))



def _quarantine_sql(table: str, raw_cols: list[str], reason_expr: str, src: str) -> str:
    struct = ", ".join(f"{c} := {c}" for c in raw_cols)
    return (f"SELECT '{table}' AS \"table\", subject_id, source, to_json(struct_pack({struct})) AS raw, "
            f"{reason_expr} AS reason FROM {src} WHERE {reason_expr} IS NOT NULL")


def normalize(raw: Mapping[str, pa.Table | None], kb: KnowledgeBase | None = None, *,
              now: datetime | None = None, db: duckdb.DuckDBPyConnection | None = None) -> dict[str, pa.Table]:
    """Canonical tables (schema.TABLES) from raw adapter tables (schema.RAW).

    ``now``: the clock of a live feed (the service): times and birth dates after it (plus the tolerance) are
    quarantined too. Batch ingest leaves it None: a research set's dates may be shifted into the future.
    ``db``: the database to work in (a cursor of it is used), e.g. one that keeps row order
    (``preserve_insertion_order``: streaming ingest keeps a file's subject order, so parts need no sort);
    default this process's shared one.
    """
    kb = kb or load()
    if db is not None:
        con = db.cursor()  # registered tables only
        try:
            return _normalize(con, raw, kb, time_window(kb, now))
        finally:
            con.close()
    with work_cursor(sum(t.num_rows for t in raw.values() if t is not None)) as con:
        return _normalize(con, raw, kb, time_window(kb, now))


def _normalize(con: duckdb.DuckDBPyConnection, raw: Mapping[str, pa.Table | None],
               kb: KnowledgeBase, window: TimeWindow) -> dict[str, pa.Table]:
    out: dict[str, pa.Table] = {name: TABLES[name].empty_table() for name in TABLES}
    quarantine: list[str] = []
    # a section whose raw table is empty is skipped: its outputs stay empty (one HL7 message has no
    # medications or contexts, and each statement on a tiny table still costs a millisecond or more)
    present = {name for name, table in raw.items() if table is not None and table.num_rows}
    for name, schema in RAW.items():
        con.register(f"raw_{name}", _conform(raw.get(name), schema))

    # --- events (and weights, which arrive as events of analyte 'weight') -------------------
    pairs = con.execute("SELECT DISTINCT analyte, unit FROM raw_events WHERE analyte IS NOT NULL").fetchall()
    match, unit = _lookup(_unit_map(tuple(sorted(pairs, key=lambda p: (p[0], p[1] or "")))), "analyte", "unit", "r._u")
    no_value = ", ".join(f"'{a}'" for a in sorted(NO_VALUE_ANALYTES))
    ev_reason = f"""CASE
        WHEN subject_id IS NULL OR subject_id = '' THEN 'no subject id'
        WHEN analyte IS NULL THEN 'code ' || coalesce(code, '(none)') || ' is not mapped to an analyte'
        WHEN t IS NULL THEN 'unparseable time ' || coalesce('''' || time || '''', '(missing)')
        {window.outside("t", "time", "time")}
        WHEN analyte IN ({no_value}) THEN NULL
        WHEN v IS NULL THEN 'non-numeric value ' || coalesce('''' || value || '''', '(missing)')
        WHEN unit_reason IS NOT NULL THEN unit_reason
        WHEN v * factor < lo OR v * factor > hi THEN
            analyte || ' ' || value || ' ' || coalesce(unit, '') || ' (= ' || round(v * factor, 4)
            || ' ' || canonical || ') is outside the possible range ' || lo || ' to ' || hi || ' ' || canonical
        END"""
    # One pass over the rows (no intermediate table: each costs a copy of every column), split after:
    # usable rows to events or weights, the others to the quarantine with their raw fields.
    both = con.sql(f"""
        SELECT subject_id, nullif(encounter_id, '') AS encounter_id, t AS time, code, analyte,
               CASE WHEN analyte NOT IN ({no_value}) THEN v * factor END AS numeric_value, canonical AS unit,
               source, v * factor AS weight_kg, why,
               CASE WHEN why IS NOT NULL THEN to_json(struct_pack(time := "time_raw", code := code, value := value,
                                                                    unit := unit_raw)) END AS raw
        FROM (SELECT *, {ev_reason} AS why FROM (
            SELECT r.subject_id, r.encounter_id, r.time, r.time AS time_raw, r.code, r.analyte, r.value, r.unit,
                   r.unit AS unit_raw, r.source, {_time_sql('r.time')} AS t, TRY_CAST(r.value AS DOUBLE) AS v,
                   {unit['factor']} AS factor, {unit['canonical']} AS canonical, {unit['reason']} AS unit_reason,
                   {unit['lo']} AS lo, {unit['hi']} AS hi
            FROM (SELECT *, {match} AS _u FROM raw_events) r) ev) ev2
    """).to_arrow_table()
    ok = pc.is_null(both.column("why"))
    weight = pc.fill_null(pc.equal(both.column("analyte"), "weight"), False)
    out["events"] = _where(both.select(TABLES["events"].names), pc.and_(ok, pc.invert(weight)))
    out["weights"] = _where(both.select(["subject_id", "time", "weight_kg", "source"]), pc.and_(ok, weight))
    bad = _where(both.select(["subject_id", "source", "raw", "why"]), pc.invert(ok))
    given = [pa.table({"table": pa.array(["events"] * bad.num_rows, pa.string()),
                       "subject_id": bad.column("subject_id"), "source": bad.column("source"),
                       "raw": bad.column("raw").cast(pa.string()), "reason": bad.column("why")})]

    if "medications" in present:
        _medications(con, kb, out, quarantine, window)
    if "encounters" in present:
        _encounters(con, out, quarantine, window)
    if "subjects" in present:
        _subjects(con, out, quarantine, window)
    if "contexts" in present:
        _contexts(con, out, quarantine, window)
    if quarantine:
        given.append(con.sql(" UNION ALL ".join(quarantine)).to_arrow_table())
    # rows an adapter already set aside (e.g. a FHIR status 'entered-in-error'), with its reason
    set_aside = raw.get("quarantine")
    if set_aside is not None and set_aside.num_rows:
        given.append(set_aside)
    out["quarantine"] = pa.concat_tables([_conform(q, TABLES["quarantine"]) for q in given])
    return {name: out[name].cast(TABLES[name]) for name in TABLES}


def _where(table: pa.Table, mask: pa.ChunkedArray) -> pa.Table:
    """``table.filter(mask)``, without the copy when every row or none is kept (the usual cases)."""
    kept = pc.sum(mask).as_py() or 0
    if kept == table.num_rows:
        return table
    return table.slice(0, 0) if kept == 0 else table.filter(mask)


def _subjects(con: duckdb.DuckDBPyConnection, out: dict[str, pa.Table], quarantine: list[str],
              window: TimeWindow) -> None:
    """Patients: a birth date (FHIR date: YYYY, YYYY-MM or YYYY-MM-DD) must be a real date and, like a birth year,
    within the window (from ``birth_min``, before its end); else the row is quarantined with the reason."""
    last_year = (window.end - timedelta(microseconds=1)).year  # the last year with an instant in the window
    con.execute(f"""CREATE TEMP TABLE subj AS SELECT *, CASE
            WHEN birth_date IS NOT NULL AND bd IS NULL THEN 'birth date ''' || birth_date || ''' is not a date'
            WHEN coalesce(year(bd), birth_year) < {window.birth_min} OR coalesce(year(bd), birth_year) > {last_year}
              OR bd >= TIMESTAMP '{window.end:%Y-%m-%d %H:%M:%S}' THEN 'birth date '''

                 || coalesce(birth_date, CAST(birth_year AS VARCHAR)) || ''' is outside the plausible range '
                 || '{window.birth_min} to {window.end:%Y-%m-%d}'
            END AS why FROM (
        SELECT *, CASE WHEN regexp_full_match(birth_date, '[0-9]{{4}}') THEN TRY_CAST(birth_date || '-01-01' AS DATE)
                       WHEN regexp_full_match(birth_date, '[0-9]{{4}}-[0-9]{{2}}')
                           THEN TRY_CAST(birth_date || '-01' AS DATE)
                       WHEN regexp_full_match(birth_date, '[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}')
                           THEN TRY_CAST(birth_date AS DATE) END AS bd
        FROM raw_subjects WHERE subject_id IS NOT NULL AND subject_id <> '')""")
    quarantine.append(_quarantine_sql("subjects", ["sex", "birth_date", "birth_year"], "why", "subj"))
    out["subjects"] = con.sql("""
        SELECT subject_id, CASE lower(sex) WHEN 'f' THEN 'female' WHEN 'female' THEN 'female'
                                          WHEN 'm' THEN 'male' WHEN 'male' THEN 'male' END AS sex,
               CAST(coalesce(year(bd), birth_year) AS INTEGER) AS birth_year, source FROM subj WHERE why IS NULL
    """).to_arrow_table()


def _medications(con: duckdb.DuckDBPyConnection, kb: KnowledgeBase, out: dict[str, pa.Table],
                 quarantine: list[str], window: TimeWindow) -> None:
    con.register("drug_map", _drug_table(kb))
    con.execute(f"""
        CREATE TEMP TABLE med AS
        SELECT r.*, {_time_sql('r.start')} AS t0, {_time_sql('r."end"')} AS t1,
               TRY_CAST(r.dose_value AS DOUBLE) AS dose,
               coalesce(dr.ingredient, dn.ingredient) AS ingredient,
               coalesce(dr.salt, dn.salt) AS salt
        FROM raw_medications r
        LEFT JOIN drug_map dr ON dr.key = 'rxcui:' || r.rxcui
        LEFT JOIN drug_map dn ON dn.key = regexp_extract(lower(coalesce(r.name, '')), $pattern, 1)
    """, {"pattern": drug_regex(kb)})
    pairs = con.execute("SELECT DISTINCT salt, dose_unit FROM med WHERE salt IS NOT NULL AND dose_unit IS NOT NULL"
                        ).fetchall()
    con.register("dose_map", _dose_map(tuple(sorted(pairs))))
    med_reason = f"""CASE
        WHEN subject_id IS NULL OR subject_id = '' THEN 'no subject id'
        WHEN t0 IS NULL THEN 'unparseable start time ' || coalesce('''' || start || '''', '(missing)')
        WHEN "end" IS NOT NULL AND t1 IS NULL THEN 'unparseable end time ''' || "end" || ''''
        WHEN t1 < t0 THEN 'ends before it starts'
        {window.outside("t0", "start", "start")}
        {window.outside("t1", '"end"', "end")}
        END"""
    con.execute(f"CREATE TEMP TABLE med2 AS SELECT *, {med_reason} AS why FROM med")
    quarantine.append(_quarantine_sql("medications", ["start", '"end"', "name", "rxcui", "dose_value",
                                                      "dose_unit"], "why", "med2"))
    out["medications"] = con.sql("""
        SELECT m.subject_id, nullif(m.encounter_id, '') AS encounter_id, m.t0 AS start, m.t1 AS "end",
               m.ingredient AS drug, m.name, m.rxcui, lower(m.route) AS route, m.dose AS dose_value, m.dose_unit,
               m.dose * d.mmol_per_unit AS mg_mmol, m.source
        FROM med2 m LEFT JOIN dose_map d ON d.salt = m.salt AND d.dose_unit = m.dose_unit
        WHERE m.why IS NULL
    """).to_arrow_table()


def _encounters(con: duckdb.DuckDBPyConnection, out: dict[str, pa.Table], quarantine: list[str],
                window: TimeWindow) -> None:
    enc_reason = f"""CASE
        WHEN subject_id IS NULL OR subject_id = '' THEN 'no subject id'
        WHEN encounter_id IS NULL OR encounter_id = '' THEN 'no encounter id'
        WHEN s IS NULL THEN 'unparseable start time ' || coalesce('''' || start || '''', '(missing)')
        WHEN "end" IS NOT NULL AND e IS NULL THEN 'unparseable end time ''' || "end" || ''''
        WHEN e < s THEN 'ends before it starts'
        {window.outside("s", "start", "start")}
        {window.outside("e", '"end"', "end")}
        END"""
    con.execute(f"""CREATE TEMP TABLE enc AS SELECT *, {enc_reason} AS why FROM (
        SELECT *, {_time_sql('start')} AS s, {_time_sql('"end"')} AS e FROM raw_encounters)""")
    quarantine.append(_quarantine_sql("encounters", ["encounter_id", "start", '"end"'], "why", "enc"))
    out["encounters"] = con.sql("""
        SELECT subject_id, encounter_id, coalesce(kind, 'inpatient') AS kind, s AS start, e AS "end",
               nullif(parent_id, '') AS parent_id, source FROM enc WHERE why IS NULL
    """).to_arrow_table()


def _contexts(con: duckdb.DuckDBPyConnection, out: dict[str, pa.Table], quarantine: list[str],
              window: TimeWindow) -> None:
    ctx_reason = f"""CASE WHEN subject_id IS NULL OR subject_id = '' THEN 'no subject id'
        WHEN context IS NULL OR context = '' THEN 'no context'
        WHEN time IS NOT NULL AND t IS NULL THEN 'unparseable time ''' || time || ''''
        {window.outside("t", "time", "time")} END"""

    con.execute(f"""CREATE TEMP TABLE ctx AS SELECT *, {ctx_reason} AS why FROM (
        SELECT *, {_time_sql('time')} AS t FROM raw_contexts)""")
    quarantine.append(_quarantine_sql("contexts", ["encounter_id", "time", "context"], "why", "ctx"))
    out["contexts"] = con.sql("""
        SELECT subject_id, nullif(encounter_id, '') AS encounter_id, t AS time, context, source
        FROM ctx WHERE why IS NULL""").to_arrow_table()
