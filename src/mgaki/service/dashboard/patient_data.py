"""What the dashboard reads: the patient list, one patient's timeline, record and dosing history.

Everything comes from the stores the service already keeps: the Parquet event store and its
surveillance results (queried with DuckDB, columnar: the list is one query over every patient,
never a loop), and the service database's alert table. Reference ranges come from the knowledge
base by analyte; nothing clinical is written here. Functions take a patient id that the caller
has already authorised (``dashboard.authorize_patient``); none of them checks access itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import duckdb
import pyarrow as pa
import sqlalchemy as sa

from mgaki.events import EventStore
from mgaki.knowledge import KnowledgeBase
from mgaki.record import Measurement, Medication, PatientRecord, Stay
from mgaki.result import Severity
from mgaki.service.persistence.db import alert_actions, alerts, utcnow
from mgaki.service.persistence.workflow import live_only
from mgaki.surveillance.pipeline import reads_results, result_sql
from mgaki.units import convert, salt_amounts

__all__ = ["MGSO4", "SERIES", "SEVERITIES", "DoseHistory", "ListQuery", "Scope", "dose_history", "patient_exists",
           "patient_list", "record_from_store", "reference_ranges", "timeline"]

# The analytes the timeline plots, in panel order (ids of units.yaml / codes.yaml).
SERIES: tuple[str, ...] = ("magnesium", "creatinine", "potassium", "calcium", "urine_output")
SEVERITIES: tuple[str, ...] = get_args(Severity)  # least to most severe, as result.Severity lists them
MGSO4 = "magnesium sulfate"  # drugs.yaml ingredient whose doses the PK model knows
_NOT_IV = ("oral", "po", "enteral", "im", "intramuscular", "by mouth")  # routes the PK model does not cover

SortKey = Literal["severity", "last_alert", "patient_id", "alerts", "latest_mg", "aki_stage", "age"]


def _rank_sql(col: str) -> str:
    return "CASE " + " ".join(f"WHEN {col} = '{s}' THEN {i + 1}" for i, s in enumerate(SEVERITIES)) + " END"


def _utc(t: datetime) -> datetime:
    """Store times are naive UTC; the engine wants them aware."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _utc_or_none(t: datetime | None) -> datetime | None:
    return None if t is None else _utc(t)


def _iso(t: datetime | None) -> str | None:
    return t.replace(tzinfo=None).isoformat() if t is not None else None


def _rows(con: duckdb.DuckDBPyConnection, sql: str,
          params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rel = con.execute(sql, params) if params else con.execute(sql)
    names = [d[0] for d in rel.description or []]
    return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


def _results(store: EventStore, name: str, patient_id: str | None = None) -> str | None:
    """A FROM source for one patient's surveillance output (the bucket holding the patient; every bucket
    when no patient is given), or None when surveillance has not run yet."""
    return result_sql(store.root / "results", name, patient_id)


def patient_exists(store: EventStore, engine: sa.Engine, patient_id: str) -> bool:
    con = store.connect(("subjects", "events"))
    try:
        hit = con.execute("SELECT 1 FROM subjects WHERE subject_id = $1 UNION ALL "
                          "SELECT 1 FROM events WHERE subject_id = $1 LIMIT 1", [patient_id]).fetchall()
    finally:
        con.close()
    if hit:
        return True
    with engine.connect() as c:
        return c.execute(sa.select(alerts.c.id).where(alerts.c.subject_id == patient_id).limit(1)).first() is not None


# --- the patient list -------------------------------------------------------------------------


Scope = Literal["action", "active", "all"]


@dataclass(frozen=True)
class ListQuery:
    # action: alerts that need action (not acknowledged, snoozed or resolved); active: alerts of encounters
    # still open; all: every live alert
    scope: Scope = "action"
    severity: str | None = None  # at least this severity among the counted alerts
    kind: str | None = None  # has a counted alert of this kind
    q: str | None = None  # patient id contains
    with_alerts: bool = False
    sort: SortKey = "severity"
    descending: bool = True
    limit: int = 100
    offset: int = 0
    only: frozenset[str] | None = None  # the patients the caller may see (None: all)


def _needs_action(now: datetime) -> sa.ColumnElement[bool]:
    """An alert needs action: no workflow action yet, reopened, or its snooze has expired (persistence.workflow)."""
    ranked = sa.select(alert_actions.c.alert_id, alert_actions.c.action, alert_actions.c.until,
                       sa.func.row_number().over(partition_by=alert_actions.c.alert_id,
                                                 order_by=(alert_actions.c.at.desc(), alert_actions.c.id.desc())
                                                 ).label("rn")
                       ).where(alert_actions.c.action.in_(("acknowledge", "snooze", "resolve", "reopen"))).subquery()
    latest = sa.select(ranked.c.alert_id).where(
        ranked.c.rn == 1, sa.or_(ranked.c.action.in_(("acknowledge", "resolve")),
                                 sa.and_(ranked.c.action == "snooze", ranked.c.until > now)))
    return alerts.c.id.not_in(latest)


def _alert_groups(engine: sa.Engine) -> pa.Table:
    """Live alerts grouped in the database by (subject, encounter, kind, severity, needs action), as an Arrow
    table for DuckDB; silent and suppressed alerts are never shown."""
    needs = _needs_action(utcnow()).label("needs_action")
    q = sa.select(alerts.c.subject_id, alerts.c.encounter_id, alerts.c.kind, alerts.c.severity, needs,
                  sa.func.count().label("n"), sa.func.max(alerts.c.time).label("last_time")
                  ).where(live_only()).group_by(alerts.c.subject_id, alerts.c.encounter_id, alerts.c.kind,
                                                alerts.c.severity, needs)
    with engine.connect() as con:
        rows = con.execute(q).all()
    types = (pa.string(), pa.string(), pa.string(), pa.string(), pa.bool_(), pa.int64(), pa.timestamp("us"))
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in types]
    names = ("subject_id", "encounter_id", "kind", "severity", "needs_action", "n", "last_time")
    return pa.table({n: pa.array(c, t) for n, c, t in zip(names, cols, types, strict=True)})


