"""Dose finding: the regimen whose predicted course stays longest in a target range, within labelled limits.

Candidates are loading dose + maintenance infusion, or repeated doses, on grids from pk.yaml;
every infusion runs at or below the labelled rate (regimens.yaml), totals respect the daily
maximum and, when the patient's kidney function meets a regimens.yaml cap rule (severe renal
impairment: 20 g/48 h), that cap. Windowed totals are checked on the plan as if continued
unchanged for the whole window, so that repeating a 24-h plan cannot break a 48-h cap. Because the models are linear in
dose, a whole grid is scored from a few unit responses at once. The chosen regimen's risk of
a peak above the toxicity level comes from Monte Carlo over the between-patient (or the
patient's posterior) variability and is flagged above pk_overshoot_probability_max.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from mgaki.errors import InputError
from mgaki.knowledge import KnowledgeBase, load
from mgaki.knowledge.schema import RenalRule
from mgaki.pk._fit import Fit, posterior_predict
from mgaki.pk._model import PopModel
from mgaki.pk._regimen import LimitCheck, Regimen, check_limits, limit_window_h, loading_maintenance, repeated
from mgaki.pk._simulate import Prediction, concentrations, simulate
from mgaki.pk._targets import targets
from mgaki.record import KidneyState
from mgaki.units import convert

__all__ = ["DoseFinding", "RenalCap", "find_dose", "limit_ids", "renal_cap_rule", "toxicity_level_mg_dl"]

Array = npt.NDArray[np.float64]
Kind = Literal["loading_maintenance", "repeated"]
_CAP_RULE = "cap_severe_renal"  # regimens.yaml rule used when a caller asks for the renal cap explicitly


@dataclass(frozen=True)
class RenalCap:
    """The renal cap that bound the search: which rule, why, and the chosen plan's total over its window."""

    rule_id: str
    limit_id: str
    limit_g: float
    window_h: float
    reason: str  # which criterion the patient met (or "requested")
    total_g: float  # chosen plan, continued unchanged for the window
    ok: bool

    def to_dict(self) -> dict[str, object]:
        return {"rule": self.rule_id, "limit": self.limit_id, "limit_g": self.limit_g, "window_h": self.window_h,
                "reason": self.reason, "plan_total_g": round(self.total_g, 3), "ok": self.ok}

    def text(self) -> str:
        return (f"renal cap {self.limit_g:g} g per {self.window_h:g} h applied ({self.rule_id}: {self.reason}); "
                f"the plan continued for {self.window_h:g} h gives {self.total_g:.1f} g")


@dataclass(frozen=True)
class DoseFinding:
    kind: Kind
    description: str
    regimen: Regimen
    target_mg_dl: tuple[float, float]
    time_in_range: float  # share of the scored window the typical course is inside the target
    prediction: Prediction
    toxicity_mg_dl: float
    toxicity_id: str
    p_peak_above_toxicity: float
    overshoot_threshold: float
    overshoot: bool
    limits: list[LimitCheck]
    candidates: int
    notes: list[str] = field(default_factory=list)
    renal_cap: RenalCap | None = None
    p_target: float | None = None  # P(serum Mg inside the target range at the end of the horizon)
    context: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind, "regimen": self.description,
            "doses": [{"start_h": round(s, 3), "g_mgso4": round(g, 3), "mmol": round(m, 2),
                       "duration_h": round(d, 3)}
                      for s, g, m, d in zip(self.regimen.start_h, self.regimen.g_mgso4(), self.regimen.mmol,
                                            self.regimen.duration_h, strict=True)],
            "target_mg_dl": list(self.target_mg_dl), "time_in_range": round(self.time_in_range, 3),
            "peak_mg_dl": round(self.prediction.peak_mg_dl, 3),
            "peak_interval_mg_dl": _peak_interval(self.prediction),
            "toxicity_mg_dl": round(self.toxicity_mg_dl, 3), "toxicity_id": self.toxicity_id,
            "p_peak_above_toxicity": round(self.p_peak_above_toxicity, 4),
            "overshoot_threshold": self.overshoot_threshold, "overshoot": self.overshoot,
            "limits": [{"id": c.limit_id, "limit": c.limit, "value": round(c.value, 3), "unit": c.unit,
                        "ok": c.ok} for c in self.limits],
            "candidates": self.candidates, "notes": self.notes, "context": self.context,
            "p_target_at_horizon": None if self.p_target is None else round(self.p_target, 4),
            "population": self.prediction.population,
            "renal_cap": self.renal_cap.to_dict() if self.renal_cap is not None else None,
        }


def _peak_interval(p: Prediction) -> list[float] | None:
    if p.peak_samples_mg_dl is None or p.level is None:
        return None
    q = (1.0 - p.level) / 2.0
    lo, hi = np.quantile(p.peak_samples_mg_dl, [q, 1.0 - q])
    return [round(float(lo), 3), round(float(hi), 3)]


