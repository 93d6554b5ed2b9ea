"""A pk.yaml model made numeric for one patient: its own published covariates, and the etas around them.

Parameters are vectorised: every function takes etas of shape (..., n_eta) and returns arrays of the
leading shape, so Monte Carlo samples and MAP iterations share one code path. The etas are, in order,
the structural parameters (cl, v1[, q, v2]), ``f`` (a scale on the amount of every dose that reaches
the model: retention, and the uncertainty added outside the studied population), ``cld`` when the
patient is on dialysis (the dialytic Mg clearance), and last the endogenous baseline.

What a model cannot speak for is refused (``OutsideModelError``, an ``InputError``): no kidney function
without dialysis, AKI without a creatinine, a child, a covariate far beyond the studied range, a
model without a kidney covariate in a patient whose kidneys are not normal. Between the studied range
and that limit the model extrapolates and says so, and the extrapolated part of each covariate effect
is added to the uncertainty (docs/pk.md#extrapolation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from mgaki.errors import InputError, KnowledgeError, OutsideModelError
from mgaki.knowledge import KnowledgeBase, load
from mgaki.knowledge.schema import PkCovariate, PkModel, PkRange
from mgaki.pk._solve import Segment, piecewise_response
from mgaki.units import convert

__all__ = ["Covariates", "Dialysis", "KidneyCourse", "PopModel", "population"]

Array = npt.NDArray[np.float64]
_KIDNEY = ("creatinine", "crcl")


@dataclass(frozen=True)
class KidneyCourse:
    """The creatinine clearance follows over the horizon: piecewise constant from each start (h from time 0).

    Values are steady-state-equivalent serum creatinine (mg/dL): in AKI the creatinine whose steady
    state gives the kinetic GFR (``mgaki.engine.kidney.kinetic_egfr``, Chen 2013), so a model with a
    creatinine covariate sees the kidney function of each interval, not the lagging measured value.
    """

    start_h: tuple[float, ...]
    creatinine_mg_dl: tuple[float, ...]
    method: str = "kinetic eGFR (Chen 2013)"

    def __post_init__(self) -> None:
        if len(self.start_h) != len(self.creatinine_mg_dl) or not self.start_h:
            raise InputError("kidney course", "give one creatinine for every start time (at least one)")
        if any(not math.isfinite(x) for x in (*self.start_h, *self.creatinine_mg_dl)):
            raise InputError("kidney course", "times and creatinine values must be finite numbers")
        if list(self.start_h) != sorted(self.start_h):
            raise InputError("kidney course", "start times must be in order")


@dataclass(frozen=True)
class Dialysis:
    """Renal replacement: intermittent haemodialysis sessions (start h, duration h) or continuous (CRRT).

    The patient is taken as anuric (no renal Mg clearance): the safe reading when it is not known.
    """

    kind: Literal["hd", "crrt"]
    sessions_h: tuple[tuple[float, float], ...] = ()
    effluent_l_per_h: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("hd", "crrt"):
            raise InputError("dialysis", f"unknown dialysis kind {self.kind!r} (hd or crrt)")
        for s, d in self.sessions_h:
            if not (math.isfinite(s) and math.isfinite(d)) or d <= 0 or s < 0:
                raise InputError("dialysis", f"a session needs a start >= 0 and a positive duration, got {s:g}, {d:g}")
        if self.effluent_l_per_h is not None and not (0 < self.effluent_l_per_h < 20):
            raise InputError("dialysis", f"CRRT effluent must be 0-20 L/h, got {self.effluent_l_per_h:g}")


@dataclass(frozen=True)
class Covariates:
    weight_kg: float | None = None
    crcl_ml_min: float | None = None
    creatinine_mg_dl: float | None = None
    age_years: float | None = None
    pregnant: bool | None = None  # True: antepartum (the models' own population)
    bmi_kg_m2: float | None = None
    furosemide: bool | None = None
    aki: bool = False  # the patient has an AKI: kidney function must be given
    kidney_course: KidneyCourse | None = None
    dialysis: Dialysis | None = None
    retained_fraction: float | None = None  # share of each dose retained outside the model (depletion)


@dataclass(frozen=True)
class PopModel:
    """One patient's prior: typical values after covariates, eta SDs, baseline and residual error."""

    spec: PkModel
    names: tuple[str, ...]  # eta order before the baseline: cl, v1 (, q, v2), f (, cld)
    typical: Array  # (len(names),) after covariates
    omega: Array  # (len(names) + 1,) SD of each eta on the log scale; last = baseline
    baseline_mmol_l: float  # prior mean (or the measured value) of the endogenous baseline
    prop_sd: float
    add_sd_mmol_l: float
    notes: tuple[str, ...]
    residual_scale: str = "total"
    baseline_known: bool = False
    segments: tuple[Segment, ...] = (Segment(0.0),)
    ka_per_h: float | None = None
    f_im: float | None = None
    population_label: str = ""
    outside: tuple[str, ...] = field(default=())  # why the patient is outside the studied population

    @property
    def n_eta(self) -> int:
        return len(self.names) + 1

    @property
    def structural(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n in ("cl", "v1", "q", "v2"))

    @property
    def time_varying(self) -> bool:
        return len(self.segments) > 1 or any(s.dialysis or s.cl_factor != 1.0 for s in self.segments)

    def params(self, eta: Array) -> dict[str, Array]:
        """Individual parameters for etas of shape (..., n_eta)."""
        eta = np.asarray(eta, dtype=np.float64)
        vals = self.typical * np.exp(eta[..., : len(self.names)])
        out = {n: vals[..., i] for i, n in enumerate(self.names)}
        out["baseline"] = self.baseline_mmol_l * np.exp(eta[..., len(self.names)])
        if self.ka_per_h is not None and self.f_im is not None:
            out["ka"] = np.full(vals.shape[:-1], self.ka_per_h)
            out["f_im"] = np.full(vals.shape[:-1], self.f_im)
        return out

    def exogenous(self, start_h: Array, mmol: Array, duration_h: Array, im: npt.NDArray[np.bool_],
                  times_h: Array, eta: Array) -> Array:
        """Drug-derived serum Mg (mmol/L), shape (..., T), for doses (1-d arrays) and etas (..., n_eta)."""
        from mgaki.pk._solve import dose_response, exponentials

        eta = np.asarray(eta, dtype=np.float64)
        p = self.params(eta)
        amt = np.asarray(mmol, dtype=np.float64) * p["f"][..., None]  # (..., k)
        if not self.time_varying and not np.any(im):
            coef, rate = exponentials(p)
            return dose_response(coef, rate, times_h, start_h, amt, duration_h)
        lead = eta.shape[:-1]
        flat = {k: np.reshape(v, (-1,)) for k, v in p.items()}
        if im.any() and self.ka_per_h is None:
            raise OutsideModelError("route", f"pk model {self.spec.id} has no IM absorption: IM doses not modelled")
        out = piecewise_response(flat, self.segments, times_h, start_h, np.reshape(amt, (-1, amt.shape[-1])),
                                 duration_h, im)
        return np.reshape(out, (*lead, np.asarray(times_h).size))


