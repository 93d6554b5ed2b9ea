"""One entry point for every cohort format: ``read(fmt, path)`` -> RAW tables, ``write(fmt, tables, path)``.

``read`` returns what ``mgaki.events.normalize`` takes (schema.RAW plus an
optional adapter-level ``quarantine``); ``write`` takes the canonical tables
(schema.TABLES), so a synthetic cohort can be emitted in any format.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mgaki.errors import InputError

if TYPE_CHECKING:
    from mgaki.events.stream import RawChunk

__all__ = ["CHUNKED", "FORMATS", "detect_format", "read", "read_chunks", "write"]

# format -> (module, reader, writer); modules are imported on first use
FORMATS: dict[str, tuple[str, str, str]] = {
    "fhir": ("mgaki.adapters.fhir_bulk", "read_fhir", "write_fhir"),
    "omop": ("mgaki.adapters.omop", "read_omop", "write_omop"),
    "meds": ("mgaki.adapters.meds", "read_meds", "write_meds"),
    "csv": ("mgaki.adapters.csv_layout", "read_csv_layout", "write_csv_layout"),
    "mimic": ("mgaki.adapters.mimic", "read_mimic", "write_mimic"),
}

# formats whose reader can also hand over a source in chunks of bounded size (mgaki.events.stream);
# the others are read whole, as one chunk (FHIR: its records are versions, decided over the whole read)
CHUNKED: dict[str, tuple[str, str]] = {
    "csv": ("mgaki.adapters.csv_layout", "iter_csv_layout"),
    "mimic": ("mgaki.adapters.mimic", "iter_mimic"),
    "omop": ("mgaki.adapters.omop", "iter_omop"),
    "meds": ("mgaki.adapters.meds", "iter_meds"),
}


def _function(fmt: str, which: int) -> Callable[..., Any]:
    if fmt not in FORMATS:
        raise InputError("format", f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    module_name, *names = FORMATS[fmt]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError("format", f"the {fmt!r} adapter ({module_name}) is not installed: {exc}") from exc
    fn = getattr(module, names[which], None)
    if fn is None:
        raise InputError("format", f"{module_name} has no {names[which]}()")
    return fn  # type: ignore[no-any-return]


def read(fmt: str, path: str | Path) -> dict[str, pa.Table]:
    """RAW tables (schema.RAW, plus ``quarantine`` when the adapter set rows aside) from ``path``."""
    return _function(fmt, 0)(Path(path))  # type: ignore[no-any-return]


def read_chunks(fmt: str, path: str | Path, chunk_rows: int) -> Iterator[RawChunk]:
    """RAW tables from ``path`` as ``RawChunk``s of at most about ``chunk_rows`` rows, or whole (one chunk)."""
    from mgaki.events.stream import RawChunk

    if fmt in CHUNKED:
        module_name, name = CHUNKED[fmt]
        fn = getattr(importlib.import_module(module_name), name, None)
        if fn is not None:
            return fn(Path(path), chunk_rows)  # type: ignore[no-any-return]
    return iter([RawChunk(read(fmt, path))])


def write(fmt: str, tables: Mapping[str, pa.Table], path: str | Path) -> None:
    """Canonical tables (schema.TABLES) -> ``path`` in format ``fmt``."""
    _function(fmt, 1)(tables, Path(path))


def detect_format(path: str | Path) -> str:
    """Guess the format from a folder's (or file's) contents; InputError naming what was seen if unsure."""
    p = Path(path)
    if p.is_file():
        if p.name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".json")):
            return "fhir"
        raise InputError(str(p), "cannot tell the format of this file (expected FHIR .ndjson or Bundle .json)")
    if not p.is_dir():
        raise InputError(str(p), "no such file or folder")
    names = {c.name.lower() for c in p.iterdir()}
    if (p / "metadata" / "codes.parquet").is_file() or ((p / "data").is_dir() and any((p / "data").rglob("*.parquet"))):
        return "meds"
    if {"person.csv", "person.parquet", "person"} & names and names & {"measurement.csv", "measurement.parquet",
                                                                           "measurement"}:
        return "omop"
    if {"hosp", "icu"} & names or any(n.startswith(("labevents.csv", "admissions.csv")) for n in names):
        return "mimic"
    if any(n.endswith((".ndjson", ".ndjson.gz")) for n in names):
        return "fhir"
    if "events.csv" in names or "subjects.csv" in names:
        return "csv"
    if any(n.endswith(".json") for n in names):
        return "fhir"
    if not names:
        raise InputError(str(p), "the folder is empty: nothing to ingest")
    shown = ", ".join(sorted(names)[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    raise InputError(str(p), f"cannot tell the format from what the folder holds ({shown}); expected MIMIC-IV "
                             "hosp/ + icu/, OMOP CDM tables, a MEDS dataset, FHIR .ndjson/.json or the CSV layout "
                             "(events.csv, subjects.csv): name it with --format")
