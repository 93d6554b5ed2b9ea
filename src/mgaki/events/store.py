"""The event store: a folder of Parquet files per canonical table, queried with DuckDB.

Appending is idempotent: rows already in the store (every column equal) are
not written again, so re-ingesting the same export changes nothing, and the
returned summary names the subjects whose data changed, which is what the
incremental surveillance recomputes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mgaki.events.normalize import connect
from mgaki.events.schema import TABLES

__all__ = ["EventStore", "IngestSummary", "write_parquet_atomic"]


@dataclass
class IngestSummary:
    received: dict[str, int] = field(default_factory=dict)  # canonical rows handed in
    added: dict[str, int] = field(default_factory=dict)  # rows new to the store
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)  # by kind of reason
    affected_subjects: frozenset[str] = frozenset()

    @property
    def duplicates(self) -> dict[str, int]:
        return {k: self.received[k] - self.added.get(k, 0) for k in self.received}


class EventStore:
    """Parquet folder ``<root>/<table>/*.parquet`` for each table of ``schema.TABLES``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def files(self, table: str) -> list[Path]:
        return sorted((self.root / table).glob("*.parquet"))

    def scan_sql(self, table: str, schema: pa.Schema | None = None) -> str:
        """A FROM-clause source for ``table``: its Parquet files, or an empty typed relation."""
        files = self.files(table)
        if files:
            listed = ", ".join(f"'{f.as_posix()}'" for f in files)
            return f"read_parquet([{listed}], union_by_name = true)"
        schema = schema or TABLES[table]
        cols = ", ".join(f'NULL::{_duck_type(f.type)} AS "{f.name}"' for f in schema)
        return f"(SELECT {cols} WHERE false)"

    def connect(self, tables: Iterable[str] = TABLES) -> duckdb.DuckDBPyConnection:
        """DuckDB connection with one view per stored table."""
        con = connect()
        for t in tables:
            con.execute(f'CREATE OR REPLACE VIEW "{t}" AS SELECT * FROM {self.scan_sql(t)}')
        return con

    def read(self, table: str) -> pa.Table:
        con = self.connect([table])
        try:
            return con.sql(f'SELECT * FROM "{table}"').to_arrow_table().cast(TABLES[table])
        finally:
            con.close()

    def append(self, tables: Mapping[str, pa.Table]) -> IngestSummary:
        """Write the rows not already stored; report what was new and whose data changed.

        Crash safety: the changed subjects are recorded before any data file, and every
        file appears by an atomic rename, so an interrupted append leaves either nothing
        or whole files, and the next surveillance run still recomputes whoever may
        have changed. Re-running the same append after a crash writes only what is missing.
        """
        summary = IngestSummary()
        subjects: set[str] = set()
        fresh: dict[str, pa.Table] = {}
        con = connect()
        try:
            for name, given in tables.items():
                if name not in TABLES:
                    raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
                tab = given.cast(TABLES[name])
                summary.received[name] = tab.num_rows
                con.register("incoming", tab)
                new = con.sql(f'SELECT * FROM incoming EXCEPT SELECT * FROM {self.scan_sql(name)}'
                              ).to_arrow_table().cast(TABLES[name])
                con.unregister("incoming")
                summary.added[name] = new.num_rows
                if new.num_rows == 0:
                    continue
                fresh[name] = new
                if name == "quarantine":
                    summary.quarantined += new.num_rows
                    summary.quarantine_reasons.update(_reason_kinds(con, new))
                else:
                    subjects.update(s for s in new.column("subject_id").unique().to_pylist() if s)
        finally:
            con.close()
        summary.affected_subjects = frozenset(subjects)
        if subjects:
            # Recorded for the next incremental surveillance run; cleared only after it wrote results.
            _write_atomic(pa.table({"subject_id": pa.array(sorted(subjects), pa.string())}), self.root / "pending")
        for name, new in fresh.items():
            _write_atomic(new, self.root / name)
        return summary

    def pending(self) -> tuple[frozenset[str], list[Path]]:
        """Subjects changed since the last surveillance run, and the files that say so."""
        files = sorted((self.root / "pending").glob("*.parquet"))
        subjects: set[str] = set()
        for f in files:
            subjects.update(pq.read_table(f).column("subject_id").to_pylist())
        return frozenset(subjects), files

    def clear_pending(self, files: Iterable[Path]) -> None:
        for f in files:
            f.unlink(missing_ok=True)

    def counts(self) -> dict[str, int]:
        con = self.connect()
        try:
            return {t: int(con.sql(f'SELECT count(*) FROM "{t}"').fetchall()[0][0])
                    for t in TABLES}
        finally:
            con.close()


def write_parquet_atomic(tab: pa.Table, path: Path) -> Path:
    """Write `path` so that readers see the old file or the whole new one, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(tab, tmp)
    os.replace(tmp, path)
    return path


def _write_atomic(tab: pa.Table, folder: Path) -> Path:
    """A new Parquet part in `folder`, visible only once complete (readers glob *.parquet)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_parquet_atomic(tab, folder / f"part-{uuid.uuid4().hex}.parquet")


def _reason_kinds(con: duckdb.DuckDBPyConnection, quarantined: pa.Table) -> dict[str, int]:
    """Quarantine reasons counted by kind: values and quoted text masked ("urine_output -# mL ...")."""
    con.register("q", quarantined)
    try:
        sql = ("SELECT regexp_replace(regexp_replace(regexp_replace(reason, ' [(]known: .*$', ''), "
               "'''[^'']*''', '''...''', 'g'), '[0-9]+([.][0-9]+)?', '#', 'g'), count(*) FROM q GROUP BY 1")
        return {str(r): int(n) for r, n in con.execute(sql).fetchall()}
    finally:
        con.unregister("q")


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_float64(t):
        return "DOUBLE"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    raise TypeError(f"no DuckDB type for {t}")
