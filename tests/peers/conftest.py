"""Peer environment fixture: builds .peers-venv/ once per machine, or skips with the reason."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from peers_env import PeerEnvUnavailable, ensure_peer_env


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "peers: runs the PyPI KDIGO peers in their own Python 3.12 environment")
    config.addinivalue_line("markers", "slow: larger peer cohorts; run with MGAKI_SLOW_TESTS=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("MGAKI_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow peer test; set MGAKI_SLOW_TESTS=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def peer_env() -> Path:
    """The peer venv (built on first use, ~35 s); skip, naming why, when it cannot exist here."""
    try:
        return ensure_peer_env()
    except PeerEnvUnavailable as exc:
        if os.environ.get("MGAKI_PEERS_REQUIRED") == "1":
            raise
        pytest.skip(f"KDIGO peer environment unavailable: {exc}")
