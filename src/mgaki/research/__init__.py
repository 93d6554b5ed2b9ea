"""Research analytics (issue 5, SPEC C11): cohort, exposures, outcomes, statistics, report and saved models.

``load_model(path)`` loads a combined-biomarker model that `mgaki study` saved
(<out>/models/*.joblib) and scores a frame of landmark features with
``predict_proba`` (docs/research.md#saved-models).
"""

from mgaki.research._config import COVARIATES, OUTCOMES, Band, StudyConfig, bands, load_config
from mgaki.research.cohort import FlowStep, StudyCohort, build_cohort, connect_tables
from mgaki.research.predict import MODEL_FORMAT, LoadedModel, load_model

__all__ = ["COVARIATES", "MODEL_FORMAT", "OUTCOMES", "Band", "FlowStep", "LoadedModel", "StudyCohort", "StudyConfig",
           "bands", "build_cohort", "connect_tables", "load_config", "load_model"]
