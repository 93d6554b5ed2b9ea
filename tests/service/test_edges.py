"""The service's edges (issue 16 points 1, 2, 3, 6, 8): the JWT audience from configuration only, credentials
before a CDS slot or a body, body limits before buffering, media types and encodings, malformed and implausible
input quarantined or refused (never a 500), and the patient list of a writer token."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from test_mllp_tls import _send, pki  # noqa: F401 (pki: the fixture, a CA with server and client certificates)

from conftest import READER, WRITER, auth, bundle, hook_request, make_config
from mgaki.errors import InputError
from mgaki.service import create_app, load_config

ISS = "https://ehr.example.org"
PUBLIC = "https://mgaki.hospital.example"
PV = "/cds-services/mgaki-patient-view"
FHIR_JSON = {**auth(WRITER), "content-type": "application/fhir+json"}
NDJSON = {**auth(WRITER), "content-type": "application/fhir+ndjson"}


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _issuer(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "alg": "RS384", "use": "sig"})
    return {"iss": ISS, "keys": [jwk]}


def _jwt(key: rsa.RSAPrivateKey, aud: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISS, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}, key,
                      algorithm="RS384", headers={"kid": "k1"})


def _records(client: TestClient, table: str) -> list[dict[str, Any]]:
    store = client.app.state.ingestor.store
    return store.read(table).to_pylist() if store.files(table) else []


# --- point 1: the JWT audience comes from the configuration, never from the Host header -----------------------


def test_jwt_required_without_an_audience_refuses_to_start(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    """Today's hole: with public_base_url unset, aud was derived from the request's Host (which the caller sets)."""
    issuers = json.dumps([_issuer(key)])
    with pytest.raises(InputError, match="public_base_url is required"):
        load_config(None, env={"MGAKI_CDS_ISSUERS": issuers, "MGAKI_DATA_DIR": str(tmp_path)})
    # not required when the hooks are not guarded (development) or no client can call them yet
    assert load_config(None, env={"MGAKI_CDS_ISSUERS": issuers, "MGAKI_CDS_REQUIRE_JWT": "false"}).cds_issuers
    assert load_config(None, env={}).base_urls() == []


def test_a_jwt_for_another_host_is_refused_whatever_the_host_header(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    cfg = load_config(None, env={"MGAKI_CDS_ISSUERS": json.dumps([_issuer(key)]),
                                 "MGAKI_PUBLIC_BASE_URL": json.dumps([PUBLIC + "/", "https://mgaki.internal"]),
                                 "MGAKI_DATA_DIR": str(tmp_path / "data")}, warm_up=False)
    assert cfg.audiences(PV) == [PUBLIC + PV, "https://mgaki.internal" + PV]
    body = hook_request("general_low_cheungpasitporn")
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        forged = c.post(PV, json=body, headers={**auth(_jwt(key, "https://evil.example" + PV)),
                                                "host": "evil.example"})
        assert forged.status_code == 401 and "Audience" in forged.json()["error"]
        for base in (PUBLIC, "https://mgaki.internal"):  # each configured name the EHR may use
            r = c.post(PV, json=body, headers=auth(_jwt(key, base + PV)))
            assert r.status_code == 200, r.text


def test_no_audience_means_every_jwt_is_refused(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    """Defence in depth below the configuration check: an empty audience list accepts nothing."""
    from mgaki.service.security import AuthError, check_cds_jwt

    cfg = make_config(tmp_path, cds_require_jwt=True, cds_issuers=[_issuer(key)], public_base_url=PUBLIC)
    with pytest.raises(AuthError, match="no audience configured"):
        check_cds_jwt(cfg, f"Bearer {_jwt(key, 'http://testserver' + PV)}", [])


# --- point 2: credentials from the headers before a CDS slot or the body ------------------------------------------


def _asgi_post(app: Any, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes], complete: bool = True,
               ) -> tuple[list[dict[str, Any]], int]:
    """Run one POST through the ASGI app; (messages sent, body chunks the app pulled). ``complete`` False: the
    client then sends nothing more (the body is never finished)."""
    pulled = [0]
    queue = [{"type": "http.request", "body": c, "more_body": not complete or i < len(chunks) - 1}
             for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        if queue:
            pulled[0] += 1
            return queue.pop(0)
        await asyncio.sleep(3600)  # a client that sends nothing more
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"t"), *headers], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    return sent, pulled[0]


def _status(sent: list[dict[str, Any]]) -> int:
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def _header(sent: list[dict[str, Any]], name: bytes) -> bytes | None:
    start = next(m for m in sent if m["type"] == "http.response.start")
    return dict(start["headers"]).get(name)


@pytest.mark.parametrize("authorization", [None, b"Bearer not.a.jwt"])
def test_cds_call_without_valid_credentials_reads_no_body_and_holds_no_slot(
        tmp_path: Path, key: rsa.RSAPrivateKey, authorization: bytes | None) -> None:
    """The JWT is checked from the headers first: a caller without one gets its 401 before a byte of body is
    read (it was read, under an in-flight slot, before the check), and the connection is closed."""
    app = create_app(make_config(tmp_path, cds_require_jwt=True, cds_issuers=[_issuer(key)], public_base_url=PUBLIC,
                                 cds_max_in_flight=1))
    headers = [(b"content-type", b"application/json"), (b"content-length", b"100000")]
    if authorization:
        headers.append((b"authorization", authorization))
    sent, pulled = _asgi_post(app, PV, headers, [b"{" * 10], complete=False)  # the rest never comes
    assert _status(sent) == 401 and pulled == 0
    assert _header(sent, b"connection") == b"close"


def test_feedback_checks_its_jwt_before_reading_the_body(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    app = create_app(make_config(tmp_path, cds_require_jwt=True, cds_issuers=[_issuer(key)], public_base_url=PUBLIC))
    sent, pulled = _asgi_post(app, PV + "/feedback", [(b"content-type", b"application/json"),
                                                      (b"content-length", b"5000")], [b"{"], complete=False)
    assert _status(sent) == 401 and pulled == 0


def test_a_signed_caller_that_sends_its_body_too_slowly_gets_408(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    app = create_app(make_config(tmp_path, cds_require_jwt=True, cds_issuers=[_issuer(key)], public_base_url=PUBLIC,
                                 body_timeout_s=0.3))
    headers = [(b"content-type", b"application/json"), (b"content-length", b"100000"),
               (b"authorization", f"Bearer {_jwt(key, PUBLIC + PV)}".encode())]
    t0 = time.monotonic()
    sent, _ = _asgi_post(app, PV, headers, [b"{" * 10], complete=False)
    assert _status(sent) == 408 and time.monotonic() - t0 < 10
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert "body_timeout_s" in body["error"] and _header(sent, b"connection") == b"close"


# --- point 3: body size, per endpoint, before buffering -----------------------------------------------------------


def test_declared_body_over_the_limit_is_413_before_reading(tmp_path: Path) -> None:
    """An 8 MiB+ CDS body (default limit) is refused from its Content-Length, unauthenticated or not: no byte read
    (a 50 MB unauthenticated body used to be buffered whole, +620 MiB of memory that stayed)."""
    app = create_app(make_config(tmp_path))
    sent, pulled = _asgi_post(app, PV, [(b"content-type", b"application/json"),
                                        (b"content-length", str(50_000_000).encode())], [b"{"])
    assert _status(sent) == 413 and pulled == 0
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert "8.0 MiB" in body["error"] and "body_limits.cds" in body["error"]


def test_streamed_body_is_cut_at_the_limit(tmp_path: Path) -> None:
    """Without a Content-Length (chunked), the body is counted as it arrives and refused at the limit."""
    app = create_app(make_config(tmp_path, body_limits={"fhir": 4096}))
    chunks = [b"x" * 1024] * 100
    sent, pulled = _asgi_post(app, "/fhir", [(b"content-type", b"application/fhir+json"),
                                             (b"authorization", f"Bearer {WRITER}".encode()),
                                             (b"transfer-encoding", b"chunked")], chunks)
    assert _status(sent) == 413 and pulled == 5  # 5 KiB read, then refused: not 100
    out = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert out["resourceType"] == "OperationOutcome" and out["issue"][0]["code"] == "too-long"
    assert "body_limits.fhir" in out["issue"][0]["diagnostics"]


def _big_bundle(mib: float) -> dict[str, Any]:
    """A legal Bundle of about ``mib`` MiB: a patient, one Mg result, and a long narrative (Patient.text)."""
    b = bundle("general_low_cheungpasitporn")
    b["type"] = "batch"
    pad = "x" * int(mib * (1 << 20))
    b["entry"][0]["resource"]["text"] = {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">'
                                                                        f"{pad}</div>"}
    return b


def test_a_legal_20_mib_bundle_is_stored(client: TestClient) -> None:
    """It was refused as 'not valid FHIR' (DuckDB's 16 MiB object limit) with the server's temp path shown."""
    body = json.dumps(_big_bundle(20)).encode()
    assert len(body) > 20 << 20
    r = client.post("/fhir", content=body, headers=FHIR_JSON)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["added"]["events"] == 2 and r.json()["added"]["subjects"] == 1


def test_over_the_fhir_limit_is_413_with_the_limit_named(tmp_path: Path) -> None:
    with TestClient(create_app(make_config(tmp_path, body_limits={"fhir": 1 << 20})),
                    raise_server_exceptions=False) as c:
        r = c.post("/fhir", content=json.dumps(_big_bundle(1.5)).encode(), headers=FHIR_JSON)
        assert r.status_code == 413
        text = r.json()["issue"][0]["diagnostics"]
        assert "1.0 MiB" in text and "body_limits.fhir" in text


def test_errors_never_show_server_paths(client: TestClient, cfg: Any) -> None:
    """A body DuckDB refuses (a lone surrogate, which Python's JSON parser accepts) used to be answered with the
    server's temporary file path."""
    b = bundle("general_low_cheungpasitporn")
    b["type"] = "batch"
    body = json.dumps(b).replace('"female"', '"\\ud800"').encode()
    r = client.post("/fhir", content=body, headers=FHIR_JSON)
    assert r.status_code == 400
    text = r.text
    for leak in (str(cfg.data_dir), "/tmp", "incoming", "request.json"):
        assert leak not in text, text


# --- point 6: malformed and implausible input -----------------------------------------------------------------------


def test_json_nested_2000_deep_is_400_not_500(client: TestClient) -> None:
    deep = "[" * 2000 + "]" * 2000
    b = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": []})[:-1] + f', "extension": {deep}}}'
    r = client.post("/fhir", content=b.encode(), headers=FHIR_JSON)
    assert r.status_code == 400 and "nested too deeply" in r.json()["issue"][0]["diagnostics"]
    line = '{"resourceType": "Patient", "id": "p1", "extension": ' + deep + "}\n"
    r = client.post("/fhir/$import-ndjson", content=line.encode(), headers=NDJSON)
    assert r.status_code == 400 and "line 1" in r.json()["issue"][0]["diagnostics"]
    r = client.post(PV, content=json.dumps({"hook": "patient-view", "context": json.loads(
        "[" * 500 + "]" * 500)}).encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422  # the CDS body parser (pydantic-core) has its own depth limit


def _mg(oid: str, when: str, value: float) -> dict[str, Any]:
    return {"resource": {"resourceType": "Observation", "id": oid, "status": "final",
                         "code": {"coding": [{"system": "http://loinc.org", "code": "19123-9"}]},
                         "subject": {"reference": "Patient/p1"}, "effectiveDateTime": when,
                         "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                           "code": "mg/dL"}}}


def test_implausible_times_are_quarantined_not_the_latest_mg(client: TestClient) -> None:
    """A result dated 9999 became the patient's latest Mg; 0001 sorted before everything; tomorrow+ from a live
    feed cannot be a measurement."""
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400))
    b = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-01-01"}},
        _mg("ok", "2024-03-01T08:00:00Z", 1.8), _mg("y9999", "9999-12-31T00:00:00Z", 0.4),
        _mg("y0001", "0001-01-01T00:00:00Z", 0.5), _mg("ahead", future, 0.6)]}
    r = client.post("/fhir", json=b, headers=auth(WRITER)).json()
    assert r["added"]["events"] == 1 and r["quarantined"] == 3
    events = _records(client, "events")
    assert [e["numeric_value"] for e in events] == [1.8]
    reasons = sorted(q["reason"] for q in _records(client, "quarantine"))
    assert any("'9999-12-31T00:00:00Z' is outside the plausible window 1900-01-01 to " in x for x in reasons)
    assert any("'0001-01-01T00:00:00Z' is outside the plausible window" in x for x in reasons)
    assert any(f"'{future}' is outside the plausible window" in x and "UTC" in x for x in reasons)
    latest = client.get("/dashboard/patients?scope=all", headers=auth(READER)).json()
    assert [p["latest_mg_mg_dl"] for p in latest["patients"]] == [1.8]


@pytest.mark.parametrize("birth, reason", [("2999-01-01", "'2999-01-01' is outside the plausible range"),
                                           ("1950-02-30", "'1950-02-30' is not a date"),
                                           ("1820", "'1820' is outside the plausible range 1850 to")])
def test_implausible_birth_dates_are_quarantined(client: TestClient, birth: str, reason: str) -> None:
    b = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": birth}},
        _mg("ok", "2024-03-01T08:00:00Z", 1.8)]}
    r = client.post("/fhir", json=b, headers=auth(WRITER)).json()
    assert r["added"]["subjects"] == 0 and r["added"]["events"] == 1 and r["quarantined"] == 1
    (q,) = _records(client, "quarantine")
    assert q["table"] == "subjects" and reason in q["reason"] and q["subject_id"] == "p1"


