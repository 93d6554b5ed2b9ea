"""Pydantic schema of the knowledge files: every entry must carry its source.

The files under ``data/`` are the clinical content; this module only says
what shape they must have, so a typo or an uncited number fails at load time
rather than at the bedside.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

Verification = Literal["V", "S", "U", "design"]
"""V read in the primary source; S secondary only; U unverified; design = an
engineering choice of mgaki, stated as such."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(Strict):
    citation: str
    doi: str | None = None
    document: str | None = None
    verification: Verification
    note: str | None = None

    @model_validator(mode="after")
    def _has_locator(self) -> Source:
        if not (self.doi or self.document):
            raise ValueError(f"source {self.citation!r} needs a doi or a document")
        return self


class Cited(Strict):
    source: Source


# --- units -----------------------------------------------------------------

UnitKind = Literal["mass", "substance", "equivalent", "plain", "per_weight"]
"""mass / substance / equivalent: concentrations (or amounts) converted through molar mass and
valence; plain: no chemistry (volume, weight, time, g of a salt); per_weight: a dose per kg."""


class UnitDef(Cited):
    ucum: str
    pint: str
    kind: UnitKind
    aliases: tuple[str, ...] = ()
    display: str | None = None  # how people write it when that is not the UCUM code (meq -> mEq)


class Analyte(Cited):
    id: str
    name: str
    molar_mass_g_per_mol: float | None = None
    valence: int | None = None
    canonical_unit: str
    plausible_min: float
    plausible_max: float
    plausibility_source: Source


class UnitsFile(Strict):
    version: str
    units: tuple[UnitDef, ...]
    analytes: tuple[Analyte, ...]
    # when a record can have happened: the time window of events.normalize (docs/knowledge.md#plausibility)
    plausibility: tuple[Threshold, ...] = ()


# --- codes -----------------------------------------------------------------


class CodeMap(Cited):
    system: str
    code: str
    analyte: str
    display: str
    specimen: str = "serum"


class CodesFile(Strict):
    version: str
    observations: tuple[CodeMap, ...]
    rrt_procedures: tuple[CodeMap, ...]
    orderables: tuple[CodeMap, ...] = ()  # lab tests a CDS card may suggest ordering (ServiceRequest.code)


# --- magnesium status --------------------------------------------------------


class Range(Cited):
    low: float
    high: float
    unit: str


class GradeBand(Strict):
    grade: int
    lower: float | None = None  # inclusive lower bound, None = unbounded
    upper: float | None = None  # exclusive upper bound, None = unbounded
    label: str


class GradeScale(Cited):
    id: str
    direction: Literal["low", "high"]
    unit: str
    bands: tuple[GradeBand, ...]


class Threshold(Cited):
    id: str
    value: float
    unit: str
    meaning: str


class MagnesiumFile(Strict):
    version: str
    high_risk_contexts: tuple[str, ...]
    high_risk_source: Source
    reference_range: Range
    ionized_reference_range: Range
    grades: tuple[GradeScale, ...]
    thresholds: tuple[Threshold, ...]
    depletion_risk_conditions: tuple[ConditionRisk, ...]


class ConditionRisk(Cited):
    id: str
    label: str
    keywords: tuple[str, ...]
    codes: tuple[str, ...] = ()


# --- electrolytes, urine -----------------------------------------------------


class CurrentWindow(Cited):
    """How old a result of ``analyte`` may be and still describe the patient now (bedside work-up)."""

    analyte: str
    hours: float
    why: str


class ElectrolytesFile(Strict):
    version: str
    ranges: dict[str, Range]
    thresholds: tuple[Threshold, ...]
    current_within: tuple[CurrentWindow, ...] = ()


class UrineFile(Strict):
    version: str
    thresholds: tuple[Threshold, ...]


# --- drugs -------------------------------------------------------------------


class Drug(Cited):
    ingredient: str
    drug_class: str
    mechanism: str
    effect: Literal["renal_wasting", "gi_loss", "shift", "nephrotoxic", "magnesium_source"]
    rxcui: str | None = None
    rxcui_verification: Verification | None = None
    synonyms: tuple[str, ...] = ()
    nephrotoxic: bool = False
    salt: str | None = None  # regimens.yaml salt id: turns a recorded dose into mmol of Mg
    context: str | None = None  # regimen context a new order of it opens (cisplatin -> the preload regimen)


