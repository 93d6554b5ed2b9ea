"""Repletion planning (C8): regimen by level, context and kidney function.

Every amount is converted by mgaki.units from the unit the protocol states;
renal rules, labelled maxima and hold rules come from regimens.yaml.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from mgaki.engine.magnesium import toxicity_levels
from mgaki.knowledge import KnowledgeBase
from mgaki.knowledge.schema import Nomogram, Regimen, RenalRule, Source, Step, Tier
from mgaki.record import KidneyState
from mgaki.result import Dose, Evidence, PkPrediction, Plan
from mgaki.units import convert, display, dose_unit, rate_unit, salt_amounts, unit_kind

if TYPE_CHECKING:
    from mgaki.pk import KidneyCourse

__all__ = ["PlanRequest", "criteria_met", "pk_kidney_course", "plan_repletion", "predict_plan", "therapeutic_range"]


@dataclass(frozen=True)
class PlanRequest:
    mg_mg_dl: float | None
    contexts: frozenset[str] = frozenset()
    nomogram_id: str = "vanderbilt-im"
    kidney: KidneyState = field(default_factory=KidneyState)
    weight_kg: float | None = None
    jurisdiction: str = "us"
    pediatric: bool = False  # <18 y: adult nomograms and regimens are never used
    operation_hours: float | None = None  # replaces the default duration of intraoperative infusions


@dataclass
class PlanOutcome:
    plan: Plan
    adjusted: list[str]  # renal adjustments made (-> renal_dose_adjustment finding)
    adjusted_sources: list[Source]  # the rules behind them
    holds: list[RenalRule]  # -> hold_magnesium finding
    warnings: list[str]


def _is_rate(step: Step) -> bool:
    return rate_unit(step.amount_unit) is not None


def _duration(step: Step, operation_hours: float | None) -> float | None:
    if step.duration_from == "operation" and operation_hours is not None:
        return operation_hours
    return step.duration_h


def _dose(step: Step, factor: float, weight: float | None, operation_hours: float | None = None) -> Dose:
    rate = _is_rate(step)
    duration = _duration(step, operation_hours)
    per_time = rate_unit(step.amount_unit)  # a rate: its amounts are taken per hour
    unit = dose_unit(per_time.amount if per_time else step.amount_unit)
    scale = factor / (per_time.hours if per_time else 1.0)
    amt = salt_amounts(step.amount * scale, unit, step.salt, weight)
    amt_max = (salt_amounts(step.amount_max * scale, unit, step.salt, weight)
               if step.amount_max is not None else None)
    g = amt["g_mgso4"]
    per = " per hour" if rate else ""
    label = f"{_fmt(g)}{'-' + _fmt(amt_max['g_mgso4']) if amt_max else ''} g MgSO4{per}"
    kind = unit_kind(unit)
    if kind in ("substance", "equivalent"):  # written as mmol or mEq of Mg
        label = f"{step.amount * factor:g} {display(unit)} Mg{per} ({label})"
    elif kind == "per_weight":
        label = f"{step.amount * factor:g} {step.amount_unit} ({label})"
    return Dose(
        label=label, route=step.route, g_mgso4=round(g, 3), mmol=round(amt["mmol"], 2),
        meq=round(amt["meq"], 2),
        g_mgso4_max=round(amt_max["g_mgso4"], 3) if amt_max else None,
        duration_h=duration, duration_max_h=step.duration_max_h,
        rate_g_per_h=round(g, 3) if rate else (round(g / duration, 3) if duration else None),
        repeats=step.repeats, interval_h=step.interval_h, note=step.note, per_hour=rate,
    )


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _tier(nomogram: Nomogram, mg_mg_dl: float) -> Tier | None:
    # Rounded so a value reported exactly at a tier edge (0.70 mmol/L) is not
    # pushed across it by the round trip through mg/dL.
    v = round(convert(mg_mg_dl, "magnesium", "mg/dL", nomogram.unit), 6)
    for tier in nomogram.tiers:
        if tier.lower is not None and v < tier.lower:
            continue
        if tier.upper is not None and (v > tier.upper if tier.upper_inclusive else v >= tier.upper):
            continue
        return tier
    return None


def _total_24h(steps: tuple[Step, ...], doses: list[Dose]) -> float:
    """g MgSO4 planned in the first 24 h: a rate runs for its duration (all day if none)."""
    total = 0.0
    for step, d in zip(steps, doses, strict=True):
        if d.g_mgso4 is None:
            continue
        if _is_rate(step):
            total += d.g_mgso4 * min(d.duration_h if d.duration_h is not None else 24.0, 24.0)
            continue
        n = min(d.repeats, math.ceil(24.0 / d.interval_h)) if d.interval_h else d.repeats
        total += d.g_mgso4 * n
    return total


def therapeutic_range(kb: KnowledgeBase, contexts: frozenset[str], jurisdiction: str,
                      ) -> tuple[float, float, Regimen] | None:
    """(low, high) serum Mg in mg/dL that a regimen of these contexts aims for (eclampsia)."""
    for r in kb.regimens.regimens:
        rng = r.therapeutic_range
        if rng and set(r.contexts) & contexts and r.jurisdiction in ("all", jurisdiction):
            return (convert(rng.low, "magnesium", rng.unit, "mg/dL"),
                    convert(rng.high, "magnesium", rng.unit, "mg/dL"), r)
    return None


def _population_ok(population: str, pediatric: bool) -> bool:
    return population in ("any", "pediatric" if pediatric else "adult")


def _pick_regimen(kb: KnowledgeBase, req: PlanRequest, status: str) -> Regimen | None:
    """Emergency regimens first, then the context's regimen if the Mg level qualifies.

    Preloads (cisplatin, perioperative, sepsis) are for patients not already
    low: a low Mg is treated by the nomogram and the preload listed beside it.
    """
    fits = [r for r in kb.regimens.regimens if set(r.contexts) & req.contexts
            and r.jurisdiction in ("all", req.jurisdiction) and _population_ok(r.population, req.pediatric)]
    for r in sorted(fits, key=lambda r: r.purpose != "emergency"):
        if r.purpose != "emergency":
            if r.requires_status == "low" and status != "low":
                continue
            if r.requires_status == "not_low" and status == "low":
                continue
            cut = r.exclude_mg_at_or_below_mg_dl
            if cut is not None and (req.mg_mg_dl is None or req.mg_mg_dl <= cut):
                continue
            scr_cut = r.exclude_creatinine_at_or_above_mg_dl
            scr = req.kidney.creatinine_mg_dl
            if scr_cut is not None and (req.kidney.rrt or (scr is not None and scr >= scr_cut)):
                continue
        return r
    return None


def plan_repletion(kb: KnowledgeBase, req: PlanRequest, status: str | None) -> PlanOutcome:
    adjusted: list[str] = []
    adjusted_sources: list[Source] = []
    holds: list[RenalRule] = []
    warnings: list[str] = []
    mg = req.mg_mg_dl
    regimen = _pick_regimen(kb, req, status or "")

    def empty(action: str, why: str | None, ev: list[Evidence]) -> PlanOutcome:
        return PlanOutcome(Plan(action=action, regimen_id=None, regimen=why, doses=[],
                                total_g_mgso4_24h=None, adjustments=adjusted,
                                recheck_in_h=None, recheck=None, evidence_strength=None,
                                evidence=ev), adjusted, adjusted_sources, holds, warnings)

    rng = regimen.therapeutic_range if regimen else None
    high = convert(rng.high, "magnesium", rng.unit, "mg/dL") if rng else None
    if rng is not None and regimen is not None and mg is not None and high is not None:
        low = convert(rng.low, "magnesium", rng.unit, "mg/dL")
        where = "below" if mg < low else "above" if mg > high else "within"
        warnings.append(f"Serum Mg {mg:.2f} mg/dL is {where} the therapeutic range of {regimen.name} "
                        f"({low:.2f}-{high:.2f} mg/dL = {rng.low:g}-{rng.high:g} {rng.unit}) [{rng.source.citation}]")
    in_target = bool(regimen and mg is not None and (
        (regimen.target_mg_dl is not None and mg < regimen.target_mg_dl) or (high is not None and mg <= high)))
    if status == "high" and not in_target:
        rule = kb.renal_rule("hold_hypermagnesemia")
        holds.append(rule)
        if mg is not None and toxicity_levels(kb, mg):  # calcium and dialysis only at a toxic level, never at 2.6
            holds.append(kb.renal_rule("treat_mg_toxicity"))
        why = ("Hold magnesium: serum Mg above the therapeutic range" if rng is not None
               else "Hold magnesium: serum Mg above the reference range")
        return empty("hold", why, [Evidence.of(rule.source)])
    if req.kidney.maintenance_dialysis:
        rule = kb.renal_rule("hold_maintenance_dialysis")
        if regimen is None or regimen.purpose != "emergency":
            holds.append(rule)
            return empty("hold", "No empiric magnesium: ESKD on maintenance dialysis (Mg is removed by dialysis, "
                                 "not the kidneys)", [Evidence.of(rule.source)])
        warnings.append("Maintenance dialysis: emergency dose given once; further Mg only with a level before "
                        "the next dose and the next session [" + rule.source.citation + "]")
    elif req.kidney.rrt or req.kidney.anuric:
        rule = kb.renal_rule("hold_rrt")
        if regimen is None or regimen.purpose != "emergency":
            holds.append(rule)
            return empty("hold", "No empiric magnesium: renal replacement therapy or anuria",
                         [Evidence.of(rule.source)])
        warnings.append("On RRT/anuric: emergency dose given once; no maintenance without nephrology")

    steps: tuple[Step, ...]
    recheck_h: float | None
    if regimen is not None:
        steps, recheck_h = regimen.steps, regimen.recheck_h
        name, rid, strength, source = regimen.name, regimen.id, regimen.evidence_strength, regimen.source
        action = {"emergency": "emergency", "aki_prevention": "prevent", "treatment": "replete"}[regimen.purpose]
    else:
        if mg is None:
            return empty("none", "No serum magnesium: measure before planning", [])
        nomogram = kb.nomogram(req.nomogram_id)
        if not _population_ok(nomogram.population, req.pediatric):
            peds = [n for n in kb.regimens.nomograms if _population_ok(n.population, req.pediatric)]
            if not peds:
                warnings.append("Patient <18 y: adult nomograms are not used for children and no paediatric "
                                "nomogram is encoded in mgaki; dose by a paediatric protocol (weight-based)")
                return empty("none", "No paediatric nomogram is encoded in mgaki: adult doses are not given "
                                     "for a child", [])
            nomogram = peds[0]
        tier = _tier(nomogram, mg)
        if tier is None:
            return empty("none", f"No repletion indicated by {nomogram.name}", [Evidence.of(nomogram.source)])
        steps, recheck_h = tier.steps, tier.recheck_h
        name, rid = f"{nomogram.name} v{nomogram.version}: {tier.action}", nomogram.id
        strength, source, action = "expert", nomogram.source, "replete"

    factor = 1.0
    evidence = [Evidence.of(source)]
    k = req.kidney
    low_clearance = kb.renal_rule("reduce_low_clearance").met_by(k.egfr, k.crcl)
    severe_aki = kb.renal_rule("reduce_aki").met_by(aki_stage=k.aki_stage)
    if action != "emergency":
        for rule_id, hit in (("reduce_low_clearance", low_clearance), ("reduce_aki", severe_aki)):
            rule = kb.renal_rule(rule_id)
            if hit and rule.factor is not None and factor > rule.factor:
                factor = rule.factor
                adjusted.append(f"{rule.meaning} (rule: {rule.when}; met: {criteria_met(rule, k)})")
                adjusted_sources.append(rule.source)
                evidence.append(Evidence.of(rule.source))
    elif low_clearance or severe_aki:
        warnings.append("Emergency dose not reduced for kidney function: monitor Mg and reflexes closely")

    doses = [_dose(s, factor, req.weight_kg, req.operation_hours) for s in steps]
    total = _total_24h(steps, doses)
    # Labelled maxima.
    rate_limit = kb.limit("iv_rate_max_repletion")
    if action == "replete":
        for d in doses:
            if d.route == "iv" and d.rate_g_per_h and d.rate_g_per_h > rate_limit.value:
                warnings.append(f"{d.label}: {d.rate_g_per_h:g} g/h exceeds {rate_limit.value:g} g/h "
                                f"({rate_limit.meaning})")
    daily = kb.limit("daily_max_uk" if req.jurisdiction == "uk" else "daily_max_label")
    if total > daily.value:
        warnings.append(f"Planned {total:.1f} g in 24 h exceeds the labelled maximum {daily.value:g} g/24 h")
    cap_rule = kb.renal_rule("cap_severe_renal")
    if cap_rule.limit_id is not None and cap_rule.met_by(k.egfr, k.crcl, k.aki_stage):
        cap = kb.limit(cap_rule.limit_id)
        if 2 * total > cap.value:
            adjusted.append(f"Capped by {cap.meaning.lower()} (met: {criteria_met(cap_rule, k)}): plan about "
                            f"{total:.1f} g/24 h, do not exceed {cap.value:g} g in 48 h")
            adjusted_sources.append(cap.source)
            evidence.append(Evidence.of(cap.source))
    recheck_in, recheck = _recheck(recheck_h, doses, action)
    if recheck is not None and factor < 1.0:
        recheck += "; recheck before every further dose (renal impairment)"
    alternatives = [f"nomogram {n.id}" for n in kb.regimens.nomograms if n.id != req.nomogram_id]
    if regimen is None:
        alternatives += [f"{r.id}: {r.name} (also indicated in this context)"
                         for r in kb.regimens.regimens
                         if r.purpose != "emergency" and set(r.contexts) & req.contexts]
    plan = Plan(action=action, regimen_id=rid, regimen=name, doses=doses,
                total_g_mgso4_24h=round(total, 2), adjustments=adjusted, recheck_in_h=recheck_in,
                recheck=recheck, evidence_strength=strength, evidence=evidence,
                alternatives=alternatives)
    return PlanOutcome(plan, adjusted, adjusted_sources, holds, warnings)


def _recheck(recheck_h: float | None, doses: list[Dose], action: str) -> tuple[float | None, str | None]:
    """(hours from the start of the plan, the text): the text states the same number of hours.

    After an IV infusion the protocol's interval runs from the end of the infusion as planned,
    i.e. at the plan's rate (4 g over 4 h at 1 g/h, recheck 6 h after: 10 h); a slower
    infusion within the protocol's range moves it, and the text says so.
    """
    if recheck_h is None:
        return None, None
    first = doses[0] if doses else None
    if action == "emergency":
        return recheck_h, f"Recheck serum Mg within {recheck_h:g} h"
    if first is None or first.route != "iv" or first.per_hour or not first.duration_h:
        return recheck_h, f"Recheck serum Mg in {recheck_h:g} h"
    run = first.duration_h
    at = round(run + recheck_h, 2)
    text = (f"Recheck serum Mg {recheck_h:g} h after the infusion ends: {at:g} h from its start "
            f"({first.label} over {run:g} h" + (f" at {first.rate_g_per_h:g} g/h)" if first.rate_g_per_h else ")"))
    if first.duration_max_h and first.duration_max_h > run:
        text += f"; {first.duration_max_h + recheck_h:g} h if it runs {first.duration_max_h:g} h"
    return at, text


def criteria_met(rule: RenalRule, k: KidneyState) -> str:
    """Which of a renal rule's criteria this patient meets, with the values (e.g. 'CrCl 24 mL/min < 30')."""
    out = []
    low = rule.clearance_below_ml_min
    if low is not None:
        if k.crcl is not None and k.crcl < low:
            out.append(f"CrCl {k.crcl:.0f} mL/min < {low:g}")
        if k.egfr is not None and k.egfr < low:
            out.append(f"{k.egfr_label} {k.egfr:.0f} mL/min/1.73 m2 < {low:g}")
    if rule.aki_stage_at_least is not None and k.aki_stage >= rule.aki_stage_at_least:
        out.append(f"KDIGO AKI stage {k.aki_stage} (>= {rule.aki_stage_at_least})")
    return "; ".join(out) or "none"