def toxicity_level_mg_dl(target_high_mg_dl: float, kb: KnowledgeBase | None = None) -> tuple[str, float]:
    """The pk.yaml toxicity level, or the next magnesium.yaml toxicity level above a target that reaches it."""
    kb = kb or load()
    levels = sorted((convert(t.value, "magnesium", t.unit, "mg/dL"), t.id) for t in kb.magnesium.thresholds
                    if t.id.startswith("mg_toxicity_"))
    first = kb.threshold(kb.pk.toxicity_threshold_id)
    start = convert(first.value, "magnesium", first.unit, "mg/dL")
    for value, tid in levels:
        if value >= start and value > target_high_mg_dl:
            return tid, value
    value, tid = levels[-1]
    return tid, value


def renal_cap_rule(kidney: KidneyState | None, kb: KnowledgeBase | None = None) -> tuple[RenalRule, str] | None:
    """The regimens.yaml cap rule this kidney function meets, with the criterion that was met."""
    if kidney is None:
        return None
    kb = kb or load()
    for rule in kb.regimens.renal_rules:
        if rule.action != "cap" or rule.limit_id is None:
            continue
        if rule.met_by(kidney.egfr, kidney.crcl, kidney.aki_stage):
            low = rule.clearance_below_ml_min
            why = [f"{name} {x:g} < {low:g} mL/min" for name, x in (("eGFR", kidney.egfr), ("CrCl", kidney.crcl))
                   if low is not None and x is not None and x < low]
            if rule.aki_stage_at_least is not None and kidney.aki_stage >= rule.aki_stage_at_least:
                why.append(f"AKI stage {kidney.aki_stage} >= {rule.aki_stage_at_least}")
            return rule, ", ".join(why)
    return None


def limit_ids(jurisdiction: str, emergency: bool, severe_renal: bool,
              kb: KnowledgeBase | None = None) -> tuple[str, ...]:
    """Which regimens.yaml limits bind: rate (label for emergencies, repletion otherwise), daily, renal cap."""
    ids = ["iv_rate_max_label" if emergency else "iv_rate_max_repletion",
           "daily_max_uk" if jurisdiction == "uk" else "daily_max_label"]
    if severe_renal:
        cap = (kb or load()).renal_rule(_CAP_RULE).limit_id
        if cap is None:
            raise InputError("renal", f"renal rule {_CAP_RULE} names no limit")
        ids.append(cap)
    return tuple(ids)


def _grid(kb: KnowledgeBase, step_id: str, max_id: str) -> Array:
    step, top = kb.value(step_id), kb.value(max_id)
    return np.round(np.arange(0.0, top + step / 2, step), 6)


