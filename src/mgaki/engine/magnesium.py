"""Magnesium status (C2): range, CTCAE grade, toxicity, ionized Mg, caveats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mgaki.knowledge import KnowledgeBase
from mgaki.knowledge.schema import GradeScale
from mgaki.units import convert, normalize_unit, unit_kind

Status = Literal["low", "normal", "high"]

__all__ = ["Grade", "ctcae_grade", "status", "toxicity_levels"]


@dataclass(frozen=True, slots=True)
class Grade:
    grade: int
    scale_id: str | None
    label: str | None


def status(kb: KnowledgeBase, mg_mg_dl: float) -> Status:
    r = kb.magnesium.reference_range
    lo = convert(r.low, "magnesium", r.unit, "mg/dL")
    hi = convert(r.high, "magnesium", r.unit, "mg/dL")
    if mg_mg_dl < lo:
        return "low"
    if mg_mg_dl > hi:
        return "high"
    return "normal"


def _scale(kb: KnowledgeBase, direction: str, unit: str) -> GradeScale | None:
    for s in kb.magnesium.grades:
        if s.direction == direction and s.unit == unit:
            return s
    return None


def ctcae_grade(kb: KnowledgeBase, reported_value: float, reported_unit: str) -> Grade:
    """CTCAE v5 grade in the laboratory's reporting unit (meq/L graded as mmol/L).

    LLN/ULN are the reference range converted to that unit. Bands: for low,
    lower <= x < upper; for high, lower < x <= upper, as CTCAE words them.
    """
    unit = normalize_unit(reported_unit)
    value = reported_value
    graded = [normalize_unit(s.unit) for s in kb.magnesium.grades]
    if unit not in graded:  # e.g. meq/L graded as mmol/L, mg/L as mg/dL: a scale of the same kind
        kind = {"equivalent": "substance"}.get(unit_kind(unit), unit_kind(unit))
        target = next((g for g in graded if unit_kind(g) == kind), graded[0])
        value, unit = convert(reported_value, "magnesium", unit, target), target
    r = kb.magnesium.reference_range
    lln = convert(r.low, "magnesium", r.unit, unit)
    uln = convert(r.high, "magnesium", r.unit, unit)
    if lln <= value <= uln:
        return Grade(0, None, None)
    direction = "low" if value < lln else "high"
    scale = _scale(kb, direction, unit)
    if scale is None:
        return Grade(0, None, None)
    for band in scale.bands:
        lower = band.lower if band.lower is not None else -float("inf")
        upper = band.upper if band.upper is not None else (lln if direction == "low" else uln)
        if direction == "low":
            upper = lln if band.upper is None else band.upper
            inside = lower <= value < upper
        else:
            lower = uln if band.lower is None else band.lower
            upper = band.upper if band.upper is not None else float("inf")
            inside = lower < value <= upper
        if inside:
            return Grade(band.grade, scale.id, band.label)
    return Grade(0, scale.id, None)


def toxicity_levels(kb: KnowledgeBase, mg_mg_dl: float) -> list[str]:
    """Ids of the hypermagnesaemia toxicity thresholds the value exceeds, mildest first."""
    ids = ("mg_toxicity_reflexes_decrease_above", "mg_toxicity_hypotension_above",
           "mg_toxicity_cardiac_above", "mg_toxicity_respiratory_above")
    out = []
    for tid in ids:
        t = kb.threshold(tid)
        if mg_mg_dl > convert(t.value, "magnesium", t.unit, "mg/dL"):
            out.append(tid)
    return out


def ionized_status(kb: KnowledgeBase, ionized_mmol_l: float) -> Status:
    r = kb.magnesium.ionized_reference_range
    lo = convert(r.low, "ionized_magnesium", r.unit, "mmol/L")
    hi = convert(r.high, "ionized_magnesium", r.unit, "mmol/L")
    return "low" if ionized_mmol_l < lo else "high" if ionized_mmol_l > hi else "normal"
