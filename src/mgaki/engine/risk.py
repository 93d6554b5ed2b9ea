"""Mg-associated AKI risk (C6): each study applied only in its own population.

A match says "this patient's Mg lies where study X found higher AKI risk",
with X's effect size and DOI; mgaki never turns that into a probability.
"""

from __future__ import annotations

from dataclasses import dataclass

from mgaki.knowledge import KnowledgeBase
from mgaki.knowledge.schema import RiskRegion, Study
from mgaki.units import convert

__all__ = ["EvidenceMatch", "in_region", "match_evidence"]

GENERAL = "general"


@dataclass(frozen=True, slots=True)
class EvidenceMatch:
    study: Study
    region: RiskRegion


def in_region(region: RiskRegion, value: float, analyte: str = "magnesium") -> bool:
    """Is `value` (the analyte's canonical unit) inside the region, in the study's own unit?"""
    canonical = "mmol/L" if analyte == "ionized_magnesium" else "mg/dL"
    v = convert(value, analyte, canonical, region.unit)
    if region.lower is not None and (v <= region.lower if region.lower_exclusive
                                     else v < region.lower):
        return False
    return not (region.upper is not None and (v > region.upper if region.upper_inclusive
                                              else v >= region.upper))


def applicable(study: Study, contexts: frozenset[str], has_aki: bool) -> bool:
    """A study applies to the populations it studied; general inpatients when no context fits."""
    if not study.applied or (study.requires_aki and not has_aki):
        return False
    ctx = contexts or frozenset({GENERAL})
    return bool(ctx & set(study.contexts))


def match_evidence(kb: KnowledgeBase, contexts: frozenset[str], values: dict[str, float],
                   has_aki: bool, age_years: float | None = None,
                   ) -> tuple[list[EvidenceMatch], list[tuple[Study, str]]]:
    """(matches, (study, why not applied) for studies of the patient's populations).

    The general-inpatient study applies when none of the given contexts has a study of its
    own (no context, or e.g. cisplatin, sepsis): a hospitalised adult is then its population.
    A study is not applied outside its age range or in contexts it lists as
    ``not_in_contexts`` (Mg given as a drug: eclampsia, torsades).
    """
    ctx = frozenset(c for c in contexts if any(c in s.contexts for s in kb.evidence.studies))
    if not ctx:
        ctx = frozenset({GENERAL})
    matches: list[EvidenceMatch] = []
    skipped: list[tuple[Study, str]] = []
    for study in kb.evidence.studies:
        if not (ctx & set(study.contexts)):
            continue
        if not study.applied:
            skipped.append((study, study.not_applied_reason or "not verified"))
            continue
        if study.min_age_years is not None and age_years is not None and age_years < study.min_age_years:
            skipped.append((study, f"studied patients aged >={study.min_age_years:g} y; this patient is "
                                   f"{age_years:g} y"))
            continue
        excluded = sorted(contexts & set(study.not_in_contexts))
        if excluded:
            skipped.append((study, f"its association does not hold in context {', '.join(excluded)} "
                                   "(Mg given as a drug)"))
            continue
        if not applicable(study, ctx, has_aki):
            continue
        value = values.get(study.analyte)
        if value is None:
            continue
        for region in study.risk_regions:
            if in_region(region, value, study.analyte):
                matches.append(EvidenceMatch(study, region))
                break
    return matches, skipped