def _cv_to_omega(cv_percent: float) -> float:
    """SD of a log-normal eta with this CV (exact: omega^2 = ln(1 + CV^2))."""
    return float(np.sqrt(np.log1p((cv_percent / 100.0) ** 2)))


def _effect(c: PkCovariate, x: float) -> float:
    """Multiplier of the covariate effect at x (in the covariate's own unit)."""
    if c.form == "power":
        return float((x / c.reference) ** c.effect)
    if c.form == "exponential":
        return float(math.exp(c.effect * (x - c.reference)))
    if c.form == "linear":
        return float(1.0 + c.effect * (x / c.reference - 1.0))
    if c.form == "exp_linear":
        return float(math.exp(c.effect * (x / c.reference - 1.0)))
    return float(1.0 + c.effect * x)  # indicator


def _range_for(spec: PkModel, covariate: str) -> PkRange | None:
    return next((r for r in spec.studied if r.covariate == covariate), None)


def _to_unit(value: float, covariate: str, unit: str) -> float:
    if covariate == "creatinine":  # carried in mg/dL; the model states its own unit (convert is 1 for mg/dL)
        return convert(value, "creatinine", "mg/dL", unit)
    return value


def _finite(where: str, x: float | None, low: float, high: float, what: str) -> None:
    if x is None:
        return
    if not (isinstance(x, int | float) and math.isfinite(x)) or not (low <= x <= high):
        raise InputError(where, f"{what} must be a number in {low:g}-{high:g}, got {x!r}")


