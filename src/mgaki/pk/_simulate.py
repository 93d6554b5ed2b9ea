"""Serum Mg over time for a regimen: typical curve and a Monte Carlo band over between-patient variability."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mgaki.knowledge import KnowledgeBase, load
from mgaki.pk._model import PopModel
from mgaki.pk._regimen import Regimen
from mgaki.pk._solve import dose_response, exponentials
from mgaki.units import factor

__all__ = ["Prediction", "concentrations", "simulate", "time_grid"]

Array = npt.NDArray[np.float64]


def _to_mg_dl() -> float:
    return factor("magnesium", "mmol/L", "mg/dL")


def concentrations(pop: PopModel, regimen: Regimen, times_h: Array, eta: Array) -> Array:
    """Total serum Mg (mmol/L) for etas of shape (..., n_eta): baseline + exogenous, shape (..., T)."""
    p = pop.params(eta)
    coef, rate = exponentials(p)
    s, a, d = regimen.arrays()
    exo = dose_response(coef, rate, times_h, s, a, d)
    return np.asarray(p["baseline"][..., None] + exo, dtype=np.float64)


def time_grid(regimen: Regimen, horizon_h: float | None = None, kb: KnowledgeBase | None = None,
              step_h: float | None = None) -> Array:
    """Even grid (pk_grid_step_hours) from 0 to the horizon, plus every dose start and end (peaks sit there)."""
    kb = kb or load()
    step = kb.value("pk_grid_step_hours") if step_h is None else step_h
    end = horizon_h if horizon_h is not None else max(24.0, regimen.end_h + 12.0)
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

    @property
    def peak_mg_dl(self) -> float:
        return float(self.typical_mg_dl.max())

    @property
    def peak_time_h(self) -> float:
        return float(self.times_h[int(np.argmax(self.typical_mg_dl))])

    def at(self, t_h: float) -> float:
        return float(np.interp(t_h, self.times_h, self.typical_mg_dl))

    def p_peak_above(self, mg_dl: float) -> float | None:
        if self.peak_samples_mg_dl is None:
            return None
        return float(np.mean(self.peak_samples_mg_dl > mg_dl))

    def to_dict(self) -> dict[str, object]:
        band = self.lower_mg_dl is not None and self.upper_mg_dl is not None
        return {"model": self.model_id, "level": self.level,
                "peak_mg_dl": round(self.peak_mg_dl, 3), "peak_time_h": round(self.peak_time_h, 2),
                "points": [{"time_h": round(float(t), 3), "typical_mg_dl": round(float(c), 3),
                            **({"lower_mg_dl": round(float(lo), 3), "upper_mg_dl": round(float(hi), 3)}
                               if band else {})}
                           for t, c, lo, hi in zip(self.times_h, self.typical_mg_dl,
                                                   self.lower_mg_dl if self.lower_mg_dl is not None
                                                   else self.typical_mg_dl,
                                                   self.upper_mg_dl if self.upper_mg_dl is not None
                                                   else self.typical_mg_dl, strict=True)]}


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
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(curves, [q, 1.0 - q], axis=0)
    return Prediction(pop.spec.id, times_h, typ, lo, hi, level, curves.max(axis=1))


def simulate(pop: PopModel, regimen: Regimen, times_h: Array | None = None, n: int | None = None,
             seed: int = 0, level: float | None = None, baseline_known: bool = True,
             kb: KnowledgeBase | None = None) -> Prediction:
    """Typical course and a Monte Carlo band over the model's between-patient variability.

    ``baseline_known``: the baseline is the patient's measured pre-dose Mg, so it is not sampled.
    ``n = 0`` gives the typical curve only.
    """
    kb = kb or load()
    times = time_grid(regimen, kb=kb) if times_h is None else np.asarray(times_h, dtype=np.float64)
    n = int(kb.value("pk_mc_samples")) if n is None else n
    level = kb.value("pk_interval_level") if level is None else level
    if n <= 0:
        typ = concentrations(pop, regimen, times, np.zeros(pop.n_eta)) * _to_mg_dl()
        return Prediction(pop.spec.id, times, typ, None, None, None, None)
    rng = np.random.default_rng(seed)
    etas = rng.standard_normal((n, pop.n_eta)) * pop.omega
    return band(pop, regimen, times, etas, level, vary_baseline=not baseline_known)