_SORT_SQL = {"severity": "sev_rank {d} NULLS LAST, last_alert {d} NULLS LAST",
             "last_alert": "last_alert {d} NULLS LAST", "patient_id": "patient_id {d}",
             "alerts": "alerts {d}, sev_rank {d} NULLS LAST", "latest_mg": "latest_mg_mg_dl {d} NULLS LAST",
             "aki_stage": "aki_stage {d} NULLS LAST, sev_rank {d} NULLS LAST", "age": "age_years {d} NULLS LAST"}


@reads_results  # a background fold may replace a result file under the read
def patient_list(store: EventStore, engine: sa.Engine, query: ListQuery) -> dict[str, Any]:
    """Every patient with the alerts that count (open encounters, or all), filtered and sorted in one query."""
    con = store.connect(("subjects", "events", "encounters"))
    try:
        con.register("alert_groups", _alert_groups(engine))
        stages = _results(store, "aki_stage_changes")
        stage_sql = (f"SELECT subject_id, arg_max(stage, time) AS aki_stage, max(time) AS aki_stage_time "
                     f"FROM {stages} GROUP BY subject_id" if stages else
                     "SELECT NULL::VARCHAR AS subject_id, NULL::INTEGER AS aki_stage, "
                     "NULL::TIMESTAMP AS aki_stage_time WHERE FALSE")
        where: list[str] = []
        params: dict[str, Any] = {}
        if query.severity:
            where.append(f"sev_rank >= {SEVERITIES.index(query.severity) + 1}")
        if query.kind:
            where.append("list_contains(kinds, $kind)")
            params["kind"] = query.kind
        if query.q:
            where.append("contains(lower(patient_id), lower($q))")
            params["q"] = query.q
        if query.with_alerts or query.severity or query.kind:
            where.append("alerts > 0")
        if query.only is not None:
            con.register("visible", pa.table({"subject_id": pa.array(sorted(query.only), pa.string())}))
            where.append("patient_id IN (SELECT subject_id FROM visible)")
        counted = {"all": "TRUE", "active": "a.encounter_open", "action": "a.needs_action"}[query.scope]
        order = _SORT_SQL[query.sort].format(d="DESC" if query.descending else "ASC")
        sql = f"""
        WITH enc AS (  -- an encounter ingested open and later closed is closed
            SELECT subject_id, encounter_id, bool_and("end" IS NULL) AS open FROM encounters
            WHERE parent_id IS NULL GROUP BY ALL),
        icu AS (SELECT subject_id, bool_and("end" IS NULL) AS open FROM encounters
                WHERE kind = 'icu' GROUP BY subject_id, encounter_id),
        stage AS ({stage_sql}),
        ppl AS (SELECT subject_id FROM subjects UNION SELECT subject_id FROM events
                UNION SELECT subject_id FROM alert_groups),
        latest AS (
            SELECT subject_id, max(time) AS last_data,
                   arg_max(numeric_value, time) FILTER (WHERE analyte = 'magnesium') AS latest_mg_mg_dl,
                   max(time) FILTER (WHERE analyte = 'magnesium') AS latest_mg_time,
                   arg_max(numeric_value, time) FILTER (WHERE analyte = 'creatinine') AS latest_creatinine_mg_dl
            FROM events GROUP BY subject_id),
        a AS (
            SELECT g.*, coalesce(e.open, FALSE) AS encounter_open FROM alert_groups g
            LEFT JOIN enc e ON e.subject_id = g.subject_id AND e.encounter_id = g.encounter_id),
        agg AS (
            SELECT subject_id,
                   coalesce(sum(n) FILTER (WHERE {counted}), 0) AS alerts,
                   sum(n) AS alerts_total,
                   max({_rank_sql('severity')}) FILTER (WHERE {counted}) AS sev_rank,
                   max(last_time) FILTER (WHERE {counted}) AS last_alert,
                   arg_max(kind, last_time) FILTER (WHERE {counted}) AS last_alert_kind,
                   list(DISTINCT kind ORDER BY kind) FILTER (WHERE {counted}) AS kinds
            FROM a GROUP BY subject_id),
        rows AS (
            SELECT p.subject_id AS patient_id, s.sex, s.birth_year,
                   EXISTS (SELECT 1 FROM enc WHERE enc.subject_id = p.subject_id AND enc.open) AS admitted,
                   CASE WHEN EXISTS (SELECT 1 FROM icu WHERE icu.subject_id = p.subject_id AND icu.open) THEN 'ICU'
                        WHEN EXISTS (SELECT 1 FROM enc WHERE enc.subject_id = p.subject_id AND enc.open)
                        THEN 'ward' END AS ward,
                   CASE WHEN s.birth_year IS NOT NULL AND l.last_data IS NOT NULL
                        THEN year(l.last_data) - s.birth_year END AS age_years,
                   st.aki_stage, st.aki_stage_time,
                   l.last_data, l.latest_mg_mg_dl, l.latest_mg_time, l.latest_creatinine_mg_dl,
                   coalesce(agg.alerts, 0) AS alerts, coalesce(agg.alerts_total, 0) AS alerts_total,
                   agg.sev_rank, agg.last_alert, agg.last_alert_kind, coalesce(agg.kinds, []) AS kinds
            FROM ppl p
            LEFT JOIN (SELECT subject_id, any_value(sex) AS sex, any_value(birth_year) AS birth_year
                       FROM subjects GROUP BY subject_id) s ON s.subject_id = p.subject_id
            LEFT JOIN latest l ON l.subject_id = p.subject_id
            LEFT JOIN stage st ON st.subject_id = p.subject_id
            LEFT JOIN agg ON agg.subject_id = p.subject_id)
        SELECT *, count(*) OVER () AS total FROM rows
        {"WHERE " + " AND ".join(where) if where else ""}
        ORDER BY {order}, patient_id
        LIMIT {int(query.limit)} OFFSET {int(query.offset)}"""
        rows = _rows(con, sql, params)
    finally:
        con.close()
    total = int(rows[0]["total"]) if rows else 0
    out = []
    for r in rows:
        rank = r.pop("sev_rank")
        r.pop("total")
        r["highest_severity"] = SEVERITIES[rank - 1] if rank else None
        for k in ("last_data", "latest_mg_time", "last_alert", "aki_stage_time"):
            r[k] = _iso(r[k])
        r["alerts"], r["alerts_total"] = int(r["alerts"]), int(r["alerts_total"])
        out.append(r)
    return {"total": total, "scope": query.scope, "patients": out}