class _Builder:
    """Collects typical values, extra uncertainty and notes while the covariates are applied."""

    def __init__(self, spec: PkModel, kb: KnowledgeBase) -> None:
        self.spec, self.kb = spec, kb
        self.names = [p.id for p in sorted(spec.parameters, key=lambda p: ("cl", "v1", "q", "v2").index(p.id))]
        self.typical = {n: next(p.value for p in spec.parameters if p.id == n) for n in self.names}
        self.extra = dict.fromkeys((*self.names, "f"), 0.0)  # extra log-SD (variances add)
        self.notes: list[str] = []
        self.outside: list[str] = []
        self.factor = kb.value("pk_extrapolation_factor")
        self.kidney_factor = kb.value("pk_extrapolation_factor_kidney")

    def add_sd(self, name: str, sd: float) -> None:
        self.extra[name] = math.sqrt(self.extra[name] ** 2 + sd ** 2)

    def check_range(self, covariate: str, x: float, label: str) -> PkRange | None:
        """Refuse x too far beyond the studied range; return the range when x is outside it (else None)."""
        r = _range_for(self.spec, covariate)
        if r is None or r.low <= x <= r.high:
            return None
        factor = self.kidney_factor if covariate in _KIDNEY else self.factor
        if x > r.high * factor or x < r.low / factor:
            raise OutsideModelError(covariate, f"{label} {x:g} {r.unit} is far outside the {r.low:g}-{r.high:g} "
                                               f"{r.unit} studied by {self.spec.id} (more than a factor "
                                               f"{factor:g} beyond it): the model is not used; measure levels")
        why = f"{label} {x:g} {r.unit} outside the studied {r.low:g}-{r.high:g}"
        if why not in self.outside:
            self.outside.append(why)
        return r

    def apply(self, c: PkCovariate, x: float | None, label: str) -> float:
        """Multiplier for covariate c at x; missing x: the reference value with the studied spread added."""
        if x is None:
            r = _range_for(self.spec, c.covariate)
            if r is not None and r.low > 0:
                # unknown covariate: the studied range taken as +-2 SD of its log (design)
                sd = abs(_effect(c, r.high) / _effect(c, r.low))
                self.add_sd(c.parameter, abs(math.log(sd)) / 4.0)
                note = (f"no {label}: the reference {c.reference:g} {c.unit} assumed, uncertainty widened over "
                        f"the studied {r.low:g}-{r.high:g} {c.unit}")
            else:
                note = f"no {label}: the reference {c.reference:g} {c.unit} assumed"
            if note not in self.notes:
                self.notes.append(note)
            return 1.0
        xu = _to_unit(x, c.covariate, c.unit)
        r = self.check_range(c.covariate, xu, label)
        eff = _effect(c, xu)
        if eff <= 0 or not math.isfinite(eff):
            raise OutsideModelError(c.covariate, f"{label} {x:g} gives a non-positive {c.parameter} in "
                                                 f"{self.spec.id}'s published covariate model")
        if r is not None:
            edge = min(max(xu, r.low), r.high)
            self.add_sd(c.parameter, abs(math.log(eff / _effect(c, edge))))
        return eff