MgState = Literal["low", "unknown"]


class DrugClass(Cited):
    """A class of Mg-lowering drugs whose new orders the CDS order hooks check against serum Mg."""

    id: str
    label: str
    drug_classes: tuple[str, ...]  # Drug.drug_class values that belong to the class
    name_pattern: str | None = None  # regex for members not listed as ingredients (whole word, lower case)
    reason: str  # why an order of the class matters in a low-Mg patient: the card's text
    card_when: tuple[MgState, ...] = ("low", "unknown")  # "unknown": info card suggesting a Mg level


class DrugsFile(Strict):
    version: str
    drugs: tuple[Drug, ...]
    classes: tuple[DrugClass, ...] = ()

    @model_validator(mode="after")
    def _classes_name_known_drugs(self) -> DrugsFile:
        import re

        known = {d.drug_class for d in self.drugs}
        claimed = [name for c in self.classes for name in c.drug_classes]
        twice = sorted({n for n in claimed if claimed.count(n) > 1})
        if twice:
            raise ValueError(f"drug_class values in more than one class: {twice}")
        for c in self.classes:
            missing = sorted(set(c.drug_classes) - known)
            if missing:
                raise ValueError(f"drug class {c.id!r} names drug_class values no drug has: {missing}")
            if c.name_pattern:
                try:
                    re.compile(c.name_pattern)
                except re.error as exc:
                    raise ValueError(f"drug class {c.id!r}: name_pattern is not a regex: {exc}") from exc
        return self


# --- evidence ----------------------------------------------------------------


class RiskRegion(Strict):
    """Mg values, in the primary study's own unit, in which it found higher risk.

    Bounds follow the study's wording: ``lower`` inclusive, ``upper`` exclusive,
    unless ``lower_exclusive`` / ``upper_inclusive`` say otherwise.
    """

    lower: float | None = None
    upper: float | None = None
    unit: str = "mg/dL"
    lower_exclusive: bool = False
    upper_inclusive: bool = False
    label: str
    effect: str | None = None


ExposureAnchor = Literal["admission", "icu_admission", "aki_onset", "context"]
ExposurePick = Literal["first", "last", "nearest", "median", "lowest"]


class ExposureTime(Cited):
    """When a study measured its exposure, as a rule both engines apply (engine/risk.py, the SQL
    evidence stage): the value ``pick`` selects among the patient's results between ``from_h`` and
    ``to_h`` hours from the ``anchor`` (``to_h`` None: to the end of the stay, or now)."""

    id: str
    meaning: str
    anchor: ExposureAnchor  # context: the time the study's context (e.g. the operation) was recorded
    pick: ExposurePick  # nearest: closest to the anchor (earlier on a tie)
    from_h: float = 0.0
    to_h: float | None = None

    @model_validator(mode="after")
    def _window(self) -> ExposureTime:
        if self.to_h is not None and self.to_h < self.from_h:
            raise ValueError(f"exposure time {self.id}: to_h {self.to_h} is before from_h {self.from_h}")
        return self