# --- one patient's timeline -------------------------------------------------------------------


def reference_ranges(kb: KnowledgeBase, analytes: tuple[str, ...] = SERIES) -> dict[str, dict[str, Any]]:
    """Each analyte's knowledge-base reference range in its canonical unit (the store's), with its source."""
    found = {"magnesium": kb.magnesium.reference_range, **kb.electrolytes.ranges}
    out: dict[str, dict[str, Any]] = {}
    for a in analytes:
        rng = found.get(a)
        if rng is None:
            continue
        unit = kb.analyte(a).canonical_unit
        out[a] = {"low": round(convert(rng.low, a, rng.unit, unit), 6),
                  "high": round(convert(rng.high, a, rng.unit, unit), 6),
                  "unit": unit, "source": rng.source.citation, "doi": rng.source.doi, "document": rng.source.document}
    return out


@reads_results  # a background fold may replace a result file under the read
def timeline(store: EventStore, kb: KnowledgeBase, patient_id: str) -> dict[str, Any]:
    """The series, Mg doses, AKI stage bands and reference ranges of one patient (store units)."""
    con = store.connect(("events", "medications", "encounters"))
    try:
        cr = _results(store, "kdigo_creatinine", patient_id)
        cr_join = (f"""LEFT JOIN (SELECT time, value, any_value(stage) AS aki_stage, any_value(criterion) AS criterion,
                                         any_value(reference) AS kdigo_reference FROM {cr}
                                  WHERE subject_id = $pid GROUP BY time, value) k
                       ON e.analyte = 'creatinine' AND k.time = e.time AND k.value = e.numeric_value"""
                   if cr else "")
        cr_cols = "k.aki_stage, k.criterion, k.kdigo_reference" if cr else \
            "NULL::INTEGER AS aki_stage, NULL AS criterion, NULL::DOUBLE AS kdigo_reference"
        listed = ", ".join(f"'{a}'" for a in SERIES)
        points = _rows(con, f"""
            SELECT e.analyte, e.time, e.numeric_value AS value, e.unit, e.source, e.encounter_id, {cr_cols}
            FROM events e {cr_join}
            WHERE e.subject_id = $pid AND e.analyte IN ({listed})
            ORDER BY e.analyte, e.time, e.numeric_value""", {"pid": patient_id})
        doses = _rows(con, """
            SELECT start, "end", drug, name, route, dose_value, dose_unit, mg_mmol, source FROM medications
            WHERE subject_id = $pid AND mg_mmol IS NOT NULL ORDER BY start""", {"pid": patient_id})
        encounters = _rows(con, """
            SELECT encounter_id, any_value(kind) AS kind, min(start) AS start,
                   CASE WHEN bool_and("end" IS NULL) THEN NULL ELSE max("end") END AS "end"
            FROM encounters WHERE subject_id = $pid AND parent_id IS NULL GROUP BY encounter_id
            ORDER BY start""", {"pid": patient_id})
        last_data = con.execute("SELECT max(time) FROM events WHERE subject_id = $pid",
                                {"pid": patient_id}).fetchall()[0][0]
        bands = _aki_bands(con, store, patient_id, last_data)
        urine = _urine_rate(con, store, kb, patient_id)
    finally:
        con.close()
    series: dict[str, list[dict[str, Any]]] = {a: [] for a in SERIES}
    for p in points:
        a = p.pop("analyte")
        p["time"] = _iso(p["time"])
        if a != "creatinine":
            for k in ("aki_stage", "criterion", "kdigo_reference"):
                p.pop(k)
        series[a].append(p)
    for d in doses:
        d["start"], d["end"] = _iso(d["start"]), _iso(d["end"])
        d["g_mgso4"] = round(salt_amounts(d["mg_mmol"], "mmol")["g_mgso4"], 3) if d["drug"] == MGSO4 else None
    for e in encounters:
        e["start"], e["end"] = _iso(e["start"]), _iso(e["end"])
    units = {a: kb.analyte(a).canonical_unit for a in SERIES}
    th = kb.threshold("kdigo_uo_stage1_rate")
    return {"patient_id": patient_id, "units": units, "series": series, "doses": doses,
            "urine_rate": urine, "urine_rate_unit": th.unit,
            "urine_threshold": {"value": th.value, "meaning": th.meaning, "source": th.source.citation,
                                "doi": th.source.doi},
            "aki_bands": bands, "encounters": encounters, "reference_ranges": reference_ranges(kb),
            "last_data": _iso(last_data)}


