"""The server under test: a real `mgaki serve` subprocess on a free port (SQLite or its own PostgreSQL
schema), pinned to the benchmark CPUs, its CPU time and its log; the JWT key the EHR signs with."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ISSUER = "https://ehr.bench.invalid"
WRITER = "bench-writer-token-0123456789"

# ---------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants (uvicorn's workers), all threads, from /proc.

    A worker that exits during a phase takes its CPU with it (reaped by the supervisor, counted in its
    cutime only once waited for); workers live as long as the server here.
    """
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                children.setdefault(int(_stat(int(d.name))[1]), []).append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            f = _stat(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
        todo += children.get(p, [])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    base_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    config: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    log_seen: int = 0

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def new_log_problems(self) -> dict[str, int]:
        """Error lines the server logged since the last call (the app logs only the exception type: no PHI)."""
        text = self.log_path.read_text(errors="replace")
        fresh, self.log_seen = text[self.log_seen:], len(text)
        out: dict[str, int] = {}
        for line in fresh.splitlines():
            if "error" in line.lower() or "traceback" in line.lower() or "warning" in line.lower():
                key = line.strip()[:160]
                out[key] = out.get(key, 0) + 1
        return out

    def wait_idle(self, cpu_fraction: float = 0.15, timeout_s: float = 180.0) -> float:
        """Wait until the server has worked off what it still holds (requests an overloaded phase left
        queued), so that the next phase starts on an idle server; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            c0 = cpu_seconds(self.pid)
            time.sleep(1.0)
            if cpu_seconds(self.pid) - c0 < cpu_fraction:
                break
        return time.monotonic() - t0


def hl7_listener(server: Server) -> tuple[str, int] | None:
    """The (host, port) of the server's HL7 v2 MLLP listener (``hl7_config`` turns it on), or None."""
    port = server.config.get("mllp_port")
    return ("127.0.0.1", int(port)) if port else None


def hl7_config(port: int) -> dict[str, Any]:
    """The service-config keys that turn the MLLP listener on at ``port`` (shared by the workers)."""
    return {"mllp_port": port}


@contextlib.contextmanager
def start_server(tmp: Path, name: str, *, jwt_key: dict[str, Any] | None, database_url: str | None,
                 cpus: set[int], workers: int = 2, extra: dict[str, Any] | None = None,
                 startup_timeout: float = 120.0) -> Iterator[Server]:
    """``python -m mgaki serve --workers N`` on a free port, pinned to ``cpus``; stopped (SIGTERM, then kill)."""
    import httpx
    import yaml

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg: dict[str, Any] = {
        "data_dir": str(tmp / f"data-{name}"), "host": "127.0.0.1", "port": port, "public_base_url": base,
        "cds_require_jwt": jwt_key is not None,
        "cds_issuers": [{"iss": ISSUER, "keys": [jwt_key], "algorithms": ["RS384"]}] if jwt_key else [],
        "tokens": [{"name": "bench-feed", "token": WRITER, "roles": ["writer"]}],
        **hl7_config(free_port()), **(extra or {})}
    if database_url:
        cfg["database_url"] = database_url
    cfg_path = tmp / f"service-{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    log_path = tmp / f"server-{name}.log"
    cmd = ["taskset", "-c", ",".join(map(str, sorted(cpus))),
           sys.executable, "-m", "mgaki", "serve", "--config", str(cfg_path), "--workers", str(workers)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(base, proc, log_path, cfg)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} at start-up:\n{server.log_tail()}")
            try:
                if httpx.get(f"{base}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {startup_timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A schema of its own on the PostgreSQL at ``url`` (search_path set in the returned URL), dropped after."""
    import sqlalchemy as sa

    admin = sa.create_engine(url, connect_args={"connect_timeout": 3})
    schema = f"mgaki_bench_{uuid.uuid4().hex[:12]}"
    with admin.begin() as con:
        con.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        sep = "&" if "?" in url else "?"
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as con:
            con.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def make_key() -> tuple[Any, dict[str, Any]]:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "bench-1", "alg": "RS384", "use": "sig"})
    return key, jwk


def sign_tokens(key: Any, audience: str, n: int, lifetime_s: int) -> list[dict[str, str]]:
    """One Authorization header per request, each JWT with its own jti (the server refuses replays)."""
    import jwt

    now = int(time.time())
    return [{"Authorization": "Bearer " + jwt.encode(
        {"iss": ISSUER, "aud": audience, "iat": now, "exp": now + lifetime_s, "jti": uuid.uuid4().hex,
         "sub": "bench-client"}, key, algorithm="RS384", headers={"kid": "bench-1"})} for _ in range(n)]

