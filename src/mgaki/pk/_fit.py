"""Bayesian MAP fit of one patient's PK parameters from measured serum Mg and the doses given.

The objective is -2 log posterior: the model's own residual error (proportional + additive, on the total
level or on the change from baseline, as its paper fitted it) plus log-normal priors on every eta.
Uncertainty is the Laplace approximation: covariance = 2 x inverse Hessian of the objective at the mode
(finite differences). Posterior predictions sample etas from that normal distribution.

The fit tells the truth about itself (docs/pk.md#individual-fit-map):

* a level drawn before the first dose is the patient's baseline observation: the baseline is that value,
  not a parameter shrunk toward the population prior (and a measured baseline given with the population
  is kept as it is), so ``fit`` and ``simulate`` agree;
* a search that ends on its bound (``pk_fit_bound_sd`` prior SDs) is reported, and ``converged`` is False;
* a level further than ``pk_inconsistent_level_sd`` residual SDs from the fitted course is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from mgaki.errors import InputError
from mgaki.knowledge import KnowledgeBase, load
from mgaki.pk._model import PopModel
from mgaki.pk._regimen import Regimen, validate_regimen
from mgaki.pk._simulate import Prediction, band, concentrations, time_grid
from mgaki.units import convert, factor

__all__ = ["Fit", "Inconsistent", "fit_map", "parameter_units", "posterior_predict"]

Array = npt.NDArray[np.float64]
_H_STEP = 1e-4
_G_STEP = 1e-6
MEANING = {"cl": "clearance", "v1": "central volume", "q": "intercompartmental clearance",
           "v2": "peripheral volume", "f": "share of each dose in the model (retention, population transfer)",
           "cld": "dialytic Mg clearance during dialysis", "baseline": "endogenous serum Mg"}


def parameter_units(pop: PopModel) -> dict[str, str]:
    """The unit of each parameter of ``pop`` as its model states it (pk.yaml): clearances and volumes, the
    baseline; ``cld`` (dialytic clearance) in the model's clearance unit; ``f`` is a fraction (no unit)."""
    units: dict[str, str] = {p.id: p.unit for p in pop.spec.parameters}
    units["cld"] = units["cl"]
    units["baseline"] = pop.spec.baseline.unit
    units["f"] = ""
    return units


@dataclass(frozen=True)
class Inconsistent:
    """A measured level the fitted model cannot explain."""

    time_h: float
    measured_mg_dl: float
    fitted_mg_dl: float
    z: float  # (measured - fitted) / residual SD

    def text(self) -> str:
        return (f"level {self.measured_mg_dl:.2f} mg/dL at {self.time_h:g} h is {abs(self.z):.1f} SD "
                f"{'above' if self.z > 0 else 'below'} the fitted {self.fitted_mg_dl:.2f} mg/dL")


@dataclass(frozen=True)
class Fit:
    pop: PopModel
    regimen: Regimen
    eta: Array  # MAP etas (n_eta,)
    cov: Array  # Laplace covariance of the etas
    objective: float
    converged: bool
    n_levels: int
    at_bound: tuple[str, ...] = ()  # parameters whose search ended on its bound
    inconsistent: tuple[Inconsistent, ...] = ()
    baseline_from: str = "prior"  # "pre-dose level", "given", "prior"
    notes: tuple[str, ...] = field(default=())

    def estimates(self, z: float = 1.959963984540054, kb: KnowledgeBase | None = None) -> dict[str, dict[str, float]]:
        """Each parameter's MAP value and its interval (exp of eta +- z SE; log-normal), the interval's ends kept
        within the searched bound (``pk_fit_bound_sd`` prior SDs), like the samples of ``posterior_predict``: a
        direction the levels leave flat has a huge Laplace SE, whose exp would overflow to infinity."""
        kb = kb or load()
        se = np.sqrt(np.clip(np.diag(self.cov), 0.0, None))
        bound = kb.value("pk_fit_bound_sd") * self.pop.omega
        mode = self.pop.params(self.eta)
        lo = self.pop.params(np.clip(self.eta - z * se, -bound, bound))
        hi = self.pop.params(np.clip(self.eta + z * se, -bound, bound))
        return {k: {"map": float(mode[k]), "lower": float(lo[k]), "upper": float(hi[k]),
                    "se_log": float(se[i])} for i, k in enumerate((*self.pop.names, "baseline"))}

    def status(self) -> str:
        if self.at_bound:
            return ("ended on its search bound (" + ", ".join(self.at_bound)
                    + "): the levels are not explained by the model within its plausible range")
        return "converged" if self.converged else "did not converge"