def pk_kidney_course(kb: KnowledgeBase, creatinine: Sequence[tuple[datetime, float]],
                     t0: datetime) -> KidneyCourse | None:
    """Kidney function for the PK model while creatinine moves: each interval's kinetic eGFR (Chen 2013).

    For every pair of consecutive creatinine values, ``kinetic_egfr`` with a unit production rate
    (baseline SCr x baseline GFR = 1) gives the GFR in units of 1/SCr; its inverse is the creatinine
    that GFR would hold at steady state. The value of the interval in force at ``t0`` (the regimen's
    time 0) applies from 0, later intervals from their start; the last holds to the horizon. None with
    fewer than two values. A kinetic eGFR of 0 (creatinine rising at the maximal rate) is refused.
    """
    from mgaki.engine.kidney import kinetic_egfr
    from mgaki.errors import OutsideModelError
    from mgaki.pk import KidneyCourse

    pts = sorted(creatinine)
    starts: list[float] = []
    values: list[float] = []
    for (ta, a), (tb, b) in pairwise(pts):
        hours = (tb - ta).total_seconds() / 3600.0
        k = kinetic_egfr(kb, 1.0, 1.0, a, b, hours)
        if k is None:
            continue
        if k <= 0:
            raise OutsideModelError("kidney", f"kinetic eGFR 0 between creatinine {a:g} and {b:g} mg/dL "
                                              f"{hours:.0f} h apart (Chen 2013): no renal Mg elimination to "
                                              "model; no prediction (measure Mg)")
        start = (ta - t0).total_seconds() / 3600.0
        if starts and start <= 0:
            starts, values = [], []
        starts.append(max(start, 0.0))
        values.append(1.0 / k)
    if not values:
        return None
    return KidneyCourse(tuple(starts), tuple(round(v, 4) for v in values))


