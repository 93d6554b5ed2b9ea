"""Shared pieces of the cohort adapters: code tables from codes.yaml, canonical/raw helpers.

The LOINC/SNOMED/CPT -> analyte knowledge lives once, in ``knowledge/data/codes.yaml``;
every format reads and writes codes through the table built here, so a code
added there is understood by all adapters at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from mgaki.errors import InputError
from mgaki.events.normalize import connect
from mgaki.events.schema import DEATH, DEATH_CODE, RAW, TABLES
from mgaki.events.stream import RawChunk
from mgaki.knowledge import KnowledgeBase, load

__all__ = [
    "VOCABULARY",
    "canonical",
    "code_table",
    "conform",
    "conform_rows",
    "gather",
    "iso_utc",
    "quarantine_table",
    "register",
    "sql_str",
    "stream",
]

# FHIR system URI -> OMOP vocabulary_id, which MEDS also uses as the code prefix ("LOINC/2160-0").
# A naming convention of the standards, not clinical knowledge.
VOCABULARY: dict[str, str] = {
    "http://loinc.org": "LOINC",
    "http://snomed.info/sct": "SNOMED",
    "http://www.ama-assn.org/go/cpt": "CPT4",
    "urn:mgaki:code": "MGAKI",
}


@cache
def code_table(kb: KnowledgeBase | None = None) -> pa.Table:
    """Every mapped observation/procedure code: system, vocabulary, code, key (VOCAB/code), analyte.

    ``preferred`` marks, per analyte, the first code listed in codes.yaml: the one
    writers use when a row's own code is not a standard code mgaki knows. The last
    row is death: key ``MEDS_DEATH`` (MEDS's own code, no vocabulary prefix, no
    FHIR system: FHIR and OMOP carry death outside their observation tables).
    """
    kb = kb or load()
    rows: dict[str, list[object]] = {k: [] for k in ("system", "vocabulary", "code", "key", "analyte",
                                                      "display", "preferred")}
    seen: set[str] = set()
    for entry in (*kb.codes.observations, *kb.codes.rrt_procedures):
        vocab = VOCABULARY.get(entry.system)
        if vocab is None:
            raise InputError("codes.yaml", f"no vocabulary prefix for system {entry.system!r}")
        for k, v in zip(rows, (entry.system, vocab, entry.code, f"{vocab}/{entry.code}", entry.analyte,
                               entry.display, entry.analyte not in seen), strict=True):
            rows[k].append(v)
        seen.add(entry.analyte)
    for k, v in zip(rows, (None, "MEDS", DEATH_CODE, DEATH_CODE, DEATH, "Death", True), strict=True):
        rows[k].append(v)
    return pa.table(rows, schema=pa.schema([
        ("system", pa.string()), ("vocabulary", pa.string()), ("code", pa.string()), ("key", pa.string()),
        ("analyte", pa.string()), ("display", pa.string()), ("preferred", pa.bool_()),
    ]))


def canonical(tables: Mapping[str, pa.Table | None]) -> dict[str, pa.Table]:
    """The canonical tables a writer needs, missing ones empty, each cast to schema.TABLES."""
    out = {}
    for name, schema in TABLES.items():
        t = tables.get(name)
        out[name] = schema.empty_table() if t is None else t.select(schema.names).cast(schema)
    return out


def conform(table: pa.Table, name: str) -> pa.Table:
    """A reader's relation as the RAW table ``name`` (missing columns null, text columns text)."""
    schema = RAW[name] if name != "quarantine" else TABLES["quarantine"]
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def conform_rows(rows: list[dict[str, Any]], name: str) -> pa.Table:
    """``conform`` of Python rows (a parser's, e.g. one HL7 message's): built in the RAW schema at once, without
    a table of inferred types and a cast per column (four small tables per HL7 message: most of what building
    them cost). Every row's keys count (``from_pylist`` without a schema keeps the first row's only). A value the
    schema's type does not take as is (not text for a text column) goes through ``conform``'s casts, as before."""
    schema = RAW[name] if name != "quarantine" else TABLES["quarantine"]
    if not rows:
        return schema.empty_table()
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return conform(pa.Table.from_pylist(rows), name)


def quarantine_table(rel: duckdb.DuckDBPyRelation | None) -> pa.Table:
    """RAW-level quarantine rows (table, subject_id, source, raw, reason) from a relation."""
    if rel is None:
        return TABLES["quarantine"].empty_table()
    return conform(rel.to_arrow_table(), "quarantine")


def register(con: duckdb.DuckDBPyConnection, tables: Mapping[str, pa.Table], prefix: str = "") -> None:
    """Register each canonical table as a DuckDB view named ``<prefix><table>``."""
    for name, t in tables.items():
        con.register(f"{prefix}{name}", t)
    con.register("code_map", code_table())


def gather(reader: pa.RecordBatchReader, rows: int) -> Iterator[pa.Table]:
    """The reader's batches as tables of exactly ``rows`` rows (the last one fewer), in order."""
    batches: list[pa.RecordBatch] = []
    n = 0
    for batch in reader:
        if not batch.num_rows:
            continue
        batches.append(batch)
        n += batch.num_rows
        while n >= rows:
            table = pa.Table.from_batches(batches)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            batches, n = rest.to_batches(), rest.num_rows
    if n:
        yield pa.Table.from_batches(batches)


def stream(rel: duckdb.DuckDBPyRelation, name: str, rows: int) -> Iterator[pa.Table]:
    """A reader's relation as RAW tables ``name`` (``conform``) of ``rows`` rows each (the last fewer): DuckDB
    runs the query as the chunks are taken, so only one chunk of its result is held at a time."""
    for table in gather(rel.to_arrow_reader(min(rows, 1 << 17)), rows):
        yield conform(table, name)


def iso_utc(col: str) -> str:
    """SQL: naive UTC timestamp -> ISO 8601 text with an explicit Z (FHIR needs a zone)."""
    return f"strftime({col}, '%Y-%m-%dT%H:%M:%SZ')"


def sql_str(path: Path) -> str:
    """A path as a single-quoted SQL string literal."""
    return "'" + path.as_posix().replace("'", "''") + "'"


def iter_relations(relations: Callable[[duckdb.DuckDBPyConnection, Path], Mapping[str, duckdb.DuckDBPyRelation]],
                   root: str | Path, chunk_rows: int) -> Iterator[RawChunk]:
    """The RAW tables `relations` builds on a fresh connection, as chunks of at most `chunk_rows` rows of
    one table each (streaming ingest): DuckDB runs each table's query as its chunks are taken."""
    con = connect()
    try:
        for name, rel in relations(con, Path(root)).items():
            for table in stream(rel, name, chunk_rows):
                yield RawChunk({name: table}, rows=table.num_rows)
    finally:
        con.close()