class _Objective:
    """-2 log posterior, evaluated for many eta vectors at once (gradient and Hessian points in one call)."""

    def __init__(self, pop: PopModel, regimen: Regimen, t: Array, y: Array) -> None:
        self.pop, self.regimen, self.t, self.y = pop, regimen, t, y
        self.fixed = pop.omega <= 0  # no variability: eta stays 0
        self.omega = np.where(pop.omega > 0, pop.omega, 1.0)

    def predicted(self, etas: Array) -> tuple[Array, Array]:
        e = np.where(self.fixed, 0.0, etas)
        pred = concentrations(self.pop, self.regimen, self.t, e)
        scale = pred - (self.pop.baseline_mmol_l * np.exp(e[..., -1]))[..., None] \
            if self.pop.residual_scale == "change_from_baseline" else pred
        var = self.pop.add_sd_mmol_l ** 2 + (self.pop.prop_sd * scale) ** 2
        return pred, np.maximum(var, 1e-8)

    def batch(self, etas: Array) -> Array:
        e = np.where(self.fixed, 0.0, etas)
        pred, var = self.predicted(etas)
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


def _known_baseline(pop: PopModel, mmol_l: float) -> PopModel:
    omega = pop.omega.copy()
    omega[-1] = 0.0
    return replace(pop, baseline_mmol_l=mmol_l, omega=omega, baseline_known=True)


