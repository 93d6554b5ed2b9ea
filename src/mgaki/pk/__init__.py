"""Population pharmacokinetics of magnesium sulfate (C9): simulate, fit, find a dose, check against data.

Models are data (``knowledge/data/pk.yaml``), each encoded with its own published covariate model;
the solutions are exact (closed form, or piecewise exact when clearance changes over time or doses
are IM), vectorised over Monte Carlo samples. Predictions are total serum Mg in mg/dL and always
name the population their model was built in (pregnant women): outside it the uncertainty is widened,
and where no model can speak (no kidney function, a child, far outside the studied range, a regimen
above the label) a clear ``OutsideModelError`` or ``InputError`` is raised, never a number.
They support, and do not replace, clinical judgement (docs/pk.md).
"""

from __future__ import annotations

from mgaki.pk._dosefind import DoseFinding, RenalCap, find_dose, limit_ids, renal_cap_rule, toxicity_level_mg_dl
from mgaki.pk._fit import Fit, Inconsistent, fit_map, posterior_predict
from mgaki.pk._model import Covariates, Dialysis, KidneyCourse, PopModel, population
from mgaki.pk._regimen import (
    LimitCheck,
    Regimen,
    check_limits,
    dose_mmol,
    loading_maintenance,
    repeated,
    validate_regimen,
)
from mgaki.pk._simulate import Prediction, concentrations, simulate, time_grid
from mgaki.pk._solve import Segment, dose_response, exponentials, piecewise_response
from mgaki.pk._targets import Risk, Targets, context_for, risk, targets

__all__ = [
    "Covariates",
    "Dialysis",
    "DoseFinding",
    "Fit",
    "Inconsistent",
    "KidneyCourse",
    "LimitCheck",
    "PopModel",
    "Prediction",
    "Regimen",
    "RenalCap",
    "Risk",
    "Segment",
    "Targets",
    "check_limits",
    "concentrations",
    "context_for",
    "dose_mmol",
    "dose_response",
    "exponentials",
    "find_dose",
    "fit_map",
    "limit_ids",
    "loading_maintenance",
    "piecewise_response",
    "population",
    "posterior_predict",
    "renal_cap_rule",
    "repeated",
    "risk",
    "simulate",
    "targets",
    "time_grid",
    "toxicity_level_mg_dl",
    "validate_regimen",
]
