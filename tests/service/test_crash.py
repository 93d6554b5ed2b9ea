"""Kill -9 a real `mgaki serve` while FHIR and HL7 results stream in: every acknowledged one survives, once.

Deterministic by construction: the server is killed after a fixed number of acknowledgements
on each channel; whatever was in flight then may or may not have landed, and only what was
acknowledged (HTTP 200, HL7 AA) is asserted present.

Run twice: one process killed, and ``--workers 2`` with the *supervisor* killed (issue 16 point 9): its
workers must end with it (they kept serving, orphaned, and the restart failed with "Address already in
use"), a request body left in ``incoming/`` is removed at the restart, and every file is owner-only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hl7.client import MLLPClient

from conftest import free_port
from mgaki.events import EventStore
from mgaki.service.ingest.hl7 import Result, oru_r01, read_ack

WRITER = "writer-token-0123456789"
READER = "reader-token-0123456789"
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
KILL_AFTER = 4  # acknowledgements per channel before the kill


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Server:
    def __init__(self, tmp: Path, workers: int = 1) -> None:
        self.workers = workers
        self.http, self.mllp = free_port(), free_port()
        self.data = tmp / "data"
        self.config = tmp / "service.yaml"
        self.config.write_text(yaml.safe_dump({
            "data_dir": str(self.data), "warm_up": False, "cds_require_jwt": False,
            "tokens": [{"name": "lab-feed", "token": WRITER, "roles": ["writer"]},
                       {"name": "ward", "token": READER, "roles": ["reader"]}]}))
        self.log = tmp / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed_children: list[int] = []  # a killed supervisor's children: ended by the fixture if still alive
        self.spawned: list[int] = []  # the uvicorn workers among them

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mgaki", "serve", "--config", str(self.config), "--port", str(self.http),
                 "--mllp-port", str(self.mllp), "--workers", str(self.workers)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    socket.create_connection(("127.0.0.1", self.mllp), timeout=2).close()
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError("server did not start:\n" + self.log.read_text())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def kill(self) -> list[int]:
        """SIGKILL the process ``mgaki serve`` started (with workers: the supervisor only); its workers' pids
        (``spawned``: those that were uvicorn workers, read before the kill: a worker that ends at once leaves
        no command line to read)."""
        assert self.proc is not None
        workers = _children(self.proc.pid)
        self.spawned = [w for w in workers if b"spawn_main" in _cmdline(w)]  # not multiprocessing's tracker
        self.killed_children += workers
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        return workers

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(params=[1, 2], ids=["one-process", "supervisor-of-2"])
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    s = Server(tmp_path, workers=request.param)
    s.start()
    try:
        yield s
    finally:
        s.stop()
        for pid in s.killed_children:  # a failed run must not leave orphaned workers behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _bundle(i: int) -> dict[str, Any]:
    obs = {"resourceType": "Observation", "id": f"obs-{i}", "meta": {"versionId": "1"}, "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "19123-9"}]},
           "subject": {"reference": "Patient/fhir-1"}, "effectiveDateTime": (T0 + timedelta(hours=i)).isoformat(),
           "valueQuantity": {"value": 1.5 + i / 100, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                             "code": "mg/dL"}}
    return {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": "fhir-1", "gender": "female", "birthDate": "1950-01-01"}},
        {"resource": obs}]}


def _oru(i: int) -> str:
    return oru_r01("hl7-1", [Result("19123-9", 1.6 + i / 100, "mg/dL", T0 + timedelta(hours=i))],
                   visit="v1", admitted=T0, order=f"ord-{i}", control_id=f"msg-{i}")


class Feed:
    """Sends numbered FHIR Bundles and ORU^R01 messages until the server dies; records what was acknowledged."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http_acked: list[int] = []
        self.hl7_acked: list[int] = []
        self.errors: list[str] = []

    def http(self) -> None:
        with httpx.Client(timeout=60) as c:
            for i in range(1000):
                try:
                    r = c.post(f"{self.server.url}/fhir", json=_bundle(i),
                               headers={"Authorization": f"Bearer {WRITER}"})
                except httpx.HTTPError:
                    return  # killed
                if r.status_code != 200:
                    self.errors.append(f"HTTP {r.status_code} {r.text[:200]}")
                    return
                self.http_acked.append(i)

    def hl7(self) -> None:
        try:
            with MLLPClient("127.0.0.1", self.server.mllp) as mllp:
                for i in range(1000):
                    raw = mllp.send_message(_oru(i))
                    if not raw:
                        return  # killed: connection closed without an answer
                    reply = read_ack(raw)
                    if reply.code != "AA" or reply.control_id != f"msg-{i}":
                        self.errors.append(f"HL7 {reply}")
                        return
                    self.hl7_acked.append(i)
        except OSError:
            return


