"""Kidney function (C5): KDIGO 2012 AKI staging, CKD-EPI 2021, Cockcroft-Gault, kinetic GFR.

Baseline rule (documented in docs/kdigo.md): for each creatinine value the
reference for the 1.5/2/3x criteria is the lowest value in the preceding 7 days,
or a supplied pre-admission baseline if lower or if no value precedes; the
reference for the 0.3 mg/dL criterion is the lowest value in the preceding
48 h. The >=4.0 mg/dL criterion applies only within an AKI (another creatinine
criterion met), as KDIGO words it ("increase to"). RRT start is stage 3.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from mgaki.knowledge import KnowledgeBase
from mgaki.knowledge.schema import DialysisCode
from mgaki.record import PatientRecord

# Float tolerances, shared with the SQL stages (surveillance/stages.py) so both decide alike.
THRESHOLD_EPS = 1e-9  # a KDIGO comparison at exactly its threshold counts as met
ZERO_ML = 1e-6  # a window volume below this is zero (differences of cumulative sums are not exact)

__all__ = [
    "THRESHOLD_EPS",
    "ZERO_ML",
    "CreatinineStage",
    "UrineStage",
    "WeightChoice",
    "choose_weight",
    "ckd_epi_2021",
    "cockcroft_gault",
    "dialysis_code",
    "kinetic_egfr",
    "maintenance_dialysis",
    "schwartz_bedside",
    "stage_creatinine",
    "stage_urine_output",
]


@dataclass(frozen=True, slots=True)
class CreatinineStage:
    time: datetime
    value: float
    stage: int
    criterion: str | None
    reference: float | None  # value the ratio was computed against
    reference_method: str
    reference_time: datetime | None = None  # the lowest value's time, or the latest value of a median
    reference_n: int = 0  # values behind the reference (1 for a lowest value, n for a median)
    rule: str = ""  # the baseline rule (kidney.yaml baseline_rules)


@dataclass(frozen=True, slots=True)
class UrineStage:
    time: datetime
    stage: int
    criterion: str | None
    rate_6h: float | None
    rate_12h: float | None
    rate_24h: float | None


def stage_creatinine(
    kb: KnowledgeBase,
    series: Sequence[tuple[datetime, float]],
    baseline: float | None = None,
    rrt_times: Sequence[datetime] = (),
    pediatric_height_cm: float | None = None,
    rule: str | None = None,
    admission: datetime | None = None,
) -> list[CreatinineStage]:
    """KDIGO creatinine (and RRT) stage at each creatinine value, mg/dL, any input order.

    ``rule`` chooses the reference of the ratio criterion (kidney.yaml ``baseline_rules``; default
    ``nhs_england``: lowest value of the prior 7 days, else the median of the values 8-365 days
    before). ``admission`` is needed by ``outpatient_median`` (median 7-365 days before it) when no
    ``baseline`` is supplied. ``pediatric_height_cm`` (patients <18 y only) adds KDIGO's paediatric
    stage-3 criterion, eGFR <35 mL/min/1.73 m2, with eGFR by bedside Schwartz; like the 4.0 mg/dL
    rule it applies only within an AKI that another criterion has met ("decrease in eGFR to").
    """
    pts = sorted(series)
    rule_id = kb.baseline_rule(rule).id
    older_max = timedelta(days=kb.value("baseline_lookback_max_days"))
    if rule_id == "outpatient_median" and baseline is None and admission is not None:
        lo = admission - older_max
        hi = admission - timedelta(days=kb.value("baseline_lookback_min_days"))
        window = sorted({(pt, pv) for pt, pv in pts if lo <= pt <= hi})
        baseline = statistics.median(v for _, v in window) if window else None
    abs_rise = kb.value("kdigo_abs_rise")
    abs_win = timedelta(hours=kb.value("kdigo_abs_window"))
    ratio_win = timedelta(hours=kb.value("kdigo_ratio_window"))
    r1, r2, r3 = (kb.value(f"kdigo_ratio_stage{i}") for i in (1, 2, 3))
    scr3 = kb.value("kdigo_scr_stage3")
    peds_egfr = kb.value("kdigo_pediatric_egfr_stage3")
    first_rrt = min(rrt_times) if rrt_times else None
    out: list[CreatinineStage] = []
    for i, (t, v) in enumerate(pts):
        prior = [(pt, pv) for pt, pv in pts[:i] if pt < t]
        in48 = [pv for pt, pv in prior if t - pt <= abs_win]
        in7d = [(pt, pv) for pt, pv in prior if t - pt <= ratio_win]
        ref, method, ref_t, ref_n = _reference(rule_id, in7d, baseline, prior, t, ratio_win, older_max)
        stage, crit = 0, None
        if in48 and v - min(in48) >= abs_rise - THRESHOLD_EPS:
            stage, crit = 1, "creatinine rise >=0.3 mg/dL within 48 h"
        if ref:
            ratio = v / ref
            for thr, s in ((r3, 3), (r2, 2), (r1, 1)):
                if ratio >= thr - THRESHOLD_EPS and s > stage:
                    stage, crit = s, f"creatinine {ratio:.2f} x baseline ({method})"
                    break
        if stage >= 1 and v >= scr3 and stage < 3:
            stage, crit = 3, "creatinine >=4.0 mg/dL during AKI"
        if (pediatric_height_cm is not None and 1 <= stage < 3
                and (egfr := schwartz_bedside(kb, v, pediatric_height_cm)) < peds_egfr):
            stage, crit = 3, f"eGFR {egfr:.0f} <{peds_egfr:g} mL/min/1.73 m2 (bedside Schwartz) during AKI, age <18"
        if first_rrt is not None and t >= first_rrt:
            stage, crit = 3, "renal replacement therapy started"
        out.append(CreatinineStage(t, v, stage, crit, ref, method, ref_t, ref_n, rule_id))
    return out


_METHOD = {"lowest_prior_7d": "lowest creatinine in the prior 7 days",
           "median_8_365d": "median creatinine 8-365 days before",
           "preadmission_median": "median creatinine 7-365 days before admission",
           "supplied_baseline": "supplied pre-admission baseline",
           "none": "no prior creatinine: no baseline"}


def _reference(rule_id: str, in7d: list[tuple[datetime, float]], baseline: float | None,
               prior: list[tuple[datetime, float]], t: datetime, recent: timedelta, older_max: timedelta,
               ) -> tuple[float | None, str, datetime | None, int]:
    """(reference, method, its time, values behind it) under one baseline rule (kidney.yaml)."""
    low = min((pv for _, pv in in7d), default=None)
    low_t = max((pt for pt, pv in in7d if pv == low), default=None)
    if rule_id == "nhs_england":
        if low is not None:
            return low, _METHOD["lowest_prior_7d"], low_t, 1
        older = sorted({(pt, pv) for pt, pv in prior if recent < t - pt <= older_max})
        if older:
            return statistics.median(v for _, v in older), _METHOD["median_8_365d"], older[-1][0], len(older)
    elif rule_id == "kdigo_7day":
        if low is not None:
            return low, _METHOD["lowest_prior_7d"], low_t, 1
    elif low is not None and (baseline is None or low <= baseline):  # outpatient_median
        return low, _METHOD["lowest_prior_7d"], low_t, 1
    if baseline is not None:
        return baseline, _METHOD["supplied_baseline"], None, 0
    return None, _METHOD["none"], None, 0


def stage_urine_output(
    kb: KnowledgeBase,
    events: Sequence[tuple[datetime, float]],
    weight_kg: float,
    irrigant_in: Sequence[tuple[datetime, float]] = (),
    irrigant_out: Sequence[tuple[datetime, float]] = (),
) -> list[UrineStage]:
    """KDIGO urine-output stage at each charting time.

    Volumes charted at the same time are summed. Each charted volume (mL) is taken to have accrued since the previous
    charting, evenly (partial intervals prorated); a window counts only once charting covers all of it. The stage at
    a charting is that of the worst window it reveals: every window ending between the previous charting and this
    one. The rates reported are those of the windows ending at this charting. Zero volume is real anuria.

    Urine that is not urine (docs/kdigo.md#irrigation): bladder irrigant instilled (``irrigant_in``) is subtracted
    from the output charted with it (the nearest output charting within ``uo_irrigant_pair_hours``, else at its
    own time), so a window holds true urine = output - irrigant in over the same interval (the MIMIC code
    repository's urine_output concept). ``irrigant_out`` are outputs that hold irrigant (urine plus irrigant):
    they count as output, netted by the instillation paired with them. A window is not assessable, and stages
    nothing, when it overlaps an interval whose net volume is negative (irrigant instilled and not yet drained at
    that charting: the windows around it cannot be netted), one that ends with an irrigant output no instillation
    was netted against (its urine is unknown), or an interval between chartings longer than
    ``uo_max_interval_hours`` (the volume charted after a gap may have accrued anywhere in it): a gap in charting
    is never oliguria or anuria.
    """
    summed: dict[datetime, float] = {}
    for t, v in (*events, *irrigant_out):  # two drains charted at one time: both volumes count
        summed[t] = summed.get(t, 0.0) + v
    out_times = sorted(summed)
    pair = timedelta(hours=kb.value("uo_irrigant_pair_hours"))
    netted: set[datetime] = set()
    for t, v in irrigant_in:  # irrigant instilled: not urine; netted against the output charted with it
        i = bisect_left(out_times, t)
        near = [x for x in out_times[max(i - 1, 0):i + 1] if abs(x - t) <= pair]
        at = min(near, key=lambda x: (abs(x - t), x)) if near else t
        summed[at] = summed.get(at, 0.0) - v
        netted.add(at)
    # an output that holds irrigant with no instillation netted against it: its urine is unknown
    unknown = {t for t, _ in irrigant_out} - netted
    pts = sorted(summed.items())
    if len(pts) < 2 or weight_kg <= 0:
        return []
    rate1 = kb.value("kdigo_uo_stage1_rate")
    rate3 = kb.value("kdigo_uo_stage3_rate")
    h1, h2, h3 = (kb.value(k) for k in ("kdigo_uo_stage1_hours", "kdigo_uo_stage2_hours",
                                         "kdigo_uo_stage3_hours"))
    h_anuria = kb.value("kdigo_anuria_hours")
    max_gap = timedelta(hours=kb.value("uo_max_interval_hours"))
    intervals = [(pts[i - 1][0], pts[i][0], pts[i][1]) for i in range(1, len(pts))
                 if pts[i][0] > pts[i - 1][0]]
    if not intervals:
        return []
    start = intervals[0][0]
    # Cumulative volume at each interval end: volume(lo, t) = cum(t) - cum(lo), prorated
    # inside an interval, so each window costs two binary searches, not a rescan.
    ends = [b for _, b, _ in intervals]
    cum_end: list[float] = []
    running = 0.0
    for _, _, charted in intervals:
        running += charted
        cum_end.append(running)
    long_before = [0]  # long_before[j]: unusable intervals (longer than max_gap, or net negative) among the first j
    for a, b, vol in intervals:
        long_before.append(long_before[-1] + (1 if b - a > max_gap or vol < -ZERO_ML or b in unknown else 0))

    def cum(x: datetime) -> float:
        i = bisect_left(ends, x)
        a, b, vol = intervals[i]
        before = cum_end[i] - vol
        return before + vol * (x - a).total_seconds() / (b - a).total_seconds()

    def assessable(first: int, last: int, vol: float) -> float | None:
        """The volume of a window over intervals first..last, None when it is not assessable."""
        if long_before[last + 1] - long_before[first] > 0 or vol < -ZERO_ML:
            return None
        return vol

    points = [start, *ends]  # charting times; cumulative volume 0 at the first
    cum_points = [0.0, *cum_end]

    def ending_at(k: int, hours: float) -> float | None:
        """Volume of the window of `hours` ending at interval k's end (None: not covered or not assessable)."""
        b = intervals[k][1]
        lo = b - timedelta(hours=hours)
        if start > lo:
            return None
        return assessable(bisect_right(ends, lo), k, cum(b) - cum(lo) if lo > start else cum(b))

    def lowest_volume(k: int, hours: float) -> float | None:
        """Least volume over any `hours`-long assessable window ending in interval k, i.e. knowable at its end.

        Volume is piecewise linear in the window's position (proration), so the least one
        ends at the charting itself or starts at an earlier charting (KDIGO: any 6 hours,
        not only those that end at a charting)."""
        a, b, _ = intervals[k]
        span = timedelta(hours=hours)
        best = ending_at(k, hours)
        for i in range(bisect_right(points, a - span), bisect_left(points, b - span)):
            v = assessable(i, k, cum(points[i] + span) - cum_points[i])
            if v is not None and (best is None or v < best):
                best = v
        return best

    out: list[UrineStage] = []
    for k, (_, t, _v) in enumerate(intervals):
        def rate(hours: float, k: int = k) -> float | None:
            v = ending_at(k, hours)
            return None if v is None else v / weight_kg / hours

        low = {h: lowest_volume(k, h) for h in {h1, h2, h3, h_anuria}}
        worst = {h: None if v is None else v / weight_kg / h for h, v in low.items()}
        stage, crit = 0, None
        if (r := worst[h1]) is not None and r < rate1:
            stage, crit = 1, f"urine output <{rate1:g} mL/kg/h for {h1:g} h"
        if (r := worst[h2]) is not None and r < rate1:
            stage, crit = 2, f"urine output <{rate1:g} mL/kg/h for {h2:g} h"
        if (r := worst[h3]) is not None and r < rate3:
            stage, crit = 3, f"urine output <{rate3:g} mL/kg/h for {h3:g} h"
        if (z := low[h_anuria]) is not None and z < ZERO_ML:
            stage, crit = 3, f"anuria for {h_anuria:g} h"
        out.append(UrineStage(t, stage, crit, rate(h1), rate(h2), rate(h3)))
    return out


def _code_key(system: str, code: str) -> tuple[str, str]:
    """ICD codes are written with and without the dot (MIMIC: 'N186'): compare them without it."""
    return system.strip(), code.replace(".", "").strip().upper()


def dialysis_code(kb: KnowledgeBase, system: str, code: str) -> DialysisCode | None:
    """The maintenance-dialysis code (kidney.yaml) a (system, code) pair is, if any."""
    index = {_code_key(c.system, c.code): c for c in kb.kidney.maintenance_dialysis.codes}
    return index.get(_code_key(system, code))


def maintenance_dialysis(kb: KnowledgeBase, rec: PatientRecord, contexts: frozenset[str],
                         now: datetime | None = None) -> tuple[str, ...]:
    """What shows the patient is on maintenance dialysis (empty: nothing does), each naming its source.

    Three sources, as the batch stage reads them (docs/kdigo.md#maintenance-dialysis): the context
    (``--context``, a Flag, an adapter's diagnosis row); an active Condition coded as ESKD or dialysis
    dependence (kidney.yaml ``maintenance_dialysis.codes``); an RRT session outside every hospital stay
    within ``rrt_lookback_days`` before the current admission (outpatient dialysis).
    """
    md = kb.kidney.maintenance_dialysis
    out: list[str] = []
    if md.context in contexts:
        out.append(f"context {md.context}")
    for c in rec.conditions:
        if not c.active:
            continue
        hit = next((h for s, k in c.codings if (h := dialysis_code(kb, s, k)) is not None), None)
        if hit is not None:
            out.append(f"{c.source_id}: {hit.display} ({hit.code})")
    hospital = sorted((s for s in rec.stays if s.kind == "hospital" and (now is None or s.start <= now)),
                      key=lambda s: s.start)
    if hospital and rec.rrt_times:
        admitted = hospital[-1].start
        lookback = timedelta(days=md.rrt_lookback_days)
        same_visit = timedelta(hours=kb.value("pre_admission_attach_hours"))  # as the batch stages attach it
        for t in sorted(rec.rrt_times):
            inside = any(s.start <= t <= (s.end or t) for s in hospital)
            if admitted - lookback <= t < admitted - same_visit and not inside:
                out.append(f"RRT session at {t.isoformat()} outside hospital before admission")
                break
    return tuple(out)


@dataclass(frozen=True, slots=True)
class WeightChoice:
    """The weight urine output is staged with, and why (docs/kdigo.md#weight)."""

    weight_kg: float
    time: datetime
    source: str
    considered: int  # candidate weights (recorded from the look-back before the first charting to the last)
    rejected: tuple[tuple[datetime, float, str, str], ...]  # (time, kg, source, reason) set aside


def choose_weight(kb: KnowledgeBase, weights: Sequence[tuple[datetime, float, str]], first: datetime,
                  last: datetime) -> WeightChoice | None:
    """The weight for the urine-output criteria of charting from ``first`` to ``last`` (None: no weight).

    Candidates: weights recorded from ``uo_weight_lookback_days`` before ``first`` to ``last``. With at
    least ``uo_weight_outlier_min_n`` of them, one further than ``uo_weight_outlier_fraction`` from their
    median is rejected (with the reason). Order of choice: a candidate before one outside the look-back;
    the latest at or before ``first``, else the earliest after it; then the lower weight, then the source.
    The batch stage ``stay_weight`` implements the same rule (differential-tested).
    """
    pts = sorted(set(weights))
    if not pts:
        return None
    lo = first - timedelta(days=kb.value("uo_weight_lookback_days"))
    cand = [w for w in pts if lo <= w[0] <= last]
    med = statistics.median(w[1] for w in cand) if cand else None
    frac, min_n = kb.value("uo_weight_outlier_fraction"), kb.value("uo_weight_outlier_min_n")
    rejected = []
    if med is not None and len(cand) >= min_n:
        rejected = [w for w in cand if abs(w[1] - med) > frac * med + THRESHOLD_EPS]
    out = [w for w in pts if w not in rejected]

    def order(w: tuple[datetime, float, str]) -> tuple[int, int, float, float, str]:
        before = w[0] <= first
        secs = (w[0] - first).total_seconds()
        return (0 if lo <= w[0] <= last else 1, 0 if before else 1, -secs if before else secs, w[1], w[2])

    t, kg, src = min(out, key=order)
    reasons = tuple((w[0], w[1], w[2], f"outlier: {w[1]:.1f} kg is {abs(w[1] - med) / med:.0%} from the median "
                     f"{med:.1f} kg of {len(cand)} weights") for w in rejected) if med is not None else ()
    return WeightChoice(kg, t, src, len(cand), reasons)


def ckd_epi_2021(kb: KnowledgeBase, scr_mg_dl: float, age: float, female: bool) -> float:
    """eGFR, mL/min/1.73 m2 (race-free CKD-EPI 2021); valid only at steady state."""
    c = kb.coefficient
    kappa = c("ckdepi_kappa_female") if female else c("ckdepi_kappa_male")
    alpha = c("ckdepi_alpha_female") if female else c("ckdepi_alpha_male")
    ratio = scr_mg_dl / kappa
    egfr = (c("ckdepi_const") * min(ratio, 1.0) ** alpha
            * max(ratio, 1.0) ** c("ckdepi_exp_high") * c("ckdepi_age_base") ** age)
    return float(egfr * (c("ckdepi_female") if female else 1.0))


def schwartz_bedside(kb: KnowledgeBase, scr_mg_dl: float, height_cm: float) -> float:
    """Children: eGFR, mL/min/1.73 m2 = k x height (cm) / SCr (mg/dL) (Schwartz 2009)."""
    return kb.coefficient("schwartz_k_cm") * height_cm / scr_mg_dl


def cockcroft_gault(kb: KnowledgeBase, scr_mg_dl: float, age: float, weight_kg: float,
                    female: bool) -> float:
    """Creatinine clearance, mL/min (actual body weight; say so wherever it is shown)."""
    c = kb.coefficient
    crcl = (c("cg_age_const") - age) * weight_kg / (c("cg_denominator") * scr_mg_dl)
    return crcl * (c("cg_female") if female else 1.0)


def kinetic_egfr(kb: KnowledgeBase, baseline_scr: float, baseline_gfr: float,
                 scr1: float, scr2: float, hours: float) -> float | None:
    """Chen 2013 kinetic GFR between two creatinine values `hours` apart."""
    if hours <= 0 or baseline_scr <= 0:
        return None
    max_rise = kb.coefficient("kgfr_max_rise_per_day")
    mean = (scr1 + scr2) / 2.0
    k = baseline_scr * baseline_gfr / mean * (1.0 - 24.0 * (scr2 - scr1) / (hours * max_rise))
    return max(k, 0.0) if math.isfinite(k) else None