def _urine_rate(con: duckdb.DuckDBPyConnection, store: EventStore, kb: KnowledgeBase,
                pid: str) -> list[dict[str, Any]]:
    """Urine output rate over the KDIGO stage-1 window at each charting (surveillance), mL/kg/h."""
    src = _results(store, "kdigo_urine", pid)
    if src is None:
        return []
    col = f"rate_{kb.value('kdigo_uo_stage1_hours'):g}h".replace(".", "_")  # surveillance.stages._k
    names = {d[0] for d in (con.execute(f"SELECT * FROM {src} LIMIT 0").description or [])}
    if col not in names:
        return []
    rows = _rows(con, f"""SELECT time, "{col}" AS value, stage AS aki_stage FROM {src}
                          WHERE subject_id = $pid AND "{col}" IS NOT NULL ORDER BY time""", {"pid": pid})
    for r in rows:
        r["time"] = _iso(r["time"])
        r["value"] = round(float(r["value"]), 4)
    return rows


def _aki_bands(con: duckdb.DuckDBPyConnection, store: EventStore, pid: str,
               last_data: datetime | None) -> list[dict[str, Any]]:
    """Stage > 0 intervals: each stage change holds until the next, the encounter's end or the last data."""
    src = _results(store, "aki_stage_changes", pid)
    if src is None:
        return []
    rows = _rows(con, f"""
        WITH enc AS (SELECT encounter_id, CASE WHEN bool_and("end" IS NULL) THEN NULL ELSE max("end") END AS e
                     FROM encounters WHERE subject_id = $pid GROUP BY encounter_id),
        ch AS (SELECT encounter_id, time, max(stage) AS stage, any_value(criterion) AS criterion
               FROM {src} WHERE subject_id = $pid GROUP BY encounter_id, time)
        SELECT * FROM (
          SELECT ch.encounter_id, ch.time AS start, ch.stage, ch.criterion,
                 coalesce(lead(ch.time) OVER (PARTITION BY ch.encounter_id ORDER BY ch.time), enc.e,
                          greatest($last, ch.time)) AS "end"
          FROM ch LEFT JOIN enc ON enc.encounter_id = ch.encounter_id) b
        WHERE stage > 0 ORDER BY start""", {"pid": pid, "last": last_data})
    for r in rows:
        r["start"], r["end"] = _iso(r["start"]), _iso(r["end"])
    return rows


