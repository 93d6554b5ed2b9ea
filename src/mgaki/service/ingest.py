"""FHIR ingest into the event store, then incremental surveillance; new alerts into the database.

The posted resources take the cohort path (``adapters.fhir_bulk`` -> ``events.normalize``
-> ``EventStore.append``), so the service and ``mgaki ingest`` store exactly the same
rows; the store's append is idempotent and crash-safe. One lock serialises writers.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from mgaki.adapters.fhir_bulk import read_fhir
from mgaki.errors import InputError
from mgaki.events import EventStore, normalize
from mgaki.service.db import alerts, utcnow
from mgaki.service.locks import FileLock
from mgaki.surveillance import surveil

__all__ = ["IngestResult", "Ingestor", "check_bundle", "check_ndjson"]

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
    def __init__(self, data_dir: Path, engine: sa.Engine, run_surveillance: bool = True) -> None:
        self.store = EventStore(data_dir / "events")
        self.engine = engine
        self.run_surveillance = run_surveillance
        self._lock = FileLock(data_dir / "ingest.lock")  # across worker processes (mgaki serve --workers)
        self._tmp = data_dir / "incoming"

    def ingest(self, payload: bytes, suffix: str) -> IngestResult:
        """Store the resources of one request (``suffix`` '.json' Bundle or '.ndjson')."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        with self._lock:
            with tempfile.TemporaryDirectory(dir=self._tmp) as d:
                path = Path(d) / f"request{suffix}"
                path.write_bytes(payload)
                raw = read_fhir(path)
            return self._store(raw)

    def ingest_raw(self, raw: dict[str, pa.Table]) -> IngestResult:
        """Store raw adapter tables (schema.RAW, plus an adapter's own ``quarantine``), e.g. from HL7."""
        with self._lock:
            return self._store(raw)

    def _store(self, raw: dict[str, pa.Table]) -> IngestResult:
        """normalize (which keeps the adapter's quarantine rows), append (durable on return), surveil."""
        summary = self.store.append(normalize(raw))
        new = self._surveil() if self.run_surveillance else 0
        return IngestResult(received=summary.received, added=summary.added, quarantined=summary.quarantined,
                            quarantine_reasons=summary.quarantine_reasons,
                            subjects=sorted(summary.affected_subjects), new_alerts=new,
                            superseded=summary.superseded)

    def _surveil(self) -> int:
        """Run surveillance, then copy into the database every logged alert it does not hold yet.

        The surveillance alert log is the source of truth: if the process died after the log
        was written and before the database insert, the next run copies what was missed.
        """
        res = surveil(self.store)
        return self.sync_alerts(res.tables["alerts"])

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
