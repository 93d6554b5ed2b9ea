"""Property-based API test: schemathesis generates requests from the app's own OpenAPI schema (in-process ASGI,
admin bearer token, CDS JWT off) for every endpoint, against SQLite and against a real PostgreSQL (a schema of
its own); no answer may be a 5xx and every documented answer must match its schema. Example counts are capped
to keep each run under a minute on the shared machine."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from conftest import READER, auth, make_config
from mgaki.service import create_app
from mgaki.service.app import log

ADMIN = "admin-token-for-fuzzing-0123"




@schemathesis.serializer("application/fhir+ndjson")
def _ndjson(_ctx: Any, value: Any) -> bytes:
    """The NDJSON import body: generated text as is (lone surrogates kept, to probe the UTF-8 check)."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else json.dumps(value).encode()


# The schema is loaded at collection (schemathesis.pytest.from_fixture fails on pytest 9: no Function._nodeid),
# so the app's data folder is a temporary directory of the module, removed at exit.
_TMP = Path(tempfile.mkdtemp(prefix="mgaki-fuzz-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
_FUZZ = {"tokens": [{"name": "fuzzer", "token": ADMIN, "roles": ["admin"]}], "surveil_on_ingest": False}
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(make_config(_TMP, **_FUZZ)))
_CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def pg_app(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The same app on PostgreSQL (VARCHAR lengths enforced, NUL refused by the driver): a schema of its own."""
    admin = sa.create_engine(pg_server, connect_args={"connect_timeout": 3})
    name = f"mgaki_fuzz_{uuid.uuid4().hex[:12]}"
    with admin.begin() as con:
        con.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    app = create_app(make_config(tmp_path_factory.mktemp("fuzz-pg"),
                                 database_url=f"{pg_server}?options=-csearch_path%3D{name}", **_FUZZ))
    try:
        yield app
        with app.state.engine.connect() as con:  # the generated calls reached this database
            assert con.execute(sa.text("SELECT count(*) FROM audit")).scalar_one() > 0
    finally:
        app.state.engine.dispose()
        with admin.begin() as con:
            con.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def _no_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.name == log.name and "internal error" in r.getMessage()]


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_never_5xx_and_conforms(case: schemathesis.Case, caplog: pytest.LogCaptureFixture) -> None:
    response = case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN}"}, checks=_CHECKS)
    assert response.status_code < 500
    _no_internal_error(caplog)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_never_5xx_and_conforms_on_postgres(case: schemathesis.Case, pg_app: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    response = case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN}"}, checks=_CHECKS, app=pg_app)
    assert response.status_code < 500
    _no_internal_error(caplog)


@pytest.mark.parametrize("path", ["/alerts", "/patients/p1/alerts", "/dashboard/patients"])
def test_paging_offsets_beyond_a_database_integer_are_422(client, path: str) -> None:
    """Found by this fuzzer: offset=2**63 reached SQLite and was a 500 (OverflowError)."""
    r = client.get(f"{path}?offset={2**63}", headers=auth(READER))
    assert r.status_code == 422 and "offset" in r.text
    assert client.get(f"{path}?offset={2**31 - 1}", headers=auth(READER)).status_code == 200
