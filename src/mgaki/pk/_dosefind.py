"""Dose finding: the regimen whose predicted course stays longest in a target range, within labelled limits.

Candidates are loading dose + maintenance infusion, or repeated doses, on grids from pk.yaml;
every infusion runs at or below the labelled rate (regimens.yaml), totals respect the daily
maximum and, in severe renal impairment, the 20 g/48 h cap. Because the models are linear in
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
from mgaki.pk._fit import Fit, posterior_predict
from mgaki.pk._model import PopModel
from mgaki.pk._regimen import LimitCheck, Regimen, check_limits, loading_maintenance, repeated
from mgaki.pk._simulate import Prediction, concentrations, simulate
from mgaki.units import convert

__all__ = ["DoseFinding", "find_dose", "limit_ids", "toxicity_level_mg_dl"]

Array = npt.NDArray[np.float64]
Kind = Literal["loading_maintenance", "repeated"]


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
            "candidates": self.candidates, "notes": self.notes,
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


def limit_ids(jurisdiction: str, emergency: bool, severe_renal: bool) -> tuple[str, ...]:
    """Which regimens.yaml limits bind: rate (label for emergencies, repletion otherwise), daily, renal cap."""
    ids = ["iv_rate_max_label" if emergency else "iv_rate_max_repletion",
           "daily_max_uk" if jurisdiction == "uk" else "daily_max_label"]
    if severe_renal:
        ids.append("severe_renal_max_48h")
    return tuple(ids)


def _grid(kb: KnowledgeBase, step_id: str, max_id: str) -> Array:
    step, top = kb.value(step_id), kb.value(max_id)
    return np.round(np.arange(0.0, top + step / 2, step), 6)


def find_dose(pop: PopModel, target_low_mg_dl: float, target_high_mg_dl: float, horizon_h: float = 24.0,
              fit: Fit | None = None, jurisdiction: str = "us", severe_renal: bool = False,
              emergency: bool = False, kinds: tuple[Kind, ...] = ("loading_maintenance", "repeated"),
              seed: int = 0, kb: KnowledgeBase | None = None) -> DoseFinding:
    """Best regimen for the target range (mg/dL) over ``horizon_h``; uses the posterior if ``fit`` is given."""
    kb = kb or load()
    if not (0 < target_low_mg_dl < target_high_mg_dl):
        raise InputError("target", f"target range must be low < high, got {target_low_mg_dl}-{target_high_mg_dl}")
    if horizon_h <= 0:
        raise InputError("horizon", "the horizon must be positive")
    ids = limit_ids(jurisdiction, emergency, severe_renal)
    rate_max = next(c.limit for c in check_limits(Regimen(), ids[:1], kb))
    eta0 = fit.eta if fit is not None else np.zeros(pop.n_eta)
    step = kb.value("pk_grid_step_hours")
    times = np.arange(0.0, horizon_h + step / 2, step)
    t_from = min(kb.value("pk_target_reach_hours"), horizon_h)
    window = times >= t_from
    base = float(pop.params(eta0)["baseline"])
    unit_c = convert(1.0, "magnesium", "mmol/L", "mg/dL")

    def exo(reg: Regimen) -> Array:
        return (concentrations(pop, reg, times, eta0) - base) * unit_c

    cands: list[tuple[Kind, str, Regimen, Array]] = []  # (kind, label, regimen, typical mg/dL)
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
                cands.append(("loading_maintenance", label, loading_maintenance(load_g, over, r, run), c))
    if "repeated" in kinds:
        for every in _grid(kb, "pk_interval_step_h", "pk_interval_max_h")[1:]:
            n = max(1, math.ceil(horizon_h / every - 1e-9))
            for dose in _grid(kb, "pk_dose_step_g", "pk_load_max_g")[1:]:
                reg = repeated(float(dose), "g", float(every), n, over_h=float(dose) / rate_max)
                c = base * unit_c + exo(reg)
                cands.append(("repeated", f"{dose:g} g MgSO4 over {dose / rate_max * 60:.0f} min every "
                              f"{every:g} h (x{n})", reg, c))
    if not cands:
        raise InputError("kinds", "no candidate regimens: choose loading_maintenance and/or repeated")
    curves = np.stack([c[3] for c in cands])
    inside = (curves >= target_low_mg_dl) & (curves <= target_high_mg_dl)
    score = inside[:, window].mean(axis=1)
    total_g = np.array([sum(c[2].g_mgso4()) for c in cands])
    ok = np.array([all(lc.ok for lc in check_limits(c[2], ids[1:], kb)) for c in cands])
    peak = curves.max(axis=1)
    above = peak > target_high_mg_dl + 1e-9  # a course that overshoots the range ranks after one that does not
    order = np.lexsort((peak, total_g, -np.round(score, 6), above, ~ok))
    best = int(order[0])
    kind, label, reg, _ = cands[best]
    notes: list[str] = []
    if not ok[best]:
        notes.append("No candidate respects every labelled limit: shown is the best, and it exceeds one")
    if above[best]:
        notes.append("Every candidate's typical course rises above the target range at some time")
    if score[best] == 0.0:
        notes.append("No candidate keeps the typical patient in the target range within the horizon")
    tox_id, tox = toxicity_level_mg_dl(target_high_mg_dl, kb)
    pred = (posterior_predict(fit, reg, times, seed=seed, kb=kb) if fit is not None
            else simulate(pop, reg, times, seed=seed, kb=kb))
    p_tox = pred.p_peak_above(tox) or 0.0
    thr = kb.value("pk_overshoot_probability_max")
    return DoseFinding(kind, label, reg, (target_low_mg_dl, target_high_mg_dl), float(score[best]), pred, tox,
                       tox_id, p_tox, thr, p_tox > thr, check_limits(reg, ids, kb), len(cands), notes)
