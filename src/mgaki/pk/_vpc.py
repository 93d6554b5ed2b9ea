"""Validation against published cohorts (``pk/published.yaml``): visual predictive checks and the table.

For each data set a cohort is simulated the way the study was run: its regimen, its covariates where
reported (else the model's own unknown-covariate prior, as at the bedside), its baseline where reported,
the model's variability and residual error (simulated observations, as a VPC should). The simulated
statistic (median and IQR, mean and SD, a share below/above/inside a level) is compared with the
published one within the data set's stated tolerance. ``mgaki pk vpc`` draws and prints it; the table
in docs/pk.md is this module's output (tests/pk/test_validation.py checks they agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, model_validator

from mgaki.errors import InputError
from mgaki.knowledge import KnowledgeBase, load, load_validated
from mgaki.pk._model import Covariates, population
from mgaki.pk._regimen import Regimen
from mgaki.pk._simulate import concentrations
from mgaki.units import convert

__all__ = ["Check", "Dataset", "datasets", "simulate_cohort", "validate"]

Array = npt.NDArray[np.float64]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dose(_Strict):
    g: float | None = None
    g_per_h: float | None = None
    start_h: float
    over_h: float = 0.0
    for_h: float | None = None
    route: Literal["iv", "im"] = "iv"


class Spread(_Strict):
    center: float
    q25: float | None = None
    q75: float | None = None
    sd: float | None = None


class Normal(_Strict):
    mean: float
    sd: float


class Cohort(_Strict):
    weight_kg: Normal | None = None
    creatinine_mg_dl: Normal | None = None
    age_years: Normal | None = None


class Point(_Strict):
    t_h: float
    center: float
    statistic: Literal["median", "mean", "typical", "mean_rise"]
    q25: float | None = None
    q75: float | None = None
    sd: float | None = None


class Share(_Strict):
    unit: str
    share: float
    t_h: float | None = None
    window_h: tuple[float, float] | None = None
    any_of_h: tuple[float, ...] | None = None
    below: float | None = None
    above: float | None = None
    inside: tuple[float, float] | None = None
    arm: float | None = None
    at_least: bool = False  # the published share is a lower bound (pass: published <= simulated <= + points)

    @model_validator(mode="after")
    def _one_time_and_one_level(self) -> Share:
        if sum(x is not None for x in (self.t_h, self.window_h, self.any_of_h)) != 1:
            raise ValueError("a share needs exactly one of t_h, window_h, any_of_h")
        if sum(x is not None for x in (self.below, self.above, self.inside)) != 1:
            raise ValueError("a share needs exactly one of below, above, inside")
        return self


class Tolerance(_Strict):
    why: str
    absolute_mmol_l: float | None = None
    relative: float | None = None
    share_points: float | None = None
    inside_iqr: bool = False


class Dataset(_Strict):
    id: str
    citation: str
    doi: str | None = None
    pmid: str | None = None
    document: str | None = None
    location: str
    read: Literal["P-abs", "P-cong", "P-full", "T-nlmixr2lib"]
    population: str
    pregnant: bool
    regimen: tuple[Dose, ...]
    arms: dict[str, tuple[float, ...]] | None = None
    assumed: str
    typical_only: bool = False
    baseline_mmol_l: float | None = None
    baseline: Spread | None = None
    cohort: Cohort | None = None
    unit: str
    points: tuple[Point, ...] = ()
    shares: tuple[Share, ...] = ()
    tolerance: Tolerance

    @model_validator(mode="after")
    def _located(self) -> Dataset:
        if not (self.doi or self.pmid or self.document):
            raise ValueError(f"data set {self.id}: needs a doi, pmid or document")
        return self


class PublishedFile(_Strict):
    version: str
    datasets: tuple[Dataset, ...]


@cache
def _file() -> PublishedFile:
    return load_validated(PublishedFile, resources.files("mgaki.pk").joinpath("published.yaml"),
                          "pk published data sets")


def datasets() -> tuple[Dataset, ...]:
    return _file().datasets


def _dataset(dataset_id: str) -> Dataset:
    for d in datasets():
        if d.id == dataset_id:
            return d
    raise InputError("dataset", f"unknown data set {dataset_id!r}; known: {', '.join(d.id for d in datasets())}")


def regimen(ds: Dataset, arm: float | None = None) -> Regimen:
    reg = Regimen()
    for d in ds.regimen:
        if d.g_per_h is not None:
            rate = arm if arm is not None else d.g_per_h
            reg = reg + Regimen.rate(rate, "g", d.start_h, d.for_h or 24.0)
        else:
            reg = reg + Regimen.dose(d.g or 0.0, "g", d.start_h, d.over_h, route=d.route)
    return reg


@dataclass(frozen=True)
class Check:
    """One published value against the model's simulated one."""

    dataset: str
    model: str
    what: str  # e.g. "median at 4 h", "share < 4.9 mg/dL at 4 h (2 g/h)"
    unit: str
    published: float
    published_spread: str  # "IQR 1.58-2.02", "SD 0.34", ""
    simulated: float
    simulated_spread: str
    passed: bool
    tolerance: str


