"""Population pharmacokinetics of IV magnesium sulfate (C9): simulate, fit, find a dose.

Models are data (``knowledge/data/pk.yaml``); the solutions are closed-form (superposition of
exponentials), vectorised over Monte Carlo samples. Predictions are total serum Mg in mg/dL.
They support, and do not replace, clinical judgement: the encoded models come from pregnant
women and carry a renal scaling that is an assumption (docs/pk.md).
"""

from __future__ import annotations

from mgaki.pk._dosefind import DoseFinding, RenalCap, find_dose, limit_ids, renal_cap_rule, toxicity_level_mg_dl
from mgaki.pk._fit import Fit, fit_map, posterior_predict
from mgaki.pk._model import Covariates, PopModel, population
from mgaki.pk._regimen import LimitCheck, Regimen, check_limits, dose_mmol, loading_maintenance, repeated
from mgaki.pk._simulate import Prediction, concentrations, simulate, time_grid
from mgaki.pk._solve import dose_response, exponentials

__all__ = [
    "Covariates",
    "DoseFinding",
    "Fit",
    "LimitCheck",
    "PopModel",
    "Prediction",
    "Regimen",
    "RenalCap",
    "check_limits",
    "concentrations",
    "dose_mmol",
    "dose_response",
    "exponentials",
    "find_dose",
    "fit_map",
    "limit_ids",
    "loading_maintenance",
    "population",
    "posterior_predict",
    "renal_cap_rule",
    "repeated",
    "simulate",
    "time_grid",
    "toxicity_level_mg_dl",
]
