"""Serum Mg over time for a regimen: typical curve and a Monte Carlo band over the model's variability.

Every prediction carries the population its model was built in and the notes of how far this patient
is from it; probabilities (target attainment, harm) come from the samples, never from a typical curve,
and are None (not 0) when nothing was sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mgaki.errors import OutsideModelError
from mgaki.knowledge import KnowledgeBase, load
from mgaki.pk._model import PopModel
from mgaki.pk._regimen import Regimen, validate_regimen
from mgaki.units import factor

__all__ = ["Prediction", "concentrations", "simulate", "time_grid"]

Array = npt.NDArray[np.float64]


def _to_mg_dl() -> float:
    return factor("magnesium", "mmol/L", "mg/dL")


def concentrations(pop: PopModel, regimen: Regimen, times_h: Array, eta: Array) -> Array:
    """Total serum Mg (mmol/L) for etas of shape (..., n_eta): baseline + exogenous, shape (..., T)."""
    eta = np.asarray(eta, dtype=np.float64)
    s, a, d = regimen.arrays()
    t = np.asarray(times_h, dtype=np.float64)
    exo = pop.exogenous(s, a, d, regimen.im_array(), t, eta)
    base = pop.baseline_mmol_l * np.exp(eta[..., -1])
    return np.asarray(base[..., None] + exo, dtype=np.float64)


def time_grid(regimen: Regimen, horizon_h: float | None = None, kb: KnowledgeBase | None = None,
              step_h: float | None = None) -> Array:
    """Even grid (pk_grid_step_hours) from 0 to the horizon, plus every dose start and end (peaks sit there)."""
    kb = kb or load()
    step = kb.value("pk_grid_step_hours") if step_h is None else step_h
    end = horizon_h if horizon_h is not None else max(24.0, regimen.end_h + 12.0)
    top = kb.value("pk_max_horizon_hours")
    if not (np.isfinite(end) and 0 < end <= top):
        raise OutsideModelError("horizon", f"the horizon must be more than 0 and at most {top:g} h, got {end:g} h")
    s, _, d = regimen.arrays()
    pts = np.concatenate([np.arange(0.0, end + step / 2, step), s, s + d])
    return np.unique(pts[(pts >= 0.0) & (pts <= end)])


@dataclass(frozen=True)
class Prediction:
    """A predicted course in mg/dL: typical (eta = 0 or MAP) and, if sampled, a central band."""

    model_id: str
    times_h: Array
    typical_mg_dl: Array
    lower_mg_dl: Array | None
    upper_mg_dl: Array | None
    level: float | None
    peak_samples_mg_dl: Array | None  # each sample's peak (for risk of exceeding a level)
    population: str = ""
    notes: tuple[str, ...] = ()
    samples_mg_dl: Array | None = None  # (n, T) sampled courses
    harm_peak_samples_mg_dl: Array | None = None  # each sample's peak where harm is judged (harm_window)

    @property
    def peak_mg_dl(self) -> float:
        return float(self.typical_mg_dl.max())

    @property
    def peak_time_h(self) -> float:
        return float(self.times_h[int(np.argmax(self.typical_mg_dl))])

    def at(self, t_h: float) -> float:
        return float(np.interp(t_h, self.times_h, self.typical_mg_dl))

    def p_peak_above(self, mg_dl: float) -> float | None:
        """P(the course exceeds ``mg_dl``) where harm is judged: from the models' first sampling time after
        each short dose (pk_harm_from_hours_after_dose_start); the transient before it is in the peak."""
        peaks = self.harm_peak_samples_mg_dl if self.harm_peak_samples_mg_dl is not None else self.peak_samples_mg_dl
        if peaks is None:
            return None
        return float(np.mean(peaks > mg_dl))

    def sampled_at(self, t_h: float) -> Array | None:
        """Every sampled course's level at ``t_h`` (linear between grid points), or None if not sampled."""
        if self.samples_mg_dl is None:
            return None
        t = self.times_h
        j = int(np.clip(np.searchsorted(t, t_h), 1, len(t) - 1)) if len(t) > 1 else 0
        if len(t) == 1:
            return np.asarray(self.samples_mg_dl[:, 0], dtype=np.float64)
        w = float(np.clip((t_h - t[j - 1]) / (t[j] - t[j - 1]), 0.0, 1.0))
        return np.asarray(self.samples_mg_dl[:, j - 1] * (1 - w) + self.samples_mg_dl[:, j] * w, dtype=np.float64)

    def p_in_range(self, low_mg_dl: float, high_mg_dl: float, t_h: float) -> float | None:
        """Probability that serum Mg is inside [low, high] at ``t_h`` (sampled courses)."""
        col = self.sampled_at(t_h)
        return None if col is None else float(np.mean((col >= low_mg_dl) & (col <= high_mg_dl)))

    def p_below(self, mg_dl: float, t_h: float) -> float | None:
        col = self.sampled_at(t_h)
        return None if col is None else float(np.mean(col < mg_dl))

    def to_dict(self) -> dict[str, object]:
        band = self.lower_mg_dl is not None and self.upper_mg_dl is not None
        return {"model": self.model_id, "population": self.population, "notes": list(self.notes),
                "level": self.level,
                "peak_mg_dl": round(self.peak_mg_dl, 3), "peak_time_h": round(self.peak_time_h, 2),
                "points": [{"time_h": round(float(t), 3), "typical_mg_dl": round(float(c), 3),
                            **({"lower_mg_dl": round(float(lo), 3), "upper_mg_dl": round(float(hi), 3)}
                               if band else {})}
                           for t, c, lo, hi in zip(self.times_h, self.typical_mg_dl,
                                                   self.lower_mg_dl if self.lower_mg_dl is not None
                                                   else self.typical_mg_dl,
                                                   self.upper_mg_dl if self.upper_mg_dl is not None
                                                   else self.typical_mg_dl, strict=True)]}