# --- the record the bedside engine reads, and the dosing history the PK fit reads --------------


def _as_reported(v: float) -> float:
    """A canonical value at a lab's precision: 2 decimals (1.09373 mg/dL -> 1.09), 1 from 100 up."""
    return round(v, 2) if abs(v) < 100 else round(v, 1)


def record_from_store(store: EventStore, kb: KnowledgeBase, patient_id: str) -> PatientRecord:
    """The canonical record of one patient, rebuilt from stored rows (values already canonical).

    The store keeps canonical values only, so "reported" values are the canonical ones; it keeps
    the birth year only, so age counts from 1 July of that year (said in the record's warnings).
    """
    con = store.connect(("subjects", "events", "weights", "medications", "contexts", "encounters"))
    try:
        p = {"pid": patient_id}
        subj = con.execute("SELECT any_value(sex), any_value(birth_year) FROM subjects WHERE subject_id = $pid",
                           p).fetchall()[0]
        ev = con.execute("""SELECT DISTINCT analyte, numeric_value, unit, time, source FROM events
                            WHERE subject_id = $pid ORDER BY time""", p).fetchall()
        wt = con.execute("SELECT DISTINCT weight_kg, time, source FROM weights WHERE subject_id = $pid ORDER BY time",
                         p).fetchall()
        meds = con.execute("""SELECT DISTINCT name, drug, rxcui, start, "end", route, mg_mmol, source FROM medications
                              WHERE subject_id = $pid ORDER BY start""", p).fetchall()
        ctx = con.execute("SELECT DISTINCT context, time FROM contexts WHERE subject_id = $pid", p).fetchall()
        stays = con.execute("""SELECT DISTINCT kind, start, "end", encounter_id FROM encounters
                               WHERE subject_id = $pid AND start IS NOT NULL ORDER BY start""", p).fetchall()
        icu = sum(1 for kind, *_ in stays if kind == "icu")
    finally:
        con.close()
    meas: list[Measurement] = []
    rrt: list[datetime] = []
    for analyte, value, unit, t, source in ev:
        if analyte == "rrt":
            rrt.append(_utc(t))
        elif value is not None:
            # the store keeps the canonical value (converted from the lab's unit); shown rounded as labs report
            meas.append(Measurement(analyte, float(value), unit, _utc(t), source or "event store",
                                    _as_reported(float(value)), unit))
    w_unit = kb.analyte("weight").canonical_unit
    meas += [Measurement("weight", float(w), w_unit, _utc(t), s or "event store", float(w), w_unit)
             for w, t, s in wt]
    medications = tuple(
        Medication(text=name or drug or "medication", ingredient=drug, rxcui=rxcui,
                   kind="administration" if mg is not None else "request", source_id=source or "event store",
                   start=_utc_or_none(start), end=_utc_or_none(end),
                   dose_g=round(salt_amounts(mg, "mmol")["g_mgso4"], 6) if drug == MGSO4 and mg is not None else None,
                   route=route)
        for name, drug, rxcui, start, end, route, mg, source in meds)
    warnings = ["Rebuilt from the service's event store: values shown in canonical units"]
    birth = None
    if subj[1] is not None:
        birth = date(int(subj[1]), 7, 1)
        warnings.append("Only the birth year is stored: age is counted from 1 July of that year")
    contexts = {c for c, _ in ctx} | ({"icu"} if icu else set())
    # stays and context times: the anchors of each study's exposure time (engine/risk.py)
    return PatientRecord(patient_id=patient_id, sex=subj[0], birth_date=birth, measurements=tuple(meas),
                         medications=medications, rrt_times=tuple(rrt), contexts=frozenset(contexts),
                         warnings=tuple(warnings),
                         stays=tuple(Stay("icu" if kind == "icu" else "hospital", _utc(start), _utc_or_none(end),
                                          f"Encounter/{eid}") for kind, start, end, eid in stays),
                         context_times=tuple((c, _utc(t)) for c, t in ctx if t is not None))