def _to(value: float, unit: str, to: str) -> float:
    return convert(value, "magnesium", unit, to)


def simulate_cohort(ds: Dataset, model: str | None = None, arm: float | None = None, n: int = 400,
                    seed: int = 0, times_h: Array | None = None, observations: bool = True,
                    kb: KnowledgeBase | None = None) -> tuple[Array, Array, Array]:
    """(times h, simulated serum Mg mmol/L (n, T), baselines mmol/L (n,)) of a cohort like the study's."""
    kb = kb or load()
    reg = regimen(ds, arm)
    rng = np.random.default_rng(seed)
    t = np.asarray(times_h if times_h is not None else np.linspace(0.0, max(24.0, _last_time(ds)), 241))
    cohort = ds.cohort or Cohort()

    def draw(x: Normal | None, low: float, high: float) -> float | None:
        return None if x is None else float(np.clip(rng.normal(x.mean, x.sd), low, high))

    def base() -> float | None:
        b = ds.baseline
        if ds.baseline_mmol_l is not None:
            return ds.baseline_mmol_l
        if b is None:
            return None
        sd = b.sd if b.sd is not None else ((b.q75 or b.center) - (b.q25 or b.center)) / 1.349
        return float(max(rng.normal(b.center, sd), 0.2))

    if ds.typical_only:
        b0 = base()
        pop = population(model, Covariates(pregnant=ds.pregnant or None),
                         baseline_mg_dl=None if b0 is None else _to(b0, "mmol/L", "mg/dL"), kb=kb)
        c = concentrations(pop, reg, t, np.zeros(pop.n_eta))
        return t, c[None, :], np.array([pop.baseline_mmol_l])
    out = np.zeros((n, t.size))
    bases = np.zeros(n)
    # a model without a kidney covariate is given no creatinine: these cohorts had normal kidney function
    uses_creatinine = any(c.covariate == "creatinine" for c in kb.pk_model(model).covariates)
    for i in range(n):
        creat = draw(cohort.creatinine_mg_dl, 0.3, 3.0)
        cov = Covariates(weight_kg=draw(cohort.weight_kg, 40.0, 200.0),
                         creatinine_mg_dl=creat if uses_creatinine else None,
                         age_years=draw(cohort.age_years, 18.0, 95.0), pregnant=True if ds.pregnant else None)
        b = base()
        pop = population(model, cov, baseline_mg_dl=None if b is None else _to(b, "mmol/L", "mg/dL"), kb=kb)
        eta = rng.standard_normal(pop.n_eta) * pop.omega
        if b is not None:
            eta[-1] = 0.0
        c = concentrations(pop, reg, t, eta)
        bases[i] = pop.baseline_mmol_l * np.exp(eta[-1])
        if observations:
            scale = c - bases[i] if pop.residual_scale == "change_from_baseline" else c
            sd = np.sqrt(pop.add_sd_mmol_l ** 2 + (pop.prop_sd * scale) ** 2)
            c = np.maximum(c + rng.standard_normal(t.size) * sd, 0.05)
        out[i] = c
    return t, out, bases


def _last_time(ds: Dataset) -> float:
    times = [p.t_h for p in ds.points] + [s.t_h or 0.0 for s in ds.shares] + \
        [max(s.window_h or (0.0, 0.0)) for s in ds.shares] + [max(s.any_of_h or (0.0,)) for s in ds.shares]
    return max(times)


def _at(t: Array, c: Array, th: float) -> Array:
    return np.array([np.interp(th, t, row) for row in c])