def _identities(store: EventStore) -> Counter[str]:
    return Counter(s.split("/_history/")[0] for s in store.read("events").column("source").to_pylist())


def test_kill_9_mid_stream_loses_no_acknowledged_result_and_duplicates_none(server: Server) -> None:
    feed = Feed(server)
    threads = [threading.Thread(target=feed.http), threading.Thread(target=feed.hl7)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 300
    while (len(feed.http_acked) < KILL_AFTER or len(feed.hl7_acked) < KILL_AFTER) and not feed.errors:
        assert time.monotonic() < deadline, "no progress"
        assert all(t.is_alive() for t in threads), feed.errors
        time.sleep(0.01)
    workers = server.kill()
    for t in threads:
        t.join(timeout=60)
    assert not feed.errors, feed.errors
    http_acked, hl7_acked = list(feed.http_acked), list(feed.hl7_acked)
    assert len(http_acked) >= KILL_AFTER and len(hl7_acked) >= KILL_AFTER
    if server.workers > 1:  # orphaned workers end with their supervisor (they used to keep serving)
        spawned = server.spawned
        assert len(spawned) == server.workers, workers
        deadline = time.monotonic() + 45
        while any(_alive(w) for w in workers):
            assert time.monotonic() < deadline, f"workers still alive after the supervisor's SIGKILL: {workers}"
            time.sleep(0.2)
    # a request body a killed process was reading (patient data, never acknowledged): removed at the restart
    left = server.data / "incoming" / "tmp-killed"
    left.mkdir(parents=True, exist_ok=True)
    (left / "request.json").write_text(json.dumps(_bundle(999)))

    server.start()  # the same ports at once: nothing of the killed service holds them
    assert not left.exists() and list((server.data / "incoming").iterdir()) == []
    # the data folder, the database and the event store are the service user's only
    loose = [str(p) for p in [server.data, *server.data.rglob("*")] if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert not loose, loose
    store = EventStore(server.data / "events")
    ids = _identities(store)
    assert all(n == 1 for n in ids.values()), [k for k, n in ids.items() if n > 1]  # nothing twice
    for i in http_acked:
        assert ids[f"Observation/obs-{i}"] == 1, i
    for i in hl7_acked:
        assert ids[f"HL7/ord-{i}/LN/19123-9"] == 1, i

    # after the restart: everything re-sent adds nothing, new data is stored, alerts are served
    auth = {"Authorization": f"Bearer {WRITER}"}
    sent_http = max(http_acked) + 2  # the one in flight at the kill, and one never sent
    for i in range(sent_http):
        r = httpx.post(f"{server.url}/fhir", json=_bundle(i), headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["added"]["events"] == (0 if ids[f"Observation/obs-{i}"] else 1), i
    with MLLPClient("127.0.0.1", server.mllp) as mllp:
        for i in range(max(hl7_acked) + 2):
            assert read_ack(mllp.send_message(_oru(i))).code == "AA"
    # an AA means journaled (fsync'd): the store append follows within moments (docs/service.md#hl7-v2)
    deadline = time.monotonic() + 120
    while sum(k.startswith("HL7/") for k in _identities(store)) < max(hl7_acked) + 2:
        assert time.monotonic() < deadline, "acknowledged HL7 messages not stored"
        time.sleep(0.2)
    after = _identities(store)
    assert all(n == 1 for n in after.values())
    assert sum(k.startswith("Observation/") for k in after) == sent_http
    assert sum(k.startswith("HL7/") for k in after) == max(hl7_acked) + 2
    r = httpx.get(f"{server.url}/alerts", headers={"Authorization": f"Bearer {READER}"}, timeout=30)
    assert r.status_code == 200 and isinstance(r.json()["alerts"], list)

    # a clean stop (SIGTERM) with an MLLP connection still open: the lifespan closes the listener
    with MLLPClient("127.0.0.1", server.mllp) as idle:
        assert read_ack(idle.send_message(_oru(0))).code == "AA"
        assert server.proc is not None
        server.proc.terminate()
        # uvicorn re-raises the signal after a graceful shutdown: the exit status is -SIGTERM
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    log = server.log.read_text()
    assert "Application shutdown complete" in log[log.rindex("Started server process"):], log[-2000:]
