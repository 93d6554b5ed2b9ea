"""What a study run returns (``StudyResult``): read by the report and written by the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mgaki.research import stats
from mgaki.research._config import StudyConfig
from mgaki.research.cohort import StudyCohort
from mgaki.research.predict import PredictionResult

__all__ = ["StudyResult"]


@dataclass
class StudyResult:
    config: StudyConfig
    cohort: StudyCohort
    table1_html: str
    crude: dict[str, stats.BandFit]  # by outcome
    adjusted: dict[str, stats.BandFit]
    spline: stats.SplineResult
    rocs: list[stats.RocResult]
    cox: pd.DataFrame
    cox_notes: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    prediction: PredictionResult | None = None
    included: pd.DataFrame | None = None  # included vs excluded admissions (stats.compare_included)
    censoring: dict[str, Any] = field(default_factory=dict)  # IPCW notes and complete-case fits of akd/over-48h
    sensitivity: dict[str, stats.BandFit] = field(default_factory=dict)  # the other outcome definition
    cox_continuous: pd.DataFrame | None = None  # current Mg distance below/above the range, per 0.1 mg/dL
    competing: dict[str, Any] = field(default_factory=dict)  # cause-specific HRs, cumulative incidence by band
    trials: list[Any] = field(default_factory=list)  # target_trial.TrialResult: all, then each population

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest: n, events, band ORs of the primary outcome, spline test, AUCs."""
        o = self.config.primary_outcome
        f = self.cohort.frame
        return {
            "n": len(f), "admissions": self.cohort.all_admissions,
            "events": {k: int(f[k].astype("Float64").fillna(0).sum()) for k in self.config.outcomes},
            "flow": [s.__dict__ for s in self.cohort.flow],
            "primary_outcome": o,
            "crude": _records(self.crude[o].table), "adjusted": _records(self.adjusted[o].table),
            "adjusted_for": self.adjusted[o].adjusted_for,
            "spline": {"knots": self.spline.knots, "lr_stat": self.spline.lr_stat, "df": self.spline.lr_df,
                       "p_nonlinear": self.spline.p_nonlinear},
            # a 'high' ROC ranks a model score (the U-shaped spline risk), not Mg: its cut-off has no Mg unit
            "roc": [{"predictor": r.name, "auc": r.auc, "auc_ci": r.auc_ci,
                     "cutoff": r.cutoff if r.direction == "low" else None,
                     "sensitivity": r.sensitivity, "specificity": r.specificity} for r in self.rocs],
            "cox": _records(self.cox), "seconds": self.seconds, "notes": self.notes,
            "prediction": self.prediction.summary() if self.prediction else None,
            "outcome_definition": self.config.outcome_definition,
            "sensitivity": {k: {"events": int(f[f"sens_{k}"].astype("Float64").fillna(0).sum()),
                                "adjusted": _records(v.table), "notes": v.notes}
                            for k, v in self.sensitivity.items()},
            "cox_continuous": _records(self.cox_continuous) if self.cox_continuous is not None else [],
            "competing": {"cause_specific": _records(self.competing["cause_specific"]),
                          "cif": _records(self.competing["cif"])} if self.competing else None,
            "censoring": {k: v for k, v in self.censoring.items() if isinstance(v, str)},
            "target_trial": [t.summary() for t in self.trials],
        }


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
            for r in df.to_dict("records")]
