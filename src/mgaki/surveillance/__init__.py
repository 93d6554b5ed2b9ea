"""Hospital-wide surveillance: KDIGO episodes, Mg trajectories, evidence flags and alerts in SQL."""

from mgaki.surveillance.pipeline import (
    OUTPUTS,
    URINE_ANALYTES,
    SurveillanceResult,
    alert_rates,
    baseline_sensitivity,
    run,
    studies_table,
    surveil,
)

__all__ = ["OUTPUTS", "URINE_ANALYTES", "SurveillanceResult", "alert_rates", "baseline_sensitivity", "run",
           "studies_table", "surveil"]
