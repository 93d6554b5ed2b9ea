"""Bayesian MAP fit of one patient's PK parameters from measured serum Mg and the doses given.

The objective is -2 log posterior: combined residual error (proportional + additive, pk.yaml)
plus log-normal priors on every eta (including the endogenous baseline). Uncertainty is the
Laplace approximation: covariance = 2 x inverse Hessian of the objective at the mode (finite
differences). Posterior predictions sample etas from that normal distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mgaki.errors import InputError
from mgaki.knowledge import KnowledgeBase, load
from mgaki.pk._model import PopModel
from mgaki.pk._regimen import Regimen
from mgaki.pk._simulate import Prediction, band, concentrations, time_grid
from mgaki.units import factor

__all__ = ["Fit", "fit_map", "posterior_predict"]

Array = npt.NDArray[np.float64]
_BOUND_SD = 6.0  # etas searched within +-6 prior SDs: keeps exp() finite, never binding in practice
_H_STEP = 1e-4
_G_STEP = 1e-6


@dataclass(frozen=True)
class Fit:
    pop: PopModel
    regimen: Regimen
    eta: Array  # MAP etas (n_eta,)
    cov: Array  # Laplace covariance of the etas
    objective: float
    converged: bool
    n_levels: int

    def estimates(self, z: float = 1.959963984540054) -> dict[str, dict[str, float]]:
        """Each parameter's MAP value and its interval (exp of eta +- z SE; log-normal)."""
        se = np.sqrt(np.clip(np.diag(self.cov), 0.0, None))
        mode = self.pop.params(self.eta)
        lo = self.pop.params(self.eta - z * se)
        hi = self.pop.params(self.eta + z * se)
        return {k: {"map": float(mode[k]), "lower": float(lo[k]), "upper": float(hi[k]),
                    "se_log": float(se[i])} for i, k in enumerate((*self.pop.names, "baseline"))}


class _Objective:
    """-2 log posterior, evaluated for many eta vectors at once (gradient and Hessian points in one call)."""

    def __init__(self, pop: PopModel, regimen: Regimen, t: Array, y: Array) -> None:
        self.pop, self.regimen, self.t, self.y = pop, regimen, t, y
        self.fixed = pop.omega <= 0  # no variability: eta stays 0
        self.omega = np.where(pop.omega > 0, pop.omega, 1.0)

    def batch(self, etas: Array) -> Array:
        e = np.where(self.fixed, 0.0, etas)
        pred = concentrations(self.pop, self.regimen, self.t, e)
        var = self.pop.add_sd_mmol_l ** 2 + (self.pop.prop_sd * pred) ** 2
        out = np.sum((self.y - pred) ** 2 / var + np.log(var), axis=-1) + np.sum((e / self.omega) ** 2, axis=-1)
        return np.asarray(out, dtype=np.float64)

    def value_and_grad(self, eta: Array) -> tuple[float, Array]:
        n = len(eta)
        eye = np.eye(n) * _G_STEP
        vals = self.batch(np.vstack([eta[None, :], eta + eye, eta - eye]))
        return float(vals[0]), (vals[1:n + 1] - vals[n + 1:]) / (2 * _G_STEP)

    def hessian(self, x: Array) -> Array:
        n = len(x)
        e = np.eye(n) * _H_STEP
        i, j = np.triu_indices(n, 1)
        pts = np.vstack([x[None, :], x + e, x - e, x + e[i] + e[j], x + e[i] - e[j], x - e[i] + e[j],
                         x - e[i] - e[j]])
        v = self.batch(pts)
        f0, fp, fm = v[0], v[1:n + 1], v[n + 1:2 * n + 1]
        m = len(i)
        pp, pm, mp, mm = (v[2 * n + 1 + k * m: 2 * n + 1 + (k + 1) * m] for k in range(4))
        h = np.diag((fp - 2 * f0 + fm) / _H_STEP ** 2)
        h[i, j] = h[j, i] = (pp - pm - mp + mm) / (4 * _H_STEP ** 2)
        return np.asarray(h, dtype=np.float64)


def fit_map(pop: PopModel, regimen: Regimen, times_h: Array, levels_mg_dl: Array) -> Fit:
    """MAP etas from measured serum Mg (mg/dL) at ``times_h`` (hours from the regimen's time 0)."""
    t = np.asarray(times_h, dtype=np.float64)
    y_mg = np.asarray(levels_mg_dl, dtype=np.float64)
    if t.shape != y_mg.shape or t.ndim != 1 or len(t) == 0:
        raise InputError("levels", "give one time for every measured level (at least one level)")
    if np.any(~np.isfinite(y_mg)) or np.any(y_mg <= 0):
        raise InputError("levels", "measured serum Mg must be positive numbers")
    y = y_mg * factor("magnesium", "mg/dL", "mmol/L")
    obj = _Objective(pop, regimen, t, y)
    bounds = [(-_BOUND_SD * w, _BOUND_SD * w) if w > 0 else (0.0, 0.0) for w in pop.omega]
    from scipy.optimize import minimize  # imported here: scipy.optimize costs ~0.5 s at start-up

    res = minimize(obj.value_and_grad, np.zeros(pop.n_eta), jac=True, method="L-BFGS-B", bounds=bounds)
    eta = np.asarray(res.x, dtype=np.float64)
    free = ~obj.fixed
    cov = np.zeros((pop.n_eta, pop.n_eta))
    hess = obj.hessian(eta)[np.ix_(free, free)]
    vals, vecs = np.linalg.eigh((hess + hess.T) / 2.0)
    vals = np.maximum(vals, 1e-8)  # a flat direction keeps a wide (not negative) variance
    cov[np.ix_(free, free)] = 2.0 * (vecs / vals) @ vecs.T
    return Fit(pop, regimen, eta, cov, float(res.fun), bool(res.success), len(t))


def posterior_predict(fit: Fit, regimen: Regimen | None = None, times_h: Array | None = None,
                      n: int | None = None, seed: int = 0, level: float | None = None,
                      kb: KnowledgeBase | None = None) -> Prediction:
    """Course under ``regimen`` (default: the fitted one) with the patient's posterior: MAP and band."""
    kb = kb or load()
    reg = regimen or fit.regimen
    times = time_grid(reg, kb=kb) if times_h is None else np.asarray(times_h, dtype=np.float64)
    n = int(kb.value("pk_mc_samples")) if n is None else n
    level = kb.value("pk_interval_level") if level is None else level
    rng = np.random.default_rng(seed)
    etas = rng.multivariate_normal(fit.eta, fit.cov, size=n, method="eigh")
    return band(fit.pop, reg, times, etas, level, typical_eta=fit.eta)