def test_a_group_subject_is_not_stored_as_a_patient(client: TestClient) -> None:
    b = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-01-01"}},
        _mg("ok", "2024-03-01T08:00:00Z", 1.8),
        {"resource": {**_mg("grp", "2024-03-01T09:00:00Z", 0.4)["resource"], "subject": {"reference": "Group/x"}}},
        {"resource": {**_mg("abs", "2024-03-01T10:00:00Z", 0.5)["resource"],
                      "subject": {"reference": "https://fhir.example/Device/x"}}},
        {"fullUrl": "urn:uuid:5b6f2ffa-9d4c-4a06-a0b8-2d0c5a4bb3f1",
         "resource": {"resourceType": "Group", "id": "g2", "type": "person", "actual": True}},
        {"resource": {**_mg("urn", "2024-03-01T11:00:00Z", 0.6)["resource"],
                      "subject": {"reference": "urn:uuid:5b6f2ffa-9d4c-4a06-a0b8-2d0c5a4bb3f1"}}}]}
    r = client.post("/fhir", json=b, headers=auth(WRITER)).json()
    assert r["added"]["events"] == 1 and r["quarantined"] == 3, r
    assert {e["subject_id"] for e in _records(client, "events")} == {"p1"}
    reasons = sorted(q["reason"] for q in _records(client, "quarantine"))
    assert "Observation subject 'Group/x' is not a Patient (a Group): not stored" in reasons
    assert "Observation subject 'https://fhir.example/Device/x' is not a Patient (a Device): not stored" in reasons
    assert any("urn:uuid:5b6f2ffa" in x and "(a Group)" in x for x in reasons)
    assert client.get("/patients/x/alerts", headers=auth(READER)).json()["alerts"] == []