def _covariate_value(cov: Covariates, name: str) -> tuple[float | None, str]:
    return {
        "weight": (cov.weight_kg, "weight"),
        "creatinine": (cov.creatinine_mg_dl, "serum creatinine"),
        "crcl": (cov.crcl_ml_min, "CrCl"),
        "bmi": (cov.bmi_kg_m2, "BMI"),
        "furosemide": (None if cov.furosemide is None else float(cov.furosemide), "furosemide"),
        "age": (cov.age_years, "age"),
    }[name]


def _validate(cov: Covariates, kb: KnowledgeBase) -> None:
    w = kb.analyte("weight")
    _finite("weight", cov.weight_kg, w.plausible_min, w.plausible_max, "weight (kg)")
    cr = kb.analyte("creatinine")
    _finite("creatinine", cov.creatinine_mg_dl, cr.plausible_min, cr.plausible_max, "serum creatinine (mg/dL)")
    _finite("crcl", cov.crcl_ml_min, 0.0, 1000.0, "CrCl (mL/min)")
    _finite("age", cov.age_years, 0.0, 130.0, "age (years)")
    _finite("bmi", cov.bmi_kg_m2, 5.0, 150.0, "BMI (kg/m2)")
    _finite("retention", cov.retained_fraction, 0.0, 0.95, "retained fraction")
    if cov.kidney_course is not None:
        for x in cov.kidney_course.creatinine_mg_dl:
            _finite("kidney course", x, cr.plausible_min, 1e9, "steady-state-equivalent creatinine (mg/dL)")


