"""A private Python 3.12 virtual environment holding the two PyPI KDIGO peers (pyaki, akiflagger).

Why a separate environment: pyaki 1.0.13 needs Python >= 3.12 and pandas < 3, mgaki runs on 3.11
with pandas 3; the peers must never become mgaki dependencies. The tests and benchmarks create the
environment themselves (CI starts from a clean clone): once per machine, under ``.peers-venv/`` in
the repository root (gitignored), guarded by a file lock so parallel test processes do not build it
twice. The pins live in ``benchmarks/peers-requirements.txt``; a change of pins rebuilds it.

Interpreter search order: ``$MGAKI_PEERS_PYTHON``; ``pyenv prefix 3.12.x``; ``$(pyenv root)`` and
``~/.pyenv`` ``versions/3.12*``; ``python3.12`` on PATH. Without one, :class:`PeerEnvUnavailable`
is raised and the tests turn it into ``pytest.skip`` with the reason (set ``MGAKI_PEERS_REQUIRED=1``
to make that a failure instead).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "PEER_PYTHON_SERIES",
    "RUNNER",
    "PeerEnvUnavailable",
    "ensure_peer_env",
    "find_python312",
    "peer_python",
    "run_in_peer_env",
]

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = Path(__file__).with_name("peers-requirements.txt")
RUNNER = ROOT / "tests" / "peers" / "run_peers.py"
VENV_DIR = ROOT / ".peers-venv"
LOCK_FILE = ROOT / ".peers-venv.lock"
MARKER = ".mgaki-peers.json"
PEER_PYTHON_SERIES = (3, 12)


class PeerEnvUnavailable(RuntimeError):
    """The peer environment cannot be built here (no Python 3.12, or the install failed)."""


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    major, minor = out.split()
    return int(major), int(minor)


def _candidates() -> Iterator[str]:
    if env := os.environ.get("MGAKI_PEERS_PYTHON"):
        yield env
    series = ".".join(map(str, PEER_PYTHON_SERIES))
    pyenv = shutil.which("pyenv")
    roots: list[Path] = []
    if pyenv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            versions = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True,
                                      timeout=30, check=True).stdout.split()
            for v in sorted((v for v in versions if v.startswith(series + ".")), reverse=True):
                prefix = subprocess.run([pyenv, "prefix", v], capture_output=True, text=True, timeout=30,
                                        check=True).stdout.strip()
                yield str(Path(prefix) / "bin" / "python")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            roots.append(Path(subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30,
                                             check=True).stdout.strip()))
    roots.append(Path.home() / ".pyenv")
    for root in roots:
        yield from (str(p / "bin" / "python") for p in sorted(root.glob(f"versions/{series}*"), reverse=True))
    if exe := shutil.which(f"python{series}"):
        yield exe


def find_python312() -> str:
    """Path of a CPython 3.12 interpreter, or :class:`PeerEnvUnavailable` saying where it looked."""
    tried: list[str] = []
    for cand in _candidates():
        tried.append(cand)
        if Path(cand).exists() and _version_of(cand) == PEER_PYTHON_SERIES:
            return cand
    raise PeerEnvUnavailable(
        "no Python 3.12 interpreter found (pyaki 1.0.13 requires >=3.12); looked at "
        f"{tried or 'nothing'}; install one (e.g. `pyenv install 3.12`) or set MGAKI_PEERS_PYTHON")


def _pins_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]


def peer_python(venv: Path = VENV_DIR) -> Path:
    """The interpreter inside the peer environment."""
    return venv / "bin" / "python"


def _is_complete(venv: Path) -> bool:
    marker = venv / MARKER
    if not marker.exists() or not peer_python(venv).exists():
        return False
    try:
        return bool(json.loads(marker.read_text())["pins"] == _pins_digest())
    except (ValueError, KeyError):
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_peer_env(venv: Path = VENV_DIR) -> Path:
    """Create (once, under a lock) and return the peer virtual environment directory."""
    if _is_complete(venv):
        return venv
    with _locked(LOCK_FILE if venv == VENV_DIR else venv.with_name(venv.name + ".lock")):
        if _is_complete(venv):  # another process built it while we waited
            return venv
        python = find_python312()
        if venv.exists():
            shutil.rmtree(venv)
        steps = [[python, "-m", "venv", str(venv)],
                 [str(peer_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  "-r", str(REQUIREMENTS)]]
        for cmd in steps:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
            if r.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
                raise PeerEnvUnavailable(f"building the peer environment failed at {cmd[:4]}: {tail}")
        (venv / MARKER).write_text(json.dumps({"pins": _pins_digest(), "python": python}))
    return venv


def run_in_peer_env(args: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``tests/peers/run_peers.py ARGS`` in the peer environment; return the JSON it prints last."""
    python = peer_python(ensure_peer_env())
    r = subprocess.run([str(python), str(RUNNER), *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"peer runner failed ({r.returncode}): {r.stderr.strip()[-3000:]}")
    lines = r.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"peer runner printed nothing; stderr: {r.stderr.strip()[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


if __name__ == "__main__":
    print(ensure_peer_env(), file=sys.stdout)
