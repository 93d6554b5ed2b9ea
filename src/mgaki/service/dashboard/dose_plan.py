"""The dashboard's dose planner: a regimen (or a target range) -> predicted serum Mg with its band.

All of the pharmacology is ``mgaki.pk``: the population prior, the MAP fit, the dose finder, the
labelled-limit checks and the toxicity level. This module only decides what to feed it from one
patient's data. When the patient has had IV MgSO4 and Mg levels after it, the prior is fitted to
those levels (``fit_map``) and the curve is the patient's posterior; doses already given stay in
the regimen, so drug still circulating counts towards the new peak. Times are hours from the
latest data ("now"); the past part of the curve runs from the first dose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mgaki.engine.repletion import pk_kidney_course
from mgaki.knowledge import KnowledgeBase
from mgaki.pk import (
    Covariates,
    Dialysis,
    Prediction,
    Regimen,
    check_limits,
    context_for,
    find_dose,
    fit_map,
    limit_ids,
    loading_maintenance,
    population,
    posterior_predict,
    risk,
    simulate,
    targets,
    time_grid,
)
from mgaki.service.dashboard.patient_data import DoseHistory

__all__ = ["MAX_HORIZON_H", "PatientInputs", "PlanRequest", "plan_dose"]

MAX_HORIZON_H = 168.0  # computing limit of one request (a week of curve), not a clinical number


class PlanRequest(BaseModel):
    """The planner form. Doses are grams of MgSO4·7H2O; levels mg/dL; empty fields come from the chart."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    mode: Literal["regimen", "target"] = "regimen"
    loading_g: float = Field(0.0, ge=0, description="loading dose, g MgSO4·7H2O (0: none)")
    loading_over_min: float = Field(0.0, ge=0, description="loading dose duration, minutes (0: push)")
    rate_g_per_h: float = Field(0.0, ge=0, description="maintenance infusion, g/h (0: none)")
    maintenance_h: float = Field(0.0, ge=0, le=MAX_HORIZON_H, description="maintenance duration, hours")
    target_low_mg_dl: float | None = Field(None, gt=0)
    target_high_mg_dl: float | None = Field(None, gt=0)
    horizon_h: float = Field(24.0, gt=0, le=MAX_HORIZON_H, description="predict this long after now")
    weight_kg: float | None = Field(None, gt=0, description="default: the latest charted weight")
    crcl_ml_min: float | None = Field(None, gt=0, description="default: the assessment's CrCl (or eGFR); renal cap")
    creatinine_mg_dl: float | None = Field(None, gt=0, description="default: the chart (in AKI its kinetic course)")
    context: Literal["repletion", "eclampsia"] | None = Field(None, description="target and harm (pk.yaml contexts); "
                                                                                "default: from the patient's contexts")
    baseline_mg_dl: float | None = Field(None, gt=0, description="pre-dose serum Mg; default: from the chart")
    jurisdiction: Literal["us", "uk"] = "us"
    emergency: bool = False
    severe_renal: bool | None = Field(None, description="apply the 48-h renal cap; default: as the assessment")
    individualise: bool = True
    model: str | None = Field(None, max_length=100, description="pk.yaml model id (default: the file's default)")

    @model_validator(mode="after")
    def _complete(self) -> PlanRequest:
        if self.mode == "regimen":
            if self.loading_g == 0 and self.rate_g_per_h == 0:
                raise ValueError("give a loading dose (loading_g) or a maintenance rate (rate_g_per_h)")
            if self.rate_g_per_h > 0 and self.maintenance_h == 0:
                raise ValueError("a maintenance rate needs its duration (maintenance_h > 0)")
        else:
            lo, hi = self.target_low_mg_dl, self.target_high_mg_dl
            if lo is None or hi is None:
                raise ValueError("target mode needs target_low_mg_dl and target_high_mg_dl")
            if lo >= hi:
                raise ValueError(f"target range must be low < high, got {lo:g}-{hi:g} mg/dL")
        return self


@dataclass(frozen=True)
class PatientInputs:
    """What the chart says: defaults for the form, and the dosing history for the fit."""

    now: datetime | None  # the latest data: planned doses start here
    latest_mg_mg_dl: float | None
    weight_kg: float | None
    crcl_ml_min: float | None
    crcl_note: str | None
    severe_renal: bool  # the assessment adjusted the dose for kidney function
    history: DoseHistory | None
    creatinine: tuple[tuple[datetime, float], ...] = ()  # the chart's creatinine series
    aki_stage: int = 0
    rrt: bool = False
    age_years: float | None = None
    contexts: frozenset[str] = frozenset()


def _curve(pred: Prediction, shift_h: float) -> list[dict[str, float]]:
    lo = pred.lower_mg_dl if pred.lower_mg_dl is not None else pred.typical_mg_dl
    hi = pred.upper_mg_dl if pred.upper_mg_dl is not None else pred.typical_mg_dl
    return [{"time_h": round(float(t) - shift_h, 3), "typical_mg_dl": round(float(c), 3),
             "lower_mg_dl": round(float(a), 3), "upper_mg_dl": round(float(b), 3)}
            for t, c, a, b in zip(pred.times_h, pred.typical_mg_dl, lo, hi, strict=True)]