class Study(Cited):
    id: str
    population: str
    contexts: tuple[str, ...]
    design: str
    n: int
    exposure: str
    outcome: str
    direction: Literal["low", "high", "u_shaped"]
    risk_regions: tuple[RiskRegion, ...]
    finding: str
    primary_unit_cutoff: str | None = None
    review_says: str | None = None
    correction: str | None = None
    analyte: str = "magnesium"
    # when the study measured Mg (an exposure_times id), as its abstract or paper says (exposure_time_source)
    exposure_time: str | None = None
    exposure_time_source: Source | None = None
    requires_aki: bool = False
    min_age_years: float | None = None  # the study's population was this old or older
    not_in_contexts: tuple[str, ...] = ()  # contexts in which its association does not hold
    in_review_table1: bool = True
    # the study's full exposure categories (research analytics, mgaki.research), and its reference category
    exposure_bands: tuple[RiskRegion, ...] = ()
    reference_band: str | None = None
    applied: bool = True
    not_applied_reason: str | None = None

    @model_validator(mode="after")
    def _applied_only_if_checked(self) -> Study:
        if self.applied and self.source.verification not in ("V", "S"):
            raise ValueError(f"study {self.id}: an unverified cut-off must not be applied")
        if not self.applied and not self.not_applied_reason:
            raise ValueError(f"study {self.id}: say why it is not applied")
        if self.exposure_time is not None and self.exposure_time_source is None:
            raise ValueError(f"study {self.id}: cite where its exposure time ({self.exposure_time}) was read")
        if self.applied and (self.exposure_time is None or self.exposure_time_source is None
                             or self.exposure_time_source.verification not in ("V", "S")):
            raise ValueError(f"study {self.id}: an applied study needs its exposure time, read in the source (V/S)")
        if self.reference_band is not None and self.reference_band not in {b.label for b in self.exposure_bands}:
            raise ValueError(f"study {self.id}: reference_band {self.reference_band!r} is not an exposure band")
        return self


class EvidenceFile(Strict):
    version: str
    exposure_times: tuple[ExposureTime, ...]
    studies: tuple[Study, ...]

    @model_validator(mode="after")
    def _known_exposure_times(self) -> EvidenceFile:
        known = {e.id for e in self.exposure_times}
        for s in self.studies:
            if s.exposure_time is not None and s.exposure_time not in known:
                raise ValueError(f"study {s.id}: exposure_time {s.exposure_time!r} is not one of {sorted(known)}")
        return self

    def exposure(self, study: Study) -> ExposureTime:
        """The exposure time rule of a study (applied studies always have one)."""
        return next(e for e in self.exposure_times if e.id == study.exposure_time)


# --- regimens ----------------------------------------------------------------


class Salt(Cited):
    id: str
    name: str
    molar_mass_g_per_mol: float
    mg_per_formula_unit: int


class Limit(Cited):
    id: str
    value: float
    unit: str
    meaning: str
    applies_to: str = "all"


class Step(Strict):
    """One dose: amount of salt, over how long, how many times, how often."""

    amount: float
    amount_max: float | None = None  # the protocol gives a range: amount-amount_max
    amount_unit: Literal["g", "mmol", "meq", "mg/kg", "g/h", "mg/kg/h"]
    salt: str = "magnesium_sulfate_heptahydrate"
    route: Literal["iv", "oral", "im"]
    duration_h: float | None = None
    duration_max_h: float | None = None
    repeats: int = 1
    interval_h: float | None = None
    duration_from: Literal["operation"] | None = None  # duration_h is a default the caller may override
    note: str | None = None


Population = Literal["adult", "pediatric", "any"]
"""Who a dosing protocol was written for; adult protocols are never used for a child."""


class Tier(Strict):
    """A nomogram row: serum Mg in [lower, upper) of the nomogram's unit."""

    lower: float | None = None
    upper: float | None = None
    upper_inclusive: bool = False
    steps: tuple[Step, ...]
    recheck_h: float | None = None
    action: str


class Nomogram(Cited):
    id: str
    name: str
    version: str
    unit: str
    setting: str
    exclusions: tuple[str, ...] = ()
    tiers: tuple[Tier, ...]
    renal_rule: str
    population: Population = "adult"


class Regimen(Cited):
    id: str
    name: str
    purpose: Literal["emergency", "aki_prevention", "treatment"]
    contexts: tuple[str, ...]
    steps: tuple[Step, ...]
    evidence_strength: Literal["guideline", "label", "rct", "pilot_rct", "observational", "expert"]
    target_mg_dl: float | None = None
    therapeutic_range: Range | None = None  # serum Mg the regimen aims for: no hypermagnesaemia hold inside it
    population: Population = "adult"
    requires_status: Literal["any", "low", "not_low"] = "any"
    exclude_mg_at_or_below_mg_dl: float | None = None
    exclude_creatinine_at_or_above_mg_dl: float | None = None
    jurisdiction: Literal["all", "us", "uk"] = "all"
    recheck_h: float | None = None
    note: str | None = None
    review_says: str | None = None
    correction: str | None = None


