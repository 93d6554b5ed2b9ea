"""Cause work-up (C3): FE_Mg, 24-h urine Mg, drug causes, Gitelman-like pattern."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mgaki.knowledge import KnowledgeBase
from mgaki.knowledge.schema import Drug
from mgaki.record import Medication
from mgaki.units import convert

__all__ = [
    "UrineReading",
    "drug_causes",
    "fe_mg",
    "interpret_fe_mg",
    "interpret_urine_24h",
    "urine_ca_cr",
]

Verdict = Literal["renal_wasting", "extrarenal", "indeterminate", "not_interpretable"]


@dataclass(frozen=True, slots=True)
class UrineReading:
    verdict: Verdict
    value: float
    reason: str


def fe_mg(kb: KnowledgeBase, u_mg: float, p_cr: float, p_mg: float, u_cr: float) -> float:
    """FE_Mg (%) = (U_Mg x P_Cr) / (0.7 x P_Mg x U_Cr) x 100; all four in mg/dL."""
    uf = kb.value("fe_mg_ultrafilterable_fraction")
    return (u_mg * p_cr) / (uf * p_mg * u_cr) * 100.0


def _limits(kb: KnowledgeBase, egfr: float | None, aki_stage: int,
            hours_since_iv_mg: float | None) -> str | None:
    """Why a urine index cannot be read now, or None."""
    if aki_stage >= 1:
        return "active AKI: tubular handling of Mg is deranged"
    min_egfr = kb.value("urine_index_min_egfr")
    if egfr is not None and egfr < min_egfr:
        return f"eGFR {egfr:.0f} < {min_egfr:g}: urinary Mg excretion rises adaptively as GFR falls"
    window = kb.value("urine_index_after_iv_mg_hours")
    if hours_since_iv_mg is not None and hours_since_iv_mg < window:
        return f"IV Mg given {hours_since_iv_mg:.0f} h ago: urine reflects the load"
    return None


def interpret_fe_mg(kb: KnowledgeBase, fe: float, egfr: float | None, aki_stage: int,
                    hours_since_iv_mg: float | None) -> UrineReading:
    """Read FE_Mg in a hypomagnesaemic patient; refuses when kidney state makes it meaningless."""
    why = _limits(kb, egfr, aki_stage, hours_since_iv_mg)
    if why:
        return UrineReading("not_interpretable", fe, why)
    hi, lo = kb.value("fe_mg_renal_wasting_above"), kb.value("fe_mg_extrarenal_below")
    if fe > hi:
        return UrineReading("renal_wasting", fe, f"FE_Mg {fe:.1f}% > {hi:g}%")
    if fe < lo:
        return UrineReading("extrarenal", fe, f"FE_Mg {fe:.1f}% < {lo:g}%")
    return UrineReading("indeterminate", fe, f"FE_Mg {fe:.1f}% between {lo:g} and {hi:g}%")


def interpret_urine_24h(kb: KnowledgeBase, mg_per_day: float, egfr: float | None,
                        aki_stage: int, hours_since_iv_mg: float | None) -> UrineReading:
    """Read 24-h urine Mg (mg/24 h) in a hypomagnesaemic patient."""
    why = _limits(kb, egfr, aki_stage, hours_since_iv_mg)
    if why:
        return UrineReading("not_interpretable", mg_per_day, why)
    hi_t, lo_t = kb.threshold("urine_mg_24h_wasting_above"), kb.threshold(
        "urine_mg_24h_conserving_below")
    hi = convert(hi_t.value, "urine_magnesium_24h", hi_t.unit, "mg/(24.h)")
    lo = convert(lo_t.value, "urine_magnesium_24h", lo_t.unit, "mg/(24.h)")
    if mg_per_day > hi:
        return UrineReading("renal_wasting", mg_per_day, f"24-h urine Mg {mg_per_day:.0f} mg > {hi:.0f} mg")
    if mg_per_day < lo:
        return UrineReading("extrarenal", mg_per_day, f"24-h urine Mg {mg_per_day:.0f} mg < {lo:.0f} mg")
    return UrineReading("indeterminate", mg_per_day,
                        f"24-h urine Mg {mg_per_day:.0f} mg between {lo:.0f} and {hi:.0f} mg")


def urine_ca_cr(u_ca_mg_dl: float, u_cr_mg_dl: float) -> float:
    """Spot urine Ca/Cr molar ratio (mmol/mmol)."""
    return convert(u_ca_mg_dl, "urine_calcium", "mg/dL", "mmol/L") / convert(
        u_cr_mg_dl, "urine_creatinine", "mg/dL", "mmol/L")


def drug_causes(kb: KnowledgeBase, meds: tuple[Medication, ...]) -> list[tuple[Medication, Drug]]:
    """Active medications that are known causes of Mg loss (one row per ingredient)."""
    seen: set[str] = set()
    out = []
    for m in meds:
        drug = kb.drug(m.ingredient) if m.ingredient else None
        if (drug and m.active and drug.effect in ("renal_wasting", "gi_loss", "shift")
                and drug.ingredient not in seen):
            seen.add(drug.ingredient)
            out.append((m, drug))
    return out
