"""The journaled HL7 path (service/ingest/feed.py, journal.py): AA once journaled, stored in batches behind it.

Durability: a process killed after its AAs and before its store append loses nothing (the next start replays
the journal, the alerts follow). Group commit: many connections at once, every message stored exactly once,
a replayed journal adds nothing. Refusals (AE, AR, AE 205) are the same as on the store-per-message path.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hl7.client import MLLPClient

import mgaki.service.ingest.journal as journal_mod
from conftest import READER, auth, make_config
from mgaki.events import EventStore
from mgaki.service import create_app
from mgaki.service.ingest.feed import Hl7Feed, _prepare
from mgaki.service.ingest.hl7 import Result, oru_r01, read_ack
from mgaki.service.ingest.ingestor import Ingestor
from mgaki.service.ingest.journal import JOURNAL, Journal, orphans, read_segment
from mgaki.service.ingest.mllp import handle_message
from mgaki.service.persistence.db import make_engine, upgrade

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
MG = "19123-9"


def _oru(pid: str, value: float = 1.0, order: str | None = None, status: str = "F", control: str | None = None) -> str:
    return oru_r01(pid, [Result(MG, value, "mg/dL", T0, status=status)], visit=f"{pid}-v",
                   admitted=T0 - timedelta(hours=2), order=order or f"{pid}-ord", control_id=control or f"{pid}-c")


def _identities(store: EventStore) -> Counter[str]:
    return Counter(s.split("/_history/")[0] for s in store.read("events").column("source").to_pylist())


# --- the journal file ----------------------------------------------------------------------------


def test_journal_records_survive_reopening_and_a_torn_tail_is_not_a_record(tmp_path: Path) -> None:
    j = Journal.create(tmp_path / JOURNAL)
    entries = j.append([(1.5, "mllp:10.0.0.1", "MSH|a\rPID|1||p1"), (2.5, "mllp:10.0.0.2", "MSH|b é")])
    assert [e.seq for e in entries] == [1, 2]
    (seg,) = j.folder.glob("seg-*.log")
    with seg.open("ab") as f:  # a process killed inside a write: half a record, never fsync'd or acknowledged
        f.write(entries[0].encode()[:9])
    assert list(read_segment(seg)) == entries
    assert list(orphans(tmp_path / JOURNAL)) == []  # this process holds its journal: never another's to replay
    j.close(remove=False)  # the process ended without storing them
    (again,) = orphans(tmp_path / JOURNAL)
    assert again.entries(after=again.applied) == entries
    again.checkpoint(1)
    assert [e.seq for e in again.entries(after=again.applied)] == [2]
    again.close(remove=True)
    assert list((tmp_path / JOURNAL).iterdir()) == []


def test_segments_whose_records_are_all_stored_are_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "SEGMENT_BYTES", 100)  # every append after the first 100 bytes: a new segment
    j = Journal.create(tmp_path / JOURNAL)
    for i in range(5):
        j.append([(0.0, "a", "x" * 120 + str(i))])
    assert len(list(j.folder.glob("seg-*.log"))) == 5
    j.checkpoint(3)  # records 1-3 stored: their segments go; the one of record 4 and the open one stay
    assert sorted(p.name for p in j.folder.glob("seg-*.log")) == ["seg-000000000004.log", "seg-000000000005.log"]
    j.checkpoint(5)
    assert [p.name for p in j.folder.glob("seg-*.log")] == ["seg-000000000005.log"]  # the open segment
    assert j.entries(after=j.applied) == []
    j.close(remove=True)


# --- group commit and apply ----------------------------------------------------------------------


@pytest.fixture
def feed(tmp_path: Path, database_url: str | None) -> Any:
    """A started feed on SQLite and on PostgreSQL (``database_url``: each test that takes it runs on both)."""
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'mgaki.db'}")
    upgrade(engine)
    ing = Ingestor(tmp_path, engine, run_surveillance=False)
    f = Hl7Feed(ing)
    f.start()
    yield f
    f.stop()
    ing.stop()
    engine.dispose()


def test_a_group_is_checked_for_records_of_another_patient_before_it_is_journaled(feed: Hl7Feed) -> None:
    """One group: the first message naming an order wins; a later one naming it for another patient is AE 205,
    as is one naming an order the store holds for another patient; neither is journaled or stored."""
    assert read_ack(handle_message(feed.ingestor, _oru("p9", order="held"))).code == "AA"  # in the store
    msgs = [_prepare(t, "mllp:test", time.time(), False) for t in
            (_oru("p1", order="o1"), _oru("p2", order="o1", control="p2-c"), _oru("p3", order="held"),
             _oru("p4"))]
    feed._commit(msgs)
    replies = [read_ack(m.future.result(0)) for m in msgs]
    assert [r.code for r in replies] == ["AA", "AE", "AE", "AA"]
    assert replies[1].errors == ["HL7/o1/LN/19123-9: belongs to patient 'p1'; this version names patient 'p2': "
                                 "refused, nothing was stored"]
    assert "belongs to patient 'p9'" in replies[2].errors[0]
    assert feed.wait_applied(60)
    assert {r["subject_id"] for r in feed.ingestor.store.read("events").to_pylist()} == {"p9", "p1", "p4"}
    # the same answer as the store-per-message path gives (handle_message)
    late = read_ack(handle_message(feed.ingestor, _oru("p2", order="o1", control="p2-c")))
    assert (late.code, late.errors) == ("AE", replies[1].errors)
    # and once stored: from what the feed remembers it stored, or from the store (a new feed remembers nothing)
    for f in (feed, Hl7Feed(feed.ingestor)):
        again = [_prepare(_oru("p2", order="o1", control="p2-c"), "mllp:test", time.time(), False)]
        f._journal = feed._journal
        f._commit(again)
        assert read_ack(again[0].future.result(0)).errors == replies[1].errors


def test_a_correction_stored_in_one_batch_with_what_it_corrects_wins(feed: Hl7Feed) -> None:
    """Arrival order decides between two versions of one result, as when each message had its own append
    (one append would order two content-hash versions by their hash)."""
    for values in ((1.0, 1.9), (1.9, 1.0)):
        pid = f"p{int(values[0] * 10)}"
        first = _prepare(_oru(pid, values[0]), "mllp:test", time.time(), False)
        fix = _prepare(_oru(pid, values[1], status="C", control=f"{pid}-fix"), "mllp:test", time.time(), False)
        feed._store([first, fix])
        rows = [r for r in feed.ingestor.store.read("events").to_pylist() if r["subject_id"] == pid]
        assert [r["numeric_value"] for r in rows] == [values[1]]


def test_many_connections_at_once_every_message_stored_exactly_once(tmp_path: Path, database_url: str | None,
                                                                    ) -> None:
    cfg = make_config(tmp_path, mllp_port=0, surveil_on_ingest=False, database_url=database_url)
    msgs = [_oru(f"p{i % 17}", 1.0 + i / 1000, order=f"o{i}", control=f"c{i}") for i in range(240)]

    def send(chunk: list[str]) -> list[str]:
        with MLLPClient("127.0.0.1", port) as c:
            return [read_ack(c.send_message(m)).code for m in chunk]

    with TestClient(create_app(cfg)) as c:
        port = c.app.state.mllp.port  # type: ignore[attr-defined]
        feed = c.app.state.mllp.feed  # type: ignore[attr-defined]
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            codes = [code for out in pool.map(send, [msgs[i::12] for i in range(12)]) for code in out]
        assert codes == ["AA"] * 240
        assert feed.wait_applied(120)
        ids = _identities(feed.ingestor.store)
        assert sorted(ids) == sorted(f"HL7/o{i}/LN/{MG}" for i in range(240)) and set(ids.values()) == {1}
        with c.app.state.engine.connect() as con:  # type: ignore[attr-defined]
            audited = con.execute(sa.text("SELECT count(*) FROM audit WHERE action = 'write' "
                                          "AND endpoint = 'MLLP ORU^R01'")).scalar_one()
        assert audited == 240  # one row per message and patient, the connection's actor
    assert not any((tmp_path / "data" / JOURNAL).iterdir())  # a clean stop leaves no journal behind

    # the same messages journaled again by a process that ended before storing them: replayed, nothing added
    j = Journal.create(tmp_path / "data" / JOURNAL)
    j.append([(0.0, "mllp:test", m) for m in msgs])
    j.close(remove=False)
    with TestClient(create_app(cfg)) as c:
        assert _identities(c.app.state.ingestor.store) == ids  # type: ignore[attr-defined]
    assert not any((tmp_path / "data" / JOURNAL).iterdir())


def test_a_connection_that_does_not_wait_has_its_messages_handed_over_together_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The messages one connection sent while its earlier ones were being checked reach the feed in one thread
    hop, in the order sent; each ACK answers its own message, in that order (with a hop per message, each
    waited for the hops of those before it: issue 18 point 2)."""
    calls: list[list[str]] = []
    submit_many = Hl7Feed.submit_many

    def recording(self: Hl7Feed, texts: list[str], actor: str, patients: frozenset[str] | None = None) -> Any:
        calls.append([t.split("\r")[0].split("|")[9] for t in texts])  # MSH-10
        if len(calls) == 1:
            time.sleep(0.5)  # the rest arrive meanwhile
        return submit_many(self, texts, actor, patients)

    monkeypatch.setattr(Hl7Feed, "submit_many", recording)
    cfg = make_config(tmp_path, mllp_port=0, surveil_on_ingest=False)
    sent = [f"c{i:02d}" for i in range(40)]
    msgs = [_oru(f"p{i % 7}", 1.0 + i / 100, order=f"o{i}", control=c) for i, c in enumerate(sent)]
    # one with a record of another patient: refused on its own, in its place
    msgs[20] = _oru("p99", order="o3", control=sent[20])
    with TestClient(create_app(cfg)) as c, socket.create_connection(
            ("127.0.0.1", c.app.state.mllp.port), timeout=30) as s:  # type: ignore[attr-defined]
        s.sendall(b"".join(b"\x0b" + m.encode() + b"\x1c\r" for m in msgs))
        buf = b""
        while buf.count(b"\x1c\r") < len(msgs):
            chunk = s.recv(65536)
            assert chunk, "the listener closed the connection before every ACK"
            buf += chunk
        replies = [read_ack(b) for b in buf.split(b"\x1c\r")[:-1]]
        assert [r.control_id for r in replies] == sent
        assert [r.code for r in replies] == ["AA"] * 20 + ["AE"] + ["AA"] * 19
        assert [c for batch in calls for c in batch] == sent
        assert len(calls) <= 3, [len(b) for b in calls]  # not a hop per message
        assert c.app.state.mllp.feed.wait_applied(60)  # type: ignore[attr-defined]
        assert sorted(_identities(c.app.state.ingestor.store)) == sorted(  # type: ignore[attr-defined]
            f"HL7/o{i}/LN/{MG}" for i in range(40) if i != 20)


