"""An HL7 lab feed at hospital rates: ACK once journaled, stored in batches behind the journal, surveilled after.

Storing one message costs a normalize and an event-store append (tens of milliseconds each, whatever the
message's size), so a feed acknowledged message by message after its append keeps up with a few dozen
messages a second. Here a message goes through three stages, each amortised over all that is waiting:

1. **check** (the connection's thread): parse and validate the ORU^R01 (``parse_oru``); what cannot be used
   is answered AE/AR at once, as before, and never journaled; a sender limited to some patients
   (``mllp_client_cn``) is refused (AR) for any other one.
2. **commit** (one thread, group commit): every message waiting is checked for record identities that
   would move between patients (``EventStore.identity_conflicts``, one query for the group, plus the
   identities of messages journaled and not yet stored): such a message is answered AE 205 and not
   journaled, as when the store refused it. The others are written to the journal (``journal.Journal``)
   with one fsync for the group, then each is acknowledged AA (with a warning per result the adapter
   set aside, e.g. a preliminary status).
3. **apply** (one thread): all journaled messages not yet stored are normalized together and stored by
   one ``EventStore.append`` (split where a record comes back in another version, so a correction is
   applied after what it corrects, in arrival order), audited (one row per message and patient, the
   actor the connection proves), the journal's checkpoint advanced, and incremental surveillance
   requested (``Ingestor.surveil_soon``), which raises the alerts.

What a journal-acknowledged AA does not cover, and where it shows instead: a result that ``normalize``
sets aside (a unit it cannot convert, a time in the future, an implausible value) is stored in
``quarantine`` with its reason, but its warning is no longer in the ACK; and an identity conflict with
a record written after the check by another process (a FHIR POST naming the same record, another
worker's feed) is set aside in ``quarantine`` with the reason naming the record and both patients
(never moved between patients), logged as a count and audited with the message. ``mllp_ack_after:
store`` keeps the old path (ACK after each message's own append) for feeds that need those in the ACK.

A crash between the AA and the store loses nothing: the next process replays the journal before it
serves (``Hl7Feed.start``, ``replay_journals``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import sqlalchemy as sa

from mgaki.events.store import HISTORY, IdentityConflict, IdentityConflictError
from mgaki.service.ingest.hl7 import AckError, Hl7Error, ack, msh_fields, parse_oru
from mgaki.service.ingest.ingestor import Ingestor, subjects_of
from mgaki.service.ingest.journal import JOURNAL, Entry, Journal, orphans
from mgaki.service.persistence.db import append_audit, audit_row, write_audit

if TYPE_CHECKING:
    from mgaki.service.config import ServiceConfig

__all__ = ["Hl7Feed", "conflict_ack", "outside_sender", "replay_journals", "warnings_of"]

log = logging.getLogger("mgaki.service.ingest.feed")
MAX_GROUP = 500  # messages checked and journaled by one fsync, at most
MAX_BATCH = 2000  # journaled messages stored by one append, at most
# Each check and each append costs a fixed part (a few DuckDB statements) whatever its size: under a steady feed
# the commit thread gathers messages for up to COMMIT_GATHER_S (the ACK waits that much longer at most) and the
# apply thread for up to APPLY_GATHER_S (surveillance, which gathers for hl7_surveillance_delay_s, runs after it),
# unless MAX_GROUP / APPLY_ENOUGH messages are waiting: fewer, larger groups leave the cores to surveillance.
# At 200 messages/s an apply gathering 0.4 s instead of 0.2 took the server's ingest from 1.01-1.05 to 0.81 cores
# (normalize and append cost ~25 ms each per batch, nearly whatever its size) for at most 0.2 s more before a
# message can be surveilled; with surveillance, alert p99 4.35 / 4.50 -> 3.89 / 4.13 s, p50 alike (benchmarks/
# README.md, "Record versions split in Arrow, and a store every 0.4 s"). A commit gathering 0.04 s saved nothing.
COMMIT_GATHER_S = 0.02
APPLY_GATHER_S = 0.4
APPLY_ENOUGH = 400
KNOWN = 200_000  # record identities remembered with their patient (saves the store lookup of repeat patients)
ENDPOINT = "MLLP ORU^R01"


def conflict_ack(msh: dict[str, str], conflicts: Iterable[IdentityConflict]) -> str:
    """AE 205: records of another patient, nothing stored (the same answer whichever stage found them)."""
    found = list(conflicts)
    log.info("MLLP message refused: AE 205 (%d record identities of another patient)", len(found))
    return ack(msh, "AE", [AckError("205", "PV1-19" if c.identity.startswith("HL7/PV1/") else "OBR-3",
                                    f"{c.identity}: {c.problem}: refused, nothing was stored") for c in found])


def outside_sender(engine: sa.Engine, msh: dict[str, str], tables: dict[str, pa.Table], actor: str,
                   patients: frozenset[str] | None) -> str | None:
    """AR (audited as denied) when the message names a patient outside the sender's list; else None."""
    refused = sorted(subjects_of(tables) - patients) if patients is not None else []
    if not refused:
        return None
    log.info("MLLP message refused: AR outside the sender's patients")
    try:
        write_audit(engine, actor, "denied", ENDPOINT, refused,
                    f"write outside the sender's patients; MSH-3 {msh.get('sending_app') or '(empty)'}")
    except sa.exc.SQLAlchemyError as exc:
        log.error("MLLP audit write failed %s", type(exc).__name__)
    more = f" (and {len(refused) - 1} other patient(s))" if len(refused) > 1 else ""
    return ack(msh, "AR", [AckError("207", "PID-3", f"this sender may not send results of patient "
                                                    f"{refused[0]!r}{more}; nothing was stored")])


