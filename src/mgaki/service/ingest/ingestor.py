"""FHIR ingest into the event store, then incremental surveillance; new alerts into the database.

The posted resources take the cohort path (``adapters.fhir_bulk`` -> ``events.normalize``
-> ``EventStore.append``), so the service and ``mgaki ingest`` store exactly the same
rows; the store's append is idempotent and crash-safe. One lock serialises writers;
another serialises surveillance runs, which hold the writers' lock only while they list
the store (``surveil(snapshot_lock=...)``), so appends go on while a run computes.

A FHIR POST surveils before it answers (its response counts the new alerts). An HL7
message is acknowledged once stored, and surveillance follows in the background
(``Ingestor.surveil_soon``): messages arriving within ``delay_s`` are surveilled by one
run. The store's pending file names the subjects until a run has written their results,
so a crash in between loses no surveillance either: the next start runs it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from mgaki.adapters.fhir_bulk import read_fhir
from mgaki.errors import InputError
from mgaki.events import EventStore, normalize
from mgaki.events.locks import FileLock
from mgaki.events.schema import TABLES
from mgaki.events.store import IngestSummary
from mgaki.research.alert_eval import care_units
from mgaki.research.alert_trial import AlertPolicy, assign_mode
from mgaki.service.ingest.runs import RunOutcome, RunProcess
from mgaki.service.persistence.db import ALERT_KEY, alert_key_hash, alert_rejects, alerts, insert_alerts
from mgaki.service.persistence.ids import FHIR_ID_RE2, ID_MAX, find_nul
from mgaki.service.persistence.workflow import DbLedger
from mgaki.surveillance import SurveillanceResult, surveil
from mgaki.surveillance.pipeline import ResultTables, results_dir

__all__ = ["INCOMING", "IngestResult", "Ingestor", "check_bundle", "check_ndjson", "clear_incoming",
           "parse_json", "quarantine_bad_ids", "subjects_of"]

log = logging.getLogger("mgaki.service.ingest.ingestor")

_BUNDLE_TYPES = ("batch", "transaction", "collection")
INCOMING = "incoming"  # request bodies being read, under the data folder: patient data, never left behind
INCOMING_LOCK = "incoming.lock"  # held shared by every serving process, exclusively by clear_incoming
_ID_COLUMNS = ("subject_id", "encounter_id", "parent_id")
_HELD_BY_SUBJECT = 20_000  # sync_alerts: up to this many patients, their held alerts are read by patient
_ANY_ID_RE2 = rf"^[^\x00-\x1f\x7f]{{1,{ID_MAX}}}$"  # ids.id_problem, vectorised


@dataclass(frozen=True)
class IngestResult:
    received: dict[str, int]
    added: dict[str, int]
    quarantined: int
    quarantine_reasons: dict[str, int]
    subjects: list[str]
    new_alerts: int
    superseded: int = 0


def parse_json(payload: bytes, where: str = "body") -> Any:
    """A JSON document; ``InputError`` naming ``where`` if it is not JSON, not UTF-8 or nested too deeply."""
    try:
        return json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(where, f"not JSON: {exc}") from exc
    except RecursionError:  # the parser's recursion limit (about 1,000 levels): no FHIR resource is that deep
        raise InputError(where, "JSON nested too deeply (more than about 1,000 levels)") from None


def subjects_of(raw: Mapping[str, pa.Table | None]) -> set[str]:
    """Every patient a request's raw tables would write (quarantine rows too: they can remove a patient's data)."""
    out: set[str] = set()
    for table in raw.values():
        if table is not None and table.num_rows and "subject_id" in table.column_names:
            out.update(x for x in pc.unique(table["subject_id"]).to_pylist() if x)
    return out


def check_bundle(body: Any) -> None:
    """Refuse what is not a Bundle of resources, naming the problem."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise InputError("body", "expected a FHIR Bundle (resourceType 'Bundle')")
    if body.get("type") not in _BUNDLE_TYPES:
        raise InputError("Bundle.type", f"{body.get('type')!r} not accepted; use one of {', '.join(_BUNDLE_TYPES)}")
    entries = body.get("entry") or []
    if not isinstance(entries, list):
        raise InputError("Bundle.entry", "not a list")
    for i, e in enumerate(entries):
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            raise InputError(f"Bundle.entry[{i}]", "has no resource with a resourceType")
    _refuse_nul(body, "Bundle")