def _doses(reg: Regimen, shift_h: float) -> list[dict[str, float]]:
    return [{"start_h": round(s - shift_h, 3), "g_mgso4": round(g, 3), "mmol": round(m, 2), "duration_h": round(d, 3)}
            for s, g, m, d in zip(reg.start_h, reg.g_mgso4(), reg.mmol, reg.duration_h, strict=True)]


def plan_dose(req: PlanRequest, pt: PatientInputs, kb: KnowledgeBase, seed: int = 0) -> dict[str, Any]:
    """Predicted course of the requested (or found) regimen for this patient, with risk and limits."""
    notes: list[str] = []
    weight = req.weight_kg or pt.weight_kg
    crcl = req.crcl_ml_min or pt.crcl_ml_min
    if req.crcl_ml_min is None and pt.crcl_note:
        notes.append(f"Kidney function from the assessment: {pt.crcl_note}")
    hist = pt.history
    now_h = 0.0
    past = Regimen()
    if hist is not None and pt.now is not None:
        now_h = max((pt.now - hist.t0).total_seconds() / 3600.0, 0.0)
        past = Regimen(hist.start_h, hist.mmol, hist.duration_h)
        if hist.skipped:
            notes.append(f"{hist.skipped} Mg dose(s) not modelled (oral, IM or unknown amount)")
        if any(d == 0 for d in hist.duration_h):
            notes.append("Doses with no recorded end are modelled as pushes")
    baseline = req.baseline_mg_dl or (hist.baseline_mg_dl if hist is not None else pt.latest_mg_mg_dl)
    context = req.context or context_for(pt.contexts, kb)
    tg = targets(context, kb)
    t0 = hist.t0 if hist is not None else pt.now
    course = None
    if req.creatinine_mg_dl is None and pt.aki_stage >= 1 and not pt.rrt and t0 is not None and pt.creatinine:
        course = pk_kidney_course(kb, pt.creatinine, t0)  # kinetic eGFR while creatinine moves (Chen 2013)
    creat = req.creatinine_mg_dl or (pt.creatinine[-1][1] if pt.creatinine and course is None else None)
    dialysis = Dialysis("hd") if pt.rrt else None
    if pt.rrt:
        notes.append("Renal replacement therapy: kind and session times not known to the PK model, so no dialytic "
                     "Mg removal is assumed (an upper bound)")
    cov = Covariates(weight_kg=weight, crcl_ml_min=crcl, creatinine_mg_dl=creat, age_years=pt.age_years,
                     pregnant=True if context == "eclampsia" else None, aki=pt.aki_stage >= 1, kidney_course=course,
                     dialysis=dialysis)
    pop = population(req.model, cov, baseline_mg_dl=baseline, kb=kb)
    notes += list(pop.notes)
    fit = None
    if hist is not None and hist.level_h and req.individualise:
        fit = fit_map(pop, past, np.asarray(hist.level_h), np.asarray(hist.level_mg_dl))
        notes.append(f"Individualised: MAP fit to {fit.n_levels} Mg level(s) after {len(hist.mmol)} IV MgSO4 dose(s)")
        if not fit.converged:
            notes.append(f"The MAP fit {fit.status()}: treat the individual curve with caution")
        notes += list(fit.notes) + [i.text() for i in fit.inconsistent]

    severe_renal = pt.severe_renal if req.severe_renal is None else req.severe_renal
    ids = limit_ids(req.jurisdiction, req.emergency, severe_renal)
    finder: dict[str, Any] | None = None
    if req.mode == "target":
        assert req.target_low_mg_dl is not None and req.target_high_mg_dl is not None
        found = find_dose(pop, req.target_low_mg_dl, req.target_high_mg_dl, req.horizon_h, fit=fit,
                          jurisdiction=req.jurisdiction, severe_renal=severe_renal, emergency=req.emergency,
                          seed=seed, kb=kb, context=context)
        planned = found.regimen
        description = found.description
        finder = {"regimen": found.description, "time_in_range": round(found.time_in_range, 3),
                  "candidates": found.candidates, "notes": found.notes}
        if past.mmol:
            notes.append("The finder ranks regimens from the current level; the curve shown adds the drug "
                         "still circulating from doses already given")
    else:
        run = req.maintenance_h if req.rate_g_per_h > 0 else 0.0
        planned = loading_maintenance(req.loading_g, req.loading_over_min / 60.0, req.rate_g_per_h, run)
        parts = ([f"{req.loading_g:g} g over {req.loading_over_min:g} min" if req.loading_over_min
                  else f"{req.loading_g:g} g push"] if req.loading_g else []) + \
            ([f"{req.rate_g_per_h:g} g/h for {run:g} h"] if run else [])
        description = ", then ".join(parts) + " (MgSO4·7H2O)"
    whole = past + planned.shifted(now_h)

    future = time_grid(planned, req.horizon_h, kb=kb) + now_h
    if fit is not None:
        pred = posterior_predict(fit, whole, future, seed=seed, kb=kb)
    else:
        pred = simulate(pop, whole, future, seed=seed, baseline_known=baseline is not None, kb=kb)
    past_curve: list[dict[str, float]] = []
    if now_h > 0:
        step = kb.value("pk_grid_step_hours")
        back = np.unique(np.concatenate([np.arange(0.0, now_h, step), np.asarray(past.start_h),
                                         np.asarray(past.start_h) + np.asarray(past.duration_h)]))
        back = back[back < now_h]
        before = (posterior_predict(fit, whole, back, seed=seed, kb=kb) if fit is not None
                  else simulate(pop, whole, back, seed=seed, baseline_known=baseline is not None, kb=kb))
        past_curve = _curve(before, now_h)

    target = (req.target_low_mg_dl, req.target_high_mg_dl) \
        if req.target_low_mg_dl is not None and req.target_high_mg_dl is not None else None
    if target is not None:
        from dataclasses import replace

        tg = replace(tg, low_mg_dl=target[0], high_mg_dl=target[1])
    rk = risk(pred, tg, now_h + planned.end_h, kb)
    tox_id, tox = tg.harm_id, tg.harm_mg_dl
    p_tox = rk.p_harm if rk.p_harm is not None else 1.0
    thr = rk.threshold
    overshoot = rk.overshoot
    limits = check_limits(planned, ids, kb)
    warnings: list[str] = []
    if overshoot:
        warnings.append(f"Overshoot risk: {p_tox:.0%} of predicted courses peak above {tox:.2f} mg/dL "
                        f"({tg.harm_meaning}); the planner flags above {thr:.0%}. Model built in "
                        f"{pop.population_label}")
    for c in limits:
        if not c.ok:
            value = f"{c.value:.3g}" if math.isfinite(c.value) else "a push (no infusion time)"
            warnings.append(f"Exceeds the limit: {c.meaning}: {value} > {c.limit:g} {c.unit}")
    level = pred.level
    q = (1.0 - (level or 0.0)) / 2.0
    peak_interval = None
    if pred.peak_samples_mg_dl is not None:
        a, b = np.quantile(pred.peak_samples_mg_dl, [q, 1.0 - q])
        peak_interval = [round(float(a), 3), round(float(b), 3)]
    measured = [] if hist is None else [
        {"time_h": round(t - now_h, 3), "mg_dl": round(v, 3)}
        for t, v in zip(hist.level_h, hist.level_mg_dl, strict=True)]
    return {
        "mode": req.mode, "model": pop.spec.id, "model_name": pop.spec.name, "model_source": pop.spec.source.citation,
        "model_doi": pop.spec.source.doi, "individualised": fit is not None,
        "estimates": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in fit.estimates().items()}
        if fit is not None else None,
        "now": pt.now.isoformat() if pt.now else None, "inputs": {
            "weight_kg": weight, "crcl_ml_min": crcl, "creatinine_mg_dl": creat, "age_years": pt.age_years,
            "baseline_mg_dl": baseline,
            "kidney_course": None if course is None else [{"from_h": round(t - now_h, 3), "creatinine_mg_dl": c}
                                                         for t, c in zip(course.start_h, course.creatinine_mg_dl,
                                                                         strict=True)],
            "severe_renal": severe_renal,
            "jurisdiction": req.jurisdiction, "emergency": req.emergency},
        "planned_doses": _doses(planned.shifted(now_h), now_h), "past_doses": _doses(past, now_h),
        "regimen": description, "finder": finder, "target_mg_dl": list(target) if target else None,
        "level": level, "curve": _curve(pred, now_h), "past_curve": past_curve, "measured": measured,
        "peak_mg_dl": round(pred.peak_mg_dl, 3), "peak_time_h": round(pred.peak_time_h - now_h, 3),
        "peak_interval_mg_dl": peak_interval,
        "toxicity_mg_dl": round(tox, 3), "toxicity_id": tox_id, "toxicity_meaning": tg.harm_meaning,
        "p_peak_above_toxicity": round(p_tox, 4), "overshoot_threshold": thr, "overshoot": overshoot,
        "risk": rk.to_dict(), "context": context, "population": pop.population_label,
        "outside_population": list(pop.outside),
        "limits": [{"id": c.limit_id, "limit": c.limit, "value": round(c.value, 3) if math.isfinite(c.value) else None,
                    "unit": c.unit, "ok": c.ok, "meaning": c.meaning} for c in limits],
        "warnings": warnings, "notes": notes,
        "disclaimer": f"Population model built in {pop.population_label}; outside that population the uncertainty "
                      "is widened, not removed (docs/pk.md). Supports, does not replace, clinical judgement.",
    }
