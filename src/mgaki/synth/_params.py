"""Schema and loader of ``synth_params.yaml``: every distribution of the generator, cited.

The generator reads numbers only through :class:`SynthParams`, so a renamed or
missing parameter fails at load time with its id, never as a silent default.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Literal

import numpy as np
from pydantic import model_validator

from mgaki.errors import KnowledgeError
from mgaki.knowledge import load, load_validated
from mgaki.knowledge.schema import Cited, Strict
from mgaki.units import normalize_unit

__all__ = ["DrugSpec", "Param", "PlantedBand", "PlantedMgAki", "PlantedRepletion", "Site", "SiteUnit", "SynthParams",
           "load_params"]

Kind = Literal["value", "uniform", "normal", "lognormal", "categorical", "by", "by_range", "range"]
_NEEDS: dict[str, tuple[str, ...]] = {
    "value": ("value",), "uniform": ("low", "high"), "range": ("low", "high"),
    "normal": ("mean", "sd"), "lognormal": ("median", "sigma"), "categorical": ("probs",),
    "by": ("by",), "by_range": ("by_range",),
}
# codes.yaml systems -> the prefix of the `code` column (schema.py: LOINC/2160-0, SNOMED/...)
_PREFIX = {"http://loinc.org": "LOINC", "http://snomed.info/sct": "SNOMED",
           "http://www.ama-assn.org/go/cpt": "CPT", "urn:mgaki:code": "MGAKI"}


class Param(Cited):
    id: str
    kind: Kind
    unit: str
    meaning: str
    value: float | None = None
    low: float | None = None
    high: float | None = None
    mean: float | None = None
    sd: float | None = None
    median: float | None = None
    sigma: float | None = None
    probs: dict[str, float] | None = None
    by: dict[str, float] | None = None
    by_range: dict[str, tuple[float, float]] | None = None

    @model_validator(mode="after")
    def _complete(self) -> Param:
        missing = [f for f in _NEEDS[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"parameter {self.id!r} ({self.kind}) needs {', '.join(missing)}")
        if self.probs is not None and abs(sum(self.probs.values()) - 1.0) > 1e-9:
            raise ValueError(f"parameter {self.id!r}: probabilities sum to {sum(self.probs.values())}, not 1")
        return self


class SiteUnit(Strict):
    unit: str
    code: str
    decimals: int


class Site(Cited):
    id: str
    share: float
    units: dict[str, SiteUnit]


class DayRange(Strict):
    low: float
    high: float


class DrugSpec(Cited):
    ingredient: str
    name: str
    route: str
    dose: float
    dose_unit: str
    days: DayRange
    probs: dict[str, float]


class RrtCode(Cited):
    code: str


class PlantedBand(Strict):
    """One admission-Mg band of the planted Mg-AKI association: where its values are drawn, its OR."""

    label: str
    draw: tuple[float, float]  # latent admission Mg (mg/dL), uniform; kept off the band edges (see docs)
    share: float
    odds_ratio: float


class PlantedMgAki(Cited):
    """Opt-in (generate(..., plant_mg_aki=True)): AKI odds depend on the admission-Mg band with known ORs."""

    study: str  # evidence.yaml study whose exposure_bands these are
    bands: tuple[PlantedBand, ...]

    @model_validator(mode="after")
    def _valid(self) -> PlantedMgAki:
        if abs(sum(b.share for b in self.bands) - 1.0) > 1e-9:
            raise ValueError("planted_mg_aki: band shares must sum to 1")
        study = next((s for s in load().evidence.studies if s.id == self.study), None)
        if study is None or [b.label for b in study.exposure_bands] != [b.label for b in self.bands]:
            raise ValueError(f"planted_mg_aki: bands must be the exposure_bands of evidence study {self.study!r}")
        for b, r in zip(self.bands, study.exposure_bands, strict=True):
            lo, hi = b.draw
            if not lo < hi or (r.lower is not None and lo <= r.lower) or (r.upper is not None and hi >= r.upper):
                raise ValueError(f"planted_mg_aki: band {b.label!r} draws {b.draw} outside its bounds")
            if b.odds_ratio <= 0:
                raise ValueError(f"planted_mg_aki: band {b.label!r} needs a positive odds ratio")
        return self


class PlantedMgPredictive(Cited):
    """Opt-in (generate(..., plant_mg_predictive=True/False)): Mg falls before AKI, or the null (random falls)."""

    fall_share_aki: float
    fall_share_other: float
    fall_share_null: float
    drop: tuple[float, float]  # mg/dL, uniform
    lead_h: tuple[float, float]  # fall starts this many hours before AKI onset, uniform

    @model_validator(mode="after")
    def _valid(self) -> PlantedMgPredictive:
        for name in ("fall_share_aki", "fall_share_other", "fall_share_null"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"planted_mg_predictive: {name} must lie in [0, 1]")
        for name in ("drop", "lead_h"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"planted_mg_predictive: {name} must be a positive range low <= high")
        return self


_SEVERITY = {"intercept", "sepsis", "egfr10", "mg_deficit", "age10"}


class PlantedRepletion(Cited):
    """Opt-in (generate(..., plant_repletion=True)): the target trial of IV MgSO4 for hypomagnesaemia."""

    hypo_share: float  # admissions with hypomagnesaemia at admission
    treat_logit: dict[str, float]  # log-odds of IV MgSO4 after the low value: intercept + severity terms
    aki_logit: dict[str, float]  # log-odds of AKI in the follow-up without treatment
    risk_ratio: float  # AKI risk with treatment / without, the same for every admission
    delay_h: tuple[float, float]  # MgSO4 start after the first low Mg result, uniform
    onset_h: tuple[float, float]  # AKI onset after admission start, uniform (after any planted dose)
    first_mg_after_h: float  # Mg draws start this many hours after admission (after the first chemistry)
    albumin_shift: float  # g/dL added to albumin per severity unit (sepsis; eGFR 30 below 90): negative control

    @model_validator(mode="after")
    def _valid(self) -> PlantedRepletion:
        for name in ("treat_logit", "aki_logit"):
            if set(getattr(self, name)) != _SEVERITY:
                raise ValueError(f"planted_repletion: {name} must name exactly {sorted(_SEVERITY)}")
        if not 0.0 < self.hypo_share <= 1.0 or not 0.0 < self.risk_ratio <= 1.0:
            raise ValueError("planted_repletion: hypo_share and risk_ratio must lie in (0, 1]")
        if self.onset_h[0] <= self.first_mg_after_h + 2.0 + self.delay_h[1]:  # first Mg within 2 h of its start
            raise ValueError("planted_repletion: AKI onsets must follow every planted dose")
        return self


class SynthParams(Strict):
    version: str
    sites: tuple[Site, ...]
    rrt_code: RrtCode
    drugs: tuple[DrugSpec, ...]
    params: tuple[Param, ...]
    planted_mg_aki: PlantedMgAki | None = None
    planted_mg_predictive: PlantedMgPredictive | None = None
    planted_repletion: PlantedRepletion | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SynthParams:
        kb = load()
        analytes = {a.id for a in kb.units.analytes}
        codes = {f"{_PREFIX[c.system]}/{c.code}": c.analyte
                 for c in (*kb.codes.observations, *kb.codes.rrt_procedures)}
        if abs(sum(s.share for s in self.sites) - 1.0) > 1e-9:
            raise ValueError("site shares must sum to 1")
        wanted = set(self.sites[0].units)
        for s in self.sites:
            if set(s.units) != wanted:
                raise ValueError(f"site {s.id!r} reports {sorted(s.units)}, expected {sorted(wanted)}")
            for analyte, su in s.units.items():
                if analyte not in analytes:
                    raise ValueError(f"site {s.id!r}: unknown analyte {analyte!r}")
                if codes.get(su.code) != analyte:
                    raise ValueError(f"site {s.id!r}: code {su.code} is not an {analyte} code in codes.yaml")
                normalize_unit(su.unit, f"site {s.id} {analyte}")
        if codes.get(self.rrt_code.code) != "rrt":
            raise ValueError(f"rrt_code {self.rrt_code.code} is not an RRT procedure in codes.yaml")
        contexts = set(self.get("context").probs or {})
        for d in self.drugs:
            if kb.drug(d.ingredient) is None:
                raise ValueError(f"drug {d.ingredient!r} is not in drugs.yaml")
            if set(d.probs) != contexts:
                raise ValueError(f"drug {d.ingredient!r}: probs must name the contexts {sorted(contexts)}")
        for p in self.params:
            keys = set(p.by or p.by_range or {})
            if p.kind in ("by", "by_range") and p.id != "mg_hypo_rr" and keys != contexts:
                raise ValueError(f"parameter {p.id!r}: keys must be the contexts {sorted(contexts)}")
        return self

    def get(self, param_id: str) -> Param:
        for p in self.params:
            if p.id == param_id:
                return p
        raise KnowledgeError(f"synth_params.yaml has no parameter {param_id!r}")

    def value(self, param_id: str) -> float:
        v = self.get(param_id).value
        if v is None:
            raise KnowledgeError(f"synth parameter {param_id!r} has no single value")
        return v

    def bounds(self, param_id: str) -> tuple[float, float]:
        p = self.get(param_id)
        if p.low is None or p.high is None:
            raise KnowledgeError(f"synth parameter {param_id!r} has no low/high")
        return p.low, p.high

    def draw(self, rng: np.random.Generator, param_id: str, n: int) -> np.ndarray:
        """n draws of a uniform/normal/lognormal parameter, clipped to its low/high if given."""
        p = self.get(param_id)
        if p.kind in ("uniform", "range"):
            return rng.uniform(p.low, p.high, n)  # type: ignore[arg-type]
        if p.kind == "normal":
            x = rng.normal(p.mean, p.sd, n)  # type: ignore[arg-type]
        elif p.kind == "lognormal":
            x = p.median * np.exp(rng.normal(0.0, p.sigma, n))  # type: ignore[arg-type]
        else:
            raise KnowledgeError(f"synth parameter {param_id!r} ({p.kind}) cannot be drawn")
        lo = -np.inf if p.low is None else p.low
        hi = np.inf if p.high is None else p.high
        return np.clip(x, lo, hi)

    def categorical(self, rng: np.random.Generator, param_id: str, n: int) -> tuple[list[str], np.ndarray]:
        """Labels and n category indices drawn with the parameter's probabilities."""
        probs = self.get(param_id).probs or {}
        labels = list(probs)
        return labels, rng.choice(len(labels), size=n, p=np.array([probs[k] for k in labels]))


@cache
def load_params() -> SynthParams:
    """The validated ``synth_params.yaml`` (cached); KnowledgeError naming the problem if invalid."""
    return load_validated(SynthParams, resources.files("mgaki").joinpath("synth_params.yaml"), "synth_params.yaml")