def warnings_of(reasons: dict[str, int]) -> list[AckError]:
    return [AckError("0", "OBX", f"{n} result(s) not used: {reason}", "W") for reason, n in sorted(reasons.items())]


def _identities(tables: dict[str, pa.Table],
                ) -> tuple[dict[str, str], dict[str, frozenset[str]], list[IdentityConflict]]:
    """Record identity -> its subject, identity -> the versions (sources) the message brings, and the identities
    the message names for two patients at once (refused like the store refuses them)."""
    subjects: dict[str, set[str]] = {}
    sources: dict[str, set[str]] = {}
    for tab in tables.values():
        if tab.num_rows == 0 or "source" not in tab.column_names:
            continue
        for subject, source in zip(tab.column("subject_id").to_pylist(), tab.column("source").to_pylist(),
                                   strict=True):
            if source and HISTORY in source:
                identity = source.rsplit(HISTORY, 1)[0]
                sources.setdefault(identity, set()).add(source)
                if subject:
                    subjects.setdefault(identity, set()).add(subject)
    own = [IdentityConflict(i, None, s) for i, ss in sorted(subjects.items()) if len(ss) > 1 for s in sorted(ss)]
    return ({i: next(iter(ss)) for i, ss in subjects.items()}, {i: frozenset(s) for i, s in sources.items()}, own)


@dataclass
class _Message:
    """One message from its check to its store append."""

    text: str
    actor: str
    received: float
    msh: dict[str, str]
    tables: dict[str, pa.Table]
    owners: dict[str, str]  # record identity -> subject
    versions: dict[str, frozenset[str]]  # record identity -> sources
    warnings: list[AckError] = field(default_factory=list)
    future: Future[str] = field(default_factory=Future)
    entry: Entry | None = None


def _prepare(text: str, actor: str, received: float, per_source: bool) -> _Message:
    """Parse a message for the feed; Hl7Error if it cannot be used."""
    parsed = parse_oru(text, per_source)
    owners, versions, own = _identities(parsed.tables)
    if own:
        raise IdentityConflictError(own)
    q = parsed.tables.get("quarantine")
    reasons = Counter(q.column("reason").to_pylist()) if q is not None and q.num_rows else Counter()
    return _Message(text, actor, received, parsed.msh, parsed.tables, owners, versions,
                    warnings_of({str(r): n for r, n in reasons.items()}))


