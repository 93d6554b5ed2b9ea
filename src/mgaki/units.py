"""Unit layer (C1): every conversion is computed from molar mass and valence.

A value moves between three kinds of unit: mass (mg/dL), substance (mmol/L)
and equivalent (meq/L = mmol/L x valence). Prefix and volume arithmetic is
pint's, precomputed: ``mgaki/_unit_scales.py`` holds each UCUM unit of units.yaml
as (pint expression, factor to SI base units, dimensions), generated from pint by
``mgaki.units.write_scales()`` and checked against pint by the tests, so
no process pays pint's ~0.3 s import and ~0.2-0.6 s registry build at run time.
The chemistry (molar mass, valence) comes from the knowledge base. Factors are
cached, so a cohort converts with one multiplication per column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from mgaki._unit_scales import SCALES, Scale
from mgaki.errors import ImplausibleValueError, KnowledgeError, UnitError
from mgaki.knowledge import load
from mgaki.knowledge.schema import Analyte, UnitDef, UnitKind

__all__ = [
    "Rate",
    "convert",
    "display",
    "dose_in_unit",
    "dose_unit",
    "factor",
    "generate_scales",
    "mmol_per_unit",
    "normalize_unit",
    "quantity_factor",
    "rate_unit",
    "salt_amounts",
    "to_canonical",
    "to_hours",
    "unit_kind",
    "write_scales",
]


MOLAR_MASS_UNIT = "g/mol"  # unit of molar_mass_g_per_mol in the knowledge files


def generate_scales() -> dict[str, Scale]:
    """Each unit of units.yaml (and g/mol) as (pint expression, SI factor, dimensions), from pint.

    The test oracle and the generator of ``_unit_scales.py``; pint is imported only here.
    """
    import pint

    ureg: Any = pint.UnitRegistry()
    exprs = {u.ucum: u.pint for u in load().units.units} | {MOLAR_MASS_UNIT: MOLAR_MASS_UNIT}
    out: dict[str, Scale] = {}
    for ucum, expr in sorted(exprs.items()):
        q = ureg.Quantity(1.0, expr).to_base_units()
        dims = tuple(sorted((str(k), int(v)) for k, v in q.dimensionality.items() if v))
        out[ucum] = (expr, float(q.magnitude), dims)
    return out


def _scale(ucum: str, expr: str) -> tuple[float, dict[str, int]]:
    entry = SCALES.get(ucum)
    if entry is None or entry[0] != expr:
        raise KnowledgeError(f"unit {ucum!r} ({expr}) is not in mgaki/_unit_scales.py or has changed: "
                             "run `python -c 'from mgaki.units import write_scales; write_scales()'`")
    return entry[1], dict(entry[2])


@cache
def _units() -> dict[str, UnitDef]:
    out: dict[str, UnitDef] = {}
    for u in load().units.units:
        for name in (u.ucum, *u.aliases):
            out[name] = u
            out[name.replace(" ", "")] = u
    return out


def _lookup(unit: str) -> UnitDef | None:
    return _units().get(unit.strip()) or _units().get(unit.strip().replace(" ", ""))


def normalize_unit(unit: str | None, where: str = "value") -> str:
    """UCUM code for a unit string as labs write it; UnitError if unknown or missing."""
    if unit is None or not unit.strip():
        raise UnitError(where, "unit is missing; mgaki never guesses a unit")
    u = _lookup(unit)
    if u is None:
        known = sorted({d.ucum for d in load().units.units})
        raise UnitError(where, f"unknown unit {unit!r} (known: {', '.join(known)})")
    return u.ucum


def _as_moles(unit: UnitDef, analyte: Analyte, where: str) -> tuple[float, dict[str, int]]:
    """One `unit` of `analyte` in SI base units, with moles (not grams or equivalents)."""
    scale, dims = _scale(unit.ucum, unit.pint)
    if unit.kind == "mass" and analyte.molar_mass_g_per_mol:
        mm_scale, mm_dims = _scale(MOLAR_MASS_UNIT, MOLAR_MASS_UNIT)
        scale /= analyte.molar_mass_g_per_mol * mm_scale
        for k, v in mm_dims.items():
            dims[k] = dims.get(k, 0) - v
    elif unit.kind == "equivalent":
        if not analyte.valence:
            raise UnitError(where, f"{unit.ucum} is meaningless for {analyte.name} (no valence)")
        scale /= analyte.valence
    return scale, {k: v for k, v in dims.items() if v}


@cache
def factor(analyte_id: str, from_unit: str, to_unit: str) -> float:
    """Multiplier taking a value of `analyte_id` from `from_unit` to `to_unit` (UCUM codes)."""
    where = f"{analyte_id} {from_unit} -> {to_unit}"
    units = _units()
    src, dst = units[normalize_unit(from_unit, where)], units[normalize_unit(to_unit, where)]
    analyte = load_analyte(analyte_id)
    if "plain" in {src.kind, dst.kind} and src.kind != dst.kind:
        raise UnitError(where, f"{src.ucum} cannot be converted to {dst.ucum} for {analyte.name}")
    (s_scale, s_dims), (d_scale, d_dims) = _as_moles(src, analyte, where), _as_moles(dst, analyte, where)
    if s_dims != d_dims:
        raise UnitError(where, f"{src.ucum} cannot be converted to {dst.ucum} for {analyte.name}")
    return s_scale / d_scale


def load_analyte(analyte_id: str) -> Analyte:
    return load().analyte(analyte_id)


def convert(value: float, analyte_id: str, from_unit: str, to_unit: str) -> float:
    return value * factor(analyte_id, from_unit, to_unit)


def to_canonical(value: float | None, analyte_id: str, unit: str | None, where: str) -> float:
    """Value in the analyte's canonical unit, after checking unit and plausibility.

    ``where`` names the observation (e.g. ``Observation/abc``) in any error.
    """
    if value is None:
        raise ImplausibleValueError(where, "no numeric value")
    analyte = load_analyte(analyte_id)
    ucum = normalize_unit(unit, where)
    try:
        out = value * factor(analyte_id, ucum, analyte.canonical_unit)
    except UnitError as exc:
        raise UnitError(where, f"{analyte.name}: {exc.problem}") from None
    if not (analyte.plausible_min <= out <= analyte.plausible_max):
        raise ImplausibleValueError(
            where,
            f"{analyte.name} {value:g} {ucum} (= {out:.4g} {analyte.canonical_unit}) is outside "
            f"the physiologically possible range {analyte.plausible_min:g}-"
            f"{analyte.plausible_max:g} {analyte.canonical_unit}; check the unit",
        )
    return out


def _def(unit: str | None, where: str) -> UnitDef:
    return _units()[normalize_unit(unit, where)]


def display(unit: str) -> str:
    """How a unit is shown to people: its display spelling (``meq`` -> ``mEq``), else the UCUM code."""
    u = _def(unit, "unit")
    return u.display or u.ucum


def unit_kind(unit: str | None, where: str = "unit") -> UnitKind:
    """The kind of a unit (units.yaml): mass, substance, equivalent, plain or per_weight."""
    return _def(unit, where).kind


def quantity_factor(from_unit: str, to_unit: str, where: str = "quantity") -> float:
    """Multiplier between two units of the same dimension, no chemistry (volume, time, mass of a salt)."""
    src, dst = _def(from_unit, where), _def(to_unit, where)
    (s_scale, s_dims), (d_scale, d_dims) = _scale(src.ucum, src.pint), _scale(dst.ucum, dst.pint)
    if s_dims != d_dims or src.kind != dst.kind:
        raise UnitError(where, f"{src.ucum} cannot be converted to {dst.ucum}")
    return s_scale / d_scale


HOUR = "h"  # UCUM hour: durations, infusion rates and windows are stated per hour


def to_hours(amount: float, unit: str | None, where: str = "time") -> float:
    """A duration (``20`` ``min``, ``1.5`` ``h``, ``2`` ``d``) in hours; UnitError for a unit that is not a time."""
    return amount * quantity_factor(normalize_unit(unit, where), HOUR, where)


# --- doses of magnesium salts ---------------------------------------------------------------------------

MMOL = "mmol"  # doses are carried as mmol of elemental Mg
_DOSE_DIMS = ({"[mass]": 1}, {"[substance]": 1})


def _dose_def(unit: str | None, where: str) -> UnitDef:
    u = _def(unit, where)
    dims = _scale(u.ucum, u.pint)[1]
    if u.kind == "per_weight" or dims in _DOSE_DIMS:
        return u
    raise UnitError(where, f"{u.ucum} is not a dose unit (known: {', '.join(_dose_units())})")


@cache
def _dose_units() -> tuple[str, ...]:
    out = []
    for u in load().units.units:
        if u.kind == "per_weight" or _scale(u.ucum, u.pint)[1] in _DOSE_DIMS:
            out.append(u.display or u.ucum)
    return tuple(out)


def dose_unit(unit: str | None, where: str = "dose") -> str:
    """UCUM code of a dose amount unit as written (``gm`` -> ``g``, ``mEq`` -> ``meq``); UnitError if not one.

    A dose is an amount of a salt (g, mg), of Mg itself (mmol, mEq) or an amount per kg (mg/kg).
    """
    if unit is not None and unit.strip() and _lookup(unit) is None:
        raise UnitError(where, f"dose unit {unit!r} not understood (known: {', '.join(_dose_units())})")
    return _dose_def(unit, where).ucum


@cache
def _mmol_per_unit(ucum: str, salt_id: str) -> float:
    kb = load()
    u, salt, mg = _units()[ucum], kb.salt(salt_id), kb.analyte("magnesium")
    scale, dims = _scale(u.ucum, u.pint)
    mmol = _scale(MMOL, _units()[MMOL].pint)[0]
    if u.kind == "per_weight":  # a mass per kg of body weight: the caller multiplies by the weight
        dims = {"[mass]": 1}
    if dims == {"[mass]": 1}:  # of the salt: moles of salt x Mg atoms per formula unit
        mm_scale = _scale(MOLAR_MASS_UNIT, MOLAR_MASS_UNIT)[0]
        return scale / (salt.molar_mass_g_per_mol * mm_scale) * salt.mg_per_formula_unit / mmol
    if u.kind == "equivalent":
        return scale / (mg.valence or 1) / mmol
    return scale / mmol


def mmol_per_unit(unit: str | None, salt_id: str = "magnesium_sulfate_heptahydrate",
                  weight_kg: float | None = None, where: str = "dose") -> float:
    """mmol of elemental Mg in one ``unit`` of a dose of ``salt_id`` (a per-kg unit needs the weight)."""
    u = _dose_def(dose_unit(unit, where), where)
    f = _mmol_per_unit(u.ucum, salt_id)
    if u.kind == "per_weight":
        if weight_kg is None:
            raise UnitError(where, f"a {u.ucum} dose needs the patient's weight")
        f *= weight_kg
    return f


def dose_in_unit(mmol: float, unit: str, salt_id: str = "magnesium_sulfate_heptahydrate",
                 weight_kg: float | None = None) -> float:
    """``mmol`` of elemental Mg as an amount in ``unit`` of ``salt_id`` (the inverse of ``mmol_per_unit``)."""
    return mmol / mmol_per_unit(unit, salt_id, weight_kg)


def salt_amounts(amount: float, unit: str, salt_id: str = "magnesium_sulfate_heptahydrate",
                 weight_kg: float | None = None, where: str = "dose") -> dict[str, float]:
    """A Mg dose in g of salt, mmol and mEq of Mg, and mg of elemental Mg.

    ``unit`` is any dose unit as written (g, gm, mg of salt; mmol, mEq of Mg; mg/kg of salt, which
    needs the weight); UnitError naming ``where`` otherwise.
    """
    mmol = amount * mmol_per_unit(unit, salt_id, weight_kg, where)
    return {
        "mmol": mmol,
        "meq": dose_in_unit(mmol, "meq", salt_id),
        "elemental_mg": dose_in_unit(mmol, "mg", "elemental_magnesium"),
        "g_salt": dose_in_unit(mmol, "g", salt_id),
        "g_mgso4": dose_in_unit(mmol, "g", "magnesium_sulfate_heptahydrate"),
    }


@dataclass(frozen=True)
class Rate:
    """A unit per time: ``g/h`` (amount g per 1 h), ``mg/min``, ``g/(24.h)`` (a total per 24-h window)."""

    amount: str  # UCUM of the amount
    hours: float  # the time it is per, in hours
    window: bool  # written as a count of hours (UCUM ``(24.h)``): a windowed total, not a rate


_WINDOW = re.compile(r"^\((\d+(?:\.\d+)?)\.?([^)]+)\)$")  # UCUM (24.h)


def rate_unit(unit: str, where: str = "rate") -> Rate | None:
    """``g/h`` -> Rate(g, 1 h); ``mg/kg/h`` -> Rate(mg/kg, 1 h); None when ``unit`` is not per time (an amount).

    UnitError when it reads as per time but the amount or the time unit is unknown.
    """
    if "/" not in unit:
        return None
    amount, per = (p.strip() for p in unit.rsplit("/", 1))
    m = _WINDOW.match(per)
    count, per = (float(m.group(1)), m.group(2)) if m else (1.0, per)
    time = _lookup(per)
    if time is None or time.kind != "plain" or _scale(time.ucum, time.pint)[1] != {"[time]": 1}:
        return None
    return Rate(normalize_unit(amount, where), to_hours(count, per, where), m is not None)


def write_scales(path: Path | None = None) -> Path:
    """Regenerate ``_unit_scales.py`` from pint (after a unit is added to units.yaml)."""
    path = path or Path(__file__).with_name("_unit_scales.py")
    lines = ['"""Generated by mgaki.units.write_scales() from pint: do not edit.',
             "",
             "UCUM code -> (pint expression, value of 1 unit in SI base units, dimensions).",
             "tests/unit/test_units.py regenerates it with pint and fails if it differs.",
             '"""',
             "",
             "from __future__ import annotations",
             "",
             '__all__ = ["SCALES", "Scale"]',
             "",
             "Scale = tuple[str, float, tuple[tuple[str, int], ...]]",
             "",
             "SCALES: dict[str, Scale] = {"]
    lines += [f"    {k!r}: {v!r}," for k, v in generate_scales().items()]
    lines += ["}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