@dataclass(frozen=True)
class DoseHistory:
    """IV MgSO4 given and serum Mg measured, in hours from the first dose (for the MAP fit)."""

    t0: datetime  # the first dose
    start_h: tuple[float, ...]
    mmol: tuple[float, ...]
    duration_h: tuple[float, ...]
    level_h: tuple[float, ...]  # Mg measured after the first dose began
    level_mg_dl: tuple[float, ...]
    baseline_mg_dl: float | None  # the last Mg before the first dose
    skipped: int  # Mg doses the model cannot take (oral, IM, unknown amount)


def dose_history(record: PatientRecord, store: EventStore, patient_id: str) -> DoseHistory | None:
    """The patient's IV MgSO4 course and the levels after it began, or None when there was none."""
    con = store.connect(("medications",))
    try:
        rows = con.execute("""SELECT DISTINCT start, "end", route, mg_mmol FROM medications
                              WHERE subject_id = $pid AND drug = $drug ORDER BY start""",
                           {"pid": patient_id, "drug": MGSO4}).fetchall()
    finally:
        con.close()
    iv = [(s, e, m) for s, e, route, m in rows
          if m is not None and m > 0 and (route is None or route.strip().lower() not in _NOT_IV)]
    if not iv:
        return None
    t0 = _utc(iv[0][0])

    def hours(t: datetime) -> float:
        return (t - t0).total_seconds() / 3600.0

    mg = record.series("magnesium")
    before = [m for m in mg if m.time < t0]
    after = [m for m in mg if m.time >= t0]
    return DoseHistory(
        t0=t0, start_h=tuple(hours(_utc(s)) for s, _, _ in iv),
        mmol=tuple(float(m) for _, _, m in iv),
        duration_h=tuple(max(0.0, hours(_utc(e)) - hours(_utc(s))) if e else 0.0 for s, e, _ in iv),
        level_h=tuple(hours(m.time) for m in after), level_mg_dl=tuple(m.value for m in after),
        baseline_mg_dl=before[-1].value if before else None, skipped=len(rows) - len(iv))


def data_dir_store(data_dir: Path) -> EventStore:
    """The event store the ingest writes (``Ingestor``): ``<data_dir>/events``."""
    return EventStore(data_dir / "events")
