"""Typed output of an assessment: what `mgaki assess --format json` prints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from mgaki.knowledge.schema import Source
from mgaki.units import convert, normalize_unit

Severity = Literal["info", "warning", "critical"]

FINDING_CODES: dict[str, str] = {
    "hypomagnesemia": "Serum Mg below the reference range (graded by CTCAE v5)",
    "hypermagnesemia": "Serum Mg above the reference range (graded; toxicity levels)",
    "possible_mg_depletion": "Serum Mg normal but total-body depletion likely (risk factors)",
    "renal_mg_wasting": "Urine indices show renal Mg wasting",
    "extrarenal_mg_loss": "Urine indices show renal conservation: extrarenal (GI/intake) loss",
    "gitelman_like_pattern": "Hypomagnesaemia, hypokalaemia, renal Mg wasting and hypocalciuria",
    "drug_mg_loss": "A current drug is a known cause of Mg loss",
    "refractory_hypokalemia_risk": "Low K with low Mg: correct Mg first",
    "mg_dependent_hypocalcemia": "Low Ca with low Mg (PTH low or inappropriately normal)",
    "neuromuscular_risk": "Mg level at which tetany, seizures or reflex loss occur",
    "arrhythmia_risk": "Low Mg with long QTc, or toxic Mg level: torsades/conduction risk",
    "aki": "KDIGO acute kidney injury",
    "mg_aki_risk": "Mg in a range a population study linked to AKI (association, not probability)",
    "monitoring_gap": "No Mg measured recently in a patient at risk",
    "renal_dose_adjustment": "Mg dose reduced or capped for kidney function",
    "hold_magnesium": "Magnesium should be held",
    "urine_index_not_interpretable": "Urine Mg indices cannot be read (low GFR, AKI, recent IV Mg or high serum Mg)",
    "urine_mg_index": "A urine Mg index read without a cause verdict (between the cut-offs, or no wasting at a "
                      "normal serum Mg)",
    "pediatric_adjustment": "Patient <18 y: adult equations, nomograms and evidence set aside; bedside Schwartz used",
    "pk_overshoot_risk": "Population PK predicts the planned doses may raise serum Mg above a toxicity level",
    "pk_prediction_unavailable": "No PK model can predict the planned doses for this patient (the reason is given)",
    "suspect_specimen": "The latest result is more likely the sample than the patient (drawn during an infusion of "
                        "the analyte, a jump not yet repeated, co-dilution): set aside, repeat the sample",
}


class Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Evidence(Out):
    source: str
    doi: str | None = None
    document: str | None = None
    verification: str

    @classmethod
    def of(cls, s: Source) -> Evidence:
        return cls(source=s.citation, doi=s.doi, document=s.document, verification=s.verification)


class Finding(Out):
    code: str
    severity: Severity
    message: str
    evidence: list[Evidence]
    data: dict[str, float | str | None] = {}


class MagnesiumResult(Out):
    value_mg_dl: float
    value_mmol_l: float
    value_meq_l: float
    reported: str
    time: str
    source_id: str
    status: Literal["low", "normal", "high"]
    grade: int
    grade_scale: str | None
    reference_range_mg_dl: tuple[float, float]
    ionized_mmol_l: float | None = None
    ionized_status: Literal["low", "normal", "high"] | None = None
    caveats: list[str] = []

    def in_other_units(self, units: tuple[str, ...] = ("mg/dL", "mmol/L", "mEq/L")) -> list[str]:
        """The value in each of ``units`` it was not reported in, once each ("0.53 mmol/L" beside "1.3 mg/dL"),
        converted from the mg/dL value (value_mmol_l is rounded to 3 places: 0.535 would print 0.54)."""
        reported = normalize_unit(self.reported.partition(" ")[2], "reported magnesium unit")
        return [f"{convert(self.value_mg_dl, 'magnesium', 'mg/dL', u):.2f} {u}" for u in units
                if normalize_unit(u) != reported]


class Baseline(Out):
    value_mg_dl: float | None
    method: str
    time: str | None = None  # the lowest value's time, or the latest value of a median
    rule: str | None = None  # the baseline rule (kidney.yaml baseline_rules)
    n_values: int | None = None  # values behind it (a median's count)


class KidneyResult(Out):
    aki_stage: int
    criterion: str | None
    onset: str | None
    current_stage: int
    baseline: Baseline
    creatinine_mg_dl: float | None
    creatinine_umol_l: float | None
    egfr: float | None
    egfr_note: str | None
    crcl: float | None
    crcl_note: str | None
    kinetic_egfr: float | None
    rrt: bool
    status: str | None = None  # set when KDIGO staging does not apply (maintenance dialysis), in words
    maintenance_dialysis: list[str] = []  # what showed maintenance dialysis, each naming its source
    uo_weight_kg: float | None = None  # the weight urine output was staged with (engine.kidney.choose_weight)
    uo_weight_source: str | None = None
    uo_weights_rejected: list[str] = []  # weights set aside, each with its reason


class Dose(Out):
    label: str
    route: str
    g_mgso4: float | None
    mmol: float
    meq: float
    g_mgso4_max: float | None = None
    duration_h: float | None = None
    duration_max_h: float | None = None
    rate_g_per_h: float | None = None
    repeats: int = 1
    interval_h: float | None = None
    note: str | None = None
    per_hour: bool = False  # g_mgso4/mmol/meq are per hour (a continuous infusion)


class PkPrediction(Out):
    """Predicted serum Mg under the plan's IV doses (population PK, mgaki.pk): typical course and risk."""

    model: str
    model_source: str
    baseline_mg_dl: float
    peak_mg_dl: float
    peak_time_h: float
    peak_interval_mg_dl: tuple[float, float] | None
    level: float | None
    trough_mg_dl: float  # lowest level after the first dose ends, within the horizon
    at_recheck_mg_dl: float | None
    horizon_h: float
    toxicity_mg_dl: float
    p_peak_above_toxicity: float | None
    overshoot: bool
    notes: list[str] = []
    population: str = ""  # who the model was built in (every PK output names it)
    context: str | None = None  # pk.yaml target/harm context (eclampsia, repletion)
    target_mg_dl: tuple[float, float] | None = None
    target_at_h: float | None = None
    p_target: float | None = None  # P(inside the target range at target_at_h)
    toxicity_id: str | None = None
    p_harm_upper_95: float | None = None  # 95% upper bound of p_peak_above_toxicity (never a bare 0%)
    samples: int | None = None


class Plan(Out):
    action: Literal["replete", "prevent", "emergency", "hold", "none"]
    regimen_id: str | None
    regimen: str | None
    doses: list[Dose]
    total_g_mgso4_24h: float | None
    adjustments: list[str]
    recheck_in_h: float | None
    recheck: str | None
    evidence_strength: str | None
    evidence: list[Evidence]
    alternatives: list[str] = []
    prediction_unavailable: str | None = None  # why mgaki.pk gave no number for this plan (never a 0% risk)
    prediction: PkPrediction | None = None


class Assessment(Out):
    patient_id: str
    as_of: str | None
    contexts: list[str]
    magnesium: MagnesiumResult | None
    kidney: KidneyResult
    findings: list[Finding]
    plan: Plan
    warnings: list[str]
    disclaimer: str
    knowledge_version: str
