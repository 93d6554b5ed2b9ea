"""Regimens as arrays of (start, mmol of Mg, duration): every dose enters through mgaki.units.

A regimen is a few doses; amounts are converted once from the unit the order states (g of
salt, mmol or mEq of Mg) with ``salt_amounts``, so simulation never sees grams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mgaki.errors import InputError, KnowledgeError
from mgaki.knowledge import KnowledgeBase, load
from mgaki.units import salt_amounts

__all__ = ["LimitCheck", "Regimen", "check_limits", "dose_mmol", "limit_window_h", "loading_maintenance", "repeated"]

Array = npt.NDArray[np.float64]
SULFATE = "magnesium_sulfate_heptahydrate"

# Labelled limits are stored in their label's unit; each is read as a rate (g/h) or a
# windowed total (g per N h). Pure unit arithmetic: 1 mg/min = 60 mg/h = 0.06 g/h.
_RATE_UNITS = {"g/h": 1.0, "mg/min": 60.0 / 1000.0}
_WINDOW_UNITS = {"g/(24.h)": 24.0, "g/(48.h)": 48.0}


def dose_mmol(amount: float, unit: str, salt: str = SULFATE, weight_kg: float | None = None) -> float:
    """mmol of Mg in a dose written as g (of salt), mmol, meq or mg/kg."""
    if amount < 0 or not math.isfinite(amount):
        raise InputError("dose", f"a dose must be a non-negative number, got {amount!r}")
    return salt_amounts(amount, unit, salt, weight_kg)["mmol"]


@dataclass(frozen=True)
class Regimen:
    """Doses of Mg: start (h from now), amount (mmol), duration (h; 0 = IV push)."""

    start_h: tuple[float, ...] = ()
    mmol: tuple[float, ...] = ()
    duration_h: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.start_h) == len(self.mmol) == len(self.duration_h)):
            raise InputError("regimen", "start, amount and duration lists differ in length")
        for d in self.duration_h:
            if d < 0:
                raise InputError("regimen", f"negative duration {d:g} h")

    def __add__(self, other: Regimen) -> Regimen:
        return Regimen(self.start_h + other.start_h, self.mmol + other.mmol, self.duration_h + other.duration_h)

    def shifted(self, hours: float) -> Regimen:
        return Regimen(tuple(s + hours for s in self.start_h), self.mmol, self.duration_h)

    @classmethod
    def dose(cls, amount: float, unit: str = "g", start_h: float = 0.0, over_h: float = 0.0,
             salt: str = SULFATE, weight_kg: float | None = None) -> Regimen:
        """One dose: a push (``over_h`` 0) or an infusion of the whole amount over ``over_h``."""
        return cls((start_h,), (dose_mmol(amount, unit, salt, weight_kg),), (over_h,))

    @classmethod
    def rate(cls, per_hour: float, unit: str = "g", start_h: float = 0.0, for_h: float = 24.0,
             salt: str = SULFATE, weight_kg: float | None = None) -> Regimen:
        """A continuous infusion of ``per_hour`` (g/h, mmol/h, ...) for ``for_h`` hours."""
        if for_h <= 0:
            raise InputError("infusion", f"an infusion must run for a positive time, got {for_h:g} h")
        return cls((start_h,), (dose_mmol(per_hour, unit, salt, weight_kg) * for_h,), (for_h,))

    def arrays(self) -> tuple[Array, Array, Array]:
        return (np.asarray(self.start_h, dtype=np.float64), np.asarray(self.mmol, dtype=np.float64),
                np.asarray(self.duration_h, dtype=np.float64))

    @property
    def end_h(self) -> float:
        return max((s + d for s, d in zip(self.start_h, self.duration_h, strict=True)), default=0.0)

    def g_mgso4(self) -> tuple[float, ...]:
        """Each dose as g of MgSO4.7H2O (for labels and limits)."""
        return tuple(salt_amounts(m, "mmol")["g_mgso4"] for m in self.mmol)

    def given_by(self, times_h: Array) -> Array:
        """Cumulative g MgSO4.7H2O given by each time (infusions pro rata)."""
        t = np.asarray(times_h, dtype=np.float64)[:, None]
        s, _, d = self.arrays()
        g = np.asarray(self.g_mgso4())
        frac = np.where(d > 0, np.clip((t - s) / np.where(d > 0, d, 1.0), 0.0, 1.0), (t >= s).astype(float))
        return np.asarray((frac * g).sum(axis=1), dtype=np.float64)

    def max_rate_g_per_h(self) -> float:
        """Highest total infusion rate at any moment (concurrent infusions add); inf for a push."""
        if not self.mmol:
            return 0.0
        s, _, d = self.arrays()
        g = np.asarray(self.g_mgso4())
        if np.any((d == 0) & (g > 0)):
            return math.inf
        edges = np.unique(np.concatenate([s, s + d]))
        mid = (edges[:-1] + edges[1:]) / 2.0 if len(edges) > 1 else edges
        on = (mid[:, None] >= s) & (mid[:, None] < s + d)
        return float((on * (g / d)).sum(axis=1).max(initial=0.0))


def loading_maintenance(load_g: float, load_over_h: float, rate_g_per_h: float, for_h: float) -> Regimen:
    """Loading dose over ``load_over_h``, then a maintenance rate starting when it ends."""
    reg = Regimen.dose(load_g, "g", 0.0, load_over_h) if load_g > 0 else Regimen()
    if rate_g_per_h > 0 and for_h > 0:
        reg = reg + Regimen.rate(rate_g_per_h, "g", load_over_h if load_g > 0 else 0.0, for_h)
    return reg


def repeated(amount: float, unit: str, every_h: float, times: int, over_h: float = 0.0,
             start_h: float = 0.0) -> Regimen:
    if times < 1 or every_h <= 0:
        raise InputError("regimen", "repeated doses need times >= 1 and a positive interval")
    one = Regimen.dose(amount, unit, 0.0, over_h)
    out = Regimen()
    for i in range(times):
        out = out + one.shifted(start_h + i * every_h)
    return out


@dataclass(frozen=True)
class LimitCheck:
    limit_id: str
    limit: float
    value: float  # the regimen's rate (g/h) or highest windowed total (g)
    unit: str
    ok: bool
    meaning: str


def _limit_value(kb: KnowledgeBase, limit_id: str) -> tuple[str, float, float]:
    """(kind, value in g/h or g, window hours) of a labelled limit."""
    lim = kb.limit(limit_id)
    if lim.unit in _RATE_UNITS:
        return "rate", lim.value * _RATE_UNITS[lim.unit], 0.0
    if lim.unit in _WINDOW_UNITS:
        return "window", lim.value, _WINDOW_UNITS[lim.unit]
    raise KnowledgeError(f"limit {limit_id}: unit {lim.unit!r} is not a rate or a windowed total")


def limit_window_h(limit_id: str, kb: KnowledgeBase | None = None) -> float | None:
    """Window (h) of a windowed-total limit; None for a rate limit."""
    kind, _, window = _limit_value(kb or load(), limit_id)
    return window if kind == "window" else None


def check_limits(regimen: Regimen, limit_ids: tuple[str, ...], kb: KnowledgeBase | None = None,
                 step_h: float = 0.25) -> list[LimitCheck]:
    """Each labelled limit (regimens.yaml ids) against the regimen: rates and sliding-window totals."""
    kb = kb or load()
    out: list[LimitCheck] = []
    horizon = regimen.end_h
    for lid in limit_ids:
        kind, value, window = _limit_value(kb, lid)
        meaning = kb.limit(lid).meaning
        if kind == "rate":
            r = regimen.max_rate_g_per_h()
            out.append(LimitCheck(lid, value, r, "g/h", r <= value + 1e-9, meaning))
            continue
        grid = np.arange(0.0, horizon + step_h, step_h)
        given = regimen.given_by(np.concatenate([grid, grid + window]))
        worst = float(np.max(given[len(grid):] - given[: len(grid)], initial=0.0))
        out.append(LimitCheck(lid, value, worst, f"g/{window:g} h", worst <= value + 1e-9, meaning))
    return out
