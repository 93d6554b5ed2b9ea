"""Text report of an assessment for a person (rich)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mgaki.result import Assessment

STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def render(a: Assessment, console: Console) -> None:
    head = Text(f"mgaki assessment — patient {a.patient_id}   as of {a.as_of or '-'}\n", "bold")
    if a.contexts:
        head.append(f"context: {', '.join(a.contexts)}\n")
    mg = a.magnesium
    if mg:
        head.append(f"Magnesium {mg.reported} = {' = '.join(mg.in_other_units())}  [{mg.status}, CTCAE grade "
                    f"{mg.grade}]\n",
                    STYLE["critical"] if mg.grade >= 3 else "")
    k = a.kidney
    if k.status:  # KDIGO staging not applicable (maintenance dialysis): say so instead of a stage
        head.append(f"Kidney: {k.status}; creatinine {k.creatinine_mg_dl} mg/dL; no eGFR or CrCl\n")
    else:
        head.append(f"Kidney: KDIGO stage {k.aki_stage}"
                    + (f" ({k.criterion})" if k.criterion else "")
                    + f"; creatinine {k.creatinine_mg_dl} mg/dL; baseline {k.baseline.value_mg_dl} "
                      f"({k.baseline.method}, rule {k.baseline.rule}); eGFR {k.egfr}; CrCl {k.crcl}"
                    + (f"; kinetic eGFR {k.kinetic_egfr}" if k.kinetic_egfr is not None else "")
                    + (f"; urine output staged at {k.uo_weight_kg} kg" if k.uo_weight_kg is not None else "")
                    + "\n")
    console.print(Panel(head, title="Summary"))
    t = Table(title="Findings", show_lines=True)
    for col in ("severity", "code", "finding", "source"):
        t.add_column(col)
    for f in a.findings:
        src = "; ".join(f"{e.source.split('.')[0]} ({'doi:' + e.doi if e.doi else e.document})"
                        for e in f.evidence)
        t.add_row(Text(f.severity, STYLE[f.severity]), f.code, f.message, src)
    console.print(t)
    p = a.plan
    lines = [Text(f"{p.action.upper()}: {p.regimen or ''}", "bold")]
    for d in p.doses:
        extra = []
        if d.duration_h:
            extra.append(f"over {d.duration_h:g}" + (f"-{d.duration_max_h:g}" if d.duration_max_h else "") + " h")
        if d.repeats > 1:
            extra.append(f"x{d.repeats} every {d.interval_h:g} h")
        lines.append(Text(f"  • {d.route.upper()} {d.label} = {d.mmol:g} mmol = {d.meq:g} mEq "
                          + " ".join(extra) + (f" — {d.note}" if d.note else "")))
    for adj in p.adjustments:
        lines.append(Text(f"  ! {adj}", "yellow"))
    if p.recheck:
        lines.append(Text(f"  ↻ {p.recheck}"))
    if p.evidence_strength:
        lines.append(Text(f"  evidence: {p.evidence_strength}; "
                          + "; ".join(e.doi or e.document or "" for e in p.evidence)))
    for alt in p.alternatives:
        lines.append(Text(f"  also: {alt}", "dim"))
    pr = p.prediction
    if pr is not None:
        band = (f" (90% {pr.peak_interval_mg_dl[0]:.2f}-{pr.peak_interval_mg_dl[1]:.2f})"
                if pr.peak_interval_mg_dl else "")
        target = (f"P(in {pr.target_mg_dl[0]:.2f}-{pr.target_mg_dl[1]:.2f} mg/dL at {pr.target_at_h:g} h) "
                  f"{pr.p_target:.0%}; " if pr.target_mg_dl and pr.p_target is not None else "")
        harm = ("not sampled" if pr.p_peak_above_toxicity is None
                else f"< {pr.p_harm_upper_95:.1%}" if pr.p_peak_above_toxicity == 0 and pr.p_harm_upper_95
                else f"{pr.p_peak_above_toxicity:.0%}")
        at_recheck = (f"; at the recheck {pr.at_recheck_mg_dl:.2f} mg/dL" if pr.at_recheck_mg_dl is not None
                      else "")
        lines.append(Text(f"  PK {pr.model} (built in {pr.population}): peak {pr.peak_mg_dl:.2f} mg/dL at "
                          f"{pr.peak_time_h:g} h{band}; trough {pr.trough_mg_dl:.2f} mg/dL within "
                          f"{pr.horizon_h:g} h{at_recheck}; {target}P(peak > {pr.toxicity_mg_dl:.2f} mg/dL) {harm}",
                          "red" if pr.overshoot else ""))
    elif p.prediction_unavailable:
        lines.append(Text(f"  PK: no prediction: {p.prediction_unavailable}", "yellow"))
    console.print(Panel(Group(*lines), title="Plan"))
    for w in a.warnings:
        console.print(Text(f"warning: {w}", "yellow"))
    console.print(Text(a.disclaimer, "italic"))
