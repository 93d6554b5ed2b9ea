"""A pk.yaml model made numeric: typical values after covariates, and the log-normal etas around them.

Parameters are vectorised: every function takes etas of shape (..., n_eta) and returns
arrays of the leading shape, so Monte Carlo samples and MAP iterations share one code path.
The last eta is the endogenous baseline's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mgaki.errors import InputError, KnowledgeError
from mgaki.knowledge import KnowledgeBase, load
from mgaki.knowledge.schema import PkModel
from mgaki.units import convert

__all__ = ["Covariates", "PopModel", "population"]

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Covariates:
    weight_kg: float | None = None
    crcl_ml_min: float | None = None


@dataclass(frozen=True)
class PopModel:
    """One patient's prior: typical values after covariates, eta SDs, baseline and residual error."""

    spec: PkModel
    names: tuple[str, ...]  # parameter order: cl, v1 (, q, v2)
    typical: Array  # (p,) after covariates
    omega: Array  # (p + 1,) SD of each eta on the log scale; last = baseline
    baseline_mmol_l: float  # prior mean of the endogenous baseline
    prop_sd: float
    add_sd_mmol_l: float
    notes: tuple[str, ...]

    @property
    def n_eta(self) -> int:
        return len(self.names) + 1

    def params(self, eta: Array) -> dict[str, Array]:
        """Individual parameters for etas of shape (..., n_eta)."""
        eta = np.asarray(eta, dtype=np.float64)
        vals = self.typical * np.exp(eta[..., : len(self.names)])
        out = {n: vals[..., i] for i, n in enumerate(self.names)}
        out["baseline"] = self.baseline_mmol_l * np.exp(eta[..., len(self.names)])
        return out


def _cv_to_omega(cv_percent: float) -> float:
    """SD of a log-normal eta with this CV (exact: omega^2 = ln(1 + CV^2))."""
    return float(np.sqrt(np.log1p((cv_percent / 100.0) ** 2)))


def population(model: PkModel | str | None = None, covariates: Covariates | None = None,
               baseline_mg_dl: float | None = None, kb: KnowledgeBase | None = None,
               allow_unapplied: bool = False) -> PopModel:
    """The prior for one patient: typical values scaled by weight and CrCl (pk.yaml covariates).

    ``baseline_mg_dl`` (the patient's pre-dose serum Mg) replaces the population baseline as the
    prior mean. A model marked ``applied: false`` is refused unless ``allow_unapplied`` (tests).
    """
    kb = kb or load()
    spec = model if isinstance(model, PkModel) else kb.pk_model(model)
    if not spec.applied and not allow_unapplied:
        raise KnowledgeError(f"pk model {spec.id} is not applied: {spec.not_applied_reason}")
    cov = covariates or Covariates()
    names = tuple(p.id for p in sorted(spec.parameters, key=lambda p: ("cl", "v1", "q", "v2").index(p.id)))
    typical = np.array([next(p.value for p in spec.parameters if p.id == n) for n in names])
    notes: list[str] = []
    cap = kb.value("pk_crcl_cap")
    for c in spec.covariates:
        i = names.index(c.parameter)
        if c.kind == "weight" and c.exponent is not None:
            if cov.weight_kg is None:
                notes.append(f"no weight: {c.parameter} not scaled by weight")
                continue
            if cov.weight_kg <= 0:
                raise InputError("weight", f"weight must be positive, got {cov.weight_kg:g} kg")
            typical[i] *= (cov.weight_kg / c.reference) ** c.exponent
        elif c.kind == "renal" and c.renal_fraction is not None:
            if cov.crcl_ml_min is None:
                notes.append("no CrCl: clearance not scaled to kidney function (population value)")
                continue
            if cov.crcl_ml_min < 0:
                raise InputError("crcl", f"CrCl must not be negative, got {cov.crcl_ml_min:g} mL/min")
            ratio = min(cov.crcl_ml_min, cap) / c.reference
            typical[i] *= 1.0 - c.renal_fraction + c.renal_fraction * ratio
    omega = np.zeros(len(names) + 1)
    for v in spec.iiv:
        omega[names.index(v.parameter)] = _cv_to_omega(v.cv_percent)
    omega[-1] = _cv_to_omega(spec.baseline.cv_percent)
    base = convert(spec.baseline.value, "magnesium", spec.baseline.unit, "mmol/L")
    if baseline_mg_dl is not None:
        if baseline_mg_dl <= 0:
            raise InputError("baseline", f"baseline serum Mg must be positive, got {baseline_mg_dl:g} mg/dL")
        base = convert(baseline_mg_dl, "magnesium", "mg/dL", "mmol/L")
    return PopModel(spec=spec, names=names, typical=typical, omega=omega, baseline_mmol_l=base,
                    prop_sd=spec.residual.proportional_cv_percent / 100.0,
                    add_sd_mmol_l=spec.residual.additive_mmol_l, notes=tuple(notes))
