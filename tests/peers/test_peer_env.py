"""The peer environment finder: a missing Python 3.12 is a clear, named reason (the tests then skip)."""

from __future__ import annotations

import sys

import pytest

import peers_env


def test_no_python312_is_reported_with_where_it_looked(monkeypatch):
    monkeypatch.setattr(peers_env, "_candidates", lambda: iter([sys.executable, "/nonexistent/python3.12"]))
    with pytest.raises(peers_env.PeerEnvUnavailable, match=r"no Python 3\.12 interpreter found.*nonexistent"):
        peers_env.find_python312()


def test_incomplete_venv_is_not_taken_as_built(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")
    assert not peers_env._is_complete(tmp_path)  # no marker: a half-built venv is rebuilt, not used
    (tmp_path / peers_env.MARKER).write_text('{"pins": "stale"}')
    assert not peers_env._is_complete(tmp_path)  # pins changed: rebuilt
