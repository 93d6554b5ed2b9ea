"""MLLP over TLS: results (PHI) cross the network encrypted; with a client CA only known senders are accepted."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from conftest import make_config
from mgaki.errors import InputError
from mgaki.events import EventStore
from mgaki.service import create_app
from mgaki.service.config import load_config
from mgaki.service.ingest.hl7 import Result, oru_r01, read_ack
from mgaki.service.ingest.mllp import mllp_exchange

T0 = dt.datetime(2024, 3, 1, 8, 0, tzinfo=dt.UTC)


def _cert(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, ca: bool = False,
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    c, k = folder / f"{name}.pem", folder / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost and a client (lab system) certificate, all signed by the CA."""
    ca = _cert("mgaki test CA", None, ca=True)
    out: dict[str, Path] = {}
    out["ca"], _ = _write(tmp_path, "ca", *ca)
    out["server"], out["server_key"] = _write(tmp_path, "server", *_cert("localhost", ca))
    out["client"], out["client_key"] = _write(tmp_path, "client", *_cert("lab-system", ca))
    return out


def _send(port: int, message: str, ca: Path, client: tuple[Path, Path] | None = None) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    if client:
        ctx.load_cert_chain(*client)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        return mllp_exchange(s, message.encode()).decode()


def _msg(pid: str) -> str:
    return oru_r01(pid, [Result("19123-9", 1.1, "mg/dL", T0)], visit=f"{pid}-v", admitted=T0, control_id=f"{pid}-c")


class EventStoreAfterAck(EventStore):
    """The store as read once the feed has stored every message it acknowledged (AA: journaled, then stored)."""

    def __init__(self, root: Path, feed: Any) -> None:
        super().__init__(root)
        self.feed = feed

    def read(self, table: str) -> pa.Table:
        assert self.feed.wait_applied(60)
        return super().read(table)


@pytest.fixture
def tls_app(tmp_path: Path, pki: dict[str, Path], request: pytest.FixtureRequest,
            ) -> Iterator[tuple[int, EventStoreAfterAck]]:
    mutual = getattr(request, "param", False)
    cfg = make_config(tmp_path, mllp_port=0, mllp_tls_cert=pki["server"], mllp_tls_key=pki["server_key"],
                      mllp_tls_client_ca=pki["ca"] if mutual else None)
    with TestClient(create_app(cfg)) as c:
        feed = c.app.state.mllp.feed  # type: ignore[attr-defined]
        yield c.app.state.mllp.port, EventStoreAfterAck(tmp_path / "data" / "events", feed)  # type: ignore[attr-defined]


def test_results_over_tls_are_acknowledged_and_stored(tls_app: tuple[int, EventStoreAfterAck],
                                                      pki: dict[str, Path]) -> None:
    port, events = tls_app
    assert read_ack(_send(port, _msg("p1"), pki["ca"])).code == "AA"
    assert [r["subject_id"] for r in events.read("events").to_pylist()] == ["p1"]
    # a sender speaking plain MLLP to the TLS port gets no ACK and stores nothing
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"\x0b" + _msg("p2").encode() + b"\x1c\r")
        s.settimeout(10)
        try:
            reply = s.recv(65536)
        except (ConnectionError, TimeoutError):
            reply = b""
    assert b"MSA|AA" not in reply
    assert [r["subject_id"] for r in events.read("events").to_pylist()] == ["p1"]


@pytest.mark.parametrize("tls_app", [True], indirect=True)
def test_with_a_client_ca_only_senders_with_its_certificates_are_accepted(tls_app: tuple[int, EventStoreAfterAck],
                                                                          pki: dict[str, Path]) -> None:
    port, events = tls_app
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _send(port, _msg("p1"), pki["ca"])  # no client certificate: the handshake is refused
    assert read_ack(_send(port, _msg("p2"), pki["ca"], (pki["client"], pki["client_key"]))).code == "AA"
    assert [r["subject_id"] for r in events.read("events").to_pylist()] == ["p2"]


def test_tls_settings_are_checked_at_load(tmp_path: Path, pki: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="mllp_tls_cert and mllp_tls_key go together"):
        load_config(env={}, data_dir=tmp_path, mllp_tls_cert=pki["server"])
    with pytest.raises(InputError, match="mllp_tls_client_ca needs mllp_tls_cert"):
        load_config(env={}, data_dir=tmp_path, mllp_tls_client_ca=pki["ca"])
    with pytest.raises(InputError, match=r"mllp_tls_key: .*missing\.key is not a readable file"):
        load_config(env={}, data_dir=tmp_path, mllp_tls_cert=pki["server"], mllp_tls_key=tmp_path / "missing.key")
    env = {"MGAKI_MLLP_TLS_CERT": str(pki["server"]), "MGAKI_MLLP_TLS_KEY": str(pki["server_key"])}
    assert load_config(env=env, data_dir=tmp_path).mllp_tls_key == pki["server_key"]


def test_the_audit_actor_is_the_client_certificate_not_msh3(tmp_path: Path, pki: dict[str, Path]) -> None:
    """Who stored a result is what the connection proves (the verified client certificate); MSH-3, which any
    sender writes as it likes, is kept only as the sender's claim (issue 16 point 7)."""
    import sqlalchemy as sa

    cfg = make_config(tmp_path, mllp_port=0, mllp_tls_cert=pki["server"], mllp_tls_key=pki["server_key"],
                      mllp_tls_client_ca=pki["ca"])
    with TestClient(create_app(cfg)) as c:
        port = c.app.state.mllp.port  # type: ignore[attr-defined]
        spoofed = _msg("p7").replace("MSH|^~\\&|LAB|", "MSH|^~\\&|TRUSTED-LIS|", 1)
        assert "TRUSTED-LIS" in spoofed
        assert read_ack(_send(port, spoofed, pki["ca"], (pki["client"], pki["client_key"]))).code == "AA"
        assert c.app.state.mllp.feed.wait_applied(60)  # type: ignore[attr-defined]  # audited when stored
        with c.app.state.engine.connect() as con:  # type: ignore[attr-defined]
            rows = con.execute(sa.text("SELECT actor, patient_id, detail FROM audit WHERE action = 'write'")).all()
    assert len(rows) == 1
    actor, pid, detail = rows[0]
    assert actor.startswith("mllp-cert:CN=lab-system;serial=") and actor.endswith(";issuer=mgaki test CA")
    assert pid == "p7" and detail == "MSH-3 TRUSTED-LIS (the sender's own claim)"
