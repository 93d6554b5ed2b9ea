"""The property-based API test of test_schemathesis.py, on PostgreSQL (issue 16 point 4).

PostgreSQL refuses what SQLite stores (over-long text in a VARCHAR, NUL): every generated request to every
operation must still be answered without a 5xx. The schema is loaded at collection, so the database is too:
the local cluster is started if it is down (as the ``pg_server`` fixture does), and a schema of its own is
created and dropped at exit. ``MGAKI_SKIP_POSTGRES=1`` skips it, like the other PostgreSQL tests.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance
from test_schemathesis import _ndjson  # noqa: F401  (registers the NDJSON body serializer)

from conftest import PG, _reachable, _start_local_cluster, make_config
from mgaki.service import create_app
from mgaki.service.app import log

ADMIN = "admin-token-for-fuzzing-0123"


def _database() -> str | None:
    """A schema of its own on the test PostgreSQL (dropped at exit), or None when skipped."""
    if os.environ.get("MGAKI_SKIP_POSTGRES") == "1":
        return None
    admin = sa.create_engine(PG, connect_args={"connect_timeout": 3})
    if _reachable(admin) is not None:
        _start_local_cluster()
        deadline = time.monotonic() + 30
        while _reachable(admin) is not None and time.monotonic() < deadline:
            time.sleep(1)
    name = f"mgaki_fuzz_{uuid.uuid4().hex[:12]}"
    with admin.begin() as con:
        con.execute(sa.text(f'CREATE SCHEMA "{name}"'))

    def drop() -> None:
        with admin.begin() as con:
            con.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()

    atexit.register(drop)
    return f"{PG}?options=-csearch_path%3D{name}"


_URL = _database()
_TMP = Path(tempfile.mkdtemp(prefix="mgaki-fuzz-pg-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(make_config(
    _TMP, database_url=_URL, tokens=[{"name": "fuzzer", "token": ADMIN, "roles": ["admin"]}],
    surveil_on_ingest=False)))


@pytest.mark.skipif(_URL is None, reason="MGAKI_SKIP_POSTGRES=1")
@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_on_postgres_never_5xx_and_conforms(case: schemathesis.Case, caplog: pytest.LogCaptureFixture) -> None:
    response = case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN}"},
                                      checks=[not_a_server_error, response_schema_conformance,
                                              content_type_conformance])
    assert response.status_code < 500
    assert not [r for r in caplog.records if r.name == log.name and "internal error" in r.getMessage()]