@pytest.mark.parametrize("path, headers, status, words", [
    ("/fhir", {"content-type": "text/plain"}, 415, "Content-Type 'text/plain' is not accepted"),
    ("/fhir", {}, 415, "Content-Type '(none)'"),
    ("/fhir", {"content-type": "application/fhir+json", "content-encoding": "gzip"}, 400, "not a gzip stream"),
    ("/fhir", {"content-type": "application/fhir+json", "content-encoding": "br"}, 415, "Content-Encoding 'br'"),
    ("/fhir/$import-ndjson", {"content-type": "application/json"}, 415, "application/fhir+ndjson"),
])
def test_media_type_and_encoding_are_checked(client: TestClient, path: str, headers: dict[str, str], status: int,
                                             words: str) -> None:
    b = bundle("general_low_cheungpasitporn")
    b["type"] = "batch"
    r = client.post(path, content=json.dumps(b).encode(), headers={**auth(WRITER), **headers})
    assert r.status_code == status and words in r.json()["issue"][0]["diagnostics"], r.text
    assert _records(client, "events") == []


def test_gzip_bodies_are_inflated_within_the_limit(tmp_path: Path) -> None:
    b = bundle("general_low_cheungpasitporn")
    b["type"] = "batch"
    with TestClient(create_app(make_config(tmp_path, body_limits={"fhir": 64 << 10})),
                    raise_server_exceptions=False) as c:
        r = c.post("/fhir", content=gzip.compress(json.dumps(b).encode()),
                   headers={**FHIR_JSON, "content-encoding": "gzip"})
        assert r.status_code == 200 and r.json()["added"]["events"] == 2, r.text
        bomb = gzip.compress(b"{" + b" " * (10 << 20) + b"}")  # 10 KiB on the wire, 10 MiB inflated
        r = c.post("/fhir", content=bomb, headers={**FHIR_JSON, "content-encoding": "gzip"})
        assert r.status_code == 413 and "once inflated" in r.json()["issue"][0]["diagnostics"]


