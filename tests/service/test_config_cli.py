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
