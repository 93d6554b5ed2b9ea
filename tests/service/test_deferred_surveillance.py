"""Surveillance after the ACK (HL7): runs coalesce, a restart catches up, appends during a run are not lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import mgaki.service.ingest.ingestor as ingest_mod
from mgaki.events import EventStore
from mgaki.service.ingest.hl7 import Result, oru_r01, parse_oru
from mgaki.service.ingest.ingestor import Ingestor
from mgaki.service.persistence.db import alerts, make_engine, upgrade
from mgaki.surveillance import pipeline, surveil

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
MG = "19123-9"


def _raw(pid: str, value: float = 1.0) -> dict[str, Any]:
    """Raw adapter tables of one ORU^R01: a low serum Mg for patient ``pid`` (an alert once surveilled)."""
    msg = oru_r01(pid, [Result(MG, value, "mg/dL", T0)], visit=f"{pid}-v", admitted=T0 - timedelta(hours=2),
                  order=f"{pid}-ord", control_id=f"{pid}-c")
    return parse_oru(msg).tables


def _ingestor(tmp_path: Path, delay_s: float, run_process: bool = False) -> Ingestor:
    engine = make_engine(f"sqlite:///{tmp_path / 'mgaki.db'}")
    upgrade(engine)
    return Ingestor(tmp_path, engine, True, delay_s, run_process=run_process)


def _alert_subjects(ing: Ingestor) -> set[str]:
    with ing.engine.connect() as con:
        return {r[0] for r in con.execute(sa.select(alerts.c.subject_id)).all()}


def test_messages_arriving_together_are_surveilled_by_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []

    def counting(store: EventStore, **kw: Any) -> pipeline.SurveillanceResult:
        runs.append(len(store.pending()[0]))
        return surveil(store, **kw)

    monkeypatch.setattr(ingest_mod, "surveil", counting)
    ing = _ingestor(tmp_path, delay_s=5.0)
    try:
        for pid in ("p1", "p2", "p3"):
            res = ing.ingest_raw(_raw(pid), surveil=False)
            assert res.added["events"] == 1 and res.new_alerts == 0  # stored; not surveilled yet
            ing.surveil_soon()
        assert runs == [] and ing.store.pending()[0] == {"p1", "p2", "p3"}
        assert ing.wait_surveilled(120)
        assert runs == [3]  # one run for the three messages
        assert _alert_subjects(ing) == {"p1", "p2", "p3"} and ing.store.pending()[0] == frozenset()
    finally:
        ing.stop()
    assert not ing._runner or not ing._runner.is_alive()


def test_a_restart_surveils_what_a_killed_process_stored(tmp_path: Path) -> None:
    first = _ingestor(tmp_path, delay_s=0.0)
    first.ingest_raw(_raw("p1"), surveil=False)  # stored and acknowledged; the process dies before surveilling
    assert first.store.pending()[0] == {"p1"} and _alert_subjects(first) == set()

    again = _ingestor(tmp_path, delay_s=0.0)
    try:
        again.catch_up()
        assert again.wait_surveilled(120)
        assert _alert_subjects(again) == {"p1"} and again.store.pending()[0] == frozenset()
    finally:
        again.stop()


def test_an_append_during_a_run_stays_pending_for_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run reads a snapshot: data stored after it listed the store is surveilled by the next run."""
    ing = _ingestor(tmp_path, delay_s=0.0)
    ing.ingest_raw(_raw("p1"), surveil=False)
    original = pipeline._compute
    calls: list[int] = []

    def run_with_concurrent_append(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # another writer stores p2 while this run computes (the snapshot has only p1)
            ing.ingest_raw(_raw("p2"), surveil=False)
        return original(*args, **kw)

    monkeypatch.setattr(pipeline, "_compute", run_with_concurrent_append)
    assert ing._surveil() >= 1
    assert _alert_subjects(ing) == {"p1"}
    assert ing.store.pending()[0] == {"p2"}  # its pending file was not cleared by the run that missed it
    ing._surveil()
    assert _alert_subjects(ing) == {"p1", "p2"} and ing.store.pending()[0] == frozenset()


def test_no_runner_when_surveillance_is_off(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'mgaki.db'}")
    upgrade(engine)
    ing = Ingestor(tmp_path, engine, run_surveillance=False)
    ing.ingest_raw(_raw("p1"), surveil=False)
    ing.surveil_soon()
    ing.catch_up()
    assert ing._runner is None and ing.wait_surveilled(0)


def _not_here(store: EventStore, **kw: Any) -> pipeline.SurveillanceResult:
    raise AssertionError("a deferred run computed in the server's process")


def test_deferred_runs_in_their_own_process_raise_the_alerts_and_the_server_copies_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_process``: a feed's runs compute in a process of their own (this process's ``surveil`` is never
    called), their alerts reach this process's database, pending cleared; a FHIR POST's run stays here."""
    monkeypatch.setattr(ingest_mod, "surveil", _not_here)
    ing = _ingestor(tmp_path, delay_s=0.0, run_process=True)
    try:
        for pid in ("p1", "p2"):
            ing.ingest_raw(_raw(pid), surveil=False)
            ing.surveil_soon()
        assert ing.wait_surveilled(120)
        assert _alert_subjects(ing) == {"p1", "p2"} and ing.store.pending()[0] == frozenset()
        with pytest.raises(AssertionError, match="server's process"):  # surveil=True: here, as before
            ing.ingest_raw(_raw("p3"))
    finally:
        ing.stop()
    assert ing._runs is not None and ing._runs._pool is None  # stopped with the ingestor


def test_a_run_process_that_dies_is_replaced_and_its_subjects_surveilled(tmp_path: Path) -> None:
    import os
    import signal

    ing = _ingestor(tmp_path, delay_s=0.0, run_process=True)
    try:
        ing.ingest_raw(_raw("p1"), surveil=False)
        ing.surveil_soon()
        assert ing.wait_surveilled(120) and _alert_subjects(ing) == {"p1"}
        assert ing._runs is not None and ing._runs._pool is not None
        first = set(ing._runs._pool._processes)  # type: ignore[attr-defined]
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        ing.ingest_raw(_raw("p2"), surveil=False)
        ing.surveil_soon()  # fails (the process is gone), then the retry starts a new process
        assert ing.wait_surveilled(120)
        assert _alert_subjects(ing) == {"p1", "p2"} and ing.store.pending()[0] == frozenset()
        assert ing._runs._pool is not None and not first & set(ing._runs._pool._processes)  # type: ignore[attr-defined]
    finally:
        ing.stop()
