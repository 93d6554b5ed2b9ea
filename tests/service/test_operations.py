"""Operations (issue 16 point 9): owner-only data, no request bodies left behind, idle MLLP connections closed.

The supervisor kill (workers end with it, the restart binds the same ports) is in test_crash.py.
"""

from __future__ import annotations

import socket
import stat
import time
from pathlib import Path

from fastapi.testclient import TestClient

from conftest import READER, auth, make_config
from mgaki.service import create_app
from mgaki.service.ingest.ingestor import INCOMING, Ingestor, clear_incoming
from mgaki.service.persistence.db import make_engine


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_the_data_folder_and_the_database_are_owner_only(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    with TestClient(create_app(cfg)) as c:
        assert c.get("/alerts", headers=auth(READER)).status_code == 200  # a write (its audit row): WAL in use
        db = cfg.data_dir / "mgaki.db"
        assert _mode(cfg.data_dir) == 0o700
        assert _mode(db) == 0o600  # was 0644: readable by every user of the machine
        for extra in ("mgaki.db-wal", "mgaki.db-shm"):
            assert _mode(cfg.data_dir / extra) == 0o600, extra


def test_request_bodies_left_by_a_killed_process_are_removed_but_never_a_live_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    left = data / INCOMING / "tmpkilled"
    left.mkdir(parents=True)
    (left / "request.json").write_text('{"resourceType": "Bundle", "entry": [{"resource": {"id": "MRN-1"}}]}')
    (data / INCOMING / "stray.ndjson").write_text("{}")
    engine = make_engine(f"sqlite:///{data / 'x.db'}")
    live = Ingestor(data, engine, run_surveillance=False)  # a process still serving this folder
    try:
        t0 = time.monotonic()
        assert clear_incoming(data, wait_s=0.5) is None  # waits for it, then leaves everything
        assert time.monotonic() - t0 >= 0.5 and (left / "request.json").exists()
    finally:
        live.stop()
    assert clear_incoming(data, wait_s=0.5) == 2
    assert list((data / INCOMING).iterdir()) == []
    engine.dispose()


def test_an_idle_mllp_connection_is_closed(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, mllp_port=0, mllp_idle_timeout_s=0.5)
    with TestClient(create_app(cfg)) as c:
        port = c.app.state.mllp.port  # type: ignore[attr-defined]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"\x0bMSH|^~\\&|half a message")  # a block never finished, then silence
            t0 = time.monotonic()
            assert s.recv(100) == b""  # closed by the service
            assert 0.4 < time.monotonic() - t0 < 5