def population(model: PkModel | str | None = None, covariates: Covariates | None = None,
               baseline_mg_dl: float | None = None, kb: KnowledgeBase | None = None,
               allow_unapplied: bool = False) -> PopModel:
    """The prior for one patient: the model's own published covariate model, its variability, and limits.

    ``baseline_mg_dl`` (the patient's measured pre-dose serum Mg) is the endogenous baseline: known,
    not sampled. A model marked ``applied: false`` is refused unless ``allow_unapplied`` (validation).
    Raises ``OutsideModelError`` where the model cannot give a number (module docstring).
    """
    kb = kb or load()
    spec = model if isinstance(model, PkModel) else kb.pk_model(model)
    if not spec.applied and not allow_unapplied:
        raise KnowledgeError(f"pk model {spec.id} is not applied: {spec.not_applied_reason}")
    cov = covariates or Covariates()
    _validate(cov, kb)
    b = _Builder(spec, kb)
    if cov.age_years is not None and cov.age_years < kb.value("pk_min_age_years"):
        raise OutsideModelError("age", f"age {cov.age_years:g} y: the encoded PK models are adult "
                                       f"(>= {kb.value('pk_min_age_years'):g} y); no prediction for a child")
    kidney_covs = [c for c in spec.covariates if c.covariate in _KIDNEY]
    dial = cov.dialysis
    if dial is None:
        if cov.crcl_ml_min is not None and cov.crcl_ml_min == 0:
            raise OutsideModelError("crcl", "CrCl 0 mL/min: no renal Mg elimination, and no dialysis given. "
                                            "mgaki has no model of Mg without kidney function: give the "
                                            "dialysis (haemodialysis sessions or CRRT) or measure levels")
        if cov.aki and cov.creatinine_mg_dl is None and cov.crcl_ml_min is None and cov.kidney_course is None:
            raise OutsideModelError("kidney", "AKI without a serum creatinine or CrCl: kidney function is "
                                              "unknown and changing; no prediction (measure creatinine and Mg)")
    if (cov.crcl_ml_min is not None and dial is None and cov.creatinine_mg_dl is None and cov.kidney_course is None
            and not any(c.covariate == "crcl" for c in kidney_covs)):
        raise OutsideModelError("crcl", f"{spec.id}'s kidney covariate is "
                                        f"{'serum creatinine' if kidney_covs else 'none'}, not CrCl: a CrCl alone "
                                        "cannot set its clearance; give the serum creatinine")
    if not kidney_covs:
        limit = kb.value("pk_no_kidney_covariate_max_creatinine_mg_dl")
        course_max = max(cov.kidney_course.creatinine_mg_dl) if cov.kidney_course else None
        worst = max((x for x in (cov.creatinine_mg_dl, course_max) if x is not None), default=None)
        if dial is not None or cov.aki or (worst is not None and worst > limit):
            why = ("dialysis" if dial is not None else "AKI" if cov.aki else f"serum creatinine {worst:g} mg/dL")
            raise OutsideModelError("kidney", f"{spec.id} has no kidney covariate (its publication reports none): "
                                              f"it cannot predict with {why}; use a model with one "
                                              f"(default {kb.pk.default_model})")
        if cov.creatinine_mg_dl is None and cov.crcl_ml_min is None:
            b.notes.append(f"{spec.id} has no kidney covariate: the normal kidney function of its cohort is assumed")
    # --- covariates as published --------------------------------------------------------------------
    kidney_factor: dict[str, float] = {}
    for c in spec.covariates:
        if c.covariate in _KIDNEY and dial is not None:
            continue  # on dialysis the renal clearance is taken as 0 (segments below)
        x, label = _covariate_value(cov, c.covariate)
        if c.covariate == "creatinine" and x is None and cov.kidney_course is not None:
            x = cov.kidney_course.creatinine_mg_dl[0]
            if len(cov.kidney_course.start_h) == 1:
                b.notes.append(f"clearance from the creatinine course ({cov.kidney_course.method}): {x:.2f} mg/dL, "
                               "the steady-state creatinine of the current kidney function")
        eff = b.apply(c, x, label)
        b.typical[c.parameter] *= eff
        if c.covariate in _KIDNEY:
            kidney_factor[c.parameter] = eff
    # --- age: no model has an age covariate; outside the studied ages creatinine maps to GFR differently
    age_r = _range_for(spec, "age")
    if cov.age_years is not None and age_r is not None and not (age_r.low <= cov.age_years <= age_r.high):
        per_year = abs(math.log(kb.coefficient("ckdepi_age_base")))
        years = cov.age_years - age_r.high if cov.age_years > age_r.high else age_r.low - cov.age_years
        b.add_sd("cl", per_year * years)
        b.outside.append(f"age {cov.age_years:g} y outside the studied {age_r.low:g}-{age_r.high:g}")
    elif cov.age_years is None and age_r is not None:
        b.notes.append(f"no age: the studied ages {age_r.low:g}-{age_r.high:g} y are assumed")
    # --- population: pregnancy --------------------------------------------------------------------------
    if spec.pregnant_population and cov.pregnant is not True:
        b.add_sd("f", kb.value("pk_nonpregnant_sd"))
        b.outside.append("not pregnant (or not stated): the model was built in pregnancy")
    # --- dialysis and the kidney course -----------------------------------------------------------------
    segments, cld_typical, cld_sd = _segments(spec, cov, b, kb)
    # --- retention ------------------------------------------------------------------------------------
    retained = cov.retained_fraction if cov.retained_fraction is not None else kb.value("pk_retained_fraction_default")
    f_typ = 1.0 - retained
    ref = kb.magnesium.reference_range
    low_normal = convert(ref.low, "magnesium", ref.unit, "mg/dL")
    if baseline_mg_dl is not None and baseline_mg_dl < low_normal:
        b.notes.append(f"depleted patient (baseline {baseline_mg_dl:.2f} < {low_normal:.2f} mg/dL): retention of "
                       f"{retained:.0%} of each dose assumed; published rises in depleted and older non-pregnant "
                       "patients fall more slowly than the model predicts after about 12 h (docs/pk.md#retention): "
                       "recheck levels")
    # --- variability ------------------------------------------------------------------------------------
    names = [*b.names, "f"] + (["cld"] if cld_typical is not None else [])
    omega = np.zeros(len(names) + 1)
    for v in spec.iiv:
        if v.occasion == "antepartum" and cov.pregnant is not True:
            continue
        w2 = v.omega2 if v.omega2 is not None else _cv_to_omega(v.cv_percent or 0.0) ** 2
        i = names.index(v.parameter)
        omega[i] = math.sqrt(omega[i] ** 2 + w2)
    if not spec.iiv:  # no between-patient variability published: its residual carries it (design)
        b.add_sd("f", _cv_to_omega(spec.residual.proportional_cv_percent))
        b.notes.append(f"{spec.id} reports no between-patient variability: its residual error "
                       f"({spec.residual.proportional_cv_percent:g}%) is used as the spread of the dose scale")
    for n, sd in b.extra.items():
        i = names.index(n)
        omega[i] = math.sqrt(omega[i] ** 2 + sd ** 2)
    if cld_typical is not None:
        omega[names.index("cld")] = cld_sd
    omega[-1] = _cv_to_omega(spec.baseline.cv_percent)
    typical = np.array([b.typical[n] for n in b.names] + [f_typ] + ([cld_typical] if cld_typical else []))
    base = convert(spec.baseline.value, "magnesium", spec.baseline.unit, "mmol/L")
    known = baseline_mg_dl is not None
    if known:
        mg = kb.analyte("magnesium")
        _finite("baseline", baseline_mg_dl, convert(mg.plausible_min, "magnesium", mg.canonical_unit, "mg/dL"),
                convert(mg.plausible_max, "magnesium", mg.canonical_unit, "mg/dL"), "baseline serum Mg (mg/dL)")
        base = convert(float(baseline_mg_dl or 0.0), "magnesium", "mg/dL", "mmol/L")
    else:
        b.notes.append(f"no measured baseline: the model's {convert(base, 'magnesium', 'mmol/L', 'mg/dL'):.2f} mg/dL "
                       f"({base:.2f} mmol/L) assumed, with {spec.baseline.cv_percent:g}% uncertainty")
    notes = [f"model built in {spec.population_label}"]
    if b.outside:
        notes.append("outside the studied population (" + "; ".join(b.outside) + "): uncertainty widened")
    notes += b.notes
    ab = spec.im_absorption
    return PopModel(spec=spec, names=tuple(names), typical=typical, omega=omega, baseline_mmol_l=base,
                    prop_sd=spec.residual.proportional_cv_percent / 100.0, add_sd_mmol_l=spec.residual.additive_mmol_l,
                    notes=tuple(notes), residual_scale=spec.residual.scale, baseline_known=known,
                    segments=segments, ka_per_h=ab.ka_per_h if ab else None, f_im=ab.f_im if ab else None,
                    population_label=spec.population_label, outside=tuple(b.outside))


