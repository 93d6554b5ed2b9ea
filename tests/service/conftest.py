"""Service fixtures: an app on a temporary SQLite database, tokens, prefetch built from vignette bundles."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from mgaki.service import ServiceConfig, create_app

BUNDLES = Path(__file__).resolve().parents[1] / "vignettes" / "bundles"
READER = "reader-token-0123456789"
WRITER = "writer-token-0123456789"


def bundle(name: str) -> dict[str, Any]:
    return json.loads((BUNDLES / f"{name}.json").read_text())


def hook_request(name: str, hook: str = "patient-view", draft: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A CDS Hooks request whose prefetch holds the resources of a vignette bundle."""
    res = [e["resource"] for e in bundle(name)["entry"]]
    patient = next(r for r in res if r["resourceType"] == "Patient")
    searchset = {t: {"resourceType": "Bundle", "type": "searchset",
                     "entry": [{"resource": r} for r in res if r["resourceType"] == t]}
                 for t in ("Observation", "MedicationRequest", "MedicationAdministration")}
    context: dict[str, Any] = {"userId": "Practitioner/u1", "patientId": patient["id"]}
    if draft is not None:
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": r} for r in draft]}
    return {"hook": hook, "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "context": context,
            "prefetch": {"patient": patient, "observations": searchset["Observation"],
                         "medicationRequests": searchset["MedicationRequest"],
                         "medicationAdministrations": searchset["MedicationAdministration"]}}


def mgso4_order(grams: float, oid: str = "draft-mg") -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": oid, "status": "draft", "intent": "order",
            "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                      "code": "6585", "display": "magnesium sulfate"}]},
            "dosageInstruction": [{"route": {"text": "IV"}, "doseAndRate": [
                {"doseQuantity": {"value": grams, "unit": "g", "system": "http://unitsofmeasure.org", "code": "g"}}]}]}


def make_config(tmp: Path, **kw: Any) -> ServiceConfig:
    base: dict[str, Any] = {
        "data_dir": tmp / "data", "warm_up": False, "cds_require_jwt": False,
        "tokens": [{"name": "nurse-station", "token": READER, "roles": ["reader"]},
                   {"name": "lab-feed", "token": WRITER, "roles": ["writer"]}]}
    base.update(kw)
    return ServiceConfig.model_validate(base)


@pytest.fixture
def cfg(tmp_path: Path) -> ServiceConfig:
    return make_config(tmp_path)


@pytest.fixture
def client(cfg: ServiceConfig) -> Iterator[TestClient]:
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    """A loopback port nothing listens on now (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a real PostgreSQL for the tests that need one -----------------------------------------------------------
# The machine's server (MGAKI_TEST_PG overrides the URL); when it is down the tests start the local cluster
# (Debian pg_ctlcluster) rather than assume it. Only MGAKI_SKIP_POSTGRES=1 turns a missing server into a skip.

PG = os.environ.get("MGAKI_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _reachable(engine: sa.Engine) -> str | None:
    """None when the server answers, else why not."""
    try:
        with engine.connect() as con:
            con.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        return type(exc.orig).__name__
    return None


def _start_local_cluster() -> str:
    """Start the machine's PostgreSQL cluster(s) with Debian's pg_ctlcluster; what was done."""
    ctl, etc = shutil.which("pg_ctlcluster"), Path("/etc/postgresql")
    if ctl is None or not etc.is_dir():
        return "no local cluster to start (pg_ctlcluster or /etc/postgresql missing)"
    for version in sorted(p.name for p in etc.iterdir() if p.is_dir()):
        subprocess.run([ctl, "--skip-systemctl-redirect", version, "main", "start"], capture_output=True,
                       timeout=60, check=False)
    return "started the local cluster with pg_ctlcluster"


@pytest.fixture(scope="session")
def pg_server() -> str:
    admin = sa.create_engine(PG, connect_args={"connect_timeout": 3})
    try:
        why = _reachable(admin)
        if why is not None:
            done = _start_local_cluster()
            deadline = time.monotonic() + 30
            while (why := _reachable(admin)) is not None and time.monotonic() < deadline:
                time.sleep(1)
            if why is not None:
                msg = (f"PostgreSQL not reachable at {PG} ({why}; {done}). Start a server, point MGAKI_TEST_PG at "
                       "one, or set MGAKI_SKIP_POSTGRES=1 to skip these tests")
                if os.environ.get("MGAKI_SKIP_POSTGRES") == "1":
                    pytest.skip(msg)
                pytest.fail(msg)
    finally:
        admin.dispose()
    return PG


@contextlib.contextmanager
def pg_schema(server_url: str, prefix: str = "mgaki_test") -> Iterator[str]:
    """A schema of its own on the test PostgreSQL (its URL sets the search_path), dropped after."""
    admin = sa.create_engine(server_url, connect_args={"connect_timeout": 3})
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.begin() as con:
        con.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{server_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as con:
            con.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Each test that takes it runs twice: on SQLite (None: the data folder's file) and on its own PostgreSQL schema."""
    if request.param == "sqlite":
        yield None
        return
    with pg_schema(request.getfixturevalue("pg_server")) as url:
        yield url


def refuse_inserts(engine: sa.Engine, table: str, subject_id: str | None = None) -> None:
    """The database starts refusing inserts into ``table`` (all, or the rows of ``subject_id``), as a full disk,
    a broken constraint or a revoked grant would: a database error the service did not check for."""
    name = f"refuse_{table}"
    with engine.begin() as con:
        if engine.dialect.name == "postgresql":
            cond = f"NEW.subject_id = '{subject_id}'" if subject_id else "true"
            con.execute(sa.text(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                                f"IF {cond} THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$"))
            con.execute(sa.text(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW "
                                f"EXECUTE FUNCTION {name}()"))
        else:
            when = f"WHEN NEW.subject_id = '{subject_id}' " if subject_id else ""
            con.execute(sa.text(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} {when}"
                                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))
