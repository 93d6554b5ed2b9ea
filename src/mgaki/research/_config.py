"""Study configuration: inclusion/exclusion, exposures, outcomes and methods, with cited defaults.

Every default is read from ``study.yaml`` (cited) or from the knowledge base by id,
so a study's config file only names what it changes; an unknown key, covariate or
outcome fails with its name rather than being ignored.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from mgaki.errors import KnowledgeError
from mgaki.knowledge import load, load_validated
from mgaki.knowledge.schema import Cited, RiskRegion, Source, Strict
from mgaki.units import normalize_unit

__all__ = ["COVARIATES", "OUTCOMES", "Band", "NegativeControl", "StudyConfig", "StudyDefaults", "TargetTrialConfig",
           "bands", "load_config", "study_defaults"]

# covariates the cohort table provides (docs/research.md#covariates)
COVARIATES = ("age", "sex", "egfr", "admission_creatinine", "icu", "context", "nephrotoxic")
# binary outcomes the cohort table provides (death: in-hospital, from the MEDS_DEATH events row)
OUTCOMES = ("aki", "aki_stage2plus", "aki_over_48h", "akd_7d", "non_recovery", "death")


class Param(Cited):
    id: str
    value: float
    unit: str
    meaning: str


class StudyDefaults(Strict):
    version: str
    params: tuple[Param, ...]
    knot_quantiles: dict[str, tuple[float, ...]]
    knot_source: Source

    def value(self, param_id: str) -> float:
        for p in self.params:
            if p.id == param_id:
                return p.value
        raise KnowledgeError(f"research/study.yaml has no parameter {param_id!r}")


@cache
def study_defaults() -> StudyDefaults:
    """The validated ``study.yaml`` (cached); KnowledgeError naming the problem if invalid."""
    return load_validated(StudyDefaults, resources.files("mgaki.research").joinpath("study.yaml"),
                          "research/study.yaml")


def _d(param_id: str) -> Any:
    return Field(default_factory=lambda: study_defaults().value(param_id))


class NegativeControl(Strict):
    """A negative-control outcome: a lab value below a threshold after time zero (treatment cannot cause it)."""

    analyte: str = "albumin"
    below: float = Field(default_factory=lambda: study_defaults().value("negative_control_albumin_below"))
    unit: str = "g/dL"


class TargetTrialConfig(Strict):
    """The emulated target trial of IV MgSO4 for hypomagnesaemia (docs/research.md#target-trial)."""

    enabled: bool = True
    grace_hours: float = _d("trial_grace_hours")
    follow_up_days: float = _d("trial_follow_up_days")
    washout_hours: float = _d("trial_washout_hours")
    treatment_drugs: tuple[str, ...] = ("magnesium sulfate",)
    treatment_routes: tuple[str | None, ...] = ("iv", None)  # no route recorded: IV MgSO4 is the in-hospital form
    weighting: Literal["ipw", "overlap"] = "ipw"
    truncate_quantile: float = _d("trial_truncate_quantile")
    covariates: tuple[str, ...] = ("age", "sex", "egfr", "mg_at_t0", "icu", "context", "nephrotoxic")
    populations: tuple[Literal["cardiac-surgery", "cisplatin", "icu"], ...] = ("cardiac-surgery", "cisplatin", "icu")
    bootstrap_reps: int = Field(default_factory=lambda: int(study_defaults().value("trial_bootstrap_reps")))
    negative_control: NegativeControl = Field(default_factory=NegativeControl)

    @field_validator("covariates")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in v if c not in (*COVARIATES, "mg_at_t0")]
        if bad:
            raise ValueError(f"unknown target-trial covariate(s) {bad}")
        return v