class RenalRule(Cited):
    """A kidney-function rule; ``when`` is the text, the two criteria fields make it computable."""

    id: str
    when: str
    action: Literal["reduce", "hold", "cap"]
    factor: float | None = None
    meaning: str
    clearance_below_ml_min: float | None = None  # met when eGFR or CrCl is below this
    aki_stage_at_least: int | None = None  # met when the KDIGO AKI stage is at least this
    limit_id: str | None = None  # action cap: the regimens.yaml limit that caps the dose

    def met_by(self, egfr: float | None = None, crcl: float | None = None, aki_stage: int = 0) -> bool:
        """Whether a patient's kidney function meets the rule's computable criteria (either suffices)."""
        low = self.clearance_below_ml_min
        by_clearance = low is not None and any(x is not None and x < low for x in (egfr, crcl))
        by_aki = self.aki_stage_at_least is not None and aki_stage >= self.aki_stage_at_least
        return by_clearance or by_aki


class RegimensFile(Strict):
    version: str
    salts: tuple[Salt, ...]
    limits: tuple[Limit, ...]
    nomograms: tuple[Nomogram, ...]
    regimens: tuple[Regimen, ...]
    renal_rules: tuple[RenalRule, ...]


# --- kidney ------------------------------------------------------------------


class Coefficient(Cited):
    id: str
    value: float
    meaning: str


class DialysisCode(Cited):
    """A code that records end-stage kidney disease or dependence on maintenance dialysis."""

    system: str  # FHIR system URI (ICD-9-CM, ICD-10-CM, SNOMED CT); dots in ICD codes are optional in data
    code: str
    display: str
    meaning: Literal["eskd", "dialysis_dependence", "dialysis_encounter"]


class MaintenanceDialysis(Cited):
    """Maintenance dialysis (ESKD): KDIGO AKI staging does not apply (docs/kdigo.md#maintenance-dialysis)."""

    context: str  # the clinical context adapters record for it (contexts table, --context)
    status: str  # the status every output shows instead of a KDIGO stage
    codes: tuple[DialysisCode, ...]
    rrt_lookback_days: float  # an RRT session outside hospital this long before admission: chronic dialysis
    rrt_lookback_source: Source


BaselineRuleId = Literal["nhs_england", "kdigo_7day", "outpatient_median"]


class BaselineRule(Cited):
    """How the reference creatinine of KDIGO's ratio criterion is chosen (docs/kdigo.md#baseline)."""

    id: BaselineRuleId
    name: str
    meaning: str


class KidneyFile(Strict):
    version: str
    kdigo: tuple[Threshold, ...]
    maintenance_dialysis: MaintenanceDialysis
    baseline_rules: tuple[BaselineRule, ...]
    default_baseline_rule: BaselineRuleId

    @model_validator(mode="after")
    def _default_rule_listed(self) -> KidneyFile:
        if self.default_baseline_rule not in {r.id for r in self.baseline_rules}:
            raise ValueError(f"default_baseline_rule {self.default_baseline_rule!r} is not in baseline_rules")
        return self
    ckd_epi_2021: tuple[Coefficient, ...]
    cockcroft_gault: tuple[Coefficient, ...]
    kinetic_gfr: tuple[Coefficient, ...]
    schwartz_bedside: tuple[Coefficient, ...]


SeverityLevelName = Literal["info", "warning", "critical"]


class SeverityLevel(Strict):
    """What a severity asks of the clinician, and how fast (issue 13 point 9)."""

    level: SeverityLevelName
    meaning: str


class SeverityStep(Strict):
    at_least: float  # the measure (AKI stage, CTCAE grade) reaches this ...
    severity: SeverityLevelName  # ... then this severity, unless a higher step is reached


