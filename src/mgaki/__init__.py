"""mgaki: magnesium disorders and AKI — bedside assessment, surveillance, research.

Public API is exactly ``__all__``; everything else is internal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mgaki._version import __version__
from mgaki.adapters.fhir import record_from_bundle as _record_from_bundle
from mgaki.engine.assess import AssessOptions
from mgaki.engine.assess import assess_record as _assess_record
from mgaki.errors import (
    BundleError,
    ImplausibleValueError,
    InputError,
    KnowledgeError,
    MgakiError,
    TimeError,
    UnitError,
)
from mgaki.knowledge import load as _load
from mgaki.record import PatientRecord
from mgaki.result import Assessment, Finding, Plan

__all__ = [
    "AssessOptions",
    "Assessment",
    "BundleError",
    "Finding",
    "ImplausibleValueError",
    "InputError",
    "KnowledgeError",
    "MgakiError",
    "PatientRecord",
    "Plan",
    "TimeError",
    "UnitError",
    "__version__",
    "assess",
    "warm_up",
]


def assess(
    bundle: str | bytes | dict[str, Any] | Path | PatientRecord,
    contexts: tuple[str, ...] | list[str] | frozenset[str] = (),
    *,
    nomogram: str = "vanderbilt-im",
    baseline_creatinine_mg_dl: float | None = None,
    jurisdiction: str = "us",
    operation_hours: float | None = None,
    baseline_rule: str | None = None,
) -> Assessment:
    """Assess one patient from a FHIR R4 Bundle (JSON text, dict or path) or a record.

    ``contexts`` are knowledge contexts (``mgaki.knowledge.load().contexts``), in any case.
    ``baseline_rule`` chooses the reference creatinine (kidney.yaml ``baseline_rules``; default
    ``nhs_england``).
    Raises an ``InputError`` subclass naming the offending resource (or context) on bad input.
    """
    if isinstance(contexts, str):
        contexts = (contexts,)
    kb = _load()
    known = frozenset(kb.context(c) for c in contexts)  # 'ICU' -> 'icu'; an unknown one is an InputError
    rule = kb.baseline_rule(baseline_rule).id  # kidney.yaml baseline_rules; an unknown one is an InputError
    if isinstance(bundle, Path):
        bundle = bundle.read_bytes()
    record = bundle if isinstance(bundle, PatientRecord) else _record_from_bundle(bundle)
    opts = AssessOptions(contexts=known, nomogram=nomogram,
                         baseline_creatinine_mg_dl=baseline_creatinine_mg_dl,
                         jurisdiction=jurisdiction, operation_hours=operation_hours, baseline_rule=rule)
    return _assess_record(record, opts)


def warm_up() -> None:
    """Prepare a long-running host (service, notebook kernel) for low-latency assessments.

    Loads the knowledge base, runs the shipped example once (filling every cache), and
    moves the long-lived heap built so far (fhir.resources/pydantic classes, knowledge)
    into the collector's permanent generation with ``gc.freeze()``: full collections no
    longer walk it, which is most of the p99 tail (benchmarks/README.md). Call it once,
    after start-up; objects created before the call are never collected if they become
    cyclic garbage, which is why a library does not do it on import.
    """
    import gc
    from importlib import resources

    example = resources.files("mgaki").joinpath("examples", "hypomagnesemia-cisplatin.json").read_bytes()
    assess(example, ("cisplatin", "malignancy"))
    gc.collect()
    gc.freeze()