def _finite(curves: Array, pop: PopModel) -> None:
    if not np.all(np.isfinite(curves)):
        raise OutsideModelError("model", f"{pop.spec.id} gave a non-finite level for these inputs: no prediction")


def harm_window(regimen: Regimen, times_h: Array, kb: KnowledgeBase | None = None) -> Array:
    """Times where harm is judged: not within pk_harm_from_hours_after_dose_start of the start of a push or a
    shorter infusion (no model was sampled there: the end-of-load level is an extrapolation of Vc)."""
    w = (kb or load()).value("pk_harm_from_hours_after_dose_start")
    s, _, d = regimen.arrays()
    short = s[d < w]
    t = np.asarray(times_h, dtype=np.float64)
    inside = np.any((t[:, None] >= short[None, :]) & (t[:, None] < short[None, :] + w), axis=1)
    keep = ~inside
    return keep if keep.any() else np.ones_like(keep)


def band(pop: PopModel, regimen: Regimen, times_h: Array, etas: Array, level: float,
         typical_eta: Array | None = None, vary_baseline: bool = True) -> Prediction:
    """Prediction from sampled etas (n, n_eta): typical curve at ``typical_eta`` and the central band."""
    etas = np.array(etas, dtype=np.float64)
    if not vary_baseline:
        etas[:, -1] = 0.0 if typical_eta is None else typical_eta[-1]
    k = _to_mg_dl()
    curves = concentrations(pop, regimen, times_h, etas) * k
    center = np.zeros(pop.n_eta) if typical_eta is None else typical_eta
    typ = concentrations(pop, regimen, times_h, center) * k
    _finite(curves, pop)
    _finite(typ, pop)
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(curves, [q, 1.0 - q], axis=0)
    keep = harm_window(regimen, times_h)
    return Prediction(pop.spec.id, times_h, typ, lo, hi, level, curves.max(axis=1), pop.population_label,
                      pop.notes, curves, curves[:, keep].max(axis=1))


def simulate(pop: PopModel, regimen: Regimen, times_h: Array | None = None, n: int | None = None,
             seed: int = 0, level: float | None = None, baseline_known: bool | None = None,
             kb: KnowledgeBase | None = None) -> Prediction:
    """Typical course and a Monte Carlo band over the model's variability (and the added uncertainty).

    ``baseline_known`` (default: whether the population was given a measured baseline): the baseline is
    the patient's measured pre-dose Mg, so it is not sampled. ``n = 0`` gives the typical curve only.
    """
    kb = kb or load()
    validate_regimen(regimen, kb)
    times = time_grid(regimen, kb=kb) if times_h is None else np.asarray(times_h, dtype=np.float64)
    top = kb.value("pk_max_horizon_hours")
    if times.size == 0 or not np.all(np.isfinite(times)) or times.min() < 0 or times.max() > top:
        raise OutsideModelError("times", f"prediction times must lie between 0 and {top:g} h")
    known = pop.baseline_known if baseline_known is None else baseline_known
    n = int(kb.value("pk_mc_samples")) if n is None else n
    level = kb.value("pk_interval_level") if level is None else level
    if n <= 0:
        typ = concentrations(pop, regimen, times, np.zeros(pop.n_eta)) * _to_mg_dl()
        _finite(typ, pop)
        return Prediction(pop.spec.id, times, typ, None, None, None, None, pop.population_label, pop.notes)
    rng = np.random.default_rng(seed)
    etas = rng.standard_normal((n, pop.n_eta)) * pop.omega
    return band(pop, regimen, times, etas, level, vary_baseline=not known)