class SeverityRule(Cited):
    """The severity of alert kinds and bedside findings, from what the clinician must do."""

    id: str
    kinds: tuple[str, ...]  # surveillance alert kinds and bedside finding codes it rates
    by: Literal["none", "aki_stage", "mg_grade"]  # the measure the steps read ('none': the first step)
    steps: tuple[SeverityStep, ...]
    action: str  # what the clinician must do, and how fast, at each step (docs/surveillance.md#severity)

    @model_validator(mode="after")
    def _ordered(self) -> SeverityRule:
        lows = [s.at_least for s in self.steps]
        if not lows or lows != sorted(set(lows)):
            raise ValueError(f"severity rule {self.id!r}: steps must be non-empty with rising at_least")
        return self

    def of(self, measure: float | None) -> SeverityLevelName:
        """The severity of a measure (None or below every step: the first step's severity)."""
        sev = self.steps[0].severity
        for s in self.steps:
            if measure is not None and measure >= s.at_least:
                sev = s.severity
        return sev


class AlertRule(Cited):
    """One surveillance alert kind: when it fires once, and what silences repeats.

    Its severity is not here: ``SurveillanceFile.severity`` rates every kind by what the clinician must do."""

    id: str
    fires_when: str
    once_per: str  # the de-duplication key, in words (documented in docs/surveillance.md)
    suppress_hours: float = 0.0  # no repeat of this kind for the encounter within this time


class InfusionRule(Cited):
    """A sample drawn during, or shortly after, an infusion of the analyte it measures (issue 13 point 6)."""

    id: str
    analyte: str
    ingredients: tuple[str, ...]  # drugs.yaml ingredients that carry the analyte
    after_hours: float  # suspect from the infusion's start to this long after its end
    assumed_hours: float  # the infusion's length when its record has no end
    max_infusion_hours: float  # a longer (continuous) infusion is monitored during it on purpose: not suspect
    min_rise: float = 0.0  # suspect only if above the previous value by more than this (infusate reads high)


class DeltaRule(Cited):
    """A jump from the previous value (within ``within_hours``, no RRT between) that returns on the next value
    (also within ``within_hours``)."""

    id: str
    analyte: str
    direction: Literal["rise", "fall", "both"]
    abs_change: float | None = None  # |change| at least this (canonical unit) ...
    rel_change: float | None = None  # ... and |change| / previous at least this
    unit: str
    within_hours: float

    @model_validator(mode="after")
    def _has_a_size(self) -> DeltaRule:
        if self.abs_change is None and self.rel_change is None:
            raise ValueError(f"delta rule {self.id!r} needs abs_change or rel_change")
        return self


class CoDilutionRule(Cited):
    """Several analytes of one draw falling together: a sample diluted by an infusion line."""

    id: str
    analytes: tuple[str, ...]
    min_analytes: int  # at least this many of them, drawn at the same time, ...
    rel_fall: float  # ... each at least this fraction below its previous value ...
    within_hours: float  # ... drawn at most this long before (and no RRT in that time: dialysis lowers them)


class SpecimenRules(Strict):
    infusion: tuple[InfusionRule, ...]
    delta: tuple[DeltaRule, ...]
    co_dilution: tuple[CoDilutionRule, ...]

    @property
    def analytes(self) -> list[str]:
        """Every analyte a rule reads, sorted."""
        return sorted({r.analyte for r in self.infusion} | {r.analyte for r in self.delta}
                      | {a for c in self.co_dilution for a in c.analytes})

    def source(self, rule_id: str) -> Source:
        rules: tuple[InfusionRule | DeltaRule | CoDilutionRule, ...] = (*self.infusion, *self.delta,
                                                                         *self.co_dilution)
        return next(r.source for r in rules if r.id == rule_id)


class SurveillanceFile(Strict):
    version: str
    parameters: tuple[Threshold, ...]
    alerts: tuple[AlertRule, ...]
    severity_levels: tuple[SeverityLevel, ...]
    severity: tuple[SeverityRule, ...]
    specimen: SpecimenRules

    @model_validator(mode="after")
    def _every_alert_rated_once(self) -> SurveillanceFile:
        seen: dict[str, str] = {}
        for r in self.severity:
            for k in r.kinds:
                if k in seen:
                    raise ValueError(f"kind {k!r} is rated by both {seen[k]!r} and {r.id!r}")
                seen[k] = r.id
        unrated = [a.id for a in self.alerts if a.id not in seen]
        if unrated:
            raise ValueError(f"alert kinds without a severity rule: {unrated}")
        if {lv.level for lv in self.severity_levels} != {"info", "warning", "critical"}:
            raise ValueError("severity_levels must define info, warning and critical")
        return self