def _segments(spec: PkModel, cov: Covariates, b: _Builder,
              kb: KnowledgeBase) -> tuple[tuple[Segment, ...], float | None, float]:
    """Renal-clearance factors over time (kidney course) and dialysis; the dialytic clearance and its SD."""
    dial = cov.dialysis
    if dial is not None:
        b.notes.append("on dialysis: no renal Mg clearance assumed (anuric); Mg removed only by dialysis")
        if dial.kind == "crrt":
            eff = dial.effluent_l_per_h or kb.value("pk_crrt_effluent_l_per_h")
            cld = eff * kb.value("pk_crrt_sieving")
            b.notes.append(f"CRRT: Mg clearance {cld:.2f} L/h (effluent {eff:g} L/h x sieving "
                           f"{kb.value('pk_crrt_sieving'):g}, docs/pk.md#dialysis)")
            return (Segment(0.0, 0.0, True),), cld, kb.value("pk_dialysis_clearance_sd")
        cld, sd = _hd_clearance(b, kb)
        edges = sorted({0.0, *(s for s, _ in dial.sessions_h), *(s + d for s, d in dial.sessions_h)})
        hd = tuple(Segment(t, 0.0, any(s <= t < s + d for s, d in dial.sessions_h)) for t in edges)
        b.notes.append(f"haemodialysis: {len(dial.sessions_h)} session(s) in the horizon, Mg clearance "
                       f"{cld:.2f} L/h during each (calibrated to Leenders 2018, docs/pk.md#dialysis)"
                       if dial.sessions_h else "haemodialysis with no session in the horizon: no Mg removal")
        return hd, cld, sd
    course = cov.kidney_course
    creat = [c for c in spec.covariates if c.covariate == "creatinine"]
    if course is None or not creat or (len(course.start_h) < 2 and course.start_h[0] <= 0):
        return (Segment(0.0),), None, 0.0
    first = course.creatinine_mg_dl[0] if cov.creatinine_mg_dl is None else cov.creatinine_mg_dl
    segs: list[Segment] = []
    worst = 0.0
    for t, x in zip(course.start_h, course.creatinine_mg_dl, strict=True):
        factor = 1.0
        for c in creat:
            xu = _to_unit(x, "creatinine", c.unit)
            r = b.check_range("creatinine", xu, f"creatinine (course at {t:g} h)")
            factor *= _effect(c, xu) / _effect(c, _to_unit(first, "creatinine", c.unit))
            if r is not None:
                edge = min(max(xu, r.low), r.high)
                worst = max(worst, abs(math.log(_effect(c, xu) / _effect(c, edge))))
        segs.append(Segment(max(t, 0.0), factor))
    b.add_sd("cl", worst)
    if segs[0].start_h > 0:
        segs.insert(0, Segment(0.0, 1.0))
    b.notes.append(f"clearance follows the creatinine course ({course.method}): "
                   + ", ".join(f"{x:.2f} mg/dL from {t:g} h" for t, x in zip(course.start_h, course.creatinine_mg_dl,
                                                                            strict=True)))
    return tuple(segs), None, 0.0