def predict_plan(kb: KnowledgeBase, plan: Plan, mg_mg_dl: float | None, weight_kg: float | None,
                 kidney: KidneyState, contexts: frozenset[str] = frozenset(), age: float | None = None,
                 creatinine: Sequence[tuple[datetime, float]] = (), now: datetime | None = None,
                 seed: int = 0) -> tuple[PkPrediction | None, str | None]:
    """Predicted serum Mg under the plan's IV doses (default pk.yaml model): (prediction, why none).

    Steps run one after another (a loading dose, then its maintenance infusion); repeats at their
    interval; a rate without a duration runs 24 h (as the daily total assumes). The lower end of a
    dose range is used. Oral doses are not modelled. Target and harm come from the regimen's context
    (pk.yaml contexts: eclampsia therapeutic range, or the normal range for repletion). Kidney function:
    the measured creatinine, in AKI the kinetic eGFR's steady-state creatinine (``pk_kidney_course``);
    on renal replacement with no schedule known, no dialytic removal is assumed (an upper bound).
    Where the model cannot speak (no kidney function, far outside its studied range) the reason is
    returned instead of a number.
    """
    from mgaki.errors import InputError
    from mgaki.pk import (
        Covariates,
        Dialysis,
        Regimen,
        context_for,
        population,
        risk,
        simulate,
        targets,
        time_grid,
    )

    iv = [d for d in plan.doses if d.route == "iv" and d.g_mgso4]
    if mg_mg_dl is None or not iv or plan.action in ("hold", "none"):
        return None, None
    notes = ["oral doses not modelled"] if len(iv) < len(plan.doses) else []
    reg, t = Regimen(), 0.0
    for d in iv:
        g = d.g_mgso4 or 0.0
        if d.per_hour:
            run = d.duration_h if d.duration_h is not None else 24.0
            reg, t = reg + Regimen.rate(g, "g", t, run), t + run
            continue
        over = d.duration_h or 0.0
        for k in range(d.repeats if d.interval_h else 1):
            reg = reg + Regimen.dose(g, "g", t + k * (d.interval_h or 0.0), over)
        t += over
    if any(d.g_mgso4_max for d in iv):
        notes.append("lower end of each dose range predicted")
    ctx = context_for(contexts, kb)
    tg = targets(ctx, kb)
    try:
        course = (pk_kidney_course(kb, creatinine, now) if kidney.aki_stage >= 1 and now is not None
                  and not kidney.rrt else None)
        dialysis = Dialysis("hd") if kidney.rrt else None
        if kidney.rrt:
            notes.append("renal replacement therapy: kind and session times not known to the PK model, so no "
                         "dialytic Mg removal is assumed within the horizon (an upper bound)")
        elif kidney.anuric:
            return None, ("anuric: no renal Mg elimination and no dialysis; mgaki has no model of Mg without "
                          "kidney function (measure Mg before each dose)")
        cov = Covariates(weight_kg=weight_kg, creatinine_mg_dl=kidney.creatinine_mg_dl if course is None else None,
                         crcl_ml_min=kidney.crcl if kidney.crcl else None, age_years=age,
                         pregnant=True if ctx == "eclampsia" else None, aki=kidney.aki_stage >= 1,
                         kidney_course=course, dialysis=dialysis)
        pop = population(None, cov, baseline_mg_dl=mg_mg_dl, kb=kb)
        horizon = max(24.0, reg.end_h + (plan.recheck_in_h or 0.0))
        times = time_grid(reg, horizon, kb=kb, step_h=kb.value("pk_grid_step_hours_bedside"))
        pred = simulate(pop, reg, times, n=int(kb.value("pk_mc_samples_bedside")), seed=seed, kb=kb)
    except InputError as exc:
        return None, f"{exc.problem} [{kb.pk.default_model}: {kb.pk_model().population_label}]"
    notes += list(pop.notes)
    at_h = plan.recheck_in_h if plan.recheck_in_h is not None else reg.end_h
    rk = risk(pred, tg, at_h, kb)
    first_end = reg.start_h[0] + reg.duration_h[0]
    after = pred.times_h >= first_end
    q = (1.0 - (pred.level or 0.0)) / 2.0
    interval = None
    if pred.peak_samples_mg_dl is not None:
        lo, hi = np.quantile(pred.peak_samples_mg_dl, [q, 1.0 - q])
        interval = (round(float(lo), 2), round(float(hi), 2))
    return PkPrediction(
        model=pop.spec.id, model_source=pop.spec.source.citation, baseline_mg_dl=round(mg_mg_dl, 3),
        peak_mg_dl=round(pred.peak_mg_dl, 2), peak_time_h=round(pred.peak_time_h, 2),
        peak_interval_mg_dl=interval, level=pred.level,
        trough_mg_dl=round(float(pred.typical_mg_dl[after].min()), 2),
        at_recheck_mg_dl=round(pred.at(plan.recheck_in_h), 2) if plan.recheck_in_h is not None else None,
        horizon_h=round(horizon, 2), toxicity_mg_dl=round(tg.harm_mg_dl, 3), p_peak_above_toxicity=rk.p_harm,
        overshoot=rk.overshoot, notes=notes, population=pop.population_label, context=ctx,
        target_mg_dl=(round(tg.low_mg_dl, 3), round(tg.high_mg_dl, 3)), target_at_h=round(rk.at_h, 2),
        p_target=rk.p_target, toxicity_id=tg.harm_id, p_harm_upper_95=rk.p_harm_upper_95, samples=rk.n), None