def check_ndjson(text: str) -> int:
    """Number of resources; refuses a line that is not a JSON object with a resourceType."""
    n = 0
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"line {i}", f"not JSON: {exc.msg}") from exc
        except RecursionError:
            raise InputError(f"line {i}", "JSON nested too deeply (more than about 1,000 levels)") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
            raise InputError(f"line {i}", "not a FHIR resource (no resourceType)")
        _refuse_nul(obj, f"line {i}")
        n += 1
    if n == 0:
        raise InputError("body", "no resources in the NDJSON body")
    return n


def _refuse_nul(obj: Any, where: str) -> None:
    """NUL (U+0000) has no place in FHIR (its strings exclude control characters) and no database stores it."""
    path = find_nul(obj, where)
    if path is not None:
        raise InputError(path, "contains a NUL character (U+0000)")


def quarantine_bad_ids(tables: dict[str, pa.Table], fhir: bool) -> dict[str, pa.Table]:
    """Move rows whose subject, encounter or parent id is not an id into ``quarantine``, with the reason.

    ``fhir``: the FHIR id grammar (``ids.FHIR_ID``); else 1-64 characters without control characters. An id the
    database cannot hold must not reach the store: every later alert copy of that patient would fail.
    """
    pattern = FHIR_ID_RE2 if fhir else _ANY_ID_RE2
    rule = "not a FHIR id ([A-Za-z0-9-.]{1,64})" if fhir else f"not an id (1-{ID_MAX} characters, no control ones)"
    out = dict(tables)
    moved: list[pa.Table] = []
    for name, tab in tables.items():
        if name == "quarantine" or tab.num_rows == 0:
            continue
        bad = None
        reason = None
        for col in _ID_COLUMNS:
            if col not in tab.column_names:
                continue
            ok = pc.match_substring_regex(tab.column(col), pattern)
            col_bad = pc.and_(pc.is_valid(tab.column(col)), pc.invert(pc.fill_null(ok, False)))
            why = pa.array([f"{col} is {rule}"] * tab.num_rows, pa.string())
            reason = why if reason is None else pc.if_else(bad, reason, why)
            bad = col_bad if bad is None else pc.or_(bad, col_bad)
        if bad is None or not pc.any(bad).as_py():
            continue
        gone = tab.filter(bad)
        out[name] = tab.filter(pc.invert(bad))
        raw = [json.dumps({c: (v[:200] if isinstance(v, str) else v) for c, v in r.items() if c in _ID_COLUMNS},
                          ensure_ascii=True) for r in gone.select([c for c in _ID_COLUMNS if c in gone.column_names])
               .to_pylist()]
        moved.append(pa.table({"table": pa.array([name] * gone.num_rows, pa.string()),
                               "subject_id": pa.nulls(gone.num_rows, pa.string()),
                               "source": gone.column("source") if "source" in gone.column_names
                               else pa.nulls(gone.num_rows, pa.string()),
                               "raw": pa.array(raw, pa.string()), "reason": reason.filter(bad) if reason is not None
                               else pa.nulls(gone.num_rows, pa.string())}, schema=TABLES["quarantine"]))
    if moved:
        out["quarantine"] = pa.concat_tables([out.get("quarantine", TABLES["quarantine"].empty_table())
                                              .cast(TABLES["quarantine"]), *moved])
    return out