# --- alert evaluation (evaluation.yaml) ------------------------------------------

OutcomeId = Literal["lab_to_action", "mg_in_range_24h", "mg_out_of_range_24h", "aki_progression", "rrt", "death"]


class OutcomeDef(Cited):
    """An outcome ``mgaki evaluate`` measures after each alert, from data the service already ingests."""

    id: OutcomeId
    label: str
    kind: Literal["time", "binary"]
    window_hours: float  # looked for in (alert time, alert time + window]
    meaning: str


class AlertEvaluation(Cited):
    """What an alert kind is for: the action it asks for and the outcome it exists to prevent (its PPV)."""

    kind: str  # a surveillance.yaml alert id
    label: str  # the kind in words, for clinicians
    # what the alert asks, lab-to-action counts it: a Mg dose, the end of a running Mg infusion, the next Mg
    # result, the next result of an analyte the specimen rules check (repeat), nothing the data shows (review, none)
    action: Literal["dose", "hold", "measure", "repeat", "review", "none"]
    # the outcome the alert exists to prevent: PPV = share of alerts followed by it; None for an informational
    # kind (e.g. kdigo_not_applicable) that asks for nothing, or a repeat request (what it prevents, acting on a
    # value that was the sample, leaves no trace in the data): no PPV
    target: OutcomeId | None = None
    target_why: str


class OverrideReason(Cited):
    """A coded reason a clinician gives for not following a card (CDS Hooks feedback ``overrideReason``)."""

    code: str
    display: str


class PublishedTrial(Cited):
    """A published trial of alerts, quoted in the evaluation report for scale."""

    id: str
    population: str
    n: int
    finding: str


class EvaluationFile(Strict):
    version: str
    override_system: str  # the code system of the override reasons the cards offer
    outcomes: tuple[OutcomeDef, ...]
    alerts: tuple[AlertEvaluation, ...]
    override_reasons: tuple[OverrideReason, ...]
    trials: tuple[PublishedTrial, ...] = ()


# --- pharmacokinetics (pk.yaml) ------------------------------------------------

PkParameterId = Literal["cl", "v1", "q", "v2"]
PkCovariateId = Literal["weight", "creatinine", "crcl", "bmi", "furosemide", "age"]
_STRUCTURE_PARAMS: dict[str, frozenset[str]] = {
    "one_compartment": frozenset({"cl", "v1"}),
    "two_compartment": frozenset({"cl", "v1", "q", "v2"}),
}


class PkParameter(Cited):
    """A typical value: CL and Q in L/h, volumes in L."""

    id: PkParameterId
    value: float
    unit: Literal["L/h", "L"]


class PkVariability(Cited):
    """Log-normal variability of a parameter, as the study reports it: a CV% or a variance omega^2.

    ``occasion``: ``patient`` (between patients) or ``antepartum`` (an interoccasion term that applies
    only while the patient is still pregnant, Du 2019).
    """

    parameter: PkParameterId
    cv_percent: float | None = None
    omega2: float | None = None
    occasion: Literal["patient", "antepartum"] = "patient"

    @model_validator(mode="after")
    def _one_scale(self) -> PkVariability:
        if (self.cv_percent is None) == (self.omega2 is None):
            raise ValueError(f"variability of {self.parameter}: give exactly one of cv_percent and omega2")
        return self


class PkResidual(Cited):
    """Residual error: proportional + additive, on the total level or on the change from baseline."""

    proportional_cv_percent: float
    additive_mmol_l: float
    scale: Literal["total", "change_from_baseline"] = "total"


class PkBaseline(Cited):
    """Endogenous serum Mg added to the exogenous part; the prior when no pre-dose level is known."""

    value: float
    unit: str
    cv_percent: float


class PkCovariate(Cited):
    """A published covariate effect on a parameter P (x in ``unit``, reference r, effect e):

    power: P (x/r)^e; exponential: P exp(e (x - r)); linear: P (1 + e (x/r - 1));
    exp_linear: P exp(e (x/r - 1)); indicator: P (1 + e x) with x 0 or 1.
    """

    parameter: PkParameterId
    covariate: PkCovariateId
    form: Literal["power", "exponential", "linear", "exp_linear", "indicator"]
    reference: float
    unit: str
    effect: float


