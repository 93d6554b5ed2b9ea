"""Configuration by file and environment; `mgaki serve` registered on the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgaki.cli import app
from mgaki.errors import InputError
from mgaki.service import load_config


def test_file_then_env_then_overrides(tmp_path):
    f = tmp_path / "svc.yaml"
    f.write_text("port: 9000\ndata_dir: /srv/mgaki\ntokens:\n"
                 "  - {name: a, token: aaaaaaaaaaaaaaaaaaaa, roles: [reader]}\n")
    cfg = load_config(f, env={"MGAKI_PORT": "9100", "MGAKI_DATABASE_URL": "postgresql+psycopg://db/x"})
    assert (cfg.port, cfg.data_dir, cfg.db_url()) == (9100, Path("/srv/mgaki"), "postgresql+psycopg://db/x")
    assert cfg.tokens[0].roles == ["reader"]
    assert load_config(f, env={}, port=9200).port == 9200
    assert load_config(None, env={"MGAKI_DATA_DIR": "/d"}).db_url() == "sqlite:////d/mgaki.db"


def test_bad_config_names_the_problem(tmp_path):
    f = tmp_path / "svc.yaml"
    f.write_text("tokens:\n  - {name: a, token: short, roles: [reader]}\n")
    with pytest.raises(InputError, match="token"):
        load_config(f, env={})
    with pytest.raises(InputError, match="MGAKI_TOKENS"):
        load_config(None, env={"MGAKI_TOKENS": "[oops"})


def test_serve_command_registered():
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0 and "--database-url" in r.output


def test_workers_and_overload_settings_from_env_and_cli(tmp_path):
    cfg = load_config(None, env={"MGAKI_WORKERS": "3", "MGAKI_CDS_MAX_IN_FLIGHT": "4"})
    assert (cfg.workers, cfg.cds_max_in_flight) == (3, 4)
    assert load_config(None, env={"MGAKI_WORKERS": "3"}, workers=2).workers == 2
    with pytest.raises(InputError, match="workers"):
        load_config(None, env={"MGAKI_WORKERS": "0"})
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert "--workers" in r.output
    assert load_config(None, env={"MGAKI_CDS_THREADS": "2"}).cds_threads == 2
    with pytest.raises(InputError, match="cds_threads"):
        load_config(None, env={"MGAKI_CDS_THREADS": "0"})


def test_help_shows_extras_in_brackets():
    """rich reads [spark] as markup and used to drop it from the help ('needs mgaki and Java')."""
    r = CliRunner().invoke(app, ["surveil", "--help"], terminal_width=200)
    assert r.exit_code == 0 and "mgaki[spark]" in r.output


def test_worker_socket_is_tcp_so_asyncio_sets_nodelay(monkeypatch):
    """uvicorn binds the workers' socket with proto 0 (asyncio then leaves Nagle on: ~40 ms per keep-alive
    response); the socket handed to the workers must say IPPROTO_TCP."""
    import socket

    import uvicorn
    import uvicorn.supervisors

    from mgaki.cli import service as cli_service

    seen = []

    class FakeSupervisor:
        def __init__(self, config, sockets):
            seen.extend((s.family, s.type, s.proto, s.getsockname()) for s in sockets)

        def run(self):
            pass

    monkeypatch.setattr(uvicorn.supervisors, "Multiprocess", FakeSupervisor)
    config = uvicorn.Config("mgaki.service.app:app_from_env", factory=True, workers=2, host="127.0.0.1", port=0)
    cli_service._run_workers(config)
    assert len(seen) == 1
    family, kind, proto, (host, _port) = seen[0]
    assert (family, kind, proto, host) == (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "127.0.0.1")


def test_several_workers_need_a_fixed_mllp_port(tmp_path) -> None:
    """Workers share the MLLP port (SO_REUSEPORT); 'any free port' would give each worker its own."""
    from pydantic import ValidationError

    from mgaki.service.config import ServiceConfig
    with pytest.raises(ValidationError, match="cannot be shared by several workers"):
        ServiceConfig(data_dir=tmp_path, workers=2, mllp_port=0)
    assert ServiceConfig(data_dir=tmp_path, workers=2, mllp_port=2575).mllp_port == 2575
    assert ServiceConfig(data_dir=tmp_path, workers=1, mllp_port=0).mllp_port == 0


def test_log_level_sets_the_service_loggers(tmp_path):
    """``log_level: info`` writes the service's progress lines (e.g. each deferred surveillance run) to
    standard error, one handler however many apps a process builds; an unknown level is refused by name."""
    import io
    import logging

    from mgaki.service import create_app

    f = tmp_path / "svc.yaml"
    f.write_text(f"data_dir: {tmp_path / 'data'}\nlog_level: info\ncds_require_jwt: false\n")
    root = logging.getLogger("mgaki")
    before = (root.level, list(root.handlers))
    try:
        create_app(load_config(f, env={}))
        create_app(load_config(f, env={}))
        assert root.level == logging.INFO
        ours = [h for h in root.handlers if getattr(h, "_mgaki", False)]
        assert len(ours) == 1 and isinstance(ours[0], logging.StreamHandler)
        buf = io.StringIO()
        stream = ours[0].setStream(buf)  # standard error as the first app of the process found it
        try:
            logging.getLogger("mgaki.service.ingest.ingestor").info("deferred surveillance: %d new alert(s)", 3)
        finally:
            ours[0].setStream(stream)
        assert "INFO mgaki.service.ingest.ingestor: deferred surveillance: 3 new alert(s)" in buf.getvalue()
    finally:
        root.setLevel(before[0])
        root.handlers[:] = before[1]
    f.write_text("log_level: verbose\n")
    with pytest.raises(InputError, match="log_level"):
        load_config(f, env={})
