"""Format registry: dispatch, detection from folder contents, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from adapters.cohort import canonical_cohort
from mgaki.adapters import registry
from mgaki.errors import InputError
from mgaki.events import normalize

DEMO = Path(__file__).parents[1] / "data" / "mimic-iv-demo-subset"


@pytest.mark.parametrize("fmt", ["fhir", "omop", "meds", "csv"])
def test_write_detect_read(fmt: str, tmp_path: Path) -> None:
    original = canonical_cohort()
    registry.write(fmt, original, tmp_path)
    assert registry.detect_format(tmp_path) == fmt
    back = normalize(registry.read(fmt, tmp_path))
    assert back["events"].num_rows == original["events"].num_rows == 10  # 9 measurements + 1 death


def test_detects_mimic_and_fhir_file(tmp_path: Path) -> None:
    assert registry.detect_format(DEMO) == "mimic"
    (tmp_path / "b.json").write_text("{}")
    assert registry.detect_format(tmp_path / "b.json") == "fhir"
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(InputError, match="cannot tell"):
        registry.detect_format(tmp_path / "x.txt")


def test_unknown_format_and_missing_mimic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown format 'hl7'"):
        registry.read("hl7", tmp_path)
    monkeypatch.setitem(sys.modules, "mgaki.adapters.mimic", None)  # as if not installed
    with pytest.raises(InputError, match=r"'mimic' adapter .* is not installed"):
        registry.read("mimic", DEMO)
