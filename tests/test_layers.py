"""The architecture as a check: packages import only downward and no siblings import each other.

The contracts live in pyproject.toml ([tool.importlinter]); import-linter (grimp) reads every import,
including those inside functions. On the layout before issue 19 this failed on
``mgaki.pk._dosefind -> mgaki.engine.repletion`` and ``research.predict/report -> research.pipeline``.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = {"mgaki packages import only downward", "the service imports only downward",
             "no import cycles between sibling modules or packages"}


def test_contracts_are_declared() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert {c["name"] for c in cfg["contracts"]} == CONTRACTS
    assert any(c["type"] == "acyclic_siblings" and c["ancestors"] == ["mgaki"] for c in cfg["contracts"])


def test_every_contract_is_kept() -> None:
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for name in CONTRACTS:
        assert f"{name} KEPT" in out, out


def _map_entries() -> list[str]:
    """The paths named in docs/architecture.md's 'Where things live' map, relative to src/mgaki."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Where things live", 1)[1].split("```", 2)[1]
    entries, parent = [], ""
    for line in block.splitlines()[2:]:  # skip the opening fence's rest and "src/mgaki/"
        stripped = line.strip()
        if not stripped or line.startswith(" " * 10):  # a continuation line of a description
            continue
        name = stripped.split()[0]
        depth = (len(line) - len(line.lstrip())) // 2
        if depth == 1:
            parent = name if name.endswith("/") else ""
            entries.append(name)
        elif depth == 2:
            entries.append(parent + name)
    return entries


def test_architecture_map_matches_the_tree() -> None:
    pkg = ROOT / "src" / "mgaki"
    entries = _map_entries()
    assert len(entries) > 20
    for e in entries:
        assert (pkg / e).exists(), f"docs/architecture.md names {e}, which is not in src/mgaki"
    top = {p.name + ("/" if p.is_dir() else "") for p in pkg.iterdir()
           if (p.suffix == ".py" and p.name not in {"__main__.py", "_unit_scales.py"})
           or (p.is_dir() and (p / "__init__.py").exists())}
    assert top <= set(entries), f"missing from the map in docs/architecture.md: {sorted(top - set(entries))}"
