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

UnitKind = Literal["mass", "substance", "equivalent", "plain"]


class UnitDef(Cited):
    ucum: str
    pint: str
    kind: UnitKind
    aliases: tuple[str, ...] = ()


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


class ElectrolytesFile(Strict):
    version: str
    ranges: dict[str, Range]
    thresholds: tuple[Threshold, ...]


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
    timing: str = "admission"
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
        if self.reference_band is not None and self.reference_band not in {b.label for b in self.exposure_bands}:
            raise ValueError(f"study {self.id}: reference_band {self.reference_band!r} is not an exposure band")
        return self


class EvidenceFile(Strict):
    version: str
    studies: tuple[Study, ...]


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


class KidneyFile(Strict):
    version: str
    kdigo: tuple[Threshold, ...]
    ckd_epi_2021: tuple[Coefficient, ...]
    cockcroft_gault: tuple[Coefficient, ...]
    kinetic_gfr: tuple[Coefficient, ...]
    schwartz_bedside: tuple[Coefficient, ...]


class AlertRule(Cited):
    """One surveillance alert kind: when it fires once, and what silences repeats."""

    id: str
    severity: Literal["info", "warning", "critical"]
    fires_when: str
    once_per: str  # the de-duplication key, in words (documented in docs/surveillance.md)
    suppress_hours: float = 0.0  # no repeat of this kind for the encounter within this time


class SurveillanceFile(Strict):
    version: str
    parameters: tuple[Threshold, ...]
    alerts: tuple[AlertRule, ...]


# --- pharmacokinetics (pk.yaml) ------------------------------------------------

PkParameterId = Literal["cl", "v1", "q", "v2"]
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
    """Between-patient variability of a parameter (log-normal), as the CV% the study reports."""

    parameter: PkParameterId
    cv_percent: float


class PkResidual(Cited):
    proportional_cv_percent: float
    additive_mmol_l: float


class PkBaseline(Cited):
    """Endogenous serum Mg added to the exogenous part; the prior when no pre-dose level is known."""

    value: float
    unit: str
    cv_percent: float


class PkCovariate(Cited):
    """renal: CL x (1 - f + f x CrCl/reference); weight: P x (WT/reference)^exponent."""

    parameter: PkParameterId
    kind: Literal["renal", "weight"]
    reference: float
    unit: str
    exponent: float | None = None
    renal_fraction: float | None = None


class PkModel(Cited):
    id: str
    name: str
    structure: Literal["one_compartment", "two_compartment"]
    population: str
    n: int
    parameters: tuple[PkParameter, ...]
    iiv: tuple[PkVariability, ...]
    residual: PkResidual
    baseline: PkBaseline
    covariates: tuple[PkCovariate, ...] = ()
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
        if not self.applied and not self.not_applied_reason:
            raise ValueError(f"pk model {self.id}: say why it is not applied")
        for c in self.covariates:
            if c.kind == "renal" and c.renal_fraction is None:
                raise ValueError(f"pk model {self.id}: a renal covariate needs renal_fraction")
            if c.kind == "weight" and c.exponent is None:
                raise ValueError(f"pk model {self.id}: a weight covariate needs exponent")
        return self


class PkFile(Strict):
    version: str
    default_model: str
    toxicity_threshold_id: str
    models: tuple[PkModel, ...]
    settings: tuple[Threshold, ...]

    @model_validator(mode="after")
    def _default_is_applied(self) -> PkFile:
        model = next((m for m in self.models if m.id == self.default_model), None)
        if model is None or not model.applied:
            raise ValueError(f"default pk model {self.default_model!r} is missing or not applied")
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
}

