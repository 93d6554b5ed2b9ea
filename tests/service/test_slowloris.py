"""Slow and greedy connections against a real `mgaki serve` (issue 16 point 2): callers without credentials
cannot starve signed EHR calls, request headers must arrive in time, one address holds a bounded number of
connections.

Measured on main before the fix: 8 slow unauthenticated connections made 13 of 19 signed calls fail with 503,
64 made 19 of 19 fail (each held a CDS in-flight slot while its body trickled in).
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from test_crash import Server

from conftest import hook_request

ISS = "https://ehr.example.org"
PV = "/cds-services/mgaki-patient-view"


class Serve(Server):
    """`mgaki serve` in a subprocess on free ports (test_crash's), with a CDS issuer and ``extra`` settings."""

    def __init__(self, tmp: Path, key: rsa.RSAPrivateKey, **extra: Any) -> None:
        super().__init__(tmp)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": "k1", "alg": "RS384", "use": "sig"})
        cfg = {"data_dir": str(self.data), "warm_up": False, "cds_issuers": [{"iss": ISS, "keys": [jwk]}],
               "public_base_url": self.url, **extra}
        self.config.write_text(yaml.safe_dump(cfg))
        self.start()

    @property
    def port(self) -> int:
        return self.http


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def serve(tmp_path: Path, key: rsa.RSAPrivateKey) -> Iterator[Any]:
    started: list[Serve] = []

    def start(**extra: Any) -> Serve:
        started.append(Serve(tmp_path, key, **extra))
        return started[-1]

    try:
        yield start
    finally:
        for s in started:
            s.stop()


def _open(port: int, source: str, data: bytes) -> socket.socket:
    """A connection from ``source`` (another loopback address: another client) that sends ``data`` and stalls."""
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(data)
    return s


def _signed(key: rsa.RSAPrivateKey, url: str) -> int:
    now = int(time.time())
    token = jwt.encode({"iss": ISS, "aud": url + PV, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())},
                       key, algorithm="RS384", headers={"kid": "k1"})
    r = httpx.post(url + PV, json=hook_request("general_low_cheungpasitporn"),
                   headers={"Authorization": f"Bearer {token}"}, timeout=60)
    return r.status_code


def test_slow_unauthenticated_connections_do_not_starve_signed_callers(serve: Any, key: rsa.RSAPrivateKey) -> None:
    server = serve()
    head = f"POST {PV} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n"
    slow = ([(head + "\r\n").encode() + b"{" * 100] * 24  # no credentials, a body that trickles
            + [(head + "Authorization: Bearer not.a.jwt\r\n\r\n").encode() + b"{" * 100] * 24  # bad credentials
            + [b"POST /fhir HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n"
               b"Content-Length: 1000000\r\n\r\n{"] * 8  # ingest, no token
            + [f"POST {PV} HTTP/1.1\r\nHost: x\r\nContent-".encode()] * 8)  # headers that never end
    socks = [_open(server.port, "127.0.0.2", data) for data in slow]
    try:
        time.sleep(1.0)  # the server has seen them all
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: _signed(key, server.url), range(19)))
        assert codes == [200] * 19, codes
    finally:
        for s in socks:
            s.close()


def _reply(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    return out


def test_header_timeout_and_connections_per_client(serve: Any, key: rsa.RSAPrivateKey) -> None:
    server = serve(header_timeout_s=1.0, max_connections_per_client=4)
    partial = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
    t0 = time.monotonic()
    held = [_open(server.port, "127.0.0.3", partial) for _ in range(4)]
    extra = _open(server.port, "127.0.0.3", partial)  # the fifth from the same address
    try:
        refused = _reply(extra)
        assert refused.startswith(b"HTTP/1.1 429 ") and b"max_connections_per_client" in refused
        # another address is not affected, and a complete request is answered
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        for s in held:  # headers not finished within header_timeout_s: 408, closed
            reply = _reply(s)
            assert reply.startswith(b"HTTP/1.1 408 ") and b"header_timeout_s" in reply
        assert time.monotonic() - t0 < 8
        held.append(_open(server.port, "127.0.0.3", b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        assert _reply(held[-1]).startswith(b"HTTP/1.1 200 ")  # the slots came back when they were closed
    finally:
        for s in (*held, extra):
            s.close()
