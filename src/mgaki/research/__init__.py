"""Research analytics (issue 5, SPEC C11): cohort, exposures, outcomes, statistics and report."""

from mgaki.research._config import COVARIATES, OUTCOMES, Band, StudyConfig, bands, load_config
from mgaki.research.cohort import FlowStep, StudyCohort, build_cohort, connect_tables

__all__ = ["COVARIATES", "OUTCOMES", "Band", "FlowStep", "StudyCohort", "StudyConfig", "bands", "build_cohort",
           "connect_tables", "load_config"]
