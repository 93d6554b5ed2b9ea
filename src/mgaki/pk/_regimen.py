"""Regimens as arrays of (start, mmol of Mg, duration): every dose enters through mgaki.units.

A regimen is a few doses; amounts are converted once from the unit the order states (g of
salt, mmol or mEq of Mg) with ``salt_amounts``, so simulation never sees grams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mgaki.errors import InputError, KnowledgeError, UnitError
from mgaki.knowledge import KnowledgeBase, load
from mgaki.units import quantity_factor, rate_unit, salt_amounts, unit_kind

__all__ = [
    "LimitCheck",
    "Regimen",
    "check_limits",
    "dose_mmol",
    "labelled_ceiling_g_24h",
    "limit_window_h",
    "loading_maintenance",
    "repeated",
    "validate_regimen",
]

Array = npt.NDArray[np.float64]
SULFATE = "magnesium_sulfate_heptahydrate"
_PUSH_H = 1e-9  # an infusion shorter than this (3.6 microseconds) is computed as a push: numerics, not clinic

# Labelled limits are stored in their label's unit; mgaki.units reads each as a rate (mg/min, g/h)
# or a windowed total (g/(24.h): g per 24-h window); limits are checked in g of salt per hour or window.
GRAM = "g"


def dose_mmol(amount: float, unit: str, salt: str = SULFATE, weight_kg: float | None = None) -> float:
    """mmol of Mg in a dose written as g (of salt), mmol, meq or mg/kg."""
    if amount < 0 or not math.isfinite(amount):
        raise InputError("dose", f"a dose must be a non-negative number, got {amount!r}")
    return salt_amounts(amount, unit, salt, weight_kg)["mmol"]


@dataclass(frozen=True)
class Regimen:
    """Doses of Mg: start (h from now), amount (mmol), duration (h; 0 = IV push), IM flag (injection)."""

    start_h: tuple[float, ...] = ()
    mmol: tuple[float, ...] = ()
    duration_h: tuple[float, ...] = ()
    im: tuple[bool, ...] = ()  # empty: every dose IV

    def __post_init__(self) -> None:
        if not (len(self.start_h) == len(self.mmol) == len(self.duration_h)):
            raise InputError("regimen", "start, amount and duration lists differ in length")
        if self.im and len(self.im) != len(self.mmol):
            raise InputError("regimen", "the IM flags and the doses differ in length")
        if not any(self.im):
            object.__setattr__(self, "im", ())  # all IV: one spelling, so equal regimens compare equal
        if any(0 < d < _PUSH_H for d in self.duration_h):  # numerically a push (a denormal would overflow)
            object.__setattr__(self, "duration_h", tuple(0.0 if d < _PUSH_H else d for d in self.duration_h))
        for x in (*self.start_h, *self.mmol, *self.duration_h):
            if not math.isfinite(x):
                raise InputError("regimen", f"dose times and amounts must be finite numbers, got {x!r}")
        for d in self.duration_h:
            if d < 0:
                raise InputError("regimen", f"negative duration {d:g} h")
        for m in self.mmol:
            if m < 0:
                raise InputError("regimen", f"negative amount {m:g} mmol")
        for i, d in enumerate(self.duration_h):
            if self.im and self.im[i] and d != 0:
                raise InputError("regimen", "an IM dose is an injection: its duration must be 0")

    def im_flags(self) -> tuple[bool, ...]:
        return self.im or (False,) * len(self.mmol)

    def __add__(self, other: Regimen) -> Regimen:
        im = self.im_flags() + other.im_flags()
        return Regimen(self.start_h + other.start_h, self.mmol + other.mmol, self.duration_h + other.duration_h, im)

    def shifted(self, hours: float) -> Regimen:
        return Regimen(tuple(s + hours for s in self.start_h), self.mmol, self.duration_h, self.im)

    @classmethod
    def dose(cls, amount: float, unit: str = "g", start_h: float = 0.0, over_h: float = 0.0,
             salt: str = SULFATE, weight_kg: float | None = None, route: str = "iv") -> Regimen:
        """One dose: a push (``over_h`` 0), an infusion over ``over_h``, or an IM injection (``route="im"``)."""
        if route not in ("iv", "im"):
            raise InputError("route", f"route must be iv or im, got {route!r}")
        if route == "im" and over_h:
            raise InputError("route", "an IM dose is an injection: give no duration")
        return cls((start_h,), (dose_mmol(amount, unit, salt, weight_kg),), (over_h,), (route == "im",))

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

    def im_array(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.im_flags(), dtype=bool)

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
        iv = ~self.im_array()
        if np.any((d == 0) & (g > 0) & iv):
            return math.inf
        s, d, g = s[iv], d[iv], g[iv]
        if not len(g):
            return 0.0
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
    rate, grams = None, None
    try:
        rate = rate_unit(lim.unit, f"limit {limit_id}")
        grams = lim.value * quantity_factor(rate.amount, GRAM, f"limit {limit_id}") if rate else None
    except UnitError:
        pass
    if rate is None or grams is None:
        raise KnowledgeError(f"limit {limit_id}: unit {lim.unit!r} is not a rate or a windowed total")
    if rate.window:
        return "window", grams, rate.hours
    return "rate", grams / rate.hours, 0.0


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
        # windows [t, t + w): a push at t counts, one at t + w belongs to the next window
        starts = np.unique(np.concatenate([np.arange(0.0, horizon + step_h, step_h), np.asarray(regimen.start_h)]))
        eps = 1e-9
        given = regimen.given_by(np.concatenate([starts - eps, starts + window - eps]))
        worst = float(np.max(given[len(starts):] - given[: len(starts)], initial=0.0))
        out.append(LimitCheck(lid, value, worst, f"g/{window:g} h", worst <= value + 1e-9, meaning))
    return out


def labelled_ceiling_g_24h(kb: KnowledgeBase | None = None) -> tuple[float, str]:
    """The most MgSO4 any label allows in 24 h: the daily maximum, or a label regimen at its upper end.

    The US label's own eclampsia regimen (up to 6 g, then up to 2 g/h) gives more than its 40 g daily
    maximum, and obstetric practice runs it; so a regimen is refused only above every labelled maximum.
    """
    kb = kb or load()
    best, why = kb.limit("daily_max_label").value, "daily_max_label"
    for r in kb.regimens.regimens:
        if r.evidence_strength != "label":
            continue
        total = 0.0
        for st in r.steps:
            amount = st.amount_max if st.amount_max is not None else st.amount
            rate = rate_unit(st.amount_unit)
            per = rate.amount if rate is not None else st.amount_unit
            if unit_kind(per) == "per_weight":  # needs a weight: not a fixed labelled amount
                continue
            if rate is None:  # an amount, given at each repeat
                total += salt_amounts(amount, per)["g_mgso4"] * st.repeats
            elif not rate.window:  # per time (g/h): run for the whole day
                total += salt_amounts(amount, per)["g_mgso4"] * 24.0 / rate.hours
        if total > best:
            best, why = total, f"regimen {r.id} at its upper end"
    return best, why


def validate_regimen(regimen: Regimen, kb: KnowledgeBase | None = None) -> None:
    """Refuse what no prediction should be made for: an empty regimen, doses before time 0 or beyond the
    longest horizon, and more MgSO4 in any 24 h than every labelled maximum (``labelled_ceiling_g_24h``)."""
    kb = kb or load()
    if not regimen.mmol or sum(regimen.mmol) <= 0:
        raise InputError("regimen", "the regimen gives no magnesium")
    top = kb.value("pk_max_horizon_hours")
    if min(regimen.start_h) < 0 or regimen.end_h > top:
        raise InputError("regimen", f"doses must lie between 0 and {top:g} h from the first dose")
    (daily,) = check_limits(regimen, ("daily_max_label",), kb)
    ceiling, why = labelled_ceiling_g_24h(kb)
    if daily.value > ceiling + 1e-9:
        raise InputError("dose", f"{daily.value:.1f} g MgSO4 in 24 h exceeds every labelled maximum (the daily "
                                 f"{daily.limit:g} g of {daily.limit_id}; at most {ceiling:g} g in 24 h by {why}): "
                                 "no prediction is made for a regimen above the label")