def fit_map(pop: PopModel, regimen: Regimen, times_h: Array, levels_mg_dl: Array,
            kb: KnowledgeBase | None = None) -> Fit:
    """MAP etas from measured serum Mg (mg/dL) at ``times_h`` (hours from the regimen's time 0)."""
    kb = kb or load()
    validate_regimen(regimen, kb)
    t = np.asarray(times_h, dtype=np.float64)
    y_mg = np.asarray(levels_mg_dl, dtype=np.float64)
    if t.shape != y_mg.shape or t.ndim != 1 or len(t) == 0:
        raise InputError("levels", "give one time for every measured level (at least one level)")
    mg = kb.analyte("magnesium")
    lo_mg = convert(mg.plausible_min, "magnesium", mg.canonical_unit, "mg/dL")
    hi_mg = convert(mg.plausible_max, "magnesium", mg.canonical_unit, "mg/dL")
    if np.any(~np.isfinite(y_mg)) or np.any(y_mg < lo_mg) or np.any(y_mg > hi_mg):
        raise InputError("levels", f"measured serum Mg must be numbers in {lo_mg:g}-{hi_mg:g} mg/dL")
    top = kb.value("pk_max_horizon_hours")
    if np.any(~np.isfinite(t)) or np.any(np.abs(t) > top):
        raise InputError("levels", f"level times must be finite and within {top:g} h of the first dose")
    notes: list[str] = []
    first = min(regimen.start_h)
    pre = t <= first
    baseline_from = "given" if pop.baseline_known else "prior"
    if pre.any():
        base_mg = float(np.mean(y_mg[pre]))
        if pop.baseline_known and abs(convert(base_mg, "magnesium", "mg/dL", "mmol/L") - pop.baseline_mmol_l) > 1e-9:
            notes.append(f"the pre-dose level ({base_mg:.2f} mg/dL) replaces the baseline given")
        pop = _known_baseline(pop, convert(base_mg, "magnesium", "mg/dL", "mmol/L"))
        baseline_from = "pre-dose level"
        notes.append(f"baseline = the pre-dose level{'s' if pre.sum() > 1 else ''} ({base_mg:.2f} mg/dL), "
                     "not estimated")
    elif pop.baseline_known:
        pop = _known_baseline(pop, pop.baseline_mmol_l)
    post = ~pre
    if not post.any():
        raise InputError("levels", "every level is before the first dose: nothing to fit (the baseline is known)")
    y = y_mg[post] * factor("magnesium", "mg/dL", "mmol/L")
    obj = _Objective(pop, regimen, t[post], y)
    bound_sd = kb.value("pk_fit_bound_sd")
    bounds = [(-bound_sd * w, bound_sd * w) if w > 0 else (0.0, 0.0) for w in pop.omega]
    from scipy.optimize import minimize  # imported here: scipy.optimize costs ~0.5 s at start-up

    res = minimize(obj.value_and_grad, np.zeros(pop.n_eta), jac=True, method="L-BFGS-B", bounds=bounds)
    eta = np.asarray(res.x, dtype=np.float64)
    names = (*pop.names, "baseline")
    at_bound = tuple(names[i] for i, w in enumerate(pop.omega)
                     if w > 0 and abs(abs(eta[i]) - bound_sd * w) <= 1e-3 * w)
    free = ~obj.fixed
    cov = np.zeros((pop.n_eta, pop.n_eta))
    hess = obj.hessian(eta)[np.ix_(free, free)]
    vals, vecs = np.linalg.eigh((hess + hess.T) / 2.0)
    vals = np.maximum(vals, 1e-8)  # a flat direction keeps a wide (not negative) variance
    cov[np.ix_(free, free)] = 2.0 * (vecs / vals) @ vecs.T
    pred, var = obj.predicted(eta)
    z = (y - pred) / np.sqrt(var)
    k = kb.value("pk_inconsistent_level_sd")
    to_mg = factor("magnesium", "mmol/L", "mg/dL")
    bad = tuple(Inconsistent(float(tt), float(yy), float(pp * to_mg), float(zz))
                for tt, yy, pp, zz in zip(t[post], y_mg[post], pred, z, strict=True) if abs(zz) > k)
    if bad:
        notes.append(f"{len(bad)} level(s) more than {k:g} SD from the fitted course: check sample timing, "
                     "contamination (drawn from the infusion line?) and units")
    far = [names[i] for i, w in enumerate(pop.omega) if w > 0 and abs(eta[i]) > k * w and names[i] not in at_bound]
    if far:
        notes.append("fitted " + ", ".join(far) + f" more than {k:g} prior SDs from the population: "
                     "the patient is unlike the model's cohort")
    converged = bool(res.success) and not at_bound and bool(np.all(np.isfinite(eta)))
    return Fit(pop, regimen, eta, cov, float(res.fun), converged, int(post.sum()), at_bound, bad, baseline_from,
               tuple(notes))


def posterior_predict(fit: Fit, regimen: Regimen | None = None, times_h: Array | None = None,
                      n: int | None = None, seed: int = 0, level: float | None = None,
                      kb: KnowledgeBase | None = None) -> Prediction:
    """Course under ``regimen`` (default: the fitted one) with the patient's posterior: MAP and band."""
    kb = kb or load()
    reg = regimen or fit.regimen
    validate_regimen(reg, kb)
    times = time_grid(reg, kb=kb) if times_h is None else np.asarray(times_h, dtype=np.float64)
    n = int(kb.value("pk_mc_samples")) if n is None else n
    level = kb.value("pk_interval_level") if level is None else level
    rng = np.random.default_rng(seed)
    etas = rng.multivariate_normal(fit.eta, fit.cov, size=n, method="eigh")
    # samples outside the searched bound are not explored by the fit: keep them within it
    bound = kb.value("pk_fit_bound_sd") * fit.pop.omega
    etas = np.clip(etas, -bound, bound)
    return band(fit.pop, reg, times, etas, level, typical_eta=fit.eta)