def validate(dataset_id: str, model: str | None = None, n: int = 400, seed: int = 0,
             kb: KnowledgeBase | None = None) -> list[Check]:
    """Every published value of a data set against the model (default: pk.yaml's default model)."""
    kb = kb or load()
    ds = _dataset(dataset_id)
    model_id = model or kb.pk.default_model
    tol = ds.tolerance
    out: list[Check] = []
    arms = list(ds.arms["g_per_h"]) if ds.arms else [None]
    rng = np.random.default_rng(seed + 1)
    for arm in arms:
        t, c, bases = simulate_cohort(ds, model_id, arm, n, seed, kb=kb)
        label = f" ({arm:g} g/h)" if arm is not None else ""
        if arm is None or arm == arms[0]:
            for p in ds.points:
                out.append(_point(ds, model_id, p, t, c, bases, tol))
        for s in ds.shares:
            if s.arm is not None and s.arm != arm:
                continue
            out.append(_share(ds, model_id, s, t, c, tol, rng, label))
    return out


def _point(ds: Dataset, model: str, p: Point, t: Array, c: Array, bases: Array, tol: Tolerance) -> Check:
    col = _at(t, c, p.t_h)
    u = ds.unit
    pub_spread = (f"IQR {p.q25:g}-{p.q75:g}" if p.q25 is not None and p.q75 is not None
                  else f"SD {p.sd:g}" if p.sd is not None else "")
    if p.statistic == "median":
        sim = float(np.median(col))
        q25, q75 = np.quantile(col, [0.25, 0.75])
        spread = f"IQR {_to(q25, 'mmol/L', u):.2f}-{_to(q75, 'mmol/L', u):.2f}"
    elif p.statistic == "mean_rise":
        sim = float(np.mean(col - bases))
        spread = f"SD {_to(float(np.std(col - bases)), 'mmol/L', u):.2f}"
    else:
        sim = float(np.mean(col))
        spread = f"SD {_to(float(np.std(col)), 'mmol/L', u):.2f}" if p.statistic == "mean" else "typical patient"
    sim_u = _to(sim, "mmol/L", u)
    pub_mmol = _to(p.center, u, "mmol/L")
    if tol.inside_iqr and p.q25 is not None and p.q75 is not None:
        ok, how = p.q25 <= sim_u <= p.q75, "inside the published IQR"
    elif tol.relative is not None:
        ok, how = abs(sim - pub_mmol) <= tol.relative * pub_mmol, f"+-{tol.relative:.0%}"
    else:
        a = tol.absolute_mmol_l or 0.0
        ok, how = abs(sim - pub_mmol) <= a + 1e-12, f"+-{a:g} mmol/L"
    what = {"median": "median", "mean": "mean", "typical": "typical patient", "mean_rise": "mean rise"}[p.statistic]
    return Check(ds.id, model, f"{what} at {p.t_h:.3g} h", u, p.center, pub_spread, round(sim_u, 3), spread, ok, how)


def _share(ds: Dataset, model: str, s: Share, t: Array, c: Array, tol: Tolerance, rng: np.random.Generator,
           label: str) -> Check:
    def to_mmol(x: float) -> float:
        return _to(x, s.unit, "mmol/L")

    def hit(v: Array) -> npt.NDArray[np.bool_]:
        if s.below is not None:
            return v < to_mmol(s.below)
        if s.above is not None:
            return v >= to_mmol(s.above)
        lo, hi = s.inside or (0.0, 0.0)
        return (v >= to_mmol(lo)) & (v <= to_mmol(hi))

    if s.t_h is not None:
        got = hit(_at(t, c, s.t_h))
        when = f"at {s.t_h:g} h"
    elif s.window_h is not None:
        lo_h, hi_h = s.window_h
        times = np.asarray(rng.uniform(lo_h, hi_h, size=c.shape[0]), dtype=np.float64)
        got = hit(np.array([np.interp(float(tt), t, c[i]) for i, tt in enumerate(times)]))
        when = f"at random times {s.window_h[0]:g}-{s.window_h[1]:g} h"
    else:
        got = np.any(np.stack([hit(_at(t, c, th)) for th in s.any_of_h or ()]), axis=0)
        when = "at any of " + ", ".join(f"{x:g}" for x in s.any_of_h or ()) + " h"
    level = (f"< {s.below:g}" if s.below is not None else f">= {s.above:g}" if s.above is not None
             else f"in {s.inside[0]:g}-{s.inside[1]:g}" if s.inside else "")
    sim = float(np.mean(got))
    pts = tol.share_points or 0.0
    if s.at_least:
        return Check(ds.id, model, f"share {level} {s.unit} {when}{label}", "share", s.share, "at least",
                     round(sim, 3), "", s.share <= sim <= s.share + pts + 1e-12, f"published to +{pts * 100:g} points")
    return Check(ds.id, model, f"share {level} {s.unit} {when}{label}", "share", s.share, "", round(sim, 3), "",
                 abs(sim - s.share) <= pts + 1e-12, f"+-{pts * 100:g} points")
