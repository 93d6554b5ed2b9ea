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

from functools import cache
from pathlib import Path
from typing import Any

from mgaki._unit_scales import SCALES, Scale
from mgaki.errors import ImplausibleValueError, KnowledgeError, UnitError
from mgaki.knowledge import load
from mgaki.knowledge.schema import Analyte, UnitDef

__all__ = [
    "convert",
    "factor",
    "generate_scales",
    "normalize_unit",
    "salt_amounts",
    "to_canonical",
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


def normalize_unit(unit: str | None, where: str = "value") -> str:
    """UCUM code for a unit string as labs write it; UnitError if unknown or missing."""
    if unit is None or not unit.strip():
        raise UnitError(where, "unit is missing; mgaki never guesses a unit")
    u = _units().get(unit.strip()) or _units().get(unit.strip().replace(" ", ""))
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
        raise UnitError(where, "cannot convert between these units")
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


def salt_amounts(amount: float, unit: str, salt_id: str = "magnesium_sulfate_heptahydrate",
                 weight_kg: float | None = None) -> dict[str, float]:
    """A Mg dose in g of salt, mmol and mEq of Mg, and mg of elemental Mg.

    ``unit`` is one of g (of salt), mmol, meq, mg/kg (of salt, needs weight).
    """
    kb = load()
    salt = kb.salt(salt_id)
    mg = kb.analyte("magnesium")
    valence = mg.valence or 0
    if unit == "mg/kg":
        if weight_kg is None:
            raise UnitError("dose", "a mg/kg dose needs the patient's weight")
        unit, amount = "g", amount * weight_kg / 1000.0
    if unit == "g":
        mmol = amount * 1000.0 / salt.molar_mass_g_per_mol * salt.mg_per_formula_unit
    elif unit == "mmol":
        mmol = amount
    elif unit == "meq":
        mmol = amount / valence
    else:
        raise UnitError("dose", f"unknown dose unit {unit!r}")
    sulfate = kb.salt("magnesium_sulfate_heptahydrate")
    return {
        "mmol": mmol,
        "meq": mmol * valence,
        "elemental_mg": mmol * (mg.molar_mass_g_per_mol or 0.0),
        "g_salt": mmol * salt.molar_mass_g_per_mol / 1000.0 / salt.mg_per_formula_unit,
        "g_mgso4": mmol * sulfate.molar_mass_g_per_mol / 1000.0,
    }


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
