"""`mgaki serve --workers N` in real processes: it starts and serves, migrations run once safely, the ingest
writer lock holds across processes, and a JWT replayed to several workers at once is accepted once."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from hl7.client import MLLPClient

from conftest import READER, WRITER, auth, bundle, free_port, hook_request, pg_schema
from mgaki.events import EventStore
from mgaki.events.locks import FileLock
from mgaki.service.ingest.hl7 import Result, oru_r01, read_ack
from mgaki.service.ingest.ingestor import Ingestor
from mgaki.service.persistence.db import make_engine, upgrade

ISS = "https://ehr.workers.invalid"
PV = "/cds-services/mgaki-patient-view"


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def two_workers(tmp_path: Path, key: rsa.RSAPrivateKey) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "alg": "RS384", "use": "sig"})
    data = tmp_path / "data"
    cfg = {"data_dir": str(data), "host": "127.0.0.1", "port": port, "public_base_url": base, "warm_up": False,
           "mllp_port": free_port(),
           "cds_issuers": [{"iss": ISS, "keys": [jwk]}],
           "tokens": [{"name": "nurse", "token": READER, "roles": ["reader"]},
                      {"name": "feed", "token": WRITER, "roles": ["writer"]}]}
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGAKI_")}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mgaki", "serve", "--config", str(path), "--workers", "2"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield base, proc, data
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert "Traceback" not in log.read_text(), log.read_text()


def _token(key: rsa.RSAPrivateKey, aud: str, jti: str | None = None) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISS, "aud": aud, "iat": now, "exp": now + 300, "jti": jti or uuid.uuid4().hex},
                      key, algorithm="RS384", headers={"kid": "k1"})


def test_two_workers_start_and_serve(two_workers: tuple[str, subprocess.Popen[bytes], Path],
                                     key: rsa.RSAPrivateKey) -> None:
    base, proc, data = two_workers
    workers = [p for p in _children(proc.pid) if "multiprocessing.spawn" in _cmdline(p)]
    assert len(workers) == 2, [_cmdline(p) for p in _children(proc.pid)]

    body = hook_request("general_low_cheungpasitporn")
    # distinct connections, so the kernel hands them to either worker; every one answered with the cards
    for _ in range(6):
        with httpx.Client(base_url=base, timeout=60) as c:
            r = c.post(PV, json=body, headers=auth(_token(key, base + PV)))
            assert r.status_code == 200, r.text
            assert r.json()["cards"][0]["summary"].startswith("Mg ")

    # one JWT sent to both workers at once: the jti is accepted exactly once, the rest are replays (401)
    tok = _token(key, base + PV, jti="same-jti")

    def once(_: int) -> httpx.Response:
        with httpx.Client(base_url=base, timeout=60) as c:
            return c.post(PV, json=body, headers=auth(tok))

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = sorted(r.status_code for r in pool.map(once, range(6)))
    assert codes == [200, 401, 401, 401, 401, 401], codes

    b = bundle("general_low_cheungpasitporn")
    b["type"] = "batch"
    r = httpx.post(f"{base}/fhir", json=b, headers=auth(WRITER), timeout=120)
    assert r.status_code == 200 and r.json()["added"]["events"] > 0, r.text
    eng = make_engine(f"sqlite:///{data / 'mgaki.db'}")
    with eng.connect() as con:
        actions = dict(con.execute(sa.text("SELECT action, count(*) FROM audit GROUP BY action")).all())
    eng.dispose()
    # 6 calls + the one accepted replayed token; the 5 replays refused (401, audited as denied); the ingest
    assert actions == {"read": 7, "denied": 5, "write": 1}

    # HL7 over MLLP: both workers listen on the one port (SO_REUSEPORT); every connection is acknowledged
    # after its message is stored, and each message is stored once whichever worker took it
    mllp = yaml.safe_load((data.parent / "svc.yaml").read_text())["mllp_port"]
    t0 = datetime(2024, 3, 1, 8, tzinfo=UTC)
    msgs = [oru_r01(f"hl7-{i}", [Result("19123-9", 1.1, "mg/dL", t0)], visit=f"v{i}", admitted=t0) for i in range(6)]

    def send(msg: str) -> str:
        with MLLPClient("127.0.0.1", mllp) as c:
            return read_ack(c.send_message(msg)).code

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert list(pool.map(send, msgs)) == ["AA"] * 6
    assert send(msgs[0]) == "AA"  # a resend is acknowledged and adds nothing
    # an AA means journaled (fsync'd); each worker stores what it journaled right after (docs/service.md#hl7-v2)
    deadline = time.monotonic() + 120
    while True:
        events = EventStore(data / "events").read("events").to_pylist()
        stored = sorted(e["subject_id"] for e in events if e["subject_id"].startswith("hl7-"))
        if len(stored) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stored == [f"hl7-{i}" for i in range(6)]


_HOLD = """
import sys
from pathlib import Path
from mgaki.events.locks import FileLock
lock = FileLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
sys.stdin.readline()
"""


def _holder(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _step(proc: subprocess.Popen[str], expect: str) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == expect


def test_file_lock_excludes_other_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    mine = FileLock(path)
    other = _holder(path)
    try:
        assert not mine.acquire(blocking=False)
        _step(other, "released")
        assert mine.acquire(blocking=False)
        mine.release()
    finally:
        other.communicate(timeout=30)  # stdin closed: the holder releases (if still held) and exits
    again = _holder(path)
    again.kill()  # a crashed holder: the kernel drops its lock
    again.communicate(timeout=30)
    with mine:
        assert not FileLock(path).acquire(blocking=False)  # also excludes another holder in this process
    assert mine.acquire(blocking=False)
    mine.release()


def test_ingest_waits_for_another_process_holding_the_writer_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'mgaki.db'}")
    upgrade(engine)
    ingestor = Ingestor(data, engine, run_surveillance=False)
    b = bundle("general_low_cheungpasitporn")
    b["type"] = "batch"
    payload = json.dumps(b).encode()
    other = _holder(data / "ingest.lock")  # another worker in the middle of an append
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.setdefault("r", ingestor.ingest(payload, ".json")))
    try:
        t.start()
        t.join(2.0)
        assert t.is_alive() and not result  # blocked: two processes never append at once
        assert not list((data / "events").glob("*/*.parquet"))
        _step(other, "released")
        t.join(120)
        assert not t.is_alive() and result["r"].added["events"] > 0
    finally:
        other.communicate(timeout=30)
        engine.dispose()


_MIGRATE = """
import sys
from pathlib import Path
from mgaki.service import ServiceConfig
from mgaki.service.app import prepare_database
cfg = ServiceConfig(data_dir=Path(sys.argv[1]), database_url=sys.argv[2] or None)
print("ready", flush=True)
sys.stdin.readline()
prepare_database(cfg)
print("ok", flush=True)
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file to be, or a schema of its own on the local PostgreSQL (dropped after)."""
    if request.param == "sqlite":
        yield ""
        return
    with pg_schema(request.getfixturevalue("pg_server")) as url:
        yield url


def test_migrations_run_once_when_processes_start_together(tmp_path: Path, fresh_db: str) -> None:
    """Four processes migrate a fresh database at the same moment (as N workers would without the parent)."""
    data = tmp_path / "fresh"
    procs = [subprocess.Popen([sys.executable, "-c", _MIGRATE, str(data), fresh_db], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:  # all imported and waiting
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:  # released together
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    eng = make_engine(fresh_db or f"sqlite:///{data / 'mgaki.db'}")
    with eng.connect() as con:
        tables = set(sa.inspect(con).get_table_names())
        heads = con.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one()
    eng.dispose()
    assert {"audit", "alerts", "cds_jti", "cds_feedback"} <= tables and heads == 1


def test_ingest_waiting_for_the_writer_lock_leaves_the_event_loop_free(tmp_path: Path) -> None:
    """An ingest queued behind another process's append runs in a thread: the worker keeps answering."""
    import asyncio

    from conftest import make_config
    from mgaki.service import create_app

    cfg = make_config(tmp_path, surveil_on_ingest=False)
    app = create_app(cfg)
    b = bundle("general_low_cheungpasitporn")
    b["type"] = "batch"
    other = _holder(cfg.data_dir / "ingest.lock")
    done: list[str] = []
    safety = threading.Timer(20.0, lambda: _step(other, "released"))  # never hang if the loop were blocked

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            async def ingest() -> None:
                r = await c.post("/fhir", json=b, headers=auth(WRITER))
                assert r.status_code == 200, r.text
                done.append("ingest")

            task = asyncio.create_task(ingest())
            await asyncio.sleep(0.3)
            r = await c.get("/health")
            assert r.status_code == 200
            done.append("health")
            _step(other, "released")
            await task

    safety.start()
    try:
        asyncio.run(scenario())
    finally:
        safety.cancel()
        other.communicate(timeout=30)
    assert done == ["health", "ingest"]
