"""Bearer tokens with roles, CDS Hooks JWT verification (PyJWT), and no PHI in the logs."""

from __future__ import annotations

import json
import logging
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from conftest import READER, WRITER, auth, bundle, hook_request, make_config
from mgaki.service import create_app

ISS = "https://ehr.example.org"
URL = "http://testserver/cds-services/mgaki-patient-view"


@pytest.fixture(scope="module")
def key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwt_client(tmp_path, key):
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "alg": "RS384", "use": "sig"})
    cfg = make_config(tmp_path, cds_require_jwt=True, cds_issuers=[{"iss": ISS, "keys": [jwk]}],
                      public_base_url="http://testserver")
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        yield c


def token(key, **over):
    now = int(time.time())
    claims = {"iss": ISS, "aud": URL, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()), "sub": "client-1"}
    claims.update(over)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm="RS384", headers={"kid": "k1"})


def test_bearer_tokens_and_roles(client):
    assert client.get("/alerts").status_code == 401
    assert client.get("/alerts", headers=auth("wrong-token-0123456789")).status_code == 401
    r = client.get("/alerts", headers=auth(WRITER))
    assert r.status_code == 403 and "lacks the 'reader' role" in r.json()["error"]
    assert client.get("/alerts", headers=auth(READER)).status_code == 200
    r = client.post("/fhir", json=bundle("general_low_cheungpasitporn"), headers=auth(READER))
    assert r.status_code == 403


def test_cds_jwt_valid_then_replayed(jwt_client, key):
    t = token(key)
    r = jwt_client.post("/cds-services/mgaki-patient-view", json=hook_request("general_low_cheungpasitporn"),
                        headers=auth(t))
    assert r.status_code == 200, r.text
    r = jwt_client.post("/cds-services/mgaki-patient-view", json=hook_request("general_low_cheungpasitporn"),
                        headers=auth(t))
    assert r.status_code == 401 and "replay" in r.json()["error"]


@pytest.mark.parametrize("over, msg", [
    ({"aud": "https://elsewhere.example/cds-services/mgaki-patient-view"}, "Audience"),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 3900}, "expired"),
    ({"iss": "https://evil.example"}, "not allowed"),
    ({"jti": None}, "jti"),
    ({"exp": int(time.time()) + 7 * 86400}, "lifetime"),
])
def test_cds_jwt_rejections(jwt_client, key, over, msg):
    r = jwt_client.post("/cds-services/mgaki-patient-view", json=hook_request("general_low_cheungpasitporn"),
                        headers=auth(token(key, **over)))
    assert r.status_code == 401 and msg in r.json()["error"]


def test_cds_jwt_wrong_key_and_missing(jwt_client):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    r = jwt_client.post("/cds-services/mgaki-patient-view", json=hook_request("general_low_cheungpasitporn"),
                        headers=auth(token(other)))
    assert r.status_code == 401 and "Signature" in r.json()["error"]
    r = jwt_client.post("/cds-services/mgaki-patient-view", json=hook_request("general_low_cheungpasitporn"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = jwt_client.post("/cds-services/mgaki-patient-view", json=hook_request("general_low_cheungpasitporn"),
                        headers=auth("not.a.jwt"))
    assert r.status_code == 401 and "malformed" in r.json()["error"]


def test_no_phi_in_logs(client, caplog):
    caplog.set_level(logging.DEBUG)
    req = hook_request("general_low_cheungpasitporn")
    req["context"]["patientId"] = req["prefetch"]["patient"]["id"] = "MRN-998877"
    req["prefetch"]["patient"]["name"] = [{"family": "Zebedee", "given": ["Quintus"]}]
    assert client.post("/cds-services/mgaki-patient-view", json=req).status_code == 200
    b = bundle("general_low_cheungpasitporn")
    b["type"] = "batch"
    b["entry"][0]["resource"]["name"] = [{"family": "Zebedee"}]
    assert client.post("/fhir", json=b, headers=auth(WRITER)).status_code == 200
    assert client.get("/patients/MRN-998877/alerts", headers=auth(READER)).status_code == 200
    # the test client's own httpx log is the caller's, not the service's
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert "POST /cds-services/{service_id} -> 200" in text
    assert "GET /patients/{patient_id}/alerts -> 200" in text
    for phi in ("MRN-998877", "Zebedee", "Quintus", "p1", "1.4"):
        assert phi not in text