def find_dose(pop: PopModel, target_low_mg_dl: float, target_high_mg_dl: float, horizon_h: float = 24.0,
              fit: Fit | None = None, jurisdiction: str = "us", severe_renal: bool = False,
              emergency: bool = False, kinds: tuple[Kind, ...] = ("loading_maintenance", "repeated"),
              seed: int = 0, kb: KnowledgeBase | None = None, kidney: KidneyState | None = None,
              context: str | None = None) -> DoseFinding:
    """Best regimen for the target range (mg/dL) over ``horizon_h``; uses the posterior if ``fit`` is given.

    ``kidney``: the patient's eGFR/CrCl/AKI stage; when it meets a regimens.yaml cap rule the cap binds
    (``severe_renal=True`` forces it; it can never switch a met rule off). ``context`` (pk.yaml contexts,
    e.g. eclampsia) sets the harm level; without one the first toxicity level above the target is used.
    """
    kb = kb or load()
    if not (0 < target_low_mg_dl < target_high_mg_dl):
        raise InputError("target", f"target range must be low < high, got {target_low_mg_dl}-{target_high_mg_dl}")
    top = kb.value("pk_max_horizon_hours")
    if not (0 < horizon_h <= top):
        raise InputError("horizon", f"the horizon must be more than 0 and at most {top:g} h, got {horizon_h!r}")
    met = renal_cap_rule(kidney, kb)
    ids = limit_ids(jurisdiction, emergency, severe_renal or met is not None, kb)
    rate_max = next(c.limit for c in check_limits(Regimen(), ids[:1], kb))
    windows = {lid: w for lid in ids[1:] if (w := limit_window_h(lid, kb)) is not None}
    span = max(windows.values(), default=0.0)
    eta0 = fit.eta if fit is not None else np.zeros(pop.n_eta)
    step = kb.value("pk_grid_step_hours")
    times = np.unique(np.append(np.arange(0.0, horizon_h + step / 2, step), horizon_h))
    t_from = min(kb.value("pk_target_reach_hours"), horizon_h)
    window = times >= min(t_from, float(times[-1]))
    base = float(pop.params(eta0)["baseline"])
    unit_c = convert(1.0, "magnesium", "mmol/L", "mg/dL")

    def exo(reg: Regimen) -> Array:
        return (concentrations(pop, reg, times, eta0) - base) * unit_c

    # (kind, label, regimen, typical mg/dL, the regimen continued unchanged over the longest limit window)
    cands: list[tuple[Kind, str, Regimen, Array, Regimen]] = []
    if "loading_maintenance" in kinds:
        loads = _grid(kb, "pk_dose_step_g", "pk_load_max_g")
        rates = _grid(kb, "pk_rate_step_g_per_h", "pk_rate_max_g_per_h")
        rates = rates[rates <= rate_max + 1e-9]
        for load_g in loads:
            over = load_g / rate_max if load_g > 0 else 0.0
            u_load = exo(Regimen.dose(load_g, "g", 0.0, over)) if load_g > 0 else np.zeros_like(times)
            run = horizon_h - over
            u_main = exo(Regimen.rate(1.0, "g", over, run)) if run > 0 else np.zeros_like(times)
            curves = base * unit_c + u_load[None, :] + rates[:, None] * u_main[None, :]  # linear in rate
            for r, c in zip(rates, curves, strict=True):
                if load_g == 0 and r == 0:
                    continue
                label = (f"{load_g:g} g MgSO4 over {over * 60:.0f} min, then " if load_g > 0 else "") + \
                    (f"{r:g} g/h to {horizon_h:g} h" if r > 0 else "no maintenance")
                cands.append(("loading_maintenance", label, loading_maintenance(load_g, over, r, run), c,
                              loading_maintenance(load_g, over, r, max(run, span - over))))
    if "repeated" in kinds:
        for every in _grid(kb, "pk_interval_step_h", "pk_interval_max_h")[1:]:
            n = max(1, math.ceil(horizon_h / every - 1e-9))
            n_span = max(n, math.ceil(span / every - 1e-9))
            for dose in _grid(kb, "pk_dose_step_g", "pk_load_max_g")[1:]:
                over = float(dose) / rate_max
                reg = repeated(float(dose), "g", float(every), n, over_h=over)
                c = base * unit_c + exo(reg)
                cands.append(("repeated", f"{dose:g} g MgSO4 over {over * 60:.0f} min every "
                              f"{every:g} h (x{n})", reg, c, repeated(float(dose), "g", float(every), n_span,
                                                                       over_h=over)))
    if not cands:
        raise InputError("kinds", "no candidate regimens: choose loading_maintenance and/or repeated")
    curves = np.stack([c[3] for c in cands])
    inside = (curves >= target_low_mg_dl) & (curves <= target_high_mg_dl)
    score = inside[:, window].mean(axis=1)
    total_g = np.array([sum(c[2].g_mgso4()) for c in cands])
    ok = np.array([all(lc.ok for lc in check_limits(c[4], tuple(windows), kb)) for c in cands])
    peak = curves.max(axis=1)
    above = peak > target_high_mg_dl + 1e-9  # a course that overshoots the range ranks after one that does not
    order = np.lexsort((peak, total_g, -np.round(score, 6), above, ~ok))
    best = int(order[0])
    kind, label, reg, _, continued = cands[best]
    notes: list[str] = []
    if not ok[best]:
        notes.append("No candidate respects every labelled limit: shown is the best, and it exceeds one")
    if above[best]:
        notes.append("Every candidate's typical course rises above the target range at some time")
    if score[best] == 0.0:
        notes.append("No candidate keeps the typical patient in the target range within the horizon")
    limits = check_limits(reg, ids[:1], kb) + check_limits(continued, tuple(windows), kb)
    cap = _renal_cap(met, ids, limits, kb)
    if cap is not None:
        notes.append(cap.text())
    if context is not None:
        tg = targets(context, kb)
        tox_id, tox = tg.harm_id, tg.harm_mg_dl
    else:
        tox_id, tox = toxicity_level_mg_dl(target_high_mg_dl, kb)
    pred = (posterior_predict(fit, reg, times, seed=seed, kb=kb) if fit is not None
            else simulate(pop, reg, times, seed=seed, kb=kb))
    p_tox = pred.p_peak_above(tox)
    if p_tox is None:
        raise InputError("samples", "the overshoot risk needs Monte Carlo samples (pk_mc_samples > 0)")
    thr = kb.value("pk_overshoot_probability_max")
    p_target = pred.p_in_range(target_low_mg_dl, target_high_mg_dl, float(times[-1]))
    return DoseFinding(kind, label, reg, (target_low_mg_dl, target_high_mg_dl), float(score[best]), pred, tox,
                       tox_id, p_tox, thr, p_tox > thr, limits, len(cands), notes, cap, p_target, context)


def _renal_cap(met: tuple[RenalRule, str] | None, ids: tuple[str, ...], limits: list[LimitCheck],
               kb: KnowledgeBase) -> RenalCap | None:
    """The flag for the output: the cap rule in force and the chosen plan's total over its window."""
    rule = met[0] if met is not None else kb.renal_rule(_CAP_RULE)
    if rule.limit_id is None or rule.limit_id not in ids:
        return None
    check = next(c for c in limits if c.limit_id == rule.limit_id)
    window = limit_window_h(rule.limit_id, kb) or 0.0
    return RenalCap(rule.id, rule.limit_id, check.limit, window, met[1] if met is not None else "requested",
                    check.value, check.ok)
