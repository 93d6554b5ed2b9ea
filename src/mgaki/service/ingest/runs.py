"""Deferred surveillance runs in a process of their own (config ``surveillance_process``).

A feed's messages are parsed, checked, journaled and stored by Python threads of the server process; a run's
48 stages are DuckDB statements, each of which hands the GIL back and waits for it when it returns. Beside a
busy feed every such wait lasts up to the interpreter's switch interval, so a run in the server process took
about twice as long as the same run alone (benchmarks/README.md, "Runs in a process of their own").
In a process of its own a run shares no interpreter with the feed: only the cores.

The process is started once (forked by a ``forkserver``, never from the server, which has threads) and kept;
it runs ``surveil`` on the same store with the writers' lock (a file lock, across processes) held only while
it lists the store, exactly as a run in the server does, and hands back the run's new alerts; the server
copies them into its database. A run that fails, or a process that dies, is reported as the run's error: the
store's pending file keeps the subjects and the next run, in a new process if need be, covers them.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What the server needs of a run made elsewhere (``SurveillanceResult`` without its result tables)."""

    new_alerts: pa.Table
    subjects_recomputed: int
    seconds: dict[str, float] = field(default_factory=dict)
    timer_alerts: int = 0


def _start(level: int) -> None:
    """In the run process: the "mgaki" loggers at the server's level, to standard error like the server's."""
    root = logging.getLogger("mgaki")
    root.setLevel(level)
    if level < logging.WARNING and not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [runs]: %(message)s"))
        root.addHandler(handler)


def _warm() -> None:
    """Imports and the knowledge base, before the first run needs them."""
    from mgaki.knowledge import load
    from mgaki.surveillance import surveil  # noqa: F401

    load()


def _run(events: str, lock: str) -> RunOutcome:
    """One incremental (or, for a store never surveilled, full) run on the store at `events`."""
    from mgaki.events import EventStore
    from mgaki.events.locks import FileLock
    from mgaki.surveillance import surveil

    res = surveil(EventStore(Path(events)), snapshot_lock=FileLock(Path(lock)))
    return RunOutcome(res.new_alerts, res.subjects_recomputed, dict(res.seconds), res.timer_alerts)


def _context() -> multiprocessing.context.BaseContext:
    """``forkserver``: a single-threaded server process, started once per server process with the surveillance
    code imported, forks each run process (milliseconds, against about 3 s to spawn and import one); where
    there is none (not on Linux/macOS), ``spawn``."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mgaki.service.ingest.runs", "mgaki.surveillance", "mgaki.knowledge"])
    return ctx


class RunProcess:
    """One process kept for the runs of one ingestor; ``run`` blocks until the run has ended."""

    def __init__(self, events: Path, lock: Path) -> None:
        self.events, self.lock = events, lock
        self._pool: ProcessPoolExecutor | None = None
        self._guard = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._guard:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=_context(), initializer=_start,
                                                 initargs=(logging.getLogger("mgaki").getEffectiveLevel(),))
                self._pool.submit(_warm)
            return self._pool

    def start(self) -> None:
        """Start the process now (and warm it), not at the first run."""
        self._executor()

    def run(self) -> RunOutcome:
        pool = self._executor()
        try:
            return pool.submit(_run, self.events.as_posix(), self.lock.as_posix()).result()
        except BrokenProcessPool:
            log.error("the surveillance run process ended unexpectedly; the next run starts a new one")
            with self._guard:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    def stop(self) -> None:
        with self._guard:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