class PkRange(Cited):
    """The range of a covariate in the study population (outside it the model extrapolates)."""

    covariate: PkCovariateId
    low: float
    high: float
    unit: str


class PkAbsorption(Cited):
    """First-order absorption of an IM injection: rate constant and bioavailability."""

    ka_per_h: float
    f_im: float


class PkModel(Cited):
    id: str
    name: str
    structure: Literal["one_compartment", "two_compartment"]
    population: str
    population_label: str  # short: who the model was built in (printed with every prediction)
    pregnant_population: bool = True
    n: int
    parameters: tuple[PkParameter, ...]
    iiv: tuple[PkVariability, ...]
    residual: PkResidual
    baseline: PkBaseline
    covariates: tuple[PkCovariate, ...] = ()
    studied: tuple[PkRange, ...] = ()
    im_absorption: PkAbsorption | None = None
    applied: bool = True
    not_applied_reason: str | None = None

    @model_validator(mode="after")
    def _complete_and_checked(self) -> PkModel:
        need = _STRUCTURE_PARAMS[self.structure]
        have = {p.id for p in self.parameters}
        if have != need:
            raise ValueError(f"pk model {self.id}: {self.structure} needs parameters {sorted(need)}, "
                             f"has {sorted(have)}")
        if self.applied and any(p.source.verification not in ("V", "S") for p in self.parameters):
            raise ValueError(f"pk model {self.id}: a typical value that was not verified must not be applied")
        if self.applied and any(c.source.verification not in ("V", "S") for c in self.covariates):
            raise ValueError(f"pk model {self.id}: an applied model's covariates must be the published ones")
        if not self.applied and not self.not_applied_reason:
            raise ValueError(f"pk model {self.id}: say why it is not applied")
        for c in self.covariates:
            if c.covariate not in {r.covariate for r in self.studied} and self.applied:
                raise ValueError(f"pk model {self.id}: covariate {c.covariate} needs its studied range")
        return self


class PkContext(Cited):
    """What a regimen aims for and what it must avoid: the target range and the harm threshold.

    ``target`` None: the normal serum Mg range (magnesium.yaml reference_range). ``harm_threshold_id``
    names a magnesium.yaml threshold; ``harm`` states one here (with its own source).
    """

    id: str
    name: str
    contexts: tuple[str, ...]  # assess contexts that select it
    target: Range | None = None
    harm_threshold_id: str | None = None
    harm: Threshold | None = None

    @model_validator(mode="after")
    def _one_harm(self) -> PkContext:
        if (self.harm_threshold_id is None) == (self.harm is None):
            raise ValueError(f"pk context {self.id}: give exactly one of harm_threshold_id and harm")
        return self


class PkFile(Strict):
    version: str
    default_model: str
    default_model_reason: str
    toxicity_threshold_id: str
    default_context: str
    models: tuple[PkModel, ...]
    contexts: tuple[PkContext, ...]
    settings: tuple[Threshold, ...]

    @model_validator(mode="after")
    def _default_is_applied(self) -> PkFile:
        model = next((m for m in self.models if m.id == self.default_model), None)
        if model is None or not model.applied:
            raise ValueError(f"default pk model {self.default_model!r} is missing or not applied")
        if self.default_context not in {c.id for c in self.contexts}:
            raise ValueError(f"default pk context {self.default_context!r} is missing")
        return self


MagnesiumFile.model_rebuild()

FILES: dict[str, type[Strict]] = {
    "units.yaml": UnitsFile,
    "codes.yaml": CodesFile,
    "magnesium.yaml": MagnesiumFile,
    "electrolytes.yaml": ElectrolytesFile,
    "urine.yaml": UrineFile,
    "drugs.yaml": DrugsFile,
    "evidence.yaml": EvidenceFile,
    "regimens.yaml": RegimensFile,
    "kidney.yaml": KidneyFile,
    "surveillance.yaml": SurveillanceFile,
    "pk.yaml": PkFile,
    "evaluation.yaml": EvaluationFile,
}

