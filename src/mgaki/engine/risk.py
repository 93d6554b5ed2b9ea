"""Mg-associated AKI risk (C6): each study applied only in its own population, at its own exposure time.

A match says "this patient's Mg, at the time study X measured it, lies where X found higher
AKI risk", with X's effect size and DOI; mgaki never turns that into a probability. The time
is the study's (evidence.yaml ``exposure_times``): admission, ICU admission, AKI onset, the
operation, the stay; the SQL evidence stage (surveillance/stages.py) applies the same rules.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mgaki.knowledge import KnowledgeBase, load
from mgaki.knowledge.schema import ExposureTime, RiskRegion, Study
from mgaki.record import PatientRecord, Stay
from mgaki.units import convert

__all__ = ["Anchors", "EvidenceMatch", "Exposure", "anchors_of", "exposure_value", "in_region", "match_evidence"]

GENERAL = "general"
Series = Sequence[tuple[datetime, float]]


@dataclass(frozen=True, slots=True)
class Exposure:
    """The value a study's exposure time selects: the result used (``time`` None for a median)."""

    value: float
    time: datetime | None
    rule: ExposureTime
    note: str | None = None  # how the anchor was found when the record does not state it


@dataclass(frozen=True, slots=True)
class EvidenceMatch:
    study: Study
    region: RiskRegion
    exposure: Exposure


@dataclass(frozen=True)
class Anchors:
    """The times a study's exposure is counted from, for one patient (one hospital stay)."""

    hospital: Stay | None = None
    icu: Stay | None = None
    aki_onset: datetime | None = None
    context_times: Mapping[str, datetime] = field(default_factory=dict)  # earliest time of each context
    now: datetime | None = None


def anchors_of(rec: PatientRecord, aki_onset: datetime | None, now: datetime | None) -> Anchors:
    """The record's current hospital stay, its first ICU stay, the AKI onset and its contexts' times."""
    hospital = max((s for s in rec.stays if s.kind == "hospital" and (now is None or s.start <= now)),
                   key=lambda s: s.start, default=None)
    icus = [s for s in rec.stays if s.kind == "icu" and (now is None or s.start <= now)
            and (hospital is None or s.start >= hospital.start)]
    ctx: dict[str, datetime] = {}
    for c, t in rec.context_times:
        if (hospital is None or t >= hospital.start) and (now is None or t <= now):
            ctx[c] = min(t, ctx.get(c, t))
    return Anchors(hospital, min(icus, key=lambda s: s.start, default=None), aki_onset, ctx, now)


def in_region(region: RiskRegion, value: float, analyte: str = "magnesium") -> bool:
    """Is `value` (the analyte's canonical unit) inside the region, in the study's own unit?"""
    v = convert(value, analyte, load().analyte(analyte).canonical_unit, region.unit)
    if region.lower is not None and (v <= region.lower if region.lower_exclusive
                                     else v < region.lower):
        return False
    return not (region.upper is not None and (v > region.upper if region.upper_inclusive
                                              else v >= region.upper))


def _anchor(rule: ExposureTime, context: str, series: Series, a: Anchors,
            ) -> tuple[datetime, datetime | None, str | None] | str:
    """(anchor, end of the stay it opens, note) or why there is none.

    A record without its admission (or ICU admission) time is read as one stay that began with
    its first result: the first Mg stands for the admission value, and the finding says so.
    """
    first = series[0][0] if series else None
    if rule.anchor == "admission":
        if a.hospital is not None:
            return a.hospital.start, a.hospital.end, None
        return (first, None, "admission time not in the record: its first Mg is taken as the admission value") \
            if first else "no Mg"
    if rule.anchor == "icu_admission":
        if a.icu is not None:
            return a.icu.start, a.icu.end, None
        return (first, None, "ICU admission time not in the record: its first Mg is taken as the ICU admission "
                             "value") if first else "no Mg"
    if rule.anchor == "aki_onset":
        return (a.aki_onset, a.hospital.end if a.hospital else None, None) if a.aki_onset else "no AKI onset"
    t = a.context_times.get(context)
    if t is None:
        return f"the record gives no time for {context} (its exposure is the {rule.meaning})"
    return t, a.hospital.end if a.hospital else None, None


def exposure_value(rule: ExposureTime, series: Series, anchor: datetime, end: datetime | None,
                   now: datetime | None = None) -> tuple[float, datetime | None] | None:
    """The value (and its time) ``rule`` selects from ``series`` (time order) around ``anchor``.

    The window is ``from_h``..``to_h`` hours from the anchor, or to the stay's ``end`` (else ``now``)
    when ``to_h`` is unset. Ties: the earlier result, then the lower value (the SQL stage's order).
    """
    lo = anchor + timedelta(hours=rule.from_h)
    hi = anchor + timedelta(hours=rule.to_h) if rule.to_h is not None else (end or now)
    vals = sorted({(t, v) for t, v in series if t >= lo and (hi is None or t <= hi)})
    if not vals:
        return None
    if rule.pick == "median":
        return statistics.median(v for _, v in vals), None
    key = {"first": lambda p: (p[0], p[1]), "last": lambda p: (-p[0].timestamp(), p[1]),
           "nearest": lambda p: (abs((p[0] - anchor).total_seconds()), p[0], p[1]),
           "lowest": lambda p: (p[1], p[0])}[rule.pick]
    t, v = min(vals, key=key)
    return v, t


def applicable(study: Study, contexts: frozenset[str], has_aki: bool) -> bool:
    """A study applies to the populations it studied; general inpatients when no context fits."""
    if not study.applied or (study.requires_aki and not has_aki):
        return False
    ctx = contexts or frozenset({GENERAL})
    return bool(ctx & set(study.contexts))


def match_evidence(kb: KnowledgeBase, contexts: frozenset[str], series: Mapping[str, Series],
                   has_aki: bool, age_years: float | None = None, anchors: Anchors | None = None,
                   ) -> tuple[list[EvidenceMatch], list[tuple[Study, str]]]:
    """(matches, (study, why not applied) for studies of the patient's populations).

    ``series`` holds each analyte's results in time order; each study reads the one its
    exposure time selects. The general-inpatient study applies when none of the given contexts
    has a study of its own (no context, or e.g. cisplatin, sepsis): a hospitalised adult is then
    its population. A study is not applied outside its age range or in contexts it lists as
    ``not_in_contexts`` (Mg given as a drug: eclampsia, torsades).
    """
    anchors = anchors or Anchors()
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
        rule = kb.evidence.exposure(study)
        values = series.get(study.analyte) or ()
        found = _anchor(rule, sorted(ctx & set(study.contexts))[0], values, anchors)
        if isinstance(found, str):
            if values and found not in ("no Mg", "no AKI onset"):
                skipped.append((study, found))
            continue
        picked = exposure_value(rule, values, found[0], found[1], anchors.now)
        if picked is None:
            if values:
                skipped.append((study, f"no {study.analyte.replace('_', ' ')} at its exposure time ({rule.meaning})"))
            continue
        exposure = Exposure(picked[0], picked[1], rule, found[2])
        for region in study.risk_regions:
            if in_region(region, exposure.value, study.analyte):
                matches.append(EvidenceMatch(study, region, exposure))
                break
    return matches, skipped