def _hd_clearance(b: _Builder, kb: KnowledgeBase) -> tuple[float, float]:
    """Dialytic Mg clearance (L/h) that leaves the published share of an equilibrated excess after a session."""
    hours = kb.value("pk_hd_session_hours")
    params: dict[str, Array] = {str(n): np.array([b.typical[n]]) for n in b.names}
    v1 = b.typical["v1"]

    def remaining(cld: float) -> float:
        if "v2" not in b.typical:
            return math.exp(-cld * hours / v1)
        return _remaining_2cpt(dict(params, cld=np.array([cld])), hours)

    def solve(target: float) -> float:
        lo, hi = 1e-4, 1e3
        for _ in range(80):
            mid = math.sqrt(lo * hi)
            if remaining(mid) > target:
                lo = mid
            else:
                hi = mid
        return math.sqrt(lo * hi)

    cld = solve(kb.value("pk_hd_excess_remaining"))
    spread = max(abs(math.log(solve(kb.value("pk_hd_excess_remaining_low")) / cld)),
                 abs(math.log(solve(kb.value("pk_hd_excess_remaining_high")) / cld)))
    return cld, spread / 1.96


def _remaining_2cpt(p: dict[str, Array], hours: float) -> float:
    """Central concentration after ``hours`` of dialysis from 1 mmol/L in both compartments (no renal CL)."""
    from mgaki.pk._solve import _eig, _matrix

    a = _matrix(p["cld"], p["v1"], p["q"], p["v2"], None)
    lam, vec, inv = _eig(a)
    x0 = np.array([[float(p["v1"][0]), float(p["v2"][0])]])
    w = np.exp(lam * hours) * np.einsum("nij,nj->ni", inv, x0)
    x = np.einsum("nij,nj->ni", vec, w)
    return float(x[0, 0] / p["v1"][0])
