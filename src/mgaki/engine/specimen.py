"""Specimen plausibility (issue 13 point 6): values more likely the sample than the patient.

Three rules, all knowledge data (surveillance.yaml ``specimen``), the SQL stages mirror them row for row
(``surveillance/stages.py`` ``spec_*``):

- infusion: drawn during, or within ``after_hours`` after, an intermittent infusion of the analyte it measures,
  and above the previous value by more than ``min_rise`` (infusate reads high; an infusion with no recorded end
  lasts ``assumed_hours``; longer than ``max_infusion_hours`` is a continuous infusion, monitored during it on
  purpose, and not suspect);
- delta check: a jump from the previous value (within ``within_hours``, no renal replacement therapy between
  them) that returns on the next value (drawn within ``within_hours``; a later one tells nothing). The
  reference is the previous value; when that one was itself a jump, the closer of it and the value before it (a
  repeat that confirms a jump, or returns from it, is no jump). A jump with no next value yet is unconfirmed;
  one whose next value stays is confirmed and not suspect;
- co-dilution: at least ``min_analytes`` analytes of one draw (same time) each ``rel_fall`` below their previous
  value within ``within_hours``, with no renal replacement therapy in that time.

A suspect value is excluded from baselines, critical findings and alerts; ``held`` are the values that were not
trustworthy when drawn (an infusion or co-dilution suspect, or any jump, before a repeat could confirm it), the
ones an alert at their own time must ignore.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from mgaki.engine.kidney import THRESHOLD_EPS
from mgaki.knowledge import KnowledgeBase
from mgaki.knowledge.schema import DeltaRule

__all__ = ["REPEAT", "Infusion", "SpecimenReview", "Suspect", "review_specimens"]

REPEAT = "repeat the sample"
Kind = Literal["infusion", "co_dilution", "delta_check", "delta_check_unconfirmed"]
Key = tuple[str, datetime, float]  # analyte, time, value


@dataclass(frozen=True, slots=True)
class Infusion:
    ingredient: str  # drugs.yaml ingredient
    start: datetime
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Suspect:
    analyte: str
    time: datetime
    value: float
    rule: str  # the rule id (surveillance.yaml specimen)
    kind: Kind
    reason: str  # why, in words, ending with what to do


@dataclass(frozen=True)
class SpecimenReview:
    suspects: dict[Key, Suspect] = field(default_factory=dict)  # the values to set aside, with the reason
    held: frozenset[Key] = frozenset()  # not trustworthy when drawn: no alert or critical finding at their time

    def is_suspect(self, analyte: str, time: datetime, value: float) -> bool:
        return (analyte, time, value) in self.suspects


def _jump(rule: DeltaRule, value: float, ref: float, dt: timedelta) -> bool:
    if dt.total_seconds() > rule.within_hours * 3600:
        return False
    change = value - ref
    if (rule.direction == "rise" and change <= 0) or (rule.direction == "fall" and change >= 0):
        return False
    if rule.abs_change is not None and abs(change) < rule.abs_change - THRESHOLD_EPS:
        return False
    return not (rule.rel_change is not None and (ref <= 0 or abs(change) / ref < rule.rel_change - THRESHOLD_EPS))


def review_specimens(kb: KnowledgeBase, series: Mapping[str, Iterable[tuple[datetime, float]]],
                     infusions: Sequence[Infusion] = (), rrt_times: Sequence[datetime] = ()) -> SpecimenReview:
    """Suspect values of one patient's series (analyte -> (time, value) in its canonical unit)."""
    rules = kb.surveillance.specimen
    pts = {a: sorted(set(s)) for a, s in series.items()}
    found: dict[Key, Suspect] = {}
    held: set[Key] = set()

    def mark(s: Suspect, hold: bool = True) -> None:
        key = (s.analyte, s.time, s.value)
        if hold:
            held.add(key)
        if key not in found:  # the first rule to mark a value names it: infusion, then co-dilution, then delta
            found[key] = s

    for r in rules.infusion:
        for inf in infusions:
            if inf.ingredient not in r.ingredients:
                continue
            end = inf.end or inf.start + timedelta(hours=r.assumed_hours)
            if end - inf.start > timedelta(hours=r.max_infusion_hours):
                continue
            until = end + timedelta(hours=r.after_hours)
            vals = pts.get(r.analyte, [])
            for i, (t, v) in enumerate(vals):
                if inf.start <= t <= until and (i == 0 or v > vals[i - 1][1] + r.min_rise):
                    mark(Suspect(r.analyte, t, v, r.id, "infusion",
                                 f"{r.analyte} {v:g} drawn during or within {r.after_hours:g} h after an IV "
                                 f"{inf.ingredient} infusion ({inf.start.isoformat()} to {end.isoformat()}): "
                                 f"suspect specimen, {REPEAT}"))

    for c in rules.co_dilution:
        window = timedelta(hours=c.within_hours)
        falls: dict[datetime, list[tuple[str, float, float]]] = defaultdict(list)
        for a in c.analytes:
            p = pts.get(a, [])
            for i in range(1, len(p)):
                (pt, pv), (t, v) = p[i - 1], p[i]
                if t - pt <= window and pv > 0 and (pv - v) / pv >= c.rel_fall - THRESHOLD_EPS:
                    falls[t].append((a, v, pv))
        for t, fell in falls.items():
            if len({a for a, _, _ in fell}) < c.min_analytes:
                continue
            if any(t - window <= x <= t for x in rrt_times):
                continue  # dialysis lowers them together for real
            names = ", ".join(sorted({a for a, _, _ in fell}))
            for a, v, pv in fell:
                mark(Suspect(a, t, v, c.id, "co_dilution",
                             f"{a} {v:g} (from {pv:g}) fell with {names} in the same draw: diluted sample "
                             f"suspected, {REPEAT}"))

    for d in rules.delta:
        p = pts.get(d.analyte, [])
        window = timedelta(hours=d.within_hours)

        def jump(v: float, t: datetime, rv: float, rt: datetime, d: DeltaRule = d) -> bool:
            """A jump, unless renal replacement therapy ran between the two draws (dialysis moves them)."""
            return _jump(d, v, rv, t - rt) and not any(rt <= x <= t for x in rrt_times)

        for i, (t, v) in enumerate(p):
            if i == 0:
                continue
            prev_jump = i >= 2 and jump(p[i - 1][1], p[i - 1][0], p[i - 2][1], p[i - 2][0])
            # after a jump, the reference is the closer of the jump and the value before it (confirm or return)
            use_before = prev_jump and abs(v - p[i - 2][1]) < abs(v - p[i - 1][1])
            rt, rv = p[i - 2] if use_before else p[i - 1]
            if not jump(v, t, rv, rt):
                continue
            held.add((d.analyte, t, v))
            if i + 1 < len(p):
                nt, nv = p[i + 1]
                if nt - t <= window and abs(nv - rv) < abs(nv - v):  # a repeat long after tells nothing
                    mark(Suspect(d.analyte, t, v, d.id, "delta_check",
                                 f"{d.analyte} {v:g} jumped from {rv:g} and returned to {nv:g} on the next value: "
                                 f"suspect specimen, {REPEAT}"))
            else:
                mark(Suspect(d.analyte, t, v, d.id, "delta_check_unconfirmed",
                             f"{d.analyte} {v:g} jumped from {rv:g} and has no repeat yet: unconfirmed, {REPEAT}"))
    return SpecimenReview(found, frozenset(held))