# --- point 8: a writer token limited to some patients writes only theirs -------------------------------------------


def _two_patients() -> dict[str, Any]:
    b = bundle("general_low_cheungpasitporn")
    b["type"] = "batch"
    other = json.loads(json.dumps(b["entry"]).replace('"p1"', '"p2"').replace("Patient/p1", "Patient/p2"))
    for e in other:
        e["resource"]["id"] = e["resource"]["id"] + "-b"
    other[0]["resource"]["id"] = "p2"
    b["entry"] += other
    return b


@pytest.fixture
def scoped(tmp_path: Path) -> Any:
    cfg = make_config(tmp_path, tokens=[
        {"name": "ward-feed", "token": "ward-feed-token-0123456789", "roles": ["writer"], "patients": ["p1"]},
        {"name": "nurse-station", "token": READER, "roles": ["reader"]}])
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        yield c


def test_writer_limited_to_a_patient_cannot_post_another(scoped: TestClient) -> None:
    ward = {"Authorization": "Bearer ward-feed-token-0123456789", "content-type": "application/fhir+json"}
    r = scoped.post("/fhir", content=json.dumps(_two_patients()).encode(), headers=ward)
    assert r.status_code == 403, r.text
    assert "may not write data of patient 'p2'" in r.json()["error"] and "nothing was stored" in r.json()["error"]
    assert _records(scoped, "events") == [] and _records(scoped, "subjects") == []
    res = [e["resource"] for e in _two_patients()["entry"]]
    r = scoped.post("/fhir/$import-ndjson", content="".join(json.dumps(x) + "\n" for x in res).encode(),
                    headers={**ward, "content-type": "application/fhir+ndjson"})
    assert r.status_code == 403 and "'p2'" in r.json()["error"]
    with scoped.app.state.engine.connect() as con:
        rows = con.execute(sa.text("SELECT actor, action, endpoint, patient_id FROM audit ORDER BY id")).all()
    assert ("ward-feed", "denied", "POST /fhir", "p2") in rows
    assert ("ward-feed", "denied", "POST /fhir/$import-ndjson", "p2") in rows
    assert not [r for r in rows if r[1] != "denied"]  # nothing written
    b = bundle("general_low_cheungpasitporn")  # its own patient: stored
    b["type"] = "batch"
    r = scoped.post("/fhir", content=json.dumps(b).encode(), headers=ward)
    assert r.status_code == 200 and r.json()["added"]["events"] == 2
    assert set(pc.unique(scoped.app.state.ingestor.store.read("events")["subject_id"]).to_pylist()) == {"p1"}


