"""The documented CSV folder layout (docs/adapters/csv.md): one file per RAW table.

The columns are exactly those of ``mgaki.events.schema.RAW``, so a hospital
extract in this layout needs no mapping beyond its codes; everything is read as
text and parsed once, in ``mgaki.events.normalize``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mgaki.adapters._cohort import canonical, code_table, conform, gather, iso_utc, register, sql_str
from mgaki.errors import InputError
from mgaki.events.normalize import connect
from mgaki.events.schema import RAW
from mgaki.events.stream import DEFAULT_CHUNK_ROWS, RawChunk

__all__ = ["FILES", "REQUIRED", "iter_csv_layout", "read_csv_layout", "write_csv_layout"]

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
    """RAW tables from ``<root>/<table>.csv``; an events row without analyte gets it from its code.

    The chunks of ``iter_csv_layout`` put together: rows in file order, so a row without a source is
    named by its position (``events.csv:17``) the same way on every read (re-reading a file adds nothing).
    """
    parts: dict[str, list[pa.Table]] = {}
    for chunk in iter_csv_layout(root):
        for name, table in chunk.tables.items():
            parts.setdefault(name, []).append(table)
    return {name: pa.concat_tables(tables) for name, tables in parts.items()}


def _layout(con: duckdb.DuckDBPyConnection, root: Path) -> list[tuple[str, Path, list[str]]]:
    """(table, file, columns) of every layout file in ``root``, each checked for its required columns first."""
    if not root.is_dir():
        raise InputError(str(root), "not a folder")
    present = {name: root / f for name, f in FILES.items() if (root / f).is_file()}
    if not present:
        raise InputError(str(root), f"no CSV layout files ({', '.join(FILES.values())})")
    out = []
    for name, path in present.items():
        columns = con.sql(f"SELECT * FROM {_scan(path)} LIMIT 0").columns
        missing = [c for c in REQUIRED[name] if c not in columns]
        if name == "events" and not {"code", "analyte"} & set(columns):
            missing.append("code or analyte")
        if missing:
            raise InputError(str(path), f"missing column(s) {', '.join(missing)}")
        out.append((name, path, columns))
    return out


def _scan(path: Path) -> str:
    return f"read_csv({sql_str(path)}, header = true, all_varchar = true)"


def _chunk_sql(name: str, columns: list[str]) -> str:
    """SQL turning one chunk of a layout file other than events (view ``chunk``, its row numbers in ``_row``)
    into RAW rows: ``read_csv_layout``'s projection; a row without a source is ``<file>:<row>``."""
    cols = [c for c in RAW[name].names if c in columns]
    src = f"'{FILES[name]}:' || _row"
    src = f"coalesce(source, {src})" if "source" in cols else src
    sel = ", ".join(f'"{c}"' for c in cols if c != "source")
    if name == "subjects":
        sel = sel.replace('"birth_year"', 'TRY_CAST(birth_year AS INTEGER) AS birth_year')
    return f"SELECT {sel}, {src} AS source FROM chunk"


def _events_chunk(table: pa.Table, first: int) -> tuple[pa.Table, int]:
    """One chunk of events.csv as RAW events, in file order, and how many rows it kept.

    ``read_csv_layout``'s projection, vectorised in Arrow so that row order is kept: the analyte from
    the file, else from the code (``codes.yaml``); a row whose code mgaki does not use is not read (a row
    with no code at all is kept, for normalize to quarantine); rows without a source are numbered
    ``events.csv:<n>`` in order among the rows kept, from ``first``, as ``row_number()`` numbers them there.
    """
    given = table.column("analyte") if "analyte" in table.column_names else None
    if given is None or given.null_count:  # some rows name no analyte: from the code, else not read
        cm = code_table()
        code = table.column("code") if "code" in table.column_names else pa.nulls(table.num_rows, pa.string())
        analyte = cm.column("analyte").take(pc.index_in(code, value_set=cm.column("key")))
        if given is not None:
            analyte = pc.coalesce(given, analyte)
        keep = pc.or_(pc.is_valid(analyte), pc.equal(pc.coalesce(code, ""), ""))
        table = table.set_column(table.column_names.index("analyte"), "analyte", analyte) \
            if given is not None else table.append_column("analyte", analyte)
        if not pc.all(keep).as_py():
            table = table.filter(keep)
    n = table.num_rows
    numbered = pc.binary_join_element_wise(
        "events.csv:", pc.cast(pa.array(np.arange(first, first + n, dtype=np.int64)), pa.string()), "")
    own = table.column("source") if "source" in table.column_names else None
    source = pc.coalesce(own, numbered) if own is not None and own.null_count < n else numbered
    table = table.drop_columns(["source"]) if "source" in table.column_names else table
    return conform(table.append_column("source", source), "events"), n


