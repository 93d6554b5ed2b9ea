"""The event store: a folder of Parquet files per canonical table, queried with DuckDB.

Appending is idempotent: rows already in the store (every column equal) are
not written again, so re-ingesting the same export changes nothing, and the
returned summary names the subjects whose data changed, which is what the
incremental surveillance recomputes.

Record identity and version: a row whose ``source`` reads ``<identity>/_history/<version>``
(FHIR's versioned reference, ``Observation/7/_history/2``; the HL7 adapter writes the same
form) belongs to one version of one record. The ``versions`` ledger lists every version
seen; only the rows of each identity's current version are visible, so re-sending a
version adds nothing and a new version (a corrected value, or a status such as
entered-in-error that leaves only a quarantine row) replaces the earlier rows instead of
adding a second value. Versions that compare as integers or as times are ordered by
value (a late-arriving older version is kept out); others by arrival. A ledger row names the
version's patient and the version it replaced, and each process keeps every ledger part's identity
hashes and non-current sources (``_ledger_index``): deciding versions and identities reads only the
parts that can hold the incoming identities (none for new records), a reader's hidden set is the
union of the parts' non-current sources, and a new version's rows are not compared with stored rows (none can have its
source while no append was interrupted). The ledger part is
the commit point of an append: an append lists its new versions in ``versions-intent``
before writing their rows, so rows written before a crash but not yet in the ledger stay
invisible, and re-running the append commits them without writing them twice. The views
filter out the (usually few) non-current sources only, so a store where nothing was ever
replaced reads at full speed.

Identity and patient: a record's identity belongs to one patient. A version whose rows name
another subject than the identity's current version (the same ``Observation/7`` posted for
another patient, an HL7 order number reused for another patient) would move that patient's
result to the other one, so it is never accepted: ``append`` sets it aside in ``quarantine``
with the reason naming the record and both patients (``conflicts="quarantine"``, batch
ingest) or refuses the whole append before writing anything (``conflicts="refuse"``, the
service: HTTP 409). Two patients naming one new identity in one append are refused the same
way. Identities can be kept per source system by the adapters (source + type + id), so equal
ids from two systems are two records (docs/service.md#identity).

Compaction: message-at-a-time ingest (HL7, small FHIR posts) writes one small part per
table per append, and every append and read lists and opens all parts. When a table (or
the ledger) holds ``COMPACT_AT`` parts under ``SMALL_PART_BYTES``, the append that made it
so merges them into one part. The switch is one rename: the merged part is written under a
temporary name, then a record naming it and the parts it replaces is committed
(``<table>/_compacted/<id>.json``), then the merged part is renamed into place. A reader
lists the parts, then reads the records, and leaves out the parts of every record whose
merged part it listed: before the rename it sees the old parts, after it the merged one,
never both or neither. Replaced parts are deleted ``GRACE_S`` later (a reader that listed
them earlier can still open them), and their record one grace period after that.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mgaki.errors import InputError
from mgaki.events.normalize import connect, cursor, work_cursor
from mgaki.events.schema import TABLES

__all__ = ["HISTORY", "EventStore", "IdentityConflict", "IdentityConflictError", "IngestSummary", "reason_kind",
           "versioned_source", "write_parquet_atomic"]

HISTORY = "/_history/"  # separates a record's identity from its version in ``source``
_VERSIONS = "versions"  # the ledger folder (not a canonical table)
log = logging.getLogger(__name__)
_INTENT = "versions-intent"  # versions an append is writing, until the ledger commits them
_SNAPSHOT_TRIES = 8  # listings a reader makes at most while appends commit versions under it (connect)
# subject_id: the patient the version's rows name; replaces: the source of the identity's version this one made
# non-current (None for a stale version or a first one). Both are None in parts written before they were kept
# (_OPTIONAL): those parts' patients are read from the rows and their replaced versions ranked by seq.
_LEDGER = pa.schema([("identity", pa.string()), ("version", pa.string()), ("source", pa.string()),
                     ("seq", pa.int64()), ("stale", pa.bool_()), ("subject_id", pa.string()),
                     ("replaces", pa.string())])
_OPTIONAL = ("subject_id", "replaces")
_BROUGHT = pa.schema([("tbl", pa.string()), ("source", pa.string()), ("subject_id", pa.string()),
                      ("identity", pa.string()), ("version", pa.string()), ("h", pa.uint64())])
_BROUGHT_IN = pa.schema([("subject_id", pa.string()), ("source", pa.string())])
# a versioned source split into identity and version (RE2, in DuckDB's SQL and in Arrow alike)
_HISTORY_RE = r"^(?P<identity>.+)/_history/(?P<version>[^/]+)$"
_HASH_LIST_MAX = 1024  # distinct identities hashed from a parameter list; more: from a registered table
_COMPACTED = "_compacted"  # per-table folder of compaction records
COMPACT_AT = 32  # small parts of one table that trigger a merge
SMALL_PART_BYTES = 1 << 20  # parts under this size are merged; bulk-ingest parts are left as written
GRACE_S = 3600.0  # replaced parts stay on disk this long for readers that listed them before the merge
# SQL: identity and version of a versioned source (NULL when the source carries no version)
_IDENTITY = f"regexp_extract({{c}}, '{_HISTORY_RE}', 1)"
_VERSION = f"regexp_extract({{c}}, '{_HISTORY_RE}', 2)"


def versioned_source(identity: str, version: str) -> str:
    """The ``source`` of a row of one version of a record: ``<identity>/_history/<version>``."""
    if not identity or not version or "/" in version:
        raise ValueError(f"cannot version {identity!r} with {version!r}")
    return f"{identity}{HISTORY}{version}"


@dataclass(frozen=True)
class IdentityConflict:
    """A record identity that came back naming another patient (``stored`` None: two patients in one append)."""

    identity: str
    stored: str | None
    incoming: str
    table: str = ""

    @property
    def problem(self) -> str:
        if self.stored is None:
            return f"named for patient '{self.incoming}' and another patient in one request"
        return f"belongs to patient '{self.stored}'; this version names patient '{self.incoming}'"

    @property
    def reason(self) -> str:
        return f"identity '{self.identity}' {self.problem}: refused, no data moves between patients"


@dataclass
class IngestSummary:
    received: dict[str, int] = field(default_factory=dict)  # canonical rows handed in
    added: dict[str, int] = field(default_factory=dict)  # rows new to the store
    quarantined: int = 0
    superseded: int = 0  # record versions replaced by a newer one in this append
    stale: int = 0  # record versions older than the stored one: kept out
    quarantine_reasons: dict[str, int] = field(default_factory=dict)  # rows by kind, keyed by one example
    affected_subjects: frozenset[str] = frozenset()
    identity_conflicts: tuple[IdentityConflict, ...] = ()  # versions set aside: they named another patient

    @property
    def duplicates(self) -> dict[str, int]:
        return {k: self.received[k] - self.added.get(k, 0) for k in self.received}

    def merge(self, other: IngestSummary) -> IngestSummary:
        """The summary of two appends made one after the other, as if they had been one append.

        Counts add up; quarantine reasons are merged by kind (``reason_kind``), each kind keeping its
        smallest example, as one append's ``_reason_kinds`` would; tables keep ``TABLES`` order.
        """
        kinds: dict[str, tuple[str, int]] = {}
        for reasons in (self.quarantine_reasons, other.quarantine_reasons):
            for reason, n in reasons.items():
                k = reason_kind(reason)
                seen = kinds.get(k)
                kinds[k] = (min(seen[0], reason), seen[1] + n) if seen else (reason, n)
        names = [*TABLES, *(n for n in (*self.received, *other.received) if n not in TABLES)]

        def add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {n: a.get(n, 0) + b.get(n, 0) for n in names if n in a or n in b}

        return IngestSummary(
            received=add(self.received, other.received), added=add(self.added, other.added),
            quarantined=self.quarantined + other.quarantined, superseded=self.superseded + other.superseded,
            stale=self.stale + other.stale, quarantine_reasons=dict(kinds.values()),
            affected_subjects=self.affected_subjects | other.affected_subjects,
            identity_conflicts=self.identity_conflicts + other.identity_conflicts)


class EventStore:
    """Parquet folder ``<root>/<table>/*.parquet`` for each table of ``schema.TABLES``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def files(self, table: str) -> list[Path]:
        """The live parts of ``table`` (or of the ledger): replaced ones left out (see Compaction)."""
        folder = self.root / table
        try:  # listed first, records read after (the order matters); names sorted as strings (cheap)
            names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".parquet"))
        except FileNotFoundError:
            return []
        if names and (folder / _COMPACTED).is_dir():
            listed = set(names)
            gone = {n for merged, replaces in _merges(folder / _COMPACTED) if merged in listed for n in replaces}
            names = [n for n in names if n not in gone]
        return [folder / n for n in names]

    def scan_sql(self, table: str, schema: pa.Schema | None = None) -> str:
        """A FROM-clause source for ``table``: its Parquet files, or an empty typed relation."""
        return self._parts_sql(self.files(table), table, schema)

    def _parts_sql(self, files: Sequence[Path], table: str, schema: pa.Schema | None = None) -> str:
        if files:
            listed = ", ".join(f"'{f.as_posix()}'" for f in files)
            return f"read_parquet([{listed}], union_by_name = true)"
        schema = schema or TABLES[table]
        cols = ", ".join(f'NULL::{_duck_type(f.type)} AS "{f.name}"' for f in schema)
        return f"(SELECT {cols} WHERE false)"

    def connect(self, tables: Iterable[str] = TABLES, shared: bool = False,
                database: duckdb.DuckDBPyConnection | None = None, prefix: str = "",
                few: Iterable[str] | None = None, few_prefix: str = "few_") -> duckdb.DuckDBPyConnection:
        """DuckDB connection with one view per stored table: current record versions only.

        ``shared``: a cursor on this process's open database (``normalize.cursor``) with TEMP views, its
        own; opening a database costs tens of milliseconds, a cursor nothing. Not for callers that
        change global settings (memory limit) or create persistent objects. ``database``: a cursor, with
        TEMP views, on that database instead (e.g. one of ``normalize.lease``). ``prefix``: of the views'
        names (``all_events``: the names themselves left for tables of a few subjects' rows).
        ``few``: subjects whose rows alone a caller will read; then also views ``<few_prefix><table>`` of the
        same snapshot over only the parts whose subject range may hold one of them (``parts_holding``): a
        read of a few subjects then opens those parts, not every part of the store. They hold every row of
        those subjects and rows of others: read them filtered by subject.
        """
        con = database.cursor() if database is not None else cursor() if shared else connect()
        shared = shared or database is not None
        temp = "TEMP " if shared else ""
        tables = list(tables)
        few_subjects = sorted(set(few)) if few is not None else None
        listing = self._listing()
        for _ in range(_SNAPSHOT_TRIES):
            # A snapshot: the hidden versions (intents, then ledger), then the parts. An append of another
            # process that committed meanwhile (intent, parts, ledger, intent removed) could show the parts of
            # its new versions without the ledger rows that hide what they replaced: both versions. Any such
            # append changes the intents or the ledger parts between the two listings: list again.
            where = " WHERE source IS NULL OR source NOT IN (SELECT source FROM _mgaki_hidden)" \
                if self._hidden(con, *listing) else ""
            for t in tables:
                files = self.files(t)
                con.execute(f'CREATE OR REPLACE {temp}VIEW "{prefix}{t}" AS '
                            f'SELECT * FROM {self._parts_sql(files, t)}{where}')
                if few_subjects is not None:
                    some = parts_holding(files, few_subjects)
                    con.execute(f'CREATE OR REPLACE {temp}VIEW "{few_prefix}{t}" AS '
                                f'SELECT * FROM {self._parts_sql(some, t)}{where}')
            again = self._listing()
            if again == listing:
                break
            listing = again
        else:
            log.warning("event store: appends kept committing while a reader listed its parts (%d tries); a "
                        "record corrected meanwhile may show two versions to this reader", _SNAPSHOT_TRIES)
        return con

    def _listing(self) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
        """The intents, then the live ledger parts (in that order: an append removes its intent only after its
        ledger part is written): what changes whenever an append commits record versions."""
        return tuple(sorted((self.root / _INTENT).glob("*.parquet"))), tuple(self.files(_VERSIONS))

    def _hidden(self, con: duckdb.DuckDBPyConnection, intents: Sequence[Path], files: Sequence[Path]) -> int:
        """Temp table ``_mgaki_hidden``: sources of versions that are not current; how many.

        Replaced and stale versions, and versions an interrupted append wrote but did not
        commit (listed in ``versions-intent`` and not in the ledger). Usually few, so the
        views' filter is cheap, and absent (no filter at all) when nothing was ever replaced.
        ``intents`` and ``files``: the store's ``_listing``.
        """
        if not files and not intents:
            return 0
        ledger = self._ledger_sql(files)
        hidden = [_ledger_index(con, f)[2] for f in files]
        if all(h is not None for h in hidden):  # each part's hidden sources, read once per process
            con.register("_mgaki_hidden_parts", pa.table({"source": pa.chunked_array(
                [h for h in hidden if h is not None], pa.string())}))
            parts = ["SELECT source FROM _mgaki_hidden_parts"]
        else:  # parts of an earlier release: versions replaced are those not last by seq
            parts = [f"SELECT source FROM {ledger} WHERE stale",
                     f"""SELECT source FROM (SELECT source FROM {ledger} WHERE NOT stale
                         QUALIFY row_number() OVER (PARTITION BY identity ORDER BY seq DESC) > 1)"""]
        pending = []
        for f in intents:  # an append in another process removes its intent once its ledger part is written
            with contextlib.suppress(FileNotFoundError):
                pending.append(pq.read_table(f, columns=["source"]))
        if pending:
            con.register("_mgaki_intents", pa.concat_tables(pending))
            parts.append(f"SELECT source FROM _mgaki_intents WHERE source NOT IN (SELECT source FROM {ledger})")
        con.execute(f"CREATE OR REPLACE TEMP TABLE _mgaki_hidden AS {' UNION ALL '.join(parts)}")
        for name in ("_mgaki_hidden_parts", "_mgaki_intents"):
            with contextlib.suppress(Exception):  # registered only on some paths
                con.unregister(name)
        return int(con.sql("SELECT count(*) FROM _mgaki_hidden").fetchall()[0][0])

    def visible_files(self, tables: Iterable[str], scratch: Path) -> dict[str, list[Path]]:
        """Parquet files holding exactly what ``connect`` shows, for engines that read files (Spark).

        The parts themselves while no record version was replaced; else a snapshot of the
        current versions written under ``scratch`` (the caller's temporary folder).
        """
        con = self.connect(tables)
        try:
            if not con.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = '_mgaki_hidden'").fetchall()[0][0] \
                    or not con.sql("SELECT count(*) FROM _mgaki_hidden").fetchall()[0][0]:
                return {t: self.files(t) for t in tables}
            out: dict[str, list[Path]] = {}
            for t in tables:
                path = scratch / f"{t}.parquet"
                pq.write_table(con.sql(f'SELECT * FROM "{t}"').to_arrow_table().cast(TABLES[t]), path)
                out[t] = [path]
            return out
        finally:
            con.close()

    def _ledger_sql(self, files: Sequence[Path] | None = None) -> str:
        """The ledger's rows (``files``: those parts only); ``_OPTIONAL`` columns NULL in parts written without."""
        files = self.files(_VERSIONS) if files is None else files
        if not files:
            return "(SELECT NULL::VARCHAR AS identity, NULL::VARCHAR AS version, NULL::VARCHAR AS source, " \
                   "NULL::BIGINT AS seq, NULL::BOOLEAN AS stale, NULL::VARCHAR AS subject_id, " \
                   "NULL::VARCHAR AS replaces WHERE false)"
        groups: dict[tuple[str, ...], list[str]] = {}  # the columns a part lacks -> the parts
        for f in files:
            lacks = tuple(c for c in _OPTIONAL if c not in _part_columns(f))
            groups.setdefault(lacks, []).append(repr(f.as_posix()))
        if list(groups) == [()]:
            return f"read_parquet([{', '.join(groups[()])}])"
        parts = [f"SELECT *{''.join(f', NULL::VARCHAR AS {c}' for c in lacks)} FROM read_parquet([{', '.join(fs)}])"
                 for lacks, fs in groups.items()]
        return f"({' UNION ALL BY NAME '.join(parts)})"

    def _current_sql(self, among: str | None = None, files: Sequence[Path] | None = None) -> str | None:
        """SQL: the source of each identity's current version (None: no versioned record stored); ``among``:
        a query of the identities wanted (the others are left out before the ledger is ranked); ``files``:
        the ledger parts to read (default all; ``_ledger_parts_holding`` names those that can hold them)."""
        files = self.files(_VERSIONS) if files is None else files
        if not files:
            return None
        only = f" AND identity IN ({among})" if among else ""
        return (f"SELECT identity, version, source, seq, subject_id FROM {self._ledger_sql(files)} "
                f"WHERE NOT stale{only} QUALIFY row_number() OVER (PARTITION BY identity ORDER BY seq DESC) = 1")

    def _ledger_parts_holding(self, con: duckdb.DuckDBPyConnection, hashes: np.ndarray,
                              ) -> tuple[list[Path], int]:
        """The ledger parts that may hold an identity of ``hashes`` (DuckDB ``hash(identity)``), and the
        ledger's largest ``seq`` (0 when empty).

        Each part's identity hashes and largest seq are read once per process (``_ledger_index``; parts are
        never rewritten), so an append of new records (a lab feed's: none is in the ledger) reads no ledger
        part at all, and one that names stored records reads the parts that hold them: its cost does not
        grow with the ledger, which grows with every versioned record ever stored. A hash shared by two
        identities only makes a part read for nothing."""
        files = self.files(_VERSIONS)
        hit, top = [], 0
        for f in files:
            idx, part_max, _ = _ledger_index(con, f)
            top = max(top, part_max)
            if hashes.size and idx.size:  # idx is sorted: a binary search per incoming identity
                at = np.minimum(np.searchsorted(idx, hashes), idx.size - 1)
                if (idx[at] == hashes).any():
                    hit.append(f)
        return hit, top

    def read(self, table: str) -> pa.Table:
        con = self.connect([table])
        try:
            return con.sql(f'SELECT * FROM "{table}"').to_arrow_table().cast(TABLES[table])
        finally:
            con.close()

    def append(self, tables: Mapping[str, pa.Table], conflicts: Literal["quarantine", "refuse"] = "quarantine",
               *, against: Mapping[str, Sequence[Path]] | None = None, distinct: bool = False,
               versioned: bool | None = None) -> IngestSummary:
        """Write the rows not already stored; report what was new and whose data changed.

        A version naming another patient than its identity's (module docstring) is set aside in
        ``quarantine`` with the reason, or, with ``conflicts="refuse"``, the whole append is refused
        (``IdentityConflictError``) before anything is written.

        Crash safety: the changed subjects are recorded before any data file, every
        file appears by an atomic, fsync'd rename, and the versions ledger is written
        last, so an interrupted append leaves either nothing or whole files whose versioned
        rows are not yet visible, and the next surveillance run still recomputes whoever
        may have changed. Re-running the same append after a crash writes only what is
        missing. When this returns, what it added is on disk.

        Streaming ingest (``mgaki.events.stream``) appends a file chunk by chunk and knows more than
        the store: ``against`` names, per table, the only parts an incoming row can equal (the parts
        that were stored before the ingest began, when no row written since can equal an incoming
        one), and ``distinct`` says the incoming rows of each table are pairwise distinct (each comes
        from its own source row). Both only skip comparisons that cannot find anything. ``versioned=False``:
        the caller has taken out every row whose source names a record version (default: looked up).
        """
        summary = IngestSummary()
        subjects: set[str] = set()
        fresh: dict[str, pa.Table] = {}
        with work_cursor(sum(t.num_rows for t in tables.values())) as con:  # registered and TEMP tables only
            incoming: dict[str, pa.Table] = {}
            for name, given in tables.items():
                if name not in TABLES:
                    raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
                if given.num_rows == 0:  # nothing to compare: the table's parts are not scanned
                    summary.received[name] = summary.added[name] = 0
                    continue
                incoming[name] = given.cast(TABLES[name])
            # rows naming a record version (source ".../_history/<v>"): identities and versions to check;
            # bulk files and a lab feed's results usually name none, and their append skips both checks
            if versioned is None:
                versioned = any(pc.any(pc.match_substring(t.column("source"), HISTORY)).as_py()
                                for t in incoming.values())
            brought = self._brought(con, incoming) if versioned else None
            found = self._identity_conflicts(con, incoming, brought) if versioned else []
            if found and conflicts == "refuse":
                raise IdentityConflictError(found)
            if found:
                incoming = _set_aside(con, incoming, found)
                summary.identity_conflicts = tuple(found)
                brought = self._brought(con, incoming)  # the set-aside rows no longer name their version
            ledger = self._versions(con, brought, summary, subjects) if brought is not None \
                else _LEDGER.empty_table()
            # a version new to the ledger has no stored row unless an interrupted append wrote it (its intent
            # file is left): with none left, accepted versioned rows are not compared with the store at all
            unseen = versioned and not any((self.root / _INTENT).glob("*.parquet"))
            for name, tab in incoming.items():
                summary.received[name] = tab.num_rows
                con.register("incoming", tab)
                plain = f"source IS NULL OR NOT contains(source, '{HISTORY}')"
                # versioned rows: only those of versions this append accepts (see _versions)
                keep = f"WHERE {plain} OR source IN (SELECT source FROM accepted)" if versioned else ""
                # only the incoming subjects' stored rows can be equal: DuckDB reads those row groups only
                # (parts are written sorted by subject), so an append costs what it brings, not the store's size
                parts = self.files(name) if against is None else list(against.get(name, ()))
                by_subject = name != "quarantine" or not given_null_subject(tab)
                if by_subject:  # parts whose subject range holds none of the incoming subjects are not opened
                    incoming_subjects = tab.column("subject_id").unique().drop_null().to_pylist()
                    parts = parts_holding(parts, incoming_subjects)
                stored = self._parts_sql(parts, name)
                if by_subject:
                    stored = f"(SELECT * FROM {stored} WHERE {subject_in(incoming_subjects, 'incoming')})"
                if not parts and distinct and not keep:  # nothing stored to compare with, no two rows alike
                    new = tab if _sorted_by_subject(tab) else tab.sort_by("subject_id")
                elif unseen and parts:
                    # the accepted versions' rows, distinct; the unversioned rows (if any) compared with the store
                    rest = (f" UNION ALL (SELECT * FROM incoming WHERE {plain} EXCEPT SELECT * FROM {stored})"
                            if _has_plain(tab) else "")
                    new = con.sql(f"SELECT * FROM (SELECT DISTINCT * FROM incoming WHERE source IN "
                                  f"(SELECT source FROM accepted){rest}) n ORDER BY subject_id").to_arrow_table()
                else:
                    new = con.sql(f"SELECT * FROM (SELECT * FROM incoming {keep} EXCEPT SELECT * FROM {stored}) n "
                                  "ORDER BY subject_id").to_arrow_table()
                new = new.cast(TABLES[name])
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
        summary.affected_subjects = frozenset(subjects)
        if subjects:
            # Recorded for the next incremental surveillance run; cleared only after it wrote results.
            _write_atomic(pa.table({"subject_id": pa.array(sorted(subjects), pa.string())}), self.root / "pending")
        intent = None
        accepted = ledger.filter(pc.invert(ledger.column("stale"))).select(["source"])
        if accepted.num_rows and fresh:
            # rows of these versions stay hidden until the ledger commits them (see _hidden)
            intent = _write_atomic(accepted, self.root / _INTENT)
        for name, new in fresh.items():
            _write_atomic(new, self.root / name)
        if ledger.num_rows:
            _write_atomic(ledger, self.root / _VERSIONS)  # the commit point for versioned rows
        if intent is not None:
            intent.unlink()
        for name in [*fresh, *([_VERSIONS] if ledger.num_rows else [])]:
            self.compact(name)
        return summary

    def compact(self, table: str, at: int = COMPACT_AT, now: float | None = None,
                schema: pa.Schema | None = None) -> Path | None:
        """Merge ``table``'s small parts once there are ``at`` of them; delete what a grace period freed.

        Callers hold the writers' lock (an append does). Returns the merged part, if one was made.
        ``schema``: of a folder that is not a canonical table (the surveillance alert log).
        """
        folder = self.root / table
        now = time.time() if now is None else now
        _collect(folder, now)
        small = [p for p in self.files(table) if p.stat().st_size < SMALL_PART_BYTES]
        if len(small) < at:
            return None
        schema = schema or (_LEDGER if table == _VERSIONS else TABLES[table])
        merged = pa.concat_tables([_conform_to(pq.read_table(p), schema) for p in small])
        if "subject_id" in merged.column_names:  # sorted, like every part: row groups prune by subject
            merged = merged.sort_by([("subject_id", "ascending")])
        cid = uuid.uuid4().hex
        final = folder / f"part-{cid}.parquet"
        tmp = folder / f".{final.name}.tmp"
        pq.write_table(merged, tmp, row_group_size=ROW_GROUP)
        _fsync(tmp)
        _Record(folder / _COMPACTED / f"{cid}.json", final.name, tuple(p.name for p in small), now).write()
        os.replace(tmp, final)  # the switch: readers listing from now on see the merged part only
        _fsync(folder)
        return final

    def identity_conflicts(self, tables: Mapping[str, pa.Table]) -> list[IdentityConflict]:
        """What ``append(tables, conflicts="refuse")`` would refuse, without writing (tables need only
        ``subject_id`` and ``source``): identities stored for another patient, or named for two in ``tables``."""
        with work_cursor(sum(t.num_rows for t in tables.values())) as con:
            return self._identity_conflicts(con, {n: t for n, t in tables.items() if t.num_rows})

    @staticmethod
    def _brought(con: duckdb.DuckDBPyConnection, incoming: Mapping[str, pa.Table]) -> pa.Table:
        """The record versions ``incoming`` names: one row per distinct (table, source, subject_id) whose source
        is a versioned reference, with its identity, version and DuckDB ``hash(identity)`` (the ledger index's
        key). Shared by the identity check and the version decision of an append.

        Computed in Arrow (the split by ``_HISTORY_RE``, the pattern of ``_IDENTITY``/``_VERSION``), with
        one DuckDB statement for the hashes of the distinct identities: a lab feed checks a group of a few
        messages 50 times a second, and the one statement doing all of it cost ~4 ms a call, this ~1 ms (two
        tables of 8 rows; ``tests/events/test_store_brought.py`` holds the statement it replaces and compares)."""
        pieces = []
        for n, t in incoming.items():
            src = t.column("source")
            versioned = pc.fill_null(pc.match_substring(src, HISTORY), False)
            if not pc.any(versioned).as_py():
                continue
            sel = t.select(["subject_id", "source"]).filter(versioned).cast(_BROUGHT_IN)
            pieces.append(sel.append_column("tbl", pa.repeat(pa.scalar(n, pa.string()), sel.num_rows)))
        if not pieces:
            return _BROUGHT.empty_table()
        u = pa.concat_tables(pieces).group_by(["tbl", "source", "subject_id"], use_threads=False).aggregate([])
        split = pc.extract_regex(u.column("source"), _HISTORY_RE)
        matched = pc.is_valid(split)
        u, split = u.filter(matched), split.filter(matched)
        if u.num_rows == 0:
            return _BROUGHT.empty_table()
        identity, version = pc.struct_field(split, "identity"), pc.struct_field(split, "version")
        ids = pc.unique(identity)
        if len(ids) <= _HASH_LIST_MAX:  # a parameter list: no table to register (about half the cost)
            hashed = pa.array(con.execute("SELECT list_transform($1::VARCHAR[], lambda x: hash(x))",
                                          [ids.to_pylist()]).fetchall()[0][0], pa.uint64())
        else:
            con.register("_brought_ids", pa.table({"i": ids, "o": pa.array(range(len(ids)), pa.int64())}))
            try:
                hashed = con.sql("SELECT hash(i) FROM _brought_ids ORDER BY o").to_arrow_table().column(0)
            finally:
                con.unregister("_brought_ids")
        h = pc.take(hashed, pc.index_in(identity, value_set=ids))
        return pa.table([u.column("tbl"), u.column("source"), u.column("subject_id"), identity, version, h],
                        schema=_BROUGHT)

    def _identity_conflicts(self, con: duckdb.DuckDBPyConnection, incoming: Mapping[str, pa.Table],
                            brought: pa.Table | None = None) -> list[IdentityConflict]:
        """Identities the append would move between patients: named by another subject than their current
        stored version's, or by two subjects at once (``brought``: ``_brought(con, incoming)``, if made).

        One statement finds each incoming identity's current stored version (new identities, the usual case
        of a lab feed, have none: no statement at all); only identities that have one are looked up in the
        tables."""
        if brought is None:
            brought = self._brought(con, incoming)
        named_by = brought.filter(pc.not_equal(pc.fill_null(brought.column("subject_id"), ""), ""))
        inc = named_by.group_by(["tbl", "identity", "subject_id"], use_threads=False).aggregate([("h", "max")])
        if inc.num_rows == 0:
            return []
        held_in, _ = self._ledger_parts_holding(con, inc.column("h_max").to_numpy())
        cur = self._current_sql("SELECT identity FROM inc_ids", held_in) if held_in else None
        if cur is None:  # no stored version of any of them (a lab feed's new results): no part is read
            rows = [(t, i, s, None, None) for t, i, s in zip(*(inc.column(c).to_pylist() for c in
                                                                 ("tbl", "identity", "subject_id")), strict=True)]
        else:
            con.register("inc_ids", inc)
            rows = con.sql(f"SELECT i.tbl, i.identity, i.subject_id, c.source, c.subject_id FROM inc_ids i "
                           f"LEFT JOIN ({cur}) c ON c.identity = i.identity").fetchall()
            con.unregister("inc_ids")
        stored: dict[str, set[str]] = {}  # identity -> the subjects its current version's rows name
        for r in rows:
            if r[3] is not None and r[4]:  # the ledger names the patient
                stored[r[1]] = {r[4]}
        # current versions from ledger parts written before the ledger named the patient: their rows say
        known = {r[1]: r[3] for r in rows if r[3] is not None and not r[4]}
        if known:
            con.register("known_ids", pa.table({"identity": pa.array(list(known), pa.string()),
                                                "source": pa.array(list(known.values()), pa.string())}))
            scans = [f"SELECT k.identity, x.subject_id FROM known_ids k JOIN {self.scan_sql(t)} x "
                     "ON x.source = k.source" for t in TABLES if self.files(t)]
            if scans:
                for identity, subject in con.sql(" UNION ".join(scans)).fetchall():
                    if subject:
                        stored.setdefault(identity, set()).add(subject)
            con.unregister("known_ids")
        tables: dict[tuple[str, str], str] = {}  # (identity, incoming subject) -> first table naming them
        for tbl, identity, subject, _, _ in rows:
            key = (identity, subject)
            tables[key] = min(tables.get(key, tbl), tbl)
        named: dict[str, set[str]] = {}
        for identity, subject in tables:
            named.setdefault(identity, set()).add(subject)
        out = []
        for (identity, subject), tbl in sorted(tables.items()):
            held = stored.get(identity)
            if held:  # stored for other patients only: this one would take it
                if subject not in held:
                    out.append(IdentityConflict(identity, min(held), subject, tbl))
            elif len(named[identity]) > 1:  # new, named for two patients at once
                out.append(IdentityConflict(identity, None, subject, tbl))
        return out

    def _versions(self, con: duckdb.DuckDBPyConnection, brought: pa.Table,
                  summary: IngestSummary, subjects: set[str]) -> pa.Table:
        """Decide the versions an append brings; table ``accepted`` and the new ledger rows.

        A version already in the ledger adds nothing. Of the new versions of one identity the
        newest wins (by integer or time value when both sides have one, else this append's);
        it is stale, and kept out, when the stored current version is newer by value.
        The subjects of the rows a winner replaces join ``subjects`` (their results change).
        ``brought``: ``_brought`` of the rows the append keeps.
        """
        by_source = _by_source(brought)
        # only the ledger parts that can hold these identities are read (their versions, their current one)
        held_in, top = self._ledger_parts_holding(con, by_source.column("h").to_numpy())
        if not held_in and pc.count_distinct(by_source.column("identity")).as_py() == by_source.num_rows:
            # new records, one version each (a lab feed's results, a POST of new resources): no stored version
            # to compare, none to rank; each is accepted, replacing nothing (the statement below would agree)
            decided = _accept_all(by_source, top)
        else:
            decided = self._decide(con, by_source, held_in, top)
        # a stale version replaces nothing: only the accepted ones name the version they make non-current
        decided = decided.set_column(decided.column_names.index("replaces"), "replaces", pc.if_else(
            decided.column("stale"), pa.scalar(None, pa.string()), decided.column("replaces")))
        fresh = decided.filter(pc.invert(decided.column("stale")))
        con.register("accepted", fresh.select(["source"]))
        pairs = {(r, s) for r, s in zip(fresh.column("replaces").to_pylist(),
                                        fresh.column("replaces_subject").to_pylist(), strict=True) if r is not None}
        summary.superseded = len({r for r, _ in pairs})
        summary.stale = decided.num_rows - fresh.num_rows
        subjects.update(s for _, s in pairs if s)  # the ledger names the replaced version's patient
        replaced = sorted({r for r, s in pairs if not s})  # parts written before it did: their rows say
        if replaced:
            con.register("replaced", pa.table({"source": pa.array(replaced, pa.string())}))
            for t in TABLES:
                if t == "quarantine" or not self.files(t):
                    continue
                rows = con.sql(f"SELECT DISTINCT subject_id FROM {self.scan_sql(t)} "
                               "WHERE source IN (SELECT source FROM replaced)").fetchall()
                subjects.update(r[0] for r in rows if r[0])
            con.unregister("replaced")
        return decided.select(_LEDGER.names).cast(_LEDGER)

    def _decide(self, con: duckdb.DuckDBPyConnection, by_source: pa.Table, held_in: list[Path],
                top: int) -> pa.Table:
        """``_versions``' decision in one statement: the new versions, each identity's current stored version,
        which is newer, the next seq."""
        con.register("brought", by_source)
        ledger_sql = self._ledger_sql(held_in)
        cur = (self._current_sql("SELECT identity FROM batch", held_in) if held_in else None) or \
            "SELECT NULL::VARCHAR AS identity, NULL::VARCHAR AS version, NULL::VARCHAR AS source, " \
            "NULL::BIGINT AS seq, NULL::VARCHAR AS subject_id WHERE false"
        # newer(a, b): a is newer than b by value; NULL when the two do not compare
        newer = """CASE WHEN TRY_CAST({a} AS BIGINT) IS NOT NULL AND TRY_CAST({b} AS BIGINT) IS NOT NULL
                        THEN TRY_CAST({a} AS BIGINT) > TRY_CAST({b} AS BIGINT)
                        WHEN TRY_CAST({a} AS TIMESTAMPTZ) IS NOT NULL AND TRY_CAST({b} AS TIMESTAMPTZ) IS NOT NULL
                        THEN TRY_CAST({a} AS TIMESTAMPTZ) > TRY_CAST({b} AS TIMESTAMPTZ) END"""
        decided = con.sql(f"""WITH batch AS (
                SELECT identity, version, source, subject_id FROM brought
                WHERE source NOT IN (SELECT source FROM {ledger_sql})),
            ranked AS (
                SELECT b.*, c.source AS replaces, c.version AS cur_version, c.subject_id AS replaces_subject,
                       row_number() OVER (PARTITION BY b.identity ORDER BY TRY_CAST(b.version AS BIGINT) DESC NULLS
                           LAST, TRY_CAST(b.version AS TIMESTAMPTZ) DESC NULLS LAST, b.version DESC) AS rk
                FROM batch b LEFT JOIN ({cur}) c ON c.identity = b.identity)
            SELECT identity, version, source, subject_id, replaces, replaces_subject,
                   rk > 1 OR coalesce(NOT ({newer.format(a='version', b='cur_version')}), false) AS stale,
                   CAST({int(top) + 1} AS BIGINT) AS seq
            FROM ranked""").to_arrow_table()
        con.unregister("brought")
        return decided

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


class IdentityConflictError(InputError):
    """An append refused whole: one or more record identities would move to another patient."""

    def __init__(self, conflicts: list[IdentityConflict]) -> None:
        self.conflicts = tuple(conflicts)
        first = conflicts[0]
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        super().__init__(first.identity, f"{first.problem}: refused, nothing was stored{more}")


def _set_aside(con: duckdb.DuckDBPyConnection, incoming: Mapping[str, pa.Table],
               found: list[IdentityConflict]) -> dict[str, pa.Table]:
    """``incoming`` without the refused rows; each refused row becomes a quarantine row with the reason.

    The quarantine row's source no longer reads as a version (``... version 2 (refused)``): a refused
    version must not enter the ledger, where it would replace the other patient's current version.
    """
    con.register("conflicts", pa.table({"identity": [c.identity for c in found],
                                        "subject_id": [c.incoming for c in found],
                                        "reason": [c.reason for c in found]}))
    ident = _IDENTITY.format(c="r.source")
    hit = (f"FROM inc r JOIN conflicts c ON c.identity = {ident} AND c.subject_id = r.subject_id "
           f"WHERE contains(r.source, '{HISTORY}')")
    refused = "regexp_replace(r.source, '/_history/([^/]+)$', ' version \\1 (refused)')"
    out: dict[str, pa.Table] = {}
    aside: list[pa.Table] = []
    for name, tab in incoming.items():
        con.register("inc", tab)
        if name == "quarantine":
            aside.append(con.sql(f"""SELECT r."table", r.subject_id, {refused} AS source, r.raw,
                                     c.reason || '; ' || r.reason AS reason {hit}""").to_arrow_table())
        else:
            aside.append(con.sql(f"""SELECT '{name}' AS "table", r.subject_id, {refused} AS source,
                                     CAST(to_json(r) AS VARCHAR) AS raw, c.reason {hit}""").to_arrow_table())
        out[name] = con.sql(f"SELECT r.* FROM inc r WHERE NOT EXISTS (SELECT 1 FROM conflicts c "
                            f"WHERE c.identity = {ident} AND c.subject_id = r.subject_id "
                            f"AND contains(r.source, '{HISTORY}'))").to_arrow_table().cast(TABLES[name])
        con.unregister("inc")
    con.unregister("conflicts")
    q = [t.cast(TABLES["quarantine"]) for t in aside if t.num_rows]
    if q:
        out["quarantine"] = pa.concat_tables([*([out["quarantine"]] if "quarantine" in out else []), *q])
    return out


def _conform_to(tab: pa.Table, schema: pa.Schema) -> pa.Table:
    """``tab`` cast to ``schema``; a column it lacks (a ledger part written before ``subject_id``) is null."""
    return pa.Table.from_arrays([tab.column(f.name).cast(f.type) if f.name in tab.column_names
                                 else pa.nulls(tab.num_rows, f.type) for f in schema], schema=schema)


_COLUMNS: dict[str, frozenset[str]] = {}  # ledger part -> its columns (parts are never rewritten)


def _part_columns(part: Path) -> frozenset[str]:
    key = part.as_posix()
    hit = _COLUMNS.get(key)
    if hit is None:
        if len(_COLUMNS) > 65536:
            _COLUMNS.clear()
        hit = _COLUMNS[key] = frozenset(pq.read_schema(part).names)
    return hit


_INDEX_PARTS = 4096  # ledger parts whose index a process keeps (LRU): far more than one store has at a time
_INDEX: OrderedDict[str, tuple[np.ndarray, int, pa.Array | None]] = OrderedDict()
_INDEX_LOCK = threading.Lock()


def _ledger_index(con: duckdb.DuckDBPyConnection, part: Path) -> tuple[np.ndarray, int, pa.Array | None]:
    """A ledger part's sorted DuckDB ``hash(identity)`` values, its largest seq and the sources its rows make
    non-current (stale versions, versions replaced; None for a part of an earlier release, which does not say
    what its versions replaced), read once per process (a part is never rewritten: compaction writes a new
    part under a new name)."""
    key = part.as_posix()
    with _INDEX_LOCK:
        hit = _INDEX.get(key)
        if hit is not None:
            _INDEX.move_to_end(key)
            return hit
    tab = con.sql(f"SELECT hash(identity) AS h, seq FROM read_parquet('{key}')").to_arrow_table()
    top = pc.max(tab.column("seq")).as_py()
    hidden = None
    if "replaces" in _part_columns(part):
        hidden = con.sql(f"SELECT source FROM read_parquet('{key}') WHERE stale UNION ALL SELECT replaces "
                         f"FROM read_parquet('{key}') WHERE replaces IS NOT NULL").to_arrow_table().column(0)
        hidden = hidden.combine_chunks()
    entry = (np.unique(tab.column("h").to_numpy()), int(top) if top is not None else 0, hidden)
    with _INDEX_LOCK:
        _INDEX[key] = entry
        while len(_INDEX) > _INDEX_PARTS:
            _INDEX.popitem(last=False)
    return entry


def _by_source(brought: pa.Table) -> pa.Table:
    """One row per version of ``EventStore._brought``; a version's rows name one patient (identity checks came
    first), quarantine rows may name none: its subject is the one named, if any."""
    named = pc.if_else(pc.equal(brought.column("subject_id"), ""), pa.scalar(None, pa.string()),
                       brought.column("subject_id"))
    return brought.set_column(brought.column_names.index("subject_id"), "subject_id", named).group_by(
        ["source", "identity", "version", "h"], use_threads=False).aggregate([("subject_id", "max")]) \
        .rename_columns({"subject_id_max": "subject_id"})


def _accept_all(by_source: pa.Table, top: int) -> pa.Table:
    """``_decide`` of versions none of whose identities the ledger holds, one version per identity: each is
    accepted, replaces nothing, and takes the next seq (tests/events/test_versions.py checks the two agree)."""
    n = by_source.num_rows
    return pa.table({"identity": by_source.column("identity"), "version": by_source.column("version"),
                     "source": by_source.column("source"), "subject_id": by_source.column("subject_id"),
                     "replaces": pa.nulls(n, pa.string()), "replaces_subject": pa.nulls(n, pa.string()),
                     "stale": pa.array([False] * n, pa.bool_()), "seq": pa.array([top + 1] * n, pa.int64())})


def _has_plain(tab: pa.Table) -> bool:
    """Whether some row of ``tab`` names no record version (its source is empty or has no ``/_history/``)."""
    src = tab.column("source")
    return bool(src.null_count) or not pc.all(pc.match_substring(src, HISTORY)).as_py()


def _sorted_by_subject(tab: pa.Table) -> bool:
    """Whether the rows are in subject order already (an extract sorted by patient): no sort needed."""
    ids = tab.column("subject_id")
    if tab.num_rows < 2 or ids.null_count:
        return bool(tab.num_rows < 2)
    return bool(pc.all(pc.less_equal(ids.slice(0, tab.num_rows - 1), ids.slice(1))).as_py())


# (part, size, mtime) -> its subject range (``_subject_range``)
_RANGES: OrderedDict[tuple[Path, int, int], tuple[str, str] | None] = OrderedDict()
_RANGES_MAX = 100_000
_RANGES_LOCK = threading.Lock()
_NO_SUBJECT = ("\U0010ffff", "")  # the range of a part without subjects: above every id, below every id


def _subject_range(path: Path) -> tuple[str, str] | None:
    """The lowest and highest subject_id of a part, from its row groups' statistics; None when a row group
    holding subjects has none (then the part may hold anyone). Read once per process and file version
    (parts are never rewritten in place: a new part has a new name; the size and time guard the rest)."""
    st_ = path.stat()
    key = (path, st_.st_size, st_.st_mtime_ns)
    with _RANGES_LOCK:
        if key in _RANGES:
            _RANGES.move_to_end(key)
            return _RANGES[key]
    found: tuple[str, str] | None = None
    md = pq.read_metadata(path)
    col = next((i for i in range(md.num_columns) if md.schema.column(i).path == "subject_id"), None)
    if col is not None:
        lo: str | None = None
        hi: str | None = None
        for g in range(md.num_row_groups):
            st = md.row_group(g).column(col).statistics
            if st is not None and st.has_null_count and st.null_count == md.row_group(g).num_rows:
                continue  # no subject in this row group: no subject's read needs it
            if st is None or not st.has_min_max or not isinstance(st.min, str) or not isinstance(st.max, str):
                lo = hi = None
                break
            lo = st.min if lo is None or st.min < lo else lo
            hi = st.max if hi is None or st.max > hi else hi
        else:
            found = (lo, hi) if lo is not None and hi is not None else _NO_SUBJECT
    with _RANGES_LOCK:
        _RANGES[key] = found
        if len(_RANGES) > _RANGES_MAX:
            _RANGES.popitem(last=False)
    return found


def parts_holding(parts: Sequence[Path], subjects: Sequence[str]) -> list[Path]:
    """The parts whose subject range (``_subject_range``) holds one of `subjects`, in order; a part without
    statistics is kept. With the store's parts each sorted by subject, a few subjects' rows are in a few
    parts of a bulk-loaded history: the rest need not be opened. (A part the listing named but a
    compaction has since removed is kept: the read reports it as any read of it would.)"""
    want = sorted(set(subjects))
    if not parts or not want:
        return []
    out = []
    for p in parts:
        try:
            r = _subject_range(p)
        except OSError:
            out.append(p)
            continue
        if r is None:
            out.append(p)
            continue
        i = bisect.bisect_left(want, r[0])
        if i < len(want) and want[i] <= r[1]:
            out.append(p)
    return out


def given_null_subject(tab: pa.Table) -> bool:
    """Whether some row of `tab` names no subject (a quarantine row may not)."""
    return bool(tab.column("subject_id").null_count > 0)


ROW_GROUP = 1 << 15  # rows per Parquet row group: a one-subject read decodes about this many rows. Parts are
# sorted by subject, so a row group holds a narrow range of them (about 130 ICU-shaped patients): reading 100
# random patients of a 100 k store (``subject_in``) decodes 100 such groups, 13 % of the rows, against every
# row group at 1 << 17 (benchmarks/README.md, "Row groups"); the parts are about 25 % larger on disk.

IN_LIST_MAX = 10_000  # subjects given to ``subject_in`` as a list of literals; more: a subquery


def subject_in(subjects: Sequence[str], relation: str) -> str:
    """SQL condition ``subject_id IN (...)`` selecting `subjects`, which table or view `relation` also lists
    (column ``subject_id``).

    Up to ``IN_LIST_MAX`` subjects are written as a list of literals: DuckDB compares it with each Parquet
    row group's subject statistics and skips the row groups that hold none of them, so a read of a few
    subjects costs their row groups, not the store's. A subquery on `relation` gives no such pruning (only
    the range from its least to its greatest subject); it is used for more subjects (a longer list costs more
    to parse than it skips) and for an id a literal cannot hold."""
    if len(subjects) > IN_LIST_MAX or any("\x00" in s for s in subjects):
        return f"subject_id IN (SELECT subject_id FROM {relation})"
    if not subjects:
        return "false"
    return "subject_id IN (" + ", ".join("'" + s.replace("'", "''") + "'" for s in subjects) + ")"


def write_parquet_atomic(tab: pa.Table, path: Path) -> Path:
    """Write `path` so that readers see the old file or the whole new one, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    # no dictionary for ``source`` (one value per row: building one and giving it up cost ~10 % of the write)
    pq.write_table(tab, tmp, row_group_size=ROW_GROUP,
                   use_dictionary=[c for c in tab.column_names if c != "source"])
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)  # the rename itself survives a power loss only once the folder is synced
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(tab: pa.Table, folder: Path) -> Path:
    """A new Parquet part in `folder`, visible only once complete (readers glob *.parquet)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_parquet_atomic(tab, folder / f"part-{uuid.uuid4().hex}.parquet")


@dataclass(frozen=True)
class _Record:
    """A compaction: ``merged`` (a part name) replaces ``replaces``; ``deleted_at`` once they are deleted."""

    path: Path
    merged: str
    replaces: tuple[str, ...]
    at: float
    deleted_at: float | None = None

    def write(self) -> None:
        body = {"merged": self.merged, "replaces": list(self.replaces), "at": self.at, "deleted_at": self.deleted_at}
        self.path.parent.mkdir(exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(body))
        _fsync(tmp)
        os.replace(tmp, self.path)
        _fsync(self.path.parent)


_MERGES: dict[str, tuple[str, frozenset[str]]] = {}  # record path -> (merged, replaced): fixed once written


def _merges(records: Path) -> list[tuple[str, frozenset[str]]]:
    """(merged part, the parts it replaces) of every compaction record in ``records``, each file read once.

    A record's merged and replaced names never change after it is written (only ``deleted_at`` is
    added), so they are cached by path; ``files`` runs several times per append.
    """
    out = []
    for e in os.scandir(records):
        if not e.name.endswith(".json"):
            continue
        hit = _MERGES.get(e.path)
        if hit is None:
            try:
                rec = json.loads(Path(e.path).read_text())
            except (OSError, ValueError):  # deleted meanwhile (records are written by atomic rename)
                continue
            hit = _MERGES[e.path] = (str(rec["merged"]), frozenset(rec["replaces"]))
        out.append(hit)
    return out


def _records(folder: Path) -> list[_Record]:
    out = []
    for f in sorted((folder / _COMPACTED).glob("*.json")):
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):  # deleted meanwhile (records are written by atomic rename)
            continue
        out.append(_Record(f, str(rec["merged"]), tuple(rec["replaces"]), float(rec["at"]),
                           None if rec.get("deleted_at") is None else float(rec["deleted_at"])))
    return out


def _collect(folder: Path, now: float) -> None:
    """Delete replaced parts a grace period after their merge, then the record a grace period later.

    A record whose merged part never appeared (a crash before the rename) goes with its
    temporary file; the parts it names were never replaced and stay.
    """
    if not (folder / _COMPACTED).is_dir():
        return
    for rec in _records(folder):
        merged = folder / rec.merged
        if not merged.exists():
            if now - rec.at > GRACE_S:
                (folder / f".{rec.merged}.tmp").unlink(missing_ok=True)
                rec.path.unlink(missing_ok=True)
                _MERGES.pop(str(rec.path), None)
        elif rec.deleted_at is None and now - rec.at > GRACE_S:
            for name in rec.replaces:
                (folder / name).unlink(missing_ok=True)
            _fsync(folder)
            _Record(rec.path, rec.merged, rec.replaces, rec.at, now).write()
        elif rec.deleted_at is not None and now - rec.deleted_at > GRACE_S:
            rec.path.unlink(missing_ok=True)
            _MERGES.pop(str(rec.path), None)


def reason_kind(reason: str) -> str:
    """The kind of a quarantine reason, as ``_reason_kinds`` groups them: the ``(known: ...)`` tail dropped,
    quoted text and numbers blanked (the same three regular expressions, in Python)."""
    kind = re.sub(r" [(]known: .*$", "", reason, count=1)
    kind = re.sub(r"'[^']*'", "'...'", kind)
    return re.sub(r"[0-9]+([.][0-9]+)?", "#", kind)


def _reason_kinds(con: duckdb.DuckDBPyConnection, quarantined: pa.Table) -> dict[str, int]:
    """Quarantine reasons counted by kind, each kind shown by one real reason of it, values and quoted text
    intact ("magnesium 45 mg/dL ... outside the possible range 0.2 to 20 mg/dL"): reasons that differ only
    in their values or quoted text are one kind."""
    con.register("q", quarantined)
    try:
        sql = ("SELECT min(reason), count(*) FROM q GROUP BY regexp_replace(regexp_replace(regexp_replace("
               "reason, ' [(]known: .*$', ''), '''[^'']*''', '''...''', 'g'), '[0-9]+([.][0-9]+)?', '#', 'g')")
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
