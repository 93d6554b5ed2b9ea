"""A new operator can get in (issue 16 point 11): `mgaki token create`, the start-up notices of `mgaki serve`,
the example configuration, and the backup and restore of docs/service.md#backup-and-restore, run as written
there on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import bundle, make_config
from mgaki.cli import app as cli
from mgaki.service import create_app, load_config

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _token(output: str) -> str:
    return re.search(r"^  (\S{40,})$", output, re.M).group(1)  # type: ignore[union-attr]


def _batch(pid: str = "p1") -> dict[str, Any]:
    b = bundle("general_low_cheungpasitporn")
    b["type"] = "batch"
    b["entry"].append({"resource": {"resourceType": "Encounter", "id": "e1", "status": "in-progress",
                                    "class": {"code": "IMP"}, "subject": {"reference": f"Patient/{pid}"},
                                    "period": {"start": "2024-02-29T08:00:00+00:00"}}})
    for e in b["entry"]:  # FHIR ids are server-wide: another patient's copy gets ids of its own (else a 409)
        if e["resource"]["resourceType"] != "Patient":
            e["resource"]["id"] = f"{pid}-{e['resource']['id']}"
    return b


def test_token_create_writes_a_hashed_token_that_works(tmp_path: Path) -> None:
    f = tmp_path / "service.yaml"
    f.write_text(f"data_dir: {tmp_path / 'data'}\nwarm_up: false\ncds_require_jwt: false\n")
    runner = CliRunner()
    r = runner.invoke(cli, ["token", "create", "--role", "writer", "--name", "lab", "--patients", "p1",
                            "--config", str(f)])
    assert r.exit_code == 0, r.output
    writer = _token(r.output)
    r = runner.invoke(cli, ["token", "create", "--role", "reader", "--config", str(f)])
    reader = _token(r.output)
    text = f.read_text()
    assert writer not in text and reader not in text  # only their SHA-256
    assert f.stat().st_mode & 0o077 == 0 and (tmp_path / "service.yaml.bak").is_file()
    cfg = load_config(f, env={})
    assert [(t.name, t.roles, t.patients) for t in cfg.tokens][:1] == [("lab", ["writer"], ["p1"])]
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        assert c.post("/fhir", json=_batch(), headers={"Authorization": f"Bearer {writer}"}).status_code == 200
        assert c.get("/alerts", headers={"Authorization": f"Bearer {reader}"}).json()["alerts"]
        assert c.get("/alerts", headers={"Authorization": f"Bearer {reader[:-1]}x"}).status_code == 401
    again = runner.invoke(cli, ["token", "create", "--role", "admin", "--name", "lab", "--config", str(f)])
    assert again.exit_code == 2 and "exists already" in again.output
    assert runner.invoke(cli, ["token", "create", "--role", "root"]).exit_code == 2


def test_token_create_without_a_file_prints_the_entry(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["token", "create", "--role", "reader", "--name", "ward"])
    assert r.exit_code == 0
    token = _token(r.output)
    snippet = yaml.safe_load(r.output.split("(or pass it in MGAKI_TOKENS):\n")[1].split("MGAKI_TOKENS=")[0])
    env = re.search(r"^MGAKI_TOKENS='(.*)'$", r.output, re.M).group(1)  # type: ignore[union-attr]
    for cfg in (load_config(None, env={}, tokens=snippet["tokens"]), load_config(None, env={"MGAKI_TOKENS": env})):
        from mgaki.service.security import check_bearer

        assert check_bearer(cfg, f"Bearer {token}", "reader").name == "ward"


def test_serve_says_how_to_get_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain `mgaki serve` used to start with no tokens and no word; every call was 401."""
    import uvicorn

    ran: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.append(kw))
    r = CliRunner().invoke(cli, ["serve", "--data-dir", str(tmp_path / "data")], env={"MGAKI_CONFIG": None})
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "no bearer tokens are configured" in out and "mgaki token create --role reader" in out
    assert "no CDS clients are configured" in out
    from uvicorn.importer import import_from_string

    from mgaki.service.limits import GuardedH11Protocol

    # the header timeout and per-client cap are on; named by a string (a class in a worker's pickled config
    # imported the whole service before the worker answered its supervisor: killed on a loaded machine)
    assert ran and isinstance(ran[0]["http"], str) and import_from_string(ran[0]["http"]) is GuardedH11Protocol


def test_the_example_config_is_valid() -> None:
    cfg = load_config(DOCS / "examples" / "service.yaml", env={})
    assert cfg.audiences("/cds-services/mgaki-patient-view") == [
        "https://mgaki.hospital.example/cds-services/mgaki-patient-view"]
    assert {t.name for t in cfg.tokens} == {"ward-dashboard", "icu-dashboard", "fhir-bulk-feed"}
    assert "docs/examples/service.yaml" in (DOCS / "service.md").read_text()


# --- backup and a tested restore: the commands of docs/service.md, as written -------------------------------------


def _doc_block(name: str) -> str:
    """The shell block of docs/service.md that follows the marker ``<!-- tested: name -->``."""
    text = (DOCS / "service.md").read_text()
    m = re.search(rf"<!-- tested: {name} -->\n```bash\n(.*?)```", text, re.S)
    assert m, f"docs/service.md has no block marked {name}"
    return m.group(1)


def _run(block: str, env: dict[str, str]) -> None:
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], env={"PATH": "/usr/bin:/bin", **env},
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr


def _state(c: TestClient, admin: str) -> tuple[list[Any], int, int]:
    alerts = c.get("/alerts", headers={"Authorization": f"Bearer {admin}"}).json()["alerts"]
    events = c.app.state.ingestor.store.read("events").num_rows
    with c.app.state.engine.connect() as con:
        n_audit = con.execute(sa.text("SELECT count(*) FROM audit")).scalar_one()
    return alerts, events, n_audit


ADMIN = "admin-token-0123456789abcdef"


def _restore_round(tmp_path: Path, db: dict[str, Any], env: dict[str, str], tag: str) -> None:
    data, backup = tmp_path / "data", tmp_path / "backup"
    backup.mkdir()
    cfg = make_config(tmp_path, tokens=[{"name": "admin", "token": ADMIN, "roles": ["admin"]}], **db)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        assert c.post("/fhir", json=_batch(), headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        before = _state(c, ADMIN)
        assert before[0] and before[1] == 2
        _run(_doc_block(f"backup-{tag}"), {"DATA": str(data), "BACKUP": str(backup), **env})
        # after the backup: a change that the restore must roll back
        b2 = json.loads(json.dumps(_batch("p9")).replace('"p1"', '"p9"').replace("Patient/p1", "Patient/p9"))
        assert c.post("/fhir", json=b2, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    _run(_doc_block(f"restore-{tag}"), {"DATA": str(data), "BACKUP": str(backup), **env})
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        after = _state(c, ADMIN)
    assert after[0] == before[0] and after[1] == before[1]
    assert after[2] == before[2] + 1  # the backup's audit rows, and the read of the alerts just now


def test_backup_and_restore_sqlite(tmp_path: Path) -> None:
    _restore_round(tmp_path, {}, {}, "sqlite")


def test_backup_and_restore_postgres(tmp_path: Path, pg_server: str) -> None:
    name = f"mgaki_restore_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = pg_server.rsplit("/", 1)[0] + f"/{name}"
    try:
        _restore_round(tmp_path, {"database_url": url}, {"PGURL": url.replace("+psycopg", "")}, "postgres")
    finally:
        with admin.connect() as con:
            con.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
