"""One unit layer (issue 13 point 7): only mgaki.units reads unit strings.

A module that keeps its own table of units, compares a unit with a unit literal, case-folds a
unit before looking at it, or matches units in SQL text parses unit strings beside the unit
layer; that is how `assess` came to refuse a "gm" dose the cohort path read. This test walks
the source (AST) and fails on each such construct outside ``mgaki/units.py``, the generated
``_unit_scales.py`` and the knowledge data. Naming a unit as an argument (``convert(x, "magnesium",
"mg/dL", "mmol/L")``) is not parsing and is allowed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mgaki.errors import MgakiError
from mgaki.knowledge import load
from mgaki.units import rate_unit

SRC = Path(__file__).resolve().parents[2] / "src" / "mgaki"
ALLOWED = {SRC / "units.py", SRC / "_unit_scales.py"}
ALLOWED_DIRS = {SRC / "knowledge"}


def _spellings() -> frozenset[str]:
    out: set[str] = set()
    for u in load().units.units:
        for s in (u.ucum, *u.aliases, *([u.display] if u.display else [])):
            out |= {s, s.lower()}
    return frozenset(out)


SPELLINGS = _spellings()
_ALTERNATIVES = "|".join(re.escape(s) for s in sorted(SPELLINGS, key=len, reverse=True))
_SQL_UNIT = re.compile(r"(=|<>|!=|\bIN\s*\()\s*'(" + _ALTERNATIVES + r")'", re.IGNORECASE)
_SQL_FOLD = re.compile(r"\b(lower|upper)\s*\(\s*[\w.\"]*unit\w*\"?\s*\)", re.IGNORECASE)


def _unit_text(text: str) -> bool:
    """A unit as units.yaml spells it, or a rate or window the unit layer reads (g/h, g/(24.h))."""
    if text in SPELLINGS:
        return True
    try:
        return rate_unit(text) is not None
    except MgakiError:
        return False


def _is_unit(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _unit_text(node.value)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_is_unit(e) for e in node.elts)
    return False


def _constant(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Tuple | ast.List):
        return all(_constant(e) for e in node.elts)
    if isinstance(node, ast.UnaryOp | ast.BinOp):
        return all(_constant(c) for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr))
    return False


def violations(source: str, name: str) -> list[str]:
    """Each place in ``source`` that parses a unit string, as 'name:line: what'."""
    out = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare) and any(_is_unit(x) for x in (node.left, *node.comparators)):
            out.append(f"{name}:{line}: compares with a unit literal: {ast.unparse(node)}")
        elif isinstance(node, ast.Dict) and all(_constant(v) for v in node.values):
            # a lookup table whose keys (or values) are mostly units
            n = len(node.values)
            if any(sum(_is_unit(x) for x in side if x is not None) * 2 >= n > 0
                   for side in (node.keys, node.values)):
                out.append(f"{name}:{line}: a table of units: {ast.unparse(node)[:80]}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("lower", "upper", "casefold") \
                and "unit" in ast.unparse(node.func.value).lower():
            out.append(f"{name}:{line}: case-folds a unit: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("startswith", "endswith", "split", "rsplit", "partition", "replace") \
                and any(_is_unit(a) for a in node.args):
            out.append(f"{name}:{line}: takes a unit apart: {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and (_SQL_UNIT.search(node.value) or _SQL_FOLD.search(node.value)):
            out.append(f"{name}:{line}: SQL reads unit text: {node.value.strip()[:80]!r}")
    return out


def _modules() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py"))
            if p not in ALLOWED and not any(d in p.parents for d in ALLOWED_DIRS)]


def test_no_module_but_the_unit_layer_parses_unit_strings():
    found = [v for p in _modules() for v in violations(p.read_text("utf-8"), str(p.relative_to(SRC)))]
    assert not found, "unit strings parsed outside mgaki.units:\n" + "\n".join(found)


@pytest.mark.parametrize("code", [
    'CONV = {"g": ("g", 1.0), "mg": ("g", 1e-3), "mmol": ("mmol", 1.0), "meq": ("meq", 1.0)}',  # fhir.py before
    'ok = unit in ("mg/dL", "mmol/L")',
    'u = dose.unit.strip().lower()',
    'SQL = "CASE WHEN lower(dose_unit) = \'g\' THEN dose END"',
    'SQL = "WHERE unit IN (\'mEq/L\', \'meq/l\')"',
    'x = 1.0 if unit == "gm" else 0.0',
    'unit = {"g/h": "g", "mg/kg/h": "mg/kg"}.get(step.amount_unit, step.amount_unit)',  # repletion.py before
    '_RATE_UNITS = {"g/h": 1.0, "mg/min": 60.0 / 1000.0}',  # pk/_regimen.py before
    'rate = step.amount_unit in ("g/h", "mg/kg/h")',
    'per_kg = step.amount_unit.startswith("mg/kg")',
])
def test_the_check_catches_a_second_unit_parser(code):
    assert violations(code, "m.py"), code


@pytest.mark.parametrize("code", [
    'v = convert(x, "magnesium", "mg/dL", "mmol/L")',
    'row = {"start_h": round(s, 3), "mmol": round(m, 2)}',
    'b.obs("creatinine", 1.2, "mg/dL", 6.0)',
    'SQL = "SELECT unit FROM events WHERE analyte = \'magnesium\'"',
    'CODES = {"magnesium": "19123-9", "ph": "2744-1", "sodium": "2951-2"}',
])
def test_naming_a_unit_is_not_parsing_it(code):
    assert not violations(code, "m.py"), code