def test_hl7_sender_limited_to_a_patient_cannot_send_another(tmp_path: Path, pki: dict[str, Path]) -> None:  # noqa: F811
    """An MLLP sender whose verified client certificate names a token (mllp_client_cn) writes only that token's
    patients: a message naming another is refused whole (AR naming the patient) and audited."""
    from mgaki.service.ingest.hl7 import Result, oru_r01, read_ack

    t0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    cfg = make_config(tmp_path, mllp_port=0, mllp_tls_cert=pki["server"], mllp_tls_key=pki["server_key"],
                      mllp_tls_client_ca=pki["ca"], tokens=[
                          {"name": "lab-a", "token": "lab-a-token-0123456789", "roles": ["writer"],
                           "patients": ["p1"], "mllp_client_cn": "lab-system"}])
    two = oru_r01("p1", [Result("19123-9", 1.1, "mg/dL", t0)], control_id="c1").replace(
        "OBR|1|", "PID|2||p2^^^HOSP^MR\rOBR|1|", 1) + "OBX|2|NM|19123-9^^LN||0.9|mg/dL|||||F|||20240301080000+0000\r"
    with TestClient(create_app(cfg)) as c:
        port = c.app.state.mllp.port
        client = (pki["client"], pki["client_key"])
        reply = read_ack(_send(port, two, pki["ca"], client))
        assert reply.code == "AR" and "patient 'p2'" in reply.errors[0] and "nothing was stored" in reply.errors[0]
        assert not c.app.state.ingestor.store.files("events")
        own = oru_r01("p1", [Result("19123-9", 1.2, "mg/dL", t0)], control_id="c2")
        assert read_ack(_send(port, own, pki["ca"], client)).code == "AA"
        assert c.app.state.mllp.feed.wait_applied(60)  # AA once journaled; stored (and audited) right after
        assert [e["subject_id"] for e in _records(c, "events")] == ["p1"]
        with c.app.state.engine.connect() as con:
            rows = con.execute(sa.text("SELECT action, patient_id FROM audit ORDER BY id")).all()
        assert ("denied", "p2") in rows and ("write", "p1") in rows and ("write", "p2") not in rows


def test_an_hl7_sender_name_needs_verified_certificates(tmp_path: Path) -> None:
    token = {"name": "lab-a", "token": "lab-a-token-0123456789", "roles": ["writer"], "mllp_client_cn": "lab"}
    with pytest.raises(ValueError, match="mllp_client_cn needs mllp_tls_client_ca"):
        make_config(tmp_path, tokens=[token])
    with pytest.raises(ValueError, match="give the token the writer role"):
        make_config(tmp_path, tokens=[{**token, "roles": ["reader"]}])


def test_hl7_birth_dates_are_checked_like_fhir_ones(client: TestClient) -> None:
    from mgaki.service.ingest.hl7 import Result, oru_r01, read_ack
    from mgaki.service.ingest.mllp import handle_message

    t0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    msg = oru_r01("p7", [Result("19123-9", 1.1, "mg/dL", t0)], birth_date="19500230", control_id="c7")
    reply = read_ack(handle_message(client.app.state.ingestor, msg))
    assert reply.code == "AA"
    (q,) = _records(client, "quarantine")
    assert q["table"] == "subjects" and q["reason"] == "birth date '1950-02-30' is not a date"
    assert [e["subject_id"] for e in _records(client, "events")] == ["p7"]  # the result itself is kept
