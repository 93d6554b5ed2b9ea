"""FHIR R4 cohorts in and out: Bulk Data export NDJSON, or Bundles, read columnar with DuckDB.

One resource per row, unpacked with DuckDB's JSON functions: Observation
codings are unnested and joined to codes.yaml, valueQuantity gives value and
UCUM unit as written; normalize does the rest. A resource with an id is traced
as its versioned reference ``Type/id/_history/v`` (v: ``meta.versionId``, else
``meta.lastUpdated``, else ``h`` + a hash of its content), so the event store
keeps one version per resource (a new version replaces the old rows). The bedside single-patient path
(``mgaki.adapters.fhir``) is separate and unchanged. See docs/adapters/fhir.md.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from mgaki.adapters._cohort import canonical, conform, conform_rows, iso_utc, register, sql_str
from mgaki.adapters.maps import CONTEXT_SYSTEM, KIND_SYSTEM, load_map
from mgaki.errors import InputError
from mgaki.events.normalize import NO_VALUE_ANALYTES, connect, work_cursor
from mgaki.events.schema import DEATH, DEATH_CODE, RAW, TABLES
from mgaki.knowledge import load

__all__ = ["CONTEXT_SYSTEM", "KIND_SYSTEM", "RXNORM", "UCUM", "read_fhir", "write_fhir"]

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_DUCKDB_MAX_OBJECT = 16 << 20  # DuckDB's default maximum_object_size

# Statuses under which a resource records nothing that happened: set aside with the reason.
_VOID = {
    "Observation": ("entered-in-error", "cancelled"),
    "Procedure": ("entered-in-error", "not-done"),
    "Encounter": ("entered-in-error", "cancelled"),
    "MedicationAdministration": ("entered-in-error", "not-done"),
    "MedicationRequest": ("entered-in-error", "cancelled"),
}


def _files(path: Path) -> tuple[list[Path], list[Path]]:
    """(NDJSON files, JSON files) under ``path`` (a file or a folder)."""
    if path.is_file():
        items = [path]
    elif path.is_dir():
        items = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        raise InputError(str(path), "no such file or folder")
    nd = [p for p in items if p.name.endswith((".ndjson", ".ndjson.gz", ".jsonl"))]
    js = [p for p in items if p.name.endswith((".json", ".json.gz"))]
    if not nd and not js:
        raise InputError(str(path), "no FHIR files (*.ndjson, *.json Bundle)")
    return nd, js


def _inflated_size(p: Path) -> int:
    """A file's size in bytes; of a .gz file, its content's (the gzip trailer's ISIZE, modulo 4 GiB)."""
    size = p.stat().st_size
    if p.name.endswith(".gz") and size >= 4:
        with p.open("rb") as f:
            f.seek(-4, 2)
            return max(size, int.from_bytes(f.read(4), "little"))
    return size


_RAW_SHOWN = 2000  # characters of a broken line or file kept in its quarantine row


_Row = dict[str, str | None]


def _unreadable(nd: list[Path], js: list[Path], scratch: Path) -> tuple[list[Path], list[Path], list[_Row]]:
    """Set aside what is not JSON, so one broken line or file does not stop a whole folder: each NDJSON line
    that does not parse (its good lines are kept, copied to ``scratch``) and each JSON file that does not
    parse, as quarantine rows naming the file and line. Only called after the fast read failed."""
    import gzip
    import json

    def text(p: Path) -> str:
        raw = gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
        return raw.decode("utf-8", errors="replace")

    rows: list[_Row] = []
    good_nd: list[Path] = []
    for i, p in enumerate(nd):
        keep, bad = [], 0
        for n, line in enumerate(text(p).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    raise ValueError("a line must hold one JSON object (a FHIR resource)")
                keep.append(line)
            except ValueError as exc:
                bad += 1
                rows.append({"table": "events", "subject_id": None, "source": f"{p}#{n}",
                             "raw": line[:_RAW_SHOWN], "reason": f"{p.name} line {n}: not valid JSON ({exc})"})
        if not bad:
            good_nd.append(p)
        elif keep:
            copy = scratch / f"{i}-{p.name.removesuffix('.gz')}"
            copy.write_text("\n".join(keep) + "\n")
            good_nd.append(copy)
    good_js: list[Path] = []
    for p in js:
        try:
            json.loads(text(p))
            good_js.append(p)
        except ValueError as exc:
            rows.append({"table": "events", "subject_id": None, "source": str(p), "raw": text(p)[:_RAW_SHOWN],
                         "reason": f"{p.name}: not valid JSON ({exc})"})
    return good_nd, good_js, rows


def _load(con: duckdb.DuckDBPyConnection, path: Path, files: tuple[list[Path], list[Path]], scratch: Path,
          per_source: bool = False) -> pa.Table:
    """Table ``res``: one row per resource (rid, rtype, id, res JSON, src), Bundles unwrapped. Returns the
    quarantine rows of lines or files that are not JSON (they are left out; the rest is read).

    ``src`` is the record's versioned identity, ``<type>/<id>/_history/<version>``; ``per_source``
    prefixes the source system when the resource names one (``meta.source``, else its Bundle's),
    ``<system>|<type>/<id>``, so equal ids from two systems are two records (docs/service.md#identity).
    """
    nd, js = files
    broken = TABLES["quarantine"].empty_table()
    try:
        _create_res(con, nd, js, per_source)
    except duckdb.Error as exc:
        nd, js, rows = _unreadable(nd, js, scratch)
        if not rows:  # JSON everywhere, yet DuckDB refused it: say what it said
            raise InputError(str(path), f"not valid FHIR JSON/NDJSON: {exc}") from exc
        if not nd and not js:  # nothing readable at all: bad input, not a quarantine
            raise InputError(str(path), "not valid FHIR JSON/NDJSON: " + "; ".join(str(r["reason"]) for r in rows[:3])
                             + (f" and {len(rows) - 3} more" if len(rows) > 3 else "")) from exc
        broken = conform_rows(rows, "quarantine")
        try:
            _create_res(con, nd, js, per_source)
        except duckdb.Error as exc2:
            raise InputError(str(path), f"not valid FHIR JSON/NDJSON: {exc2}") from exc2
    _refid_macro(con)
    return broken


def _create_res(con: duckdb.DuckDBPyConnection, nd: list[Path], js: list[Path], per_source: bool = False) -> None:
    # DuckDB refuses a JSON object over 16 MiB by default; a Bundle is one object as large as its file
    size = max([_DUCKDB_MAX_OBJECT, *(_inflated_size(p) + 1 for p in (*nd, *js))])
    parts = []
    if nd:
        parts.append(f"""SELECT json AS res, NULL::VARCHAR AS full_url, filename, NULL::VARCHAR AS bundle_source
            FROM read_ndjson_objects([{', '.join(sql_str(p) for p in nd)}], filename = true,
                                     maximum_object_size = {size})""")
    if js:
        parts.append(f"""SELECT CASE WHEN (json->>'resourceType') = 'Bundle' THEN e->'resource' ELSE json END AS res,
                   e->>'fullUrl' AS full_url, filename, json->>'$.meta.source' AS bundle_source
            FROM (SELECT json, filename, unnest(CASE WHEN (json->>'resourceType') = 'Bundle'
                         THEN coalesce(json_extract(json, '$.entry[*]'), []) ELSE [NULL::JSON] END) AS e
                  FROM read_json_objects([{', '.join(sql_str(p) for p in js)}], format = 'unstructured',
                                         filename = true, maximum_object_size = {size}))""")
    system = "coalesce((res->>'$.meta.source') || '|', bundle_source || '|', '') || " if per_source else ""
    if not parts:  # every file was set aside
        con.execute("CREATE TEMP TABLE res (rid BIGINT, rtype VARCHAR, id VARCHAR, res JSON, full_url VARCHAR, "
                    "src VARCHAR)")
        return
    con.execute(f"""CREATE TEMP TABLE res AS
            SELECT row_number() OVER () AS rid, res->>'resourceType' AS rtype,
                   coalesce(res->>'id', regexp_extract(full_url, '([^/:]+)$')) AS id, res, full_url,
                   coalesce({system}(res->>'resourceType') || '/' || (res->>'id') || '/_history/' || replace(coalesce(
                                res->>'$.meta.versionId', res->>'$.meta.lastUpdated',
                                'h' || left(md5(CAST(json(res) AS VARCHAR)), 16)), '/', '_'),
                            filename || '#' || row_number() OVER ())
                       AS src
            FROM ({' UNION ALL '.join(parts)}) WHERE res IS NOT NULL""")


def _refid_macro(con: duckdb.DuckDBPyConnection) -> None:
    # references: 'Patient/1', 'urn:uuid:..' (a Bundle fullUrl) or an absolute URL -> the target's id
    con.execute("CREATE TEMP TABLE urls AS SELECT full_url, id FROM res WHERE full_url IS NOT NULL")
    if con.execute("SELECT count(*) FROM urls").fetchall()[0][0]:
        con.execute("""CREATE TEMP MACRO refid(r) AS coalesce((SELECT any_value(u.id) FROM urls u WHERE u.full_url = r),
                                                        regexp_extract(r, '([^/:]+)$'))""")
    else:  # plain NDJSON: no fullUrls to resolve, skip the lookup
        con.execute("CREATE TEMP MACRO refid(r) AS regexp_extract(r, '([^/:]+)$')")


def _void(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Resources mgaki reads whose status says they did not happen: quarantined with the reason."""
    conds = " OR ".join(f"(rtype = '{t}' AND (res->>'status') IN ({', '.join(repr(s) for s in ss)}))"
                        for t, ss in _VOID.items())
    return conform(con.sql(f"""SELECT CASE WHEN rtype = 'Encounter' THEN 'encounters'
                                    WHEN rtype LIKE 'Medication%' THEN 'medications' ELSE 'events' END AS "table",
            refid(coalesce(res->>'$.subject.reference', res->>'$.patient.reference')) AS subject_id, src AS source,
            CAST(res AS VARCHAR) AS raw, rtype || ' status ''' || (res->>'status') || '''' AS reason
        FROM res WHERE {conds}""").to_arrow_table(), "quarantine")


# A resource's subject must be a Patient: a Group, Device or Location subject is not stored under the id at the
# end of its reference (``Group/x`` was stored as patient ``x``). The type comes from the reference
# (``Type/id``, an absolute URL, ``subject.type``) or from the Bundle entry a ``urn:`` reference names.
_SUBJECT = "coalesce(res->>'$.subject.reference', res->>'$.patient.reference')"
_NOT_PATIENT = (f"(coalesce(reftype({_SUBJECT}), 'Patient') <> 'Patient' "
                "OR coalesce(res->>'$.subject.type', 'Patient') <> 'Patient')")


def _reftype_macro(con: duckdb.DuckDBPyConnection) -> None:
    """``reftype(reference)``: the resource type a reference names, NULL when it cannot tell."""
    con.execute("CREATE TEMP TABLE url_types AS SELECT full_url, any_value(rtype) AS rtype FROM res "
                "WHERE full_url IS NOT NULL GROUP BY full_url")
    con.execute("""CREATE TEMP MACRO reftype(r) AS coalesce(
        (SELECT any_value(u.rtype) FROM url_types u WHERE u.full_url = r),
        nullif(regexp_extract(r, '([A-Za-z]+)/[^/]+(/_history/[^/]+)?$', 1), ''))""")


def _not_patient(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Resources (not void) whose subject is not a Patient: quarantined with the reference named."""
    return conform(con.sql(f"""SELECT CASE WHEN rtype = 'Encounter' THEN 'encounters'
                                    WHEN rtype LIKE 'Medication%' THEN 'medications'
                                    WHEN rtype = 'Flag' THEN 'contexts' ELSE 'events' END AS "table",
            NULL::VARCHAR AS subject_id, src AS source, CAST(res AS VARCHAR) AS raw,
            rtype || ' subject ''' || coalesce({_SUBJECT}, res->>'$.subject.type') || ''' is not a Patient '
                || '(a ' || coalesce(reftype({_SUBJECT}), res->>'$.subject.type') || '): not stored' AS reason
        FROM unvoided WHERE {_NOT_PATIENT}""").to_arrow_table(), "quarantine")


def read_fhir(path: str | Path, per_source: bool = False) -> dict[str, pa.Table]:
    """RAW tables (+ ``quarantine``) from NDJSON files, a Bulk export folder or Bundle JSON files.

    ``per_source``: record identities include the source system (``meta.source``; see ``_load``).
    """
    files = _files(Path(path))
    # a request of a few resources is planning-bound: a leased one-thread database, not a new one (~20 ms)
    with work_cursor(sum(_inflated_size(p) for p in (*files[0], *files[1])) // _BYTES_PER_RESOURCE) as con, \
            tempfile.TemporaryDirectory(prefix="mgaki-fhir-") as scratch:
        return _read(con, Path(path), files, Path(scratch), per_source)


_BYTES_PER_RESOURCE = 500  # about the smallest FHIR resource mgaki reads: an input's size over it bounds its rows


def _read(con: duckdb.DuckDBPyConnection, path: Path, files: tuple[list[Path], list[Path]], scratch: Path,
          per_source: bool) -> dict[str, pa.Table]:
    """``read_fhir`` on a cursor of its own (registrations, TEMP tables and macros only)."""
    register(con, {})
    con.register("kind_map", pa.table({
        "code": [e.code for e in load_map("fhir").by("encounter_kind").values()],
        "kind": [e.target for e in load_map("fhir").by("encounter_kind").values()]}))
    md = load().kidney.maintenance_dialysis
    con.register("dialysis_codes", pa.table({
        "system": [c.system for c in md.codes], "code": [c.code.replace(".", "").upper() for c in md.codes],
        "context": [md.context] * len(md.codes)}))
    broken = _load(con, path, files, scratch, per_source)
    _reftype_macro(con)
    void = {f"'{t}'": ss for t, ss in _VOID.items()}
    live = " AND ".join(f"NOT (rtype = {t} AND coalesce(res->>'status', '') IN ({', '.join(repr(s) for s in ss)}))"
                        for t, ss in void.items())
    con.execute(f"CREATE TEMP VIEW unvoided AS SELECT * FROM res WHERE {live}")
    con.execute(f"CREATE TEMP VIEW live AS SELECT * FROM unvoided WHERE NOT {_NOT_PATIENT}")
    # a query per kind of output, planned only when the input holds its resource types (a lab's POST of one
    # Observation plans three queries, not nine: planning is most of what a small request costs)
    present = {t for (t,) in con.execute("SELECT DISTINCT rtype FROM res").fetchall()}
    rels: dict[str, list[duckdb.DuckDBPyRelation]] = {name: [] for name in _OUTPUTS}
    if present & {"Observation", "Procedure"}:
        rels["events"].append(_events(con))
    if "Patient" in present:
        # Patient.deceasedDateTime is the death row (mgaki.events.schema); deceasedBoolean has no time
        rels["events"].append(con.sql(f"""SELECT id AS subject_id, NULL::VARCHAR AS encounter_id,
                   res->>'deceasedDateTime' AS time, '{DEATH_CODE}' AS code, '{DEATH}' AS analyte,
                   NULL::VARCHAR AS value, NULL::VARCHAR AS unit, src AS source
            FROM live WHERE rtype = 'Patient' AND (res->>'deceasedDateTime') IS NOT NULL"""))
        rels["subjects"].append(con.sql("""SELECT id AS subject_id, res->>'gender' AS sex,
                   res->>'birthDate' AS birth_date, src AS source
            FROM live WHERE rtype = 'Patient'"""))  # normalize checks the date
    if "Encounter" in present:
        rels["encounters"].append(_encounters(con))
    if present & {"MedicationAdministration", "MedicationRequest"}:
        rels["medications"].append(_medications(con))
    if present & {"Flag", "Condition"}:
        rels["contexts"].append(_contexts(con))
    tables = {name: conform(functools.reduce(lambda a, b: a.union(b), rs).to_arrow_table() if rs
                            else RAW[name].empty_table(), name) for name, rs in rels.items()}
    zoneless = _set_aside_zoneless(tables)
    tables["quarantine"] = pa.concat_tables([broken, *([_void(con)] if present & set(_VOID) else []),
                                             *([_not_patient(con)] if present else []), zoneless])
    return tables


_OUTPUTS = ("events", "subjects", "encounters", "medications", "contexts")


def _events(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyRelation:
    """Observations and Procedures whose coding codes.yaml maps (RRT sessions: Procedures only)."""
    con.execute("""CREATE TEMP TABLE coded AS
        SELECT rid, rtype, res, src, c->>'system' AS system, c->>'code' AS code
        FROM (SELECT *, unnest(coalesce(json_extract(res, '$.code.coding[*]'), [])) AS c
              FROM live WHERE rtype IN ('Observation', 'Procedure'))""")
    return con.sql("""
        SELECT refid(res->>'$.subject.reference') AS subject_id,
               refid(coalesce(res->>'$.encounter.reference', res->>'$.context.reference')) AS encounter_id,
               coalesce(res->>'effectiveDateTime', res->>'$.effectivePeriod.start', res->>'effectiveInstant',
                        res->>'performedDateTime', res->>'$.performedPeriod.start', res->>'issued') AS time,
               m.key AS code, m.analyte,
               CASE WHEN (res->'valueQuantity') IS NOT NULL
                    THEN coalesce(res->>'$.valueQuantity.comparator', '') || (res->>'$.valueQuantity.value')
                    ELSE coalesce(res->>'valueString', res->>'valueInteger') END AS value,
               coalesce(res->>'$.valueQuantity.code', res->>'$.valueQuantity.unit') AS unit, src AS source
        FROM coded k JOIN code_map m ON m.system = k.system AND m.code = k.code
          AND (k.rtype = 'Procedure') = (m.analyte = 'rrt')
        QUALIFY row_number() OVER (PARTITION BY rid ORDER BY m.preferred DESC, m.key) = 1""")


def _encounters(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyRelation:
    return con.sql(f"""
        SELECT refid(res->>'$.subject.reference') AS subject_id, id AS encounter_id,
               coalesce(list_filter(coalesce(json_extract(res, '$.type[*].coding[*]'), []),
                                    lambda c: (c->>'system') = '{KIND_SYSTEM}')[1]->>'code',
                        k.kind, 'inpatient') AS kind,
               res->>'$.period.start' AS start, res->>'$.period.end' AS "end",
               refid(res->>'$.partOf.reference') AS parent_id, src AS source
        FROM live LEFT JOIN kind_map k ON k.code = (live.res->>'$.class.code') WHERE rtype = 'Encounter'""")


def _medications(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyRelation:
    """Administrations and orders; a ``medicationReference`` resolved to the Medication resource's code."""
    return con.sql(f"""
        WITH m AS (
            SELECT l.*, coalesce(l.res->'medicationCodeableConcept', med.res->'code') AS concept
            FROM live l LEFT JOIN res med ON med.rtype = 'Medication'
                 AND med.id = refid(l.res->>'$.medicationReference.reference')
            WHERE l.rtype IN ('MedicationAdministration', 'MedicationRequest'))
        SELECT refid(res->>'$.subject.reference') AS subject_id,
               refid(coalesce(res->>'$.context.reference', res->>'$.encounter.reference')) AS encounter_id,
               coalesce(res->>'effectiveDateTime', res->>'$.effectivePeriod.start',
                        res->>'$.dosageInstruction[0].timing.repeat.boundsPeriod.start', res->>'authoredOn')
                   AS start,
               coalesce(res->>'$.effectivePeriod.end',
                        res->>'$.dosageInstruction[0].timing.repeat.boundsPeriod.end') AS "end",
               coalesce(concept->>'text', concept->>'$.coding[0].display') AS name,
               list_filter(coalesce(json_extract(concept, '$.coding[*]'), []),
                           lambda c: (c->>'system') = '{RXNORM}')[1]->>'code' AS rxcui,
               coalesce(res->>'$.dosage.route.text', res->>'$.dosage.route.coding[0].display',
                        res->>'$.dosageInstruction[0].route.text',
                        res->>'$.dosageInstruction[0].route.coding[0].display') AS route,
               coalesce(res->>'$.dosage.dose.value',
                        res->>'$.dosageInstruction[0].doseAndRate[0].doseQuantity.value') AS dose_value,
               coalesce(res->>'$.dosage.dose.unit', res->>'$.dosage.dose.code',
                        res->>'$.dosageInstruction[0].doseAndRate[0].doseQuantity.unit') AS dose_unit,
               src AS source FROM m""")


def _contexts(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyRelation:
    """Context flags (mgaki's context system), and maintenance dialysis from a Condition."""
    return con.sql(f"""
        SELECT refid(res->>'$.subject.reference') AS subject_id, refid(res->>'$.encounter.reference')
               AS encounter_id, res->>'$.period.start' AS time, c->>'code' AS context, src AS source
        FROM (SELECT *, unnest(coalesce(json_extract(res, '$.code.coding[*]'), [])) AS c
              FROM live WHERE rtype = 'Flag') WHERE (c->>'system') = '{CONTEXT_SYSTEM}'
        UNION ALL
        -- maintenance dialysis from an active, not refuted Condition (kidney.yaml codes; ICD without dots)
        SELECT DISTINCT refid(res->>'$.subject.reference'), refid(res->>'$.encounter.reference'),
               coalesce(res->>'onsetDateTime', res->>'$.onsetPeriod.start', res->>'recordedDate'), k.context, src
        FROM (SELECT *, unnest(coalesce(json_extract(res, '$.code.coding[*]'), [])) AS c
              FROM live WHERE rtype = 'Condition') x
        JOIN dialysis_codes k ON k.system = (x.c->>'system') AND k.code = upper(replace(x.c->>'code', '.', ''))
        WHERE coalesce(res->>'$.clinicalStatus.coding[0].code', 'active') NOT IN ('inactive', 'resolved',
                                                                                  'remission')
          AND coalesce(res->>'$.verificationStatus.coding[0].code', '') NOT IN ('refuted', 'entered-in-error')
        """)


# The one time rule of FHIR input, bedside and cohort alike (docs/adapters/fhir.md#times): FHIR R4 dateTime
# "If hours and minutes are specified, a time zone SHALL be populated"; mgaki also needs the time itself to
# order results, so a date alone is refused too. Never guessed as UTC or as the server's zone.
_ZONED = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$"
_TIMES = {"events": ("time",), "medications": ("start", "end"), "encounters": ("start", "end"),
          "contexts": ("time",)}


def _set_aside_zoneless(tables: dict[str, pa.Table]) -> pa.Table:
    """Move rows whose time is not a dateTime with its zone out of ``tables`` (in place) into quarantine rows,
    with the same words as the bedside reader (adapters.fhir)."""
    import json

    import pyarrow.compute as pc

    out = []
    for name, cols in _TIMES.items():
        t = tables[name]
        bad = pa.array([False] * t.num_rows, pa.bool_())
        why: list[str | None] = [None] * t.num_rows
        for col in cols:
            v = t.column(col)
            col_bad = pc.and_(pc.is_valid(v), pc.invert(pc.match_substring_regex(v, _ZONED)))
            flags = pc.fill_null(col_bad, False).to_pylist()
            for i in pc.indices_nonzero(col_bad).to_pylist():
                s = v[i].as_py()
                try:
                    datetime.fromisoformat(s)
                except ValueError:  # not a date at all: normalize says "unparseable time"
                    flags[i] = False
                    continue
                if why[i] is None:
                    why[i] = (f"{col} '{s}' has no timezone (FHIR R4 dateTime: a time SHALL carry its zone; "
                              "mgaki does not guess one)" if "T" in s else
                              f"{col} '{s}' is a date without a time; a time with a timezone is needed to order "
                              "results")
            bad = pc.or_(bad, pa.array(flags, pa.bool_()))
        if not pc.any(bad).as_py():
            continue
        rows = t.filter(bad)
        tables[name] = t.filter(pc.invert(bad))
        out.append(pa.table({
            "table": [name] * rows.num_rows, "subject_id": rows.column("subject_id"), "source": rows.column("source"),
            "raw": [json.dumps(r, default=str) for r in rows.to_pylist()],
            "reason": [w for w in why if w is not None]}))
    return conform(pa.concat_tables(out), "quarantine") if out else TABLES["quarantine"].empty_table()


def _ref(kind: str, col: str) -> str:
    return f"CASE WHEN {col} IS NOT NULL THEN json_object('reference', '{kind}/' || {col}) END"


def write_fhir(tables: Mapping[str, pa.Table | None], root: str | Path) -> None:
    """Canonical tables -> a Bulk-export-style folder of ``<ResourceType>.ndjson`` files."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, str] = {}
    for e in load_map("fhir").by("encounter_kind").values():
        kinds.setdefault(e.target, e.code)
    no_value = ", ".join(f"'{a}'" for a in sorted(NO_VALUE_ANALYTES))
    con = connect()
    try:
        register(con, canonical(tables))
        con.register("class_map", pa.table({"kind": list(kinds), "code": list(kinds.values())}))
        subj = _ref("Patient", "subject_id")
        queries = {
            "Patient": f"""SELECT json_object('resourceType', 'Patient', 'id', s.subject_id, 'gender', s.sex,
                'birthDate', CAST(s.birth_year AS VARCHAR), 'deceasedDateTime', {iso_utc('d.time')})
                FROM subjects s LEFT JOIN (SELECT subject_id, min(time) AS time FROM events
                                           WHERE analyte = '{DEATH}' GROUP BY subject_id) d USING (subject_id)""",
            "Encounter": f"""SELECT json_object('resourceType', 'Encounter', 'id', encounter_id,
                'status', CASE WHEN "end" IS NULL THEN 'in-progress' ELSE 'finished' END,
                'class', json_object('system', '{ACT_CODE}', 'code', coalesce(c.code, 'IMP')),
                'type', json_array(json_object('coding', json_array(json_object('system', '{KIND_SYSTEM}',
                                                                                'code', e.kind)))),
                'subject', {subj}, 'period', json_object('start', {iso_utc('start')}, 'end', {iso_utc('"end"')}),
                'partOf', {_ref('Encounter', 'parent_id')})
                FROM encounters e LEFT JOIN class_map c ON c.kind = e.kind""",
            "Observation": f"""
                WITH obs AS (SELECT subject_id, encounter_id, time, analyte, numeric_value, unit FROM events
                             WHERE analyte NOT IN ({no_value})
                             UNION ALL SELECT subject_id, NULL, time, 'weight', weight_kg, 'kg' FROM weights)
                SELECT json_object('resourceType', 'Observation',
                    'id', 'mgaki-obs-' || row_number() OVER (ORDER BY o.subject_id, o.time, o.analyte),
                    'status', 'final',
                    'code', json_object('coding', json_array(json_object('system', p.system, 'code', p.code,
                                                                         'display', p.display))),
                    'subject', {_ref('Patient', 'o.subject_id')}, 'encounter', {_ref('Encounter', 'o.encounter_id')},
                    'effectiveDateTime', {iso_utc('o.time')},
                    'valueQuantity', json_object('value', o.numeric_value, 'unit', o.unit, 'system', '{UCUM}',
                                                 'code', o.unit))
                FROM obs o JOIN code_map p ON p.analyte = o.analyte AND p.preferred""",
            "Procedure": f"""SELECT json_object('resourceType', 'Procedure',
                    'id', 'mgaki-proc-' || row_number() OVER (ORDER BY e.subject_id, e.time),
                    'status', 'completed',
                    'code', json_object('coding', json_array(json_object('system', c.system, 'code', c.code,
                                                                         'display', c.display))),
                    'subject', {_ref('Patient', 'e.subject_id')}, 'encounter', {_ref('Encounter', 'e.encounter_id')},
                    'performedDateTime', {iso_utc('e.time')})
                FROM events e JOIN code_map c ON c.analyte = e.analyte
                     AND c.key = (SELECT coalesce(max(k.key) FILTER (WHERE k.key = e.code),
                                                  max(k.key) FILTER (WHERE k.preferred))
                                  FROM code_map k WHERE k.analyte = e.analyte)
                WHERE e.analyte IN ({no_value}) AND e.analyte <> '{DEATH}'""",
            "MedicationAdministration": f"""SELECT json_object('resourceType', 'MedicationAdministration',
                    'id', 'mgaki-med-' || row_number() OVER (ORDER BY subject_id, start, name),
                    'status', 'completed',
                    'medicationCodeableConcept', json_object('text', name, 'coding',
                        CASE WHEN rxcui IS NOT NULL THEN json_array(json_object('system', '{RXNORM}',
                                                                                'code', rxcui)) END),
                    'subject', {subj}, 'context', {_ref('Encounter', 'encounter_id')},
                    'effectiveDateTime', CASE WHEN "end" IS NULL THEN {iso_utc('start')} END,
                    'effectivePeriod', CASE WHEN "end" IS NOT NULL
                        THEN json_object('start', {iso_utc('start')}, 'end', {iso_utc('"end"')}) END,
                    'dosage', json_object('route', json_object('text', route),
                                          'dose', json_object('value', dose_value, 'unit', dose_unit)))
                FROM medications""",
            "Flag": f"""SELECT json_object('resourceType', 'Flag',
                    'id', 'mgaki-ctx-' || row_number() OVER (ORDER BY subject_id, time, context),
                    'status', 'active',
                    'code', json_object('coding', json_array(json_object('system', '{CONTEXT_SYSTEM}',
                                                                         'code', context))),
                    'subject', {subj}, 'encounter', {_ref('Encounter', 'encounter_id')},
                    'period', json_object('start', {iso_utc('time')}))
                FROM contexts""",
        }
        for rtype, q in queries.items():
            # json_merge_patch onto {} drops the null members FHIR JSON may not contain
            lines = con.sql(f"SELECT CAST(json_merge_patch('{{}}', j) AS VARCHAR) FROM ({q}) t(j)") \
                .to_arrow_table().column(0).to_pylist()
            (root / f"{rtype}.ndjson").write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    finally:
        con.close()
