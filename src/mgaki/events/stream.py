"""Streaming ingest: a source read in chunks of bounded size, each normalised and appended in turn.

Peak memory is that of one chunk, not of the file. The store ends up with exactly the rows (and the
``IngestSummary`` reports exactly the counts) of one ``EventStore.append(normalize(whole source))``;
what makes that hold, and where each piece of the pipeline stands:

- **normalize is row-local.** Every canonical row comes from one raw row and the knowledge base:
  times, values, units (a factor per analyte/unit pair, from ``units.yaml``), drug names, doses and
  plausibility; nothing joins one raw row to another. No weight is looked up at ingest: urine output
  stays in mL, and a dose per kg (``mg/kg``) keeps its mmol unknown (``normalize._dose_map``).
  Encounter assignment, weights for urine output and every other cross-row step belong to
  surveillance, which reads the store. So chunk boundaries (an encounter read before or after its
  events, a weight in another chunk) change nothing.
- **Duplicates.** ``append`` keeps the rows not already stored (SQL EXCEPT: set semantics, so
  duplicates inside one batch collapse too). Chunk by chunk, a row equal to one of an earlier chunk
  finds it stored: the rows kept are the same set. Reader-generated sources (``events.csv:<line>``)
  are unique per row, so rows of chunks whose sources are all generated cannot equal each other:
  they are compared with the parts stored before the ingest began only (none on a fresh store), and
  the events of such a chunk are pairwise distinct (one canonical row per raw row). A chunk that
  carries sources of its own is compared with everything stored, like one append.
- **Record versions and identities** (sources ``<identity>/_history/<version>``): which version is
  current, which is stale and which identity two patients claim are decided over the whole append.
  Those rows are therefore held back from every chunk and appended together at the end, as one
  append, after the unversioned rows; no rule compares a versioned row with an unversioned one, so
  the result is that of one append. Bulk files (the CSV layout, MIMIC, OMOP, MEDS) carry none;
  formats made of versions (FHIR) are read whole (``registry.read_chunks``).
- **Summary.** Counts add up; quarantine reasons are merged by kind (``IngestSummary.merge``).

An ingest that fails part-way (a malformed line in the middle of a file) leaves the chunks before it
stored, as whole parts; running it again adds only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from mgaki.events.normalize import connect, normalize
from mgaki.events.schema import TABLES
from mgaki.events.store import HISTORY, EventStore, IngestSummary

__all__ = ["DEFAULT_CHUNK_ROWS", "RawChunk", "ingest_chunks"]

T = TypeVar("T")

DEFAULT_CHUNK_ROWS = 500_000  # raw rows per chunk: 1.15-1.25 GB peak RSS for CSV-layout events, 1.4-2.1 GB at
# 1,000,000 for 3 % more rows/s (benchmarks/ingest.py at 100 k patients, benchmarks/README.md)


@dataclass(frozen=True)
class RawChunk:
    """RAW tables (``schema.RAW``) read from one stretch of a source.

    ``generated_sources``: every row's ``source`` was made by the reader from its file and position
    (``events.csv:17``), so it is unique in this ingest; ``rows``: raw rows read (for progress).
    """

    tables: dict[str, pa.Table]
    generated_sources: bool = False
    rows: int = field(default=-1)

    @property
    def size(self) -> int:
        return self.rows if self.rows >= 0 else sum(t.num_rows for t in self.tables.values() if t is not None)


def _versioned(tab: pa.Table) -> pa.Array | None:
    """Mask of the rows whose source names a record version, or None when there are none."""
    if tab.num_rows == 0:
        return None
    mask = pc.fill_null(pc.match_substring(tab.column("source"), HISTORY), False)
    return mask if pc.any(mask).as_py() else None


def ingest_chunks(store: EventStore, chunks: Iterable[RawChunk],
                  progress: Callable[[int], None] | None = None) -> IngestSummary:
    """Normalise and append each chunk; the summary of the whole, as one append would give it.

    ``progress`` is called with the raw rows read so far after each chunk is stored.
    """
    before = {name: store.files(name) for name in TABLES}  # what an incoming row may equal, for generated sources
    summary = IngestSummary(received=dict.fromkeys(TABLES, 0), added=dict.fromkeys(TABLES, 0))
    held: dict[str, list[pa.Table]] = {}
    own_sources = False  # a chunk with sources of its own was stored: later rows may equal its rows
    done = 0
    db = connect()  # rows keep their order (a file sorted by patient is stored without a sort)
    db.execute("SET GLOBAL preserve_insertion_order = true")

    def normalized(raw: Iterable[RawChunk]) -> Iterator[tuple[RawChunk, dict[str, pa.Table]]]:
        for chunk in raw:
            yield chunk, normalize(chunk.tables, db=db)

    # three stages, each in its own thread, one chunk handed on at a time: read, normalise, store (here)
    stages = _ahead(normalized(_ahead(_nonempty(chunks), "read")), "normalize")
    try:
        for chunk, tables in stages:
            summary, own_sources = _one(store, chunk, tables, before, held, summary, own_sources)
            done += chunk.size
            if progress is not None:
                progress(done)
    finally:
        stages.close()  # stops and joins the stages' threads (on an error) before their database goes
        db.close()
    if held:
        summary = summary.merge(store.append({name: pa.concat_tables(parts).cast(TABLES[name])
                                              for name, parts in held.items()}))
    # tables in the order one append lists them (the CLI's table): those that received nothing first
    order = sorted(summary.received, key=lambda n: (summary.received[n] > 0, list(TABLES).index(n)))
    return dataclasses.replace(summary, received={n: summary.received[n] for n in order},
                               added={n: summary.added.get(n, 0) for n in order})


def _one(store: EventStore, chunk: RawChunk, tables: dict[str, pa.Table], before: dict[str, list[Path]],
         held: dict[str, list[pa.Table]], summary: IngestSummary, own_sources: bool) -> tuple[IngestSummary, bool]:
    """Append one normalised chunk (versioned rows to ``held``); the summary so far and ``own_sources``."""
    for name, tab in tables.items():
        mask = _versioned(tab)
        if mask is not None:
            held.setdefault(name, []).append(tab.filter(mask))
            tables[name] = tab.filter(pc.invert(mask))
    fast = chunk.generated_sources and not own_sources
    # events (and weights, and their quarantine rows) are one canonical row per raw row
    distinct = fast and set(chunk.tables) <= {"events"}
    summary = summary.merge(store.append(tables, against=before if fast else None, distinct=distinct,
                                         versioned=False))  # versioned rows are in ``held``
    return summary, own_sources or not chunk.generated_sources


def _ahead(items: Iterable[T], stage: str) -> Generator[T, None, None]:
    """The items, the next one made in a thread while the caller works on this one (one ahead at most).

    Reading (Arrow's CSV parser), normalising (DuckDB) and storing (Parquet) release the GIL: chained, the
    stages overlap on two cores. An error of the producer is raised here, in order, after the items made
    before it; when the consumer stops early the producer is stopped and closed (its own stages too).
    """
    box: queue.Queue[tuple[T | None, BaseException | None, bool]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def read() -> None:
        it = iter(items)
        try:
            for c in it:
                if stop.is_set():
                    return
                box.put((c, None, False))
            box.put((None, None, True))
        except BaseException as exc:
            box.put((None, exc, True))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=read, name=f"mgaki-ingest-{stage}", daemon=True)
    thread.start()
    try:
        while True:
            c, exc, end = box.get()
            if exc is not None:
                raise exc
            if end:
                return
            yield c  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting to put, then let it finish
            with contextlib.suppress(queue.Empty):
                box.get(timeout=0.05)
        thread.join()


def _nonempty(chunks: Iterable[RawChunk]) -> Iterator[RawChunk]:
    """The chunks, or one empty chunk when there are none (an empty source still gives a summary)."""
    any_ = False
    for c in chunks:
        any_ = True
        yield c
    if not any_:
        yield RawChunk({}, generated_sources=True, rows=0)