class StudyConfig(Strict):
    """What `mgaki study` does; defaults reproduce Cheungpasitporn 2015's design on the canonical model."""

    min_age_years: float | None = Field(default_factory=lambda: load().value("kdigo_pediatric_age_below"))
    admission_window_hours: float = _d("admission_window_hours")
    require_creatinine: bool = True
    exclude_rrt_at_entry: bool = True
    rrt_entry_hours: float = _d("rrt_entry_hours")
    rrt_prior_days: float = _d("rrt_prior_days")
    exclude_egfr_below: float | None = _d("eskd_egfr_below")
    exclude_aki_at_entry: bool = True
    band_study: str = "cheungpasitporn_2015"
    outcomes: tuple[str, ...] = OUTCOMES
    primary_outcome: str = "aki"
    # AKI by KDIGO creatinine and urine output, or creatinine only; the other one is reported as a
    # sensitivity analysis when sensitivity_outcome_definition is on (docs/research.md#outcomes)
    outcome_definition: Literal["creatinine", "creatinine+urine"] = "creatinine+urine"
    sensitivity_outcome_definition: bool = True
    min_events: int = Field(default_factory=lambda: int(study_defaults().value("min_events")))
    min_test_patients: int = Field(default_factory=lambda: int(study_defaults().value("min_test_patients")))
    covariates: tuple[str, ...] = ("age", "sex", "egfr", "icu", "context", "nephrotoxic")
    # time zero: each covariate is read in a look-back window ending at the index time (docs/research.md#time-zero)
    lookback_icu_hours: float = _d("lookback_icu_hours")
    lookback_nephrotoxic_hours: float = _d("lookback_nephrotoxic_hours")
    lookback_context_hours: float = _d("lookback_context_hours")
    lookback_creatinine_hours: float = _d("lookback_creatinine_hours")
    persistent_aki_hours: float = _d("persistent_aki_hours")
    akd_days: float = _d("akd_days")
    spline_knots: int = Field(default_factory=lambda: int(study_defaults().value("spline_knots")))
    bootstrap_reps: int = Field(default_factory=lambda: int(study_defaults().value("bootstrap_reps")))
    ci_level: float = _d("ci_level")
    seed: int = 0
    missing: Literal["complete_case"] = "complete_case"
    time_varying_cox: bool = True
    prediction: bool = True  # combined-biomarker AKI-in-48-h models (docs/research.md#prediction)
    prediction_learners: tuple[Literal["logistic", "gbm"], ...] = ("logistic", "gbm")
    prediction_threads: int | None = 1  # BLAS/OpenMP threads while fitting; None = the libraries' default
    prediction_horizon_hours: float = _d("prediction_horizon_hours")
    landmark_step_hours: float = _d("landmark_step_hours")
    landmark_max_days: float = _d("landmark_max_days")
    trend_window_hours: float = _d("trend_window_hours")
    test_share: float = _d("test_share")
    gbm_max_iter: int = Field(default_factory=lambda: int(study_defaults().value("gbm_max_iter")))
    calibration_bins: int = Field(default_factory=lambda: int(study_defaults().value("calibration_bins")))
    target_trial: TargetTrialConfig = Field(default_factory=TargetTrialConfig)

    @field_validator("covariates")
    @classmethod
    def _known_covariates(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in v if c not in COVARIATES]
        if bad:
            raise ValueError(f"unknown covariate(s) {bad}; choose from {list(COVARIATES)}")
        return v

    @field_validator("outcomes")
    @classmethod
    def _known_outcomes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in v if c not in OUTCOMES]
        if bad:
            raise ValueError(f"unknown outcome(s) {bad}; choose from {list(OUTCOMES)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        if self.primary_outcome not in self.outcomes:
            raise ValueError(f"primary_outcome {self.primary_outcome!r} is not among outcomes {list(self.outcomes)}")
        if str(self.spline_knots) not in study_defaults().knot_quantiles:
            raise ValueError(f"spline_knots must be one of {sorted(study_defaults().knot_quantiles)}")
        if not 0.5 < self.ci_level < 1.0:
            raise ValueError(f"ci_level must lie between 0.5 and 1, got {self.ci_level}")
        if not 0.05 <= self.test_share <= 0.95:
            raise ValueError(f"test_share must lie between 0.05 and 0.95, got {self.test_share}")
        if self.landmark_step_hours <= 0 or self.prediction_horizon_hours <= 0 or self.trend_window_hours <= 0:
            raise ValueError("landmark_step_hours, prediction_horizon_hours and trend_window_hours must be positive")
        bands(self.band_study)  # the study must exist and carry exposure bands
        return self

    def knot_quantiles(self) -> tuple[float, ...]:
        return study_defaults().knot_quantiles[str(self.spline_knots)]


def load_config(path: Path | None) -> StudyConfig:
    """Defaults, overridden by a YAML file's keys; errors name the file and the key."""
    if path is None:
        return StudyConfig()
    try:
        data = yaml.safe_load(path.read_text("utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KnowledgeError(f"{path}: cannot read the study config: {exc}") from exc
    if not isinstance(data, dict):
        raise KnowledgeError(f"{path}: a study config is a mapping of option: value")
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise KnowledgeError(f"{path}: invalid study config: {exc}") from exc


class Band(Strict):
    """One exposure category in mg/dL with explicit bounds (None = open)."""

    label: str
    order: int
    lower: float | None
    upper: float | None
    lower_inclusive: bool
    upper_inclusive: bool
    reference: bool


def _band(i: int, r: RiskRegion, ref: str | None) -> Band:
    canonical = load().analyte("magnesium").canonical_unit  # the unit of the cohort's Mg values
    if normalize_unit(r.unit) != canonical:
        raise KnowledgeError(f"exposure band {r.label!r}: unit {r.unit!r}, expected {canonical}")
    return Band(label=r.label, order=i, lower=r.lower, upper=r.upper, lower_inclusive=not r.lower_exclusive,
                upper_inclusive=r.upper_inclusive, reference=r.label == ref)


def bands(study_id: str) -> tuple[Band, ...]:
    """The study's exposure bands, checked to tile the Mg axis without gap or overlap."""
    study = next((s for s in load().evidence.studies if s.id == study_id), None)
    if study is None:
        raise KnowledgeError(f"band_study {study_id!r} is not a study of evidence.yaml")
    if not study.exposure_bands or study.reference_band is None:
        raise KnowledgeError(f"study {study_id!r} has no exposure_bands/reference_band in evidence.yaml")
    out = tuple(_band(i, r, study.reference_band) for i, r in enumerate(study.exposure_bands))
    if out[0].lower is not None or out[-1].upper is not None:
        raise KnowledgeError(f"{study_id}: exposure bands must start and end open")
    for a, b in pairwise(out):
        if a.upper != b.lower or a.upper_inclusive == b.lower_inclusive:
            raise KnowledgeError(f"{study_id}: bands {a.label!r} and {b.label!r} leave a gap or overlap")
    return out