def test_a_failed_hand_over_closes_the_connection_with_no_ack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Messages that could not be handed to the feed are never acknowledged: the connection is closed (the sender
    sends them again), not left waiting, and the listener serves the next connection."""
    def broken(self: Hl7Feed, texts: list[str], actor: str, patients: frozenset[str] | None = None) -> Any:
        raise OSError("journal folder gone")

    cfg = make_config(tmp_path, mllp_port=0, surveil_on_ingest=False)
    with TestClient(create_app(cfg)) as c:
        port = c.app.state.mllp.port  # type: ignore[attr-defined]
        with monkeypatch.context() as m, socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            m.setattr(Hl7Feed, "submit_many", broken)
            s.sendall(b"".join(b"\x0b" + _oru(f"p{i}").encode() + b"\x1c\r" for i in range(3)))
            assert s.recv(65536) == b""  # closed, no ACK (a timeout here: the connection was left hanging)
        assert "could not be handed to the feed (OSError)" in caplog.text
        with MLLPClient("127.0.0.1", port) as again:
            assert read_ack(again.send_message(_oru("p9"))).code == "AA"


def test_refusals_through_the_listener_are_unchanged(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, mllp_port=0, surveil_on_ingest=False)
    with TestClient(create_app(cfg)) as c, MLLPClient("127.0.0.1", c.app.state.mllp.port) as m:  # type: ignore[attr-defined]
        ok = _oru("p1", order="ord-1")
        assert read_ack(m.send_message(ok)).code == "AA"
        bad = read_ack(m.send_message(ok.replace("p1^^^HOSP^MR", "")))
        assert (bad.code, bad.errors) == ("AE", ["patient identifier missing"])
        wrong = read_ack(m.send_message(ok.replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01")))
        assert wrong.code == "AR" and "ADT^A01 is not accepted" in wrong.errors[0]
        junk = read_ack(m.send(b"not mllp framed\x1c\r"))
        assert junk.code == "AE" and "<VT>" in junk.errors[0]
        reuse = read_ack(m.send_message(_oru("p2", order="ord-1")))
        assert reuse.code == "AE" and "HL7/ord-1/LN/19123-9: belongs to patient 'p1'" in reuse.errors[0]
        prelim = read_ack(m.send_message(_oru("p3", status="P")))
        assert prelim.code == "AA" and "preliminary" in prelim.errors[0]
        assert c.app.state.mllp.feed.wait_applied(60)  # type: ignore[attr-defined]
        assert {r["subject_id"] for r in c.app.state.ingestor.store.read("events").to_pylist()} == {"p1"}  # type: ignore[attr-defined]


# --- a crash between the AA and the store --------------------------------------------------------

_KILLED_AFTER_ACK = textwrap.dedent("""
    import os, signal, sys, threading
    from pathlib import Path
    from mgaki.service.ingest.feed import Hl7Feed
    from mgaki.service.ingest.hl7 import read_ack
    from mgaki.service.ingest.ingestor import Ingestor
    from mgaki.service.persistence.db import make_engine, upgrade

    data = Path(sys.argv[1])
    engine = make_engine(sys.argv[2] or f"sqlite:///{data / 'mgaki.db'}")
    upgrade(engine)
    ing = Ingestor(data, engine, run_surveillance=True)
    never = threading.Event()
    ing.store_raw = lambda *a, **k: never.wait()  # the store append never returns: killed before it
    feed = Hl7Feed(ing)
    feed.start()
    futures = [feed.submit(m, "mllp:test") for m in sys.stdin.read().split("\\n\\n")]
    print(" ".join(read_ack(f.result(60)).code for f in futures), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_messages_acknowledged_then_killed_before_storing_are_stored_and_alert_at_the_next_start(
        tmp_path: Path, database_url: str | None) -> None:
    cfg = make_config(tmp_path, mllp_port=0, database_url=database_url)
    cfg.data_dir.mkdir(parents=True)
    msgs = [_oru(f"k{i}", 1.0) for i in range(3)]  # Mg 1.0 mg/dL: an mg_out_of_range alert each
    proc = subprocess.run([sys.executable, "-c", _KILLED_AFTER_ACK, str(cfg.data_dir), database_url or ""],
                          input="\n\n".join(msgs),
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.split() == ["AA", "AA", "AA"]  # acknowledged, then killed
    assert not EventStore(cfg.data_dir / "events").files("events")  # nothing reached the store
    with TestClient(create_app(cfg)) as c:
        ids = _identities(c.app.state.ingestor.store)  # type: ignore[attr-defined]
        assert sorted(ids) == [f"HL7/k{i}-ord/LN/{MG}" for i in range(3)]  # replayed before serving
        assert c.app.state.ingestor.wait_surveilled(120)  # type: ignore[attr-defined]
        got = c.get("/alerts", headers=auth(READER)).json()["alerts"]
        assert {a["subject_id"] for a in got if a["kind"] == "mg_out_of_range"} == {"k0", "k1", "k2"}
    assert not any((cfg.data_dir / JOURNAL).iterdir())  # replayed, then removed
