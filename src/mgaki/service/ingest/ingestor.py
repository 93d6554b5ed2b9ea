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
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from mgaki.adapters.fhir_bulk import read_fhir
from mgaki.errors import InputError
from mgaki.events import EventStore, normalize
from mgaki.service.persistence.db import alerts, utcnow
from mgaki.service.persistence.locks import FileLock
from mgaki.surveillance import surveil

__all__ = ["IngestResult", "Ingestor", "check_bundle", "check_ndjson"]

log = logging.getLogger("mgaki.service.ingest.ingestor")

_BUNDLE_TYPES = ("batch", "transaction", "collection")


@dataclass(frozen=True)
class IngestResult:
    received: dict[str, int]
    added: dict[str, int]
    quarantined: int
    quarantine_reasons: dict[str, int]
    subjects: list[str]
    new_alerts: int
    superseded: int = 0


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
        if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
            raise InputError(f"line {i}", "not a FHIR resource (no resourceType)")
        n += 1
    if n == 0:
        raise InputError("body", "no resources in the NDJSON body")
    return n


class Ingestor:
    def __init__(self, data_dir: Path, engine: sa.Engine, run_surveillance: bool = True,
                 delay_s: float = 1.0) -> None:
        self.store = EventStore(data_dir / "events")
        self.engine = engine
        self.run_surveillance = run_surveillance
        self.delay_s = delay_s  # deferred surveillance: how long messages are gathered into one run
        self._lock = FileLock(data_dir / "ingest.lock")  # writers, across worker processes (--workers)
        self._surveil_lock = FileLock(data_dir / "surveil.lock")  # one surveillance run at a time
        self._tmp = data_dir / "incoming"
        # deferred runs: requests are numbered; a run started after request n covers it
        self._cond = threading.Condition()
        self._requested = self._done = 0
        self._stop = threading.Event()
        self._runner: threading.Thread | None = None

    def ingest(self, payload: bytes, suffix: str) -> IngestResult:
        """Store the resources of one request (``suffix`` '.json' Bundle or '.ndjson'), then surveil."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self._tmp) as d:  # a folder of its own: no lock needed to read
            path = Path(d) / f"request{suffix}"
            path.write_bytes(payload)
            raw = read_fhir(path)
        return self.ingest_raw(raw)

    def ingest_raw(self, raw: dict[str, pa.Table], surveil: bool = True) -> IngestResult:
        """Store raw adapter tables (schema.RAW, plus an adapter's own ``quarantine``), e.g. from HL7.

        ``surveil=False``: return once stored (durable) and leave surveillance to ``surveil_soon``.
        """
        tables = normalize(raw)  # pure (keeps the adapter's quarantine rows): outside the writers' lock
        with self._lock:
            summary = self.store.append(tables)
        new_alerts = self._surveil() if surveil and self.run_surveillance else 0
        return IngestResult(received=summary.received, added=summary.added, quarantined=summary.quarantined,
                            quarantine_reasons=summary.quarantine_reasons,
                            subjects=sorted(summary.affected_subjects), new_alerts=new_alerts,
                            superseded=summary.superseded)

    def _surveil(self) -> int:
        """Run surveillance, then copy into the database every logged alert it does not hold yet.

        The surveillance alert log is the source of truth: if the process died after the log
        was written and before the database insert, the next run copies what was missed.
        """
        with self._surveil_lock:
            res = surveil(self.store, snapshot_lock=self._lock)
            return self.sync_alerts(res.tables["alerts"])

    # --- deferred surveillance (HL7) ---------------------------------------------------------

    def surveil_soon(self) -> None:
        """Ask for a surveillance run within ``delay_s`` (a background thread; requests meanwhile coalesce)."""
        if not self.run_surveillance:
            return
        with self._cond:
            self._requested += 1
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

    def _run_deferred(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._requested > self._done or self._stop.is_set())
                if self._requested <= self._done:
                    return  # stopped with nothing to do
            self._stop.wait(self.delay_s)  # gather what arrives meanwhile (cut short at shutdown)
            with self._cond:
                target = self._requested
            try:
                n = self._surveil()
            except Exception as exc:  # the pending file keeps the subjects: the next run retries
                log.error("deferred surveillance failed %s", type(exc).__name__)
                if self._stop.wait(max(self.delay_s, 1.0)):
                    return
                continue
            log.info("deferred surveillance: %d new alert(s)", n)
            with self._cond:
                self._done = max(self._done, target)
                self._cond.notify_all()

    def sync_alerts(self, log: pa.Table) -> int:
        if log.num_rows == 0:
            return 0
        key = ("subject_id", "encounter_id", "kind", "time")
        with self.engine.begin() as con:
            held = {tuple(r) for r in con.execute(sa.select(*(alerts.c[k] for k in key))).all()}
            rows = [r for r in log.select([*key, "severity", "detail", "value"]).to_pylist()
                    if tuple(r[k] for k in key) not in held]
            if rows:
                now = utcnow()
                con.execute(sa.insert(alerts), [{**r, "emitted_at": now} for r in rows])
        return len(rows)
