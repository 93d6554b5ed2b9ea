"""Compaction of the event store's small parts: bounded part counts, same rows, crash and reader safety."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import mgaki.events.store as store_mod
from mgaki.events import EventStore, normalize
from mgaki.events.store import COMPACT_AT, GRACE_S
from mgaki.service.ingest.hl7 import Result, oru_r01, parse_oru

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def _message(i: int, value: float = 1.0) -> dict[str, pa.Table]:
    """One ORU^R01 (one versioned Mg result, a visit, a patient), normalised: what the MLLP listener stores."""
    msg = oru_r01(f"p{i}", [Result("19123-9", value, "mg/dL", T0 + timedelta(minutes=i))], visit=f"p{i}-v",
                  admitted=T0 - timedelta(hours=2), order=f"o{i}", control_id=f"c{i}")
    return normalize(parse_oru(msg).tables)


def _fill(store: EventStore, n: int) -> None:
    for i in range(n):
        store.append(_message(i))


def _values(store: EventStore) -> list[tuple[str, float]]:
    return sorted((r["subject_id"], r["numeric_value"]) for r in store.read("events").to_pylist())


def _on_disk(store: EventStore, table: str) -> list[Path]:
    return sorted((store.root / table).glob("*.parquet"))


def test_message_at_a_time_ingest_keeps_few_parts_and_every_row(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    n = 2 * COMPACT_AT + 5
    _fill(store, n)
    assert _values(store) == sorted((f"p{i}", 1.0) for i in range(n))
    for table in ("events", "encounters", "subjects", "versions"):
        assert len(store.files(table)) < COMPACT_AT, table  # without compaction: one part per message
        assert len(_on_disk(store, table)) >= n  # replaced parts wait out the grace period
    # idempotency and versions still hold across merged parts: the same messages add nothing,
    # a corrected result replaces the value
    store.append(_message(3))
    assert store.counts()["events"] == n
    corrected = oru_r01("p3", [Result("19123-9", 1.9, "mg/dL", T0 + timedelta(minutes=3), status="C")],
                        visit="p3-v", admitted=T0 - timedelta(hours=2), order="o3", control_id="fix")
    assert store.append(normalize(parse_oru(corrected).tables)).superseded == 1
    assert dict(_values(store))["p3"] == 1.9 and store.counts()["events"] == n


def test_replaced_parts_are_deleted_after_the_grace_period_then_their_record(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    _fill(store, COMPACT_AT)
    before = _values(store)
    rec = next((tmp_path / "events" / "_compacted").glob("*.json"))
    live = store.files("events")
    assert len(live) == 1 and len(_on_disk(store, "events")) == COMPACT_AT + 1
    now = os.path.getmtime(rec)
    store.compact("events", now=now + GRACE_S + 1)  # the parts go; the record stays one more grace period
    assert _on_disk(store, "events") == live and rec.exists() and _values(store) == before
    store.compact("events", now=now + 2 * GRACE_S + 3)
    assert not rec.exists() and store.files("events") == live and _values(store) == before


def test_a_crash_before_the_switch_leaves_the_old_parts_visible(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = EventStore(tmp_path)
    _fill(store, COMPACT_AT - 1)
    before = _values(store)
    real = os.replace

    def crash_on_switch(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        records = (tmp_path / "events" / "_compacted").glob("*.json")
        if any(Path(dst).name in r.read_text() for r in records):  # the merged part's rename
            raise OSError("killed before the merged part was renamed into place")
        real(src, dst)

    monkeypatch.setattr(store_mod.os, "replace", crash_on_switch)
    with pytest.raises(OSError, match="killed"):
        store.append(_message(COMPACT_AT))
    monkeypatch.setattr(store_mod.os, "replace", real)
    # the record is committed but names a merged part that never appeared: ignored, nothing lost or doubled
    assert any((tmp_path / "events" / "_compacted").glob("*.json"))
    assert _values(store) == sorted([*before, (f"p{COMPACT_AT}", 1.0)])
    later = os.path.getmtime(next((tmp_path / "events" / "_compacted").glob("*.json"))) + GRACE_S + 1
    store.compact("events", now=later)  # the orphan record and its temporary file are cleaned up, then merged
    assert not list((tmp_path / "events").glob(".part-*.tmp"))
    assert len(store.files("events")) == 1 and _values(store) == sorted([*before, (f"p{COMPACT_AT}", 1.0)])


def test_a_reader_that_listed_the_parts_before_a_merge_still_reads_them(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    _fill(store, COMPACT_AT - 1)
    con = store.connect()  # its views name the parts listed now
    try:
        store.append(_message(COMPACT_AT))  # merges them
        assert len(store.files("events")) == 1
        assert con.sql('SELECT count(*) FROM "events"').fetchall()[0][0] == COMPACT_AT - 1
    finally:
        con.close()
    assert store.counts()["events"] == COMPACT_AT


def test_cursors_of_the_shared_database_carry_mgakis_settings() -> None:
    """normalize and append run on cursors of one database per process: its settings must hold in each."""
    from mgaki.events.normalize import cursor

    for _ in range(2):
        con = cursor()
        try:
            row = con.sql("SELECT current_setting('TimeZone'), current_setting('preserve_insertion_order')").fetchall()
        finally:
            con.close()
        assert row == [("UTC", False)]