def clear_incoming(data_dir: Path, wait_s: float = 60.0) -> int | None:
    """Remove the request bodies an earlier process left in ``incoming/`` (killed while reading them).

    They were never acknowledged (their senders send them again) and they hold patient data. Every serving
    process holds ``incoming.lock`` shared (``Ingestor``); this takes it exclusively, so it waits up to
    ``wait_s`` for the processes of a killed service to end (workers end with their supervisor) and never
    removes a live request. Returns the number of entries removed, or None when another process still serves
    this folder (nothing removed). ``mgaki serve`` calls it before it starts serving.
    """
    lock = FileLock(Path(data_dir) / INCOMING_LOCK)
    deadline = time.monotonic() + wait_s
    while not lock.acquire(blocking=False):
        if time.monotonic() >= deadline:
            log.warning("%s/ not cleared: another process serves this data folder", INCOMING)
            return None
        time.sleep(0.2)
    try:
        folder = Path(data_dir) / INCOMING
        n = 0
        for entry in folder.iterdir() if folder.is_dir() else ():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            n += 1
    finally:
        lock.release()
    if n:
        log.warning("removed %d unacknowledged request(s) left in %s/ by an earlier process", n, INCOMING)
    return n


class Ingestor:
    def __init__(self, data_dir: Path, engine: sa.Engine, run_surveillance: bool = True,
                 delay_s: float = 1.0, per_source: bool = False, policy: AlertPolicy | None = None,
                 run_process: bool = False) -> None:
        self.store = EventStore(data_dir / "events")
        self.policy = policy or AlertPolicy()  # each alert kind's mode, the rollout's allocation
        self.per_source = per_source  # record identities include the source system (docs/service.md#identity)
        self.engine = engine
        self.run_surveillance = run_surveillance
        self.delay_s = delay_s  # deferred surveillance: how long messages are gathered into one run
        self.last_run = ""  # the last surveillance run's size and where its time went (logs: no PHI)
        self._lock = FileLock(data_dir / "ingest.lock")  # writers, across worker processes (--workers)
        self._surveil_lock = FileLock(data_dir / "surveil.lock")  # one surveillance run at a time
        self._log_synced = False  # set once this process copied the whole alert log into the database
        self._tmp = data_dir / INCOMING
        # held while this process may write request files: clear_incoming (at the next start) waits for it
        self._serving = FileLock(data_dir / INCOMING_LOCK, shared=True)
        self._serving.acquire()
        # deferred runs: requests are numbered; a run started after request n covers it
        self._cond = threading.Condition()
        self._requested = self._done = 0
        self._oldest: float | None = None  # when the oldest request not yet covered by a run was made
        self._stop = threading.Event()
        self._runner: threading.Thread | None = None
        # deferred runs (an HL7 feed's) in a process of their own: no GIL shared with the feed (runs.py)
        self._runs = RunProcess(self.store.root, data_dir / "ingest.lock") \
            if run_process and run_surveillance else None

    def ingest(self, payload: bytes, suffix: str) -> IngestResult:
        """Store the resources of one request (``suffix`` '.json' Bundle or '.ndjson'), then surveil."""
        return self.ingest_raw(self.read(payload, suffix), fhir_ids=True)

    def read(self, payload: bytes, suffix: str) -> dict[str, pa.Table]:
        """Raw adapter tables of one request body; an error names the body, never the server's file."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self._tmp) as d:  # a folder of its own: no lock needed to read
            path = Path(d) / f"request{suffix}"
            path.write_bytes(payload)
            try:
                return read_fhir(path, self.per_source)
            except InputError as exc:
                raise InputError("body", exc.problem.replace(str(path), "(the request body)").replace(d, "(server)")
                                 ) from None

    def ingest_raw(self, raw: dict[str, pa.Table], surveil: bool = True, fhir_ids: bool = False) -> IngestResult:
        """Store raw adapter tables (schema.RAW, plus an adapter's own ``quarantine``), e.g. from HL7.

        ``surveil=False``: return once stored (durable) and leave surveillance to ``surveil_soon``.
        A request in which a record comes back naming another patient is refused whole
        (``IdentityConflictError``: HTTP 409, HL7 AE): nothing is stored.
        ``fhir_ids``: ids must follow the FHIR id grammar (else 1-64 characters, no control characters);
        rows with other ids are quarantined (``quarantine_bad_ids``).
        """
        summary = self.store_raw(raw, fhir_ids=fhir_ids)
        new_alerts = self._surveil() if surveil and self.run_surveillance else 0
        return IngestResult(received=summary.received, added=summary.added, quarantined=summary.quarantined,
                            quarantine_reasons=summary.quarantine_reasons,
                            subjects=sorted(summary.affected_subjects), new_alerts=new_alerts,
                            superseded=summary.superseded)

    def store_raw(self, raw: dict[str, pa.Table], conflicts: Literal["quarantine", "refuse"] = "refuse",
                  fhir_ids: bool = False, now: datetime | None = None) -> IngestSummary:
        """Normalize raw adapter tables and append them to the store (durable when it returns), no surveillance.

        ``now``: the clock a live feed's times are checked against (nothing dated ahead of it by more than
        units.yaml ``live_feed_future_tolerance_hours`` is stored); default the current time.
        """
        # pure (keeps the adapter's quarantine rows): outside the writers' lock
        tables = quarantine_bad_ids(normalize(raw, now=now or datetime.now(UTC)), fhir_ids)
        with self._lock:
            return self.store.append(tables, conflicts=conflicts)

    def _surveil(self, deferred: bool = False) -> int:
        """Run surveillance, then copy into the database every logged alert it does not hold yet.
        ``deferred`` (a feed's run): in the run process when there is one (``run_process``).

        The surveillance alert log is the source of truth: if the process died after the log
        was written and before the database insert, the next run copies what was missed.
        """
        with self._surveil_lock:
            t0 = time.perf_counter()
            res: SurveillanceResult | RunOutcome = self._runs.run() if deferred and self._runs is not None \
                else surveil(self.store, snapshot_lock=self._lock)
            t1 = time.perf_counter()
            try:
                # the log up to the last run is in the database: copy what is new; a process's first run: all, once
                n = self.sync_alerts(res.new_alerts if self._log_synced else
                                     ResultTables(results_dir(self.store))["alerts"])
            except Exception:
                self._log_synced = False  # the next run copies the whole log again
                raise
            self._log_synced = True
            sec = res.seconds
            self.last_run = (f"{res.subjects_recomputed} patient(s), {res.timer_alerts} timer alert(s): read "
                             f"{sec.get('plan', 0.0):.2f} s, stages "
                             f"{sec.get('stages', 0.0):.2f} s, results {sec.get('write_results', 0.0):.2f} s, "
                             f"other {t1 - t0 - sum(sec.get(k, 0.0) for k in ('plan', 'stages', 'write_results')):.2f}"
                             f" s, alerts to the database {time.perf_counter() - t1:.2f} s")
            return n

    # --- deferred surveillance (HL7) ---------------------------------------------------------

    def surveil_soon(self) -> None:
        """Ask for a surveillance run within ``delay_s`` (a background thread; requests meanwhile coalesce)."""
        if not self.run_surveillance:
            return
        with self._cond:
            self._requested += 1
            if self._oldest is None:
                self._oldest = time.monotonic()
            self._cond.notify_all()
            if self._runner is None or not self._runner.is_alive():
                self._stop.clear()
                self._runner = threading.Thread(target=self._run_deferred, name="mgaki-surveillance", daemon=True)
                self._runner.start()

    def catch_up(self) -> None:
        """At start-up: surveil soon if an earlier process stored data it did not surveil."""
        if self.run_surveillance and self.store.pending()[0]:
            self.surveil_soon()

    def wait_surveilled(self, timeout_s: float | None = None) -> bool:
        """Block until every requested deferred run has completed (tests, shutdown); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= self._requested, timeout_s)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Finish a requested deferred run now, then end the thread (the pending file covers a kill)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._runner is not None:
            self._runner.join(timeout_s)
        if self._runs is not None:
            self._runs.stop()
        if self._serving.held:
            self._serving.release()

    def _run_deferred(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._requested > self._done or self._stop.is_set())
                if self._requested <= self._done:
                    return  # stopped with nothing to do
            # gather what arrives within delay_s of the oldest waiting request (cut short at shutdown); requests
            # made while a run computed have waited that long already: the next run starts at once
            with self._cond:
                oldest = self._oldest if self._oldest is not None else time.monotonic()
            self._stop.wait(max(0.0, oldest + self.delay_s - time.monotonic()))
            with self._cond:
                target = self._requested
                self._oldest = None
            t0 = time.monotonic()
            try:
                n = self._surveil(deferred=True)
            except Exception as exc:  # the pending file keeps the subjects: the next run retries
                log.error("deferred surveillance failed %s", type(exc).__name__)
                if self._stop.wait(max(self.delay_s, 1.0)):
                    return
                continue
            log.info("deferred surveillance: %d new alert(s), run %.2f s (%s)", n, time.monotonic() - t0,
                     self.last_run)
            with self._cond:
                self._done = max(self._done, target)
                self._cond.notify_all()

    def sync_alerts(self, log: pa.Table) -> int:
        """Copy the alert log's rows the database holds neither as alerts nor as rejects (``insert_alerts``:
        one patient at a time, a row the database cannot hold set aside with its reason), each with its mode.
        Returns the number of new live alerts."""
        if log.num_rows == 0:
            return 0
        # the patients whose held alerts can match (an id no column can hold, e.g. with NUL, is held by none)
        subjects = sorted({s for s in log.column("subject_id").to_pylist() if s is not None and "\x00" not in s})
        with self.engine.begin() as con:  # a write transaction (BEGIN IMMEDIATE on SQLite): read, then insert
            q = sa.select(*(alerts.c[k] for k in ALERT_KEY))
            if len(subjects) <= _HELD_BY_SUBJECT:  # only these patients' alerts can match (the log of a few runs):
                # 500 at a time, so a large run (a busy feed) reads its patients' rows, not the whole table
                held = {tuple(r) for i in range(0, len(subjects), 500)
                        for r in con.execute(q.where(alerts.c.subject_id.in_(subjects[i:i + 500]))).all()}
            else:  # the whole log (a process's first copy): one read of the table
                held = {tuple(r) for r in con.execute(q).all()}
            rows = [r for r in log.select([*ALERT_KEY, "severity", "detail", "value"]).to_pylist()
                    if tuple(r[k] for k in ALERT_KEY) not in held]
            if rows:
                rejected = set(con.execute(sa.select(alert_rejects.c.key_hash)).scalars())
                rows = [r for r in rows if alert_key_hash(r) not in rejected]
            if not rows:
                return 0
            rows = self._modes(con, rows)
            # counted: the live alerts only (a silent or suppressed alert is never shown, nor counted to callers)
            insert_alerts(con, [r for r in rows if r["mode"] != "live"])
            return insert_alerts(con, [r for r in rows if r["mode"] == "live"])[0]

    def _modes(self, con: sa.Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each new alert's mode (off | silent | live) from the policy; a randomised kind's unit is allocated at
        its first eligible alert, in time order, and the alert names that allocation (docs/evaluation.md)."""
        rows = sorted(rows, key=lambda r: (r["time"], r["subject_id"], r["kind"]))
        units: dict[tuple[str, Any], str] = {}
        if self.policy.randomised():
            pairs = pa.table({"subject_id": pa.array([r["subject_id"] for r in rows], pa.string()),
                              "time": pa.array([r["time"] for r in rows], pa.timestamp("us"))})
            units = care_units(self.store, pairs)
        ledger = DbLedger(con, self.policy.allocation.policy_id())
        out = []
        for r in rows:
            unit = units.get((r["subject_id"], r["time"]), "ward")
            ledger.first = (r["kind"], r["time"])
            mode, alloc, _ = assign_mode(self.policy, ledger, r["subject_id"], r["kind"], unit)
            alloc_id = ledger.allocation_id(alloc.unit, alloc.unit_id) if alloc is not None else None
            out.append({**r, "mode": mode, "allocation_id": alloc_id})
        return out