def _reader(con: duckdb.DuckDBPyConnection, path: Path, columns: list[str], rows: int) -> pa.RecordBatchReader:
    """Batches of the file's rows, as text, in file order.

    A file in the documented dialect (comma, ``"`` quoting with ``""`` inside, a header: what DuckDB's
    sniffer finds) is read by Arrow's streaming CSV reader, about twice as fast, with DuckDB's reading
    of it: an empty field, quoted or not, is NULL, nothing is trimmed, a quoted field may span lines.
    Any other dialect is read by DuckDB's ``read_csv``, which sniffs it.
    """
    sniffed = con.sql(f"SELECT Delimiter, Quote, Escape, HasHeader FROM sniff_csv({sql_str(path)})").fetchall()
    wanted = [c for c in columns if c in _WANTED]
    plain = ('"', "", "(empty)")  # '"', or none seen in the sample
    if sniffed and sniffed[0][0] == "," and sniffed[0][1] in plain and sniffed[0][2] in plain and sniffed[0][3] \
            and len(set(columns)) == len(columns):
        try:
            return pacsv.open_csv(
                path, read_options=pacsv.ReadOptions(block_size=1 << 23),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(wanted, pa.string()),
                                                     include_columns=wanted, strings_can_be_null=True,
                                                     null_values=[""], quoted_strings_can_be_null=True))
        except (pa.ArrowInvalid, KeyError):  # a header Arrow reads otherwise than DuckDB: DuckDB reads it
            pass
    return con.sql(f"SELECT {', '.join(chr(34) + c + chr(34) for c in wanted)} FROM {_scan(path)}"
                   ).to_arrow_reader(rows)


def _checked(tables: Iterator[pa.Table], path: Path) -> Iterator[pa.Table]:
    """The tables; a line the CSV reader cannot read is an InputError naming the file (the chunks before
    it were handed on, and are stored by a streaming ingest)."""
    try:
        yield from tables
    except (pa.ArrowInvalid, duckdb.Error, OSError) as exc:  # DuckDB's reader raises through Arrow's stream
        raise InputError(str(path), f"cannot be read as CSV: {exc}") from None


_WANTED = frozenset(c for schema in RAW.values() for c in schema.names)


def iter_csv_layout(root: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[RawChunk]:
    """The CSV layout as chunks of at most ``chunk_rows`` rows of one file each, in file order.

    What ``read_csv_layout`` reads, row for row (``_reader``: Arrow's streaming reader or DuckDB's, which
    read the layout alike; one projection), with memory bounded by the chunk: every file is checked for
    its columns before the first chunk. A chunk whose ``source`` column is empty throughout has only
    generated sources (``events.csv:<n>``).
    """
    root = Path(root)
    con = connect()
    work = connect()
    try:
        layout = _layout(con, root)
        con.execute("SET preserve_insertion_order = true")  # chunks in file order: rows are numbered in order
        register(work, {})
        for name, path, columns in layout:
            sql = _chunk_sql(name, columns) if name != "events" else ""
            offset = 1
            for batch in _checked(gather(_reader(con, path, columns, min(chunk_rows, 1 << 17)), chunk_rows), path):
                n = batch.num_rows
                given = "source" in columns and batch.column("source").null_count < n
                if name == "events":
                    out, kept = _events_chunk(batch, offset)
                    offset += kept
                else:
                    rows = pa.array(np.arange(offset, offset + n, dtype=np.int64))
                    offset += n
                    work.register("chunk", batch.append_column("_row", rows))
                    out = conform(work.sql(sql).to_arrow_table(), name)
                    work.unregister("chunk")
                yield RawChunk({name: out}, generated_sources=not given, rows=n)
    finally:
        work.close()
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
