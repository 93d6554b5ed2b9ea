"""Repletion planning (C8): regimen by level, context and kidney function.

Every amount is converted by mgaki.units from the unit the protocol states;
renal rules, labelled maxima and hold rules come from regimens.yaml.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mgaki.knowledge import KnowledgeBase
from mgaki.knowledge.schema import Nomogram, Regimen, RenalRule, Source, Step, Tier
from mgaki.record import KidneyState
from mgaki.result import Dose, Evidence, PkPrediction, Plan
from mgaki.units import convert, salt_amounts

__all__ = ["PlanRequest", "plan_repletion", "predict_plan", "therapeutic_range"]


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
    return step.amount_unit in ("g/h", "mg/kg/h")


def _duration(step: Step, operation_hours: float | None) -> float | None:
    if step.duration_from == "operation" and operation_hours is not None:
        return operation_hours
    return step.duration_h


def _dose(step: Step, factor: float, weight: float | None, operation_hours: float | None = None) -> Dose:
    rate = _is_rate(step)
    duration = _duration(step, operation_hours)
    unit = {"g/h": "g", "mg/kg/h": "mg/kg"}.get(step.amount_unit, step.amount_unit)
    amt = salt_amounts(step.amount * factor, unit, step.salt, weight)
    amt_max = (salt_amounts(step.amount_max * factor, unit, step.salt, weight)
               if step.amount_max is not None else None)
    g = amt["g_mgso4"]
    per = " per hour" if rate else ""
    label = f"{_fmt(g)}{'-' + _fmt(amt_max['g_mgso4']) if amt_max else ''} g MgSO4{per}"
    if step.amount_unit in ("mmol", "meq"):
        label = f"{step.amount * factor:g} {step.amount_unit.replace('meq', 'mEq')} Mg{per} ({label})"
    if step.amount_unit.startswith("mg/kg"):
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
        why = ("Hold magnesium: serum Mg above the therapeutic range" if rng is not None
               else "Hold magnesium: serum Mg above the reference range")
        return empty("hold", why, [Evidence.of(rule.source)])
    if req.kidney.rrt or req.kidney.anuric:
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
                adjusted.append(f"{rule.meaning} ({rule.when})")
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
            adjusted.append(f"Capped by {cap.meaning.lower()}: plan about {total:.1f} g/24 h, "
                            f"do not exceed {cap.value:g} g in 48 h")
            adjusted_sources.append(cap.source)
            evidence.append(Evidence.of(cap.source))
    recheck = None
    recheck_in = None
    if recheck_h is not None:
        first = doses[0].duration_max_h or doses[0].duration_h or 0.0 if doses else 0.0
        recheck_in = round((first or 0.0) + recheck_h, 2) if action != "emergency" else recheck_h
        recheck = (f"Recheck serum Mg {recheck_h:g} h after the infusion ends"
                   if action != "emergency" else f"Recheck serum Mg within {recheck_h:g} h")
        if factor < 1.0:
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


def predict_plan(kb: KnowledgeBase, plan: Plan, mg_mg_dl: float | None, weight_kg: float | None,
                 crcl_ml_min: float | None, target_high_mg_dl: float | None = None,
                 seed: int = 0) -> PkPrediction | None:
    """Predicted serum Mg under the plan's IV doses (default pk.yaml model), or None if nothing to predict.

    Steps run one after another (a loading dose, then its maintenance infusion); repeats at their
    interval; a rate without a duration runs 24 h (as the daily total assumes). The lower end of a
    dose range is used. Oral doses are not modelled. The toxicity level is the first one above
    ``target_high_mg_dl`` (a therapeutic range that is meant to be high, eclampsia).
    """
    from mgaki.pk import Covariates, Regimen, population, simulate, time_grid, toxicity_level_mg_dl

    iv = [d for d in plan.doses if d.route == "iv" and d.g_mgso4]
    if mg_mg_dl is None or not iv or plan.action in ("hold", "none"):
        return None
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
    pop = population(None, Covariates(weight_kg=weight_kg, crcl_ml_min=crcl_ml_min), baseline_mg_dl=mg_mg_dl, kb=kb)
    notes += list(pop.notes)
    horizon = max(24.0, reg.end_h + (plan.recheck_in_h or 0.0))
    times = time_grid(reg, horizon, kb=kb, step_h=kb.value("pk_grid_step_hours_bedside"))
    pred = simulate(pop, reg, times, n=int(kb.value("pk_mc_samples_bedside")), seed=seed, kb=kb)
    _, tox = toxicity_level_mg_dl(target_high_mg_dl or 0.0, kb)  # above a therapeutic range (eclampsia)
    first_end = reg.start_h[0] + reg.duration_h[0]
    after = pred.times_h >= first_end
    p_tox = pred.p_peak_above(tox)
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
        horizon_h=round(horizon, 2), toxicity_mg_dl=round(tox, 3), p_peak_above_toxicity=p_tox,
        overshoot=p_tox is not None and p_tox > kb.value("pk_overshoot_probability_max"), notes=notes)
