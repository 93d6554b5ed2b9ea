"""Cause work-up (C3): FE_Mg, 24-h urine Mg, drug causes, Gitelman-like pattern."""

from __future__ import annotations

from collections.abc import Callable
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

Verdict = Literal["renal_wasting", "extrarenal", "indeterminate", "no_renal_wasting", "not_interpretable"]


@dataclass(frozen=True, slots=True)
class UrineReading:
    verdict: Verdict
    value: float
    reason: str
    serum_status: str | None = None  # the serum Mg status the index was read against


def fe_mg(kb: KnowledgeBase, u_mg: float, p_cr: float, p_mg: float, u_cr: float) -> float:
    """FE_Mg (%) = (U_Mg x P_Cr) / (0.7 x P_Mg x U_Cr) x 100; all four in mg/dL."""
    uf = kb.value("fe_mg_ultrafilterable_fraction")
    return (u_mg * p_cr) / (uf * p_mg * u_cr) * 100.0


def _limits(kb: KnowledgeBase, egfr: float | None, aki_stage: int,
            hours_since_iv_mg: float | None, mg_order: str | None = None) -> str | None:
    """Why a urine index cannot be read now, or None."""
    if aki_stage >= 1:
        return "AKI now (current KDIGO stage >= 1): tubular handling of Mg is deranged"
    min_egfr = kb.value("urine_index_min_egfr")
    if egfr is not None and egfr < min_egfr:
        return f"eGFR {egfr:.0f} < {min_egfr:g}: urinary Mg excretion rises adaptively as GFR falls"
    window = kb.value("urine_index_after_iv_mg_hours")
    if mg_order is not None:
        return (f"magnesium sulfate order {mg_order} is running (infusion or parenteral nutrition): "
                "urine reflects the load")
    if hours_since_iv_mg is not None and hours_since_iv_mg < window:
        return f"IV Mg given {hours_since_iv_mg:.0f} h ago: urine reflects the load"
    return None


def _serum(status: str | None, serum_mg_dl: float | None) -> str:
    return f" at a {status} serum Mg" + (f" ({serum_mg_dl:.2f} mg/dL)" if serum_mg_dl is not None else "") \
        if status else ""


def _read(kb: KnowledgeBase, index: str, value: float, shown: str, text: Callable[[float], str], hi: float, lo: float,
          egfr: float | None, aki_stage: int, hours_since_iv_mg: float | None, mg_order: str | None,
          serum_status: str | None, serum_mg_dl: float | None) -> UrineReading:
    """One urine index (``shown`` as text) against its cut-offs (``text`` formats one), read by the serum Mg
    of its time.

    The cut-offs classify the cause of hypomagnesaemia (renal wasting above ``hi``, extrarenal
    loss below ``lo``). At a normal serum Mg only renal wasting is read (it can precede a low
    level); at a high serum Mg a high excretion is the kidney's expected response, not a cause.
    """
    why = _limits(kb, egfr, aki_stage, hours_since_iv_mg, mg_order)
    if why is None and serum_status == "high":
        why = "serum Mg is high: a high urinary Mg is the kidney's expected response"
    if why:
        return UrineReading("not_interpretable", value, why, serum_status)
    v, where = f"{index} {shown}", _serum(serum_status, serum_mg_dl)
    if value > hi:
        return UrineReading("renal_wasting", value, f"{v} > {text(hi)}{where}", serum_status)
    if serum_status not in ("low", None):
        return UrineReading("no_renal_wasting", value, f"{v} <= {text(hi)}{where}: no renal Mg wasting "
                            "(the cut-offs classify causes of hypomagnesaemia)", serum_status)
    if value < lo:
        return UrineReading("extrarenal", value, f"{v} < {text(lo)}{where}", serum_status)
    return UrineReading("indeterminate", value, f"{v} between {text(lo)} and {text(hi)}{where}: "
                        "neither renal wasting nor renal conservation", serum_status)


def interpret_fe_mg(kb: KnowledgeBase, fe: float, egfr: float | None, aki_stage: int,
                    hours_since_iv_mg: float | None, mg_order: str | None = None, *,
                    serum_status: str | None = "low", serum_mg_dl: float | None = None) -> UrineReading:
    """Read FE_Mg (%); refuses when kidney state or a high serum Mg makes it meaningless."""
    hi, lo = kb.value("fe_mg_renal_wasting_above"), kb.value("fe_mg_extrarenal_below")
    return _read(kb, "FE_Mg", fe, f"{fe:.1f}%", lambda x: f"{x:g}%", hi, lo, egfr, aki_stage,
                 hours_since_iv_mg, mg_order, serum_status, serum_mg_dl)


def interpret_urine_24h(kb: KnowledgeBase, mg_per_day: float, egfr: float | None,
                        aki_stage: int, hours_since_iv_mg: float | None, mg_order: str | None = None, *,
                        serum_status: str | None = "low", serum_mg_dl: float | None = None) -> UrineReading:
    """Read 24-h urine Mg (in the analyte's canonical unit, mg/24 h)."""
    canonical = kb.analyte("urine_magnesium_24h").canonical_unit
    hi_t, lo_t = kb.threshold("urine_mg_24h_wasting_above"), kb.threshold("urine_mg_24h_conserving_below")
    hi = convert(hi_t.value, "urine_magnesium_24h", hi_t.unit, canonical)
    lo = convert(lo_t.value, "urine_magnesium_24h", lo_t.unit, canonical)
    return _read(kb, "24-h urine Mg", mg_per_day, f"{mg_per_day:.0f} mg", lambda x: f"{x:.0f} mg", hi, lo, egfr,
                 aki_stage, hours_since_iv_mg, mg_order, serum_status, serum_mg_dl)


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