class Hl7Feed:
    """The journaled path of the MLLP listener (module docstring). ``start`` before serving, ``stop`` after."""

    def __init__(self, ingestor: Ingestor, max_group: int = MAX_GROUP, max_batch: int = MAX_BATCH) -> None:
        self.ingestor = ingestor
        self.root = ingestor.store.root.parent / JOURNAL
        self.max_group, self.max_batch = max_group, max_batch
        self._journal: Journal | None = None
        self._queue: deque[_Message] = deque()  # checked, waiting for the group commit
        self._qcond = threading.Condition()
        self._unapplied: deque[_Message] = deque()  # journaled, not yet stored
        self._acond = threading.Condition()
        self._olock = threading.Lock()  # the owners below, and the store check against them
        self._owners: dict[str, list[str | int]] = {}  # identity -> [subject, unapplied messages naming it]
        self._known: OrderedDict[str, str] = OrderedDict()  # identity -> subject, stored by this feed (bounded)
        self._stopping = False
        self._commit_done = False  # the commit thread has ended (stopping, its queue journaled)
        self._threads: list[threading.Thread] = []
        self.applied = 0  # messages stored by this process's feed (benchmarks, tests)

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> int:
        """Replay the journals of processes that ended (before serving), then open this process's journal.
        Returns the number of messages replayed."""
        replayed = self.replay()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._journal = Journal.create(self.root)
        self._stopping = self._commit_done = False
        self._threads = [threading.Thread(target=self._commit_loop, name="mgaki-hl7-commit", daemon=True),
                         threading.Thread(target=self._apply_loop, name="mgaki-hl7-apply", daemon=True)]
        for t in self._threads:
            t.start()
        return replayed

    def replay(self) -> int:
        """Store every journaled message of an ended process that is not stored yet (idempotent)."""
        n = 0
        for journal in orphans(self.root):
            pending = []
            for entry in journal.entries(after=journal.applied):
                try:
                    msg = _prepare(entry.text, entry.actor, entry.received, self.ingestor.per_source)
                except (Hl7Error, IdentityConflictError) as exc:  # it passed these checks before it was journaled
                    log.error("journaled HL7 message %d no longer parses (%s): skipped", entry.seq, type(exc).__name__)
                    continue
                msg.entry = entry
                pending.append(msg)
            for i in range(0, len(pending), self.max_batch):
                chunk = pending[i:i + self.max_batch]
                self._store(chunk)
                journal.checkpoint(chunk[-1].entry.seq)  # type: ignore[union-attr]
            n += len(pending)
            journal.close(remove=True)
        if n:
            log.warning("replayed %d journaled HL7 message(s) an earlier process acknowledged and did not store", n)
        return n

    def stop(self, timeout_s: float = 120.0) -> None:
        """Stop taking messages; journal what is queued, store everything journaled, remove the journal."""
        with self._qcond:
            self._stopping = True
            self._qcond.notify_all()
        with self._acond:
            self._acond.notify_all()
        for t in self._threads:
            t.join(timeout_s)
        if self._journal is not None:
            done = not self._unapplied
            self._journal.close(remove=done)  # not done (a store failure): the next start replays it
            self._journal = None

    def wait_applied(self, timeout_s: float | None = None) -> bool:
        """Block until every message journaled so far is in the event store (tests, benchmarks)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._qcond:
            if not self._qcond.wait_for(lambda: not self._queue,
                                        None if deadline is None else deadline - time.monotonic()):
                return False
        with self._acond:
            return self._acond.wait_for(lambda: not self._unapplied,
                                        None if deadline is None else max(0.0, deadline - time.monotonic()))

    # --- stage 1: check ------------------------------------------------------------------------

    def submit(self, text: str, actor: str, patients: frozenset[str] | None = None) -> str | Future[str]:
        """The ACK now (a refusal), or a future ACK (AA once journaled, or AE 205) for the group commit."""
        received = time.time()
        try:
            msg = _prepare(text, actor, received, self.ingestor.per_source)
        except Hl7Error as exc:
            log.info("MLLP message refused: %s %s", exc.ack_code, exc.error_code)
            return ack(msh_fields(text), exc.ack_code, [AckError(exc.error_code, exc.where, exc.problem)])
        except IdentityConflictError as exc:
            return conflict_ack(msh_fields(text), exc.conflicts)
        refused = outside_sender(self.ingestor.engine, msg.msh, msg.tables, actor, patients)
        if refused is not None:
            return refused
        with self._qcond:
            if self._stopping or self._journal is None:
                return ack(msg.msh, "AR", [AckError("207", "MSH-10", "the service is stopping; send it again")])
            self._queue.append(msg)
            self._qcond.notify_all()
        return msg.future

    def submit_many(self, texts: list[str], actor: str,
                    patients: frozenset[str] | None = None) -> list[str | Future[str]]:
        """``submit`` each of ``texts``, in order (one thread hop for all that one connection has read)."""
        return [self.submit(t, actor, patients) for t in texts]

    # --- stage 2: group commit -----------------------------------------------------------------

    def _commit_loop(self) -> None:
        while True:
            with self._qcond:
                self._qcond.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    self._qcond.notify_all()
                    break
                self._qcond.wait_for(lambda: len(self._queue) >= self.max_group or self._stopping,
                                     max(0.0, self._queue[0].received + COMMIT_GATHER_S - time.time()))
                group = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_group))]
            try:
                self._commit(group)
            except Exception as exc:  # journal unwritable: nothing acknowledged, the senders send again
                log.error("HL7 journal write failed %s", type(exc).__name__)
                for m in group:
                    if not m.future.done():
                        m.future.set_result(ack(m.msh, "AR", [AckError(
                            "207", "MSH-10", "the message could not be stored; send it again")]))
            with self._qcond:
                self._qcond.notify_all()  # wait_applied
        with self._acond:
            self._commit_done = True
            self._acond.notify_all()  # the apply thread ends once the queue is journaled and stored

    def _commit(self, group: list[_Message]) -> None:
        assert self._journal is not None
        t0 = time.time()
        with self._olock:
            # identities this process stored for a patient stay that patient's (the store never moves one):
            # only the others are looked up in the store
            stored: dict[str, str] = {i: self._known[i] for m in group for i in m.owners if i in self._known}
            rows = [(s, src) for m in group for i, s in m.owners.items() if i not in stored
                    for src in m.versions.get(i, ())]
            if rows:
                tab = pa.table({"subject_id": pa.array([r[0] for r in rows], pa.string()),
                                "source": pa.array([r[1] for r in rows], pa.string())})
                stored.update({c.identity: c.stored for c in self.ingestor.store.identity_conflicts({"events": tab})
                               if c.stored is not None})
            ok, refused = [], []
            for m in group:
                clash = []
                for i, s in sorted(m.owners.items()):
                    held = stored.get(i)
                    if held is None and i in self._owners:
                        held = str(self._owners[i][0])
                    if held is not None and held != s:
                        clash.append(IdentityConflict(i, held, s))
                if clash:
                    refused.append((m, clash))
                    continue
                for i, s in m.owners.items():
                    self._owners.setdefault(i, [s, 0])[1] += 1  # type: ignore[operator]
                ok.append(m)
            t1 = time.time()
            try:
                entries = self._journal.append([(m.received, m.actor, m.text) for m in ok])
            except BaseException:
                self._release(ok)
                raise
        log.debug("HL7 group: %d message(s), the oldest queued %.3f s, check %.3f s, journal %.3f s",
                  len(group), t0 - group[0].received, t1 - t0, time.time() - t1)
        for m, e in zip(ok, entries, strict=True):
            m.entry = e
        with self._acond:
            self._unapplied.extend(ok)
            self._acond.notify_all()
        for m, clash in refused:
            m.future.set_result(conflict_ack(m.msh, clash))
        for m in ok:
            m.future.set_result(ack(m.msh, "AA", m.warnings))

    def _remember(self, msgs: Iterable[_Message]) -> None:
        """The record identities of ``msgs``, now stored, with their patient (the most recent ``KNOWN``)."""
        with self._olock:
            for m in msgs:
                for i, subject in m.owners.items():
                    self._known[i] = subject
                    self._known.move_to_end(i)
            while len(self._known) > KNOWN:
                self._known.popitem(last=False)

    def _release(self, msgs: Iterable[_Message]) -> None:
        """Forget the owners of messages now stored (or never journaled); callers hold ``_olock``."""
        for m in msgs:
            for i in m.owners:
                held = self._owners.get(i)
                if held is not None:
                    held[1] = int(held[1]) - 1
                    if int(held[1]) <= 0:
                        del self._owners[i]

    # --- stage 3: apply ------------------------------------------------------------------------

    def _apply_loop(self) -> None:
        while True:
            with self._acond:
                self._acond.wait_for(lambda: self._unapplied or self._commit_done)
                if not self._unapplied:
                    return
                self._acond.wait_for(lambda: len(self._unapplied) >= APPLY_ENOUGH or self._commit_done,
                                     max(0.0, self._unapplied[0].received + APPLY_GATHER_S - time.time()))
                batch = [self._unapplied[i] for i in range(min(len(self._unapplied), self.max_batch))]
            t0 = time.monotonic()
            try:
                self._store(batch)
                assert self._journal is not None
                self._journal.checkpoint(batch[-1].entry.seq)  # type: ignore[union-attr]
            except Exception as exc:  # kept in the journal and in memory: retried
                log.error("HL7 batch store failed %s; retrying", type(exc).__name__)
                with self._qcond:
                    if self._stopping:
                        return  # the journal keeps them: the next start replays
                time.sleep(1.0)
                continue
            log.debug("HL7 batch: %d message(s) stored in %.3f s", len(batch), time.monotonic() - t0)
            with self._olock:
                self._release(batch)
            with self._acond:
                for _ in batch:
                    self._unapplied.popleft()
                self.applied += len(batch)
                self._acond.notify_all()

    def _store(self, msgs: list[_Message]) -> None:
        """Store ``msgs`` (journal order) with as few appends as the order allows, audit them, request surveillance."""
        subjects: set[str] = set()
        set_aside: dict[int, int] = {}
        for part in _runs(msgs):
            now = datetime.fromtimestamp(max(m.received for m in part), UTC)
            raw = {name: pa.concat_tables([m.tables[name] for m in part if name in m.tables],
                                          promote_options="default")
                   for name in {n for m in part for n in m.tables}}
            try:
                subjects |= self.ingestor.store_raw(raw, conflicts="refuse", now=now).affected_subjects
                self._remember(part)
            except IdentityConflictError:  # written meanwhile by another process: each message on its own
                for m in part:
                    s = self.ingestor.store_raw(m.tables, conflicts="quarantine",
                                                now=datetime.fromtimestamp(m.received, UTC))
                    subjects |= s.affected_subjects
                    if not s.identity_conflicts:
                        self._remember([m])
                    else:
                        set_aside[id(m)] = len(s.identity_conflicts)
                        log.warning("journaled HL7 message: %d record(s) set aside in quarantine (the record "
                                    "belongs to another patient)", len(s.identity_conflicts))
        rows = []
        for m in msgs:
            detail = f"MSH-3 {m.msh.get('sending_app') or '(empty)'} (the sender's own claim)"
            if id(m) in set_aside:
                detail += f"; {set_aside[id(m)]} record(s) set aside in quarantine: they belong to another patient"
            rows += [audit_row(m.actor, "write", ENDPOINT, p, detail) for p in sorted(subjects_of(m.tables))]
        try:
            with self.ingestor.engine.execution_options(mgaki_write=True).begin() as con:
                append_audit(con, rows)
        except sa.exc.SQLAlchemyError as exc:  # stored already
            log.error("MLLP audit write failed %s", type(exc).__name__)
        if subjects:
            self.ingestor.surveil_soon()


def _runs(msgs: list[_Message]) -> list[list[_Message]]:
    """Consecutive runs of messages in which no record comes in two versions from two messages: one append
    decides between versions of one record by value, not arrival, so a correction starts a new run."""
    out: list[list[_Message]] = []
    seen: dict[str, frozenset[str]] = {}
    for m in msgs:
        if not out or any(i in seen and seen[i] != v for i, v in m.versions.items()):
            out.append([])
            seen = {}
        out[-1].append(m)
        seen.update(m.versions)
    return out


def replay_journals(cfg: ServiceConfig) -> int:
    """At start-up, before workers serve (``mgaki serve --workers N``): store what ended processes journaled and
    did not store. Surveillance of it follows in the workers (the store's pending file, ``Ingestor.catch_up``)."""
    from mgaki.service.persistence.db import make_engine, writer

    engine = make_engine(cfg.db_url(), cfg.sqlite_busy_timeout_s, cfg.sqlite_synchronous)
    ingestor = Ingestor(Path(cfg.data_dir), writer(engine), run_surveillance=False, per_source=cfg.identity_per_source)
    try:
        return Hl7Feed(ingestor).replay()
    finally:
        ingestor.stop()
        engine.dispose()
