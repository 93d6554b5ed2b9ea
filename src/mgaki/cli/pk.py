"""`mgaki pk`: simulate a magnesium sulfate regimen, fit a patient from measured levels, find a dose.

Quantities are written as clinicians write them (``4g``, ``20min``, ``1g/h``, ``24h``, ``16meq``,
``2.1mg/dL``); every amount goes through mgaki.units. Output is text or JSON; ``--plot`` writes
a PNG/SVG of the predicted course with its band (Altair, rendered offline by vl-convert).
"""

from __future__ import annotations

import json
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from mgaki.cli.common import console, err, run_or_exit
from mgaki.errors import InputError

__all__ = ["parse_amount", "parse_hours", "parse_levels", "parse_rate", "register"]

pk_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                     help="Magnesium sulfate pharmacokinetics: simulate, fit from levels, find a dose.")

_NUM = r"(\d+(?:\.\d+)?)"
_TIME_UNITS = {"h": 1.0, "hr": 1.0, "hour": 1.0, "hours": 1.0, "min": 1.0 / 60.0, "m": 1.0 / 60.0, "d": 24.0}
_DOSE_UNITS = {"g": "g", "mmol": "mmol", "meq": "meq", "mg/kg": "mg/kg"}


class Fmt(StrEnum):
    text = "text"
    json = "json"


def parse_hours(text: str, what: str = "time") -> float:
    """'20min', '1.5h', '2d' or a bare number of hours."""
    m = re.fullmatch(_NUM + r"\s*([a-z]*)", text.strip().lower())
    if not m or (m.group(2) and m.group(2) not in _TIME_UNITS):
        raise InputError(what, f"cannot read {text!r} as a time (e.g. 20min, 1.5h)")
    return float(m.group(1)) * _TIME_UNITS.get(m.group(2) or "h", 1.0)


def parse_amount(text: str, what: str = "dose") -> tuple[float, str]:
    """'4g', '16mEq', '8mmol', '50mg/kg' -> (amount, unit)."""
    m = re.fullmatch(_NUM + r"\s*([a-z/]+)", text.strip().lower())
    if not m or m.group(2) not in _DOSE_UNITS:
        raise InputError(what, f"cannot read {text!r} as a dose (units: g, mmol, mEq, mg/kg)")
    return float(m.group(1)), _DOSE_UNITS[m.group(2)]


def parse_rate(text: str, what: str = "rate") -> tuple[float, str]:
    """'1g/h', '3mmol/h' -> (amount per hour, unit)."""
    m = re.fullmatch(_NUM + r"\s*([a-z]+)\s*/\s*(h|hr|hour|min)", text.strip().lower())
    if not m or m.group(2) not in _DOSE_UNITS:
        raise InputError(what, f"cannot read {text!r} as a rate (e.g. 1g/h, 3mmol/h)")
    per_h = float(m.group(1)) / _TIME_UNITS[m.group(3)]
    return per_h, _DOSE_UNITS[m.group(2)]


def parse_levels(items: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """'6h=2.1mg/dL' (unit optional, mg/dL default) -> (times h, mg/dL), checked by the unit layer."""
    from mgaki.units import to_canonical

    times, values = [], []
    for item in items:
        m = re.fullmatch(r"\s*([^=]+)=\s*" + _NUM + r"\s*([A-Za-z/]*)\s*", item)
        if not m:
            raise InputError("level", f"cannot read {item!r}; write e.g. 6h=2.1mg/dL")
        times.append(parse_hours(m.group(1), "level time"))
        values.append(to_canonical(float(m.group(2)), "magnesium", m.group(3) or "mg/dL", f"level {item}"))
    return np.array(times), np.array(values)


def _regimen(dose: list[str], over: list[str], then: str | None, for_h: str | None, every: str | None,
             times: int, weight: float | None) -> Any:
    from mgaki.pk import Regimen

    reg = Regimen()
    t = 0.0
    for i, d in enumerate(dose):
        amount, unit = parse_amount(d)
        dur = parse_hours(over[i] if i < len(over) else (over[-1] if over else "0"), "--over")
        if every:
            gap = parse_hours(every, "--every")
            for k in range(times):
                reg = reg + Regimen.dose(amount, unit, t + k * gap, dur, weight_kg=weight)
            t += gap * times
        else:
            reg = reg + Regimen.dose(amount, unit, t, dur, weight_kg=weight)
            t += dur
    if then:
        per_h, unit = parse_rate(then, "--then")
        run = parse_hours(for_h or "24h", "--for")
        unit = "mg/kg" if unit == "mg/kg" else unit
        reg = reg + Regimen.rate(per_h, unit, t, run, weight_kg=weight)
    if not reg.mmol:
        raise InputError("regimen", "give at least one --dose or a --then rate")
    return reg


def _pop(model: str | None, weight: float | None, crcl: float | None, baseline: str | None) -> Any:
    from mgaki.pk import Covariates, population
    from mgaki.units import to_canonical

    base = None
    if baseline:
        m = re.fullmatch(_NUM + r"\s*([A-Za-z/]*)", baseline.strip())
        if not m:
            raise InputError("--baseline", f"cannot read {baseline!r}; write e.g. 1.4mg/dL or 0.6mmol/L")
        base = to_canonical(float(m.group(1)), "magnesium", m.group(2) or "mg/dL", "--baseline")
    return population(model, Covariates(weight_kg=weight, crcl_ml_min=crcl), baseline_mg_dl=base)


def _plot(pred: Any, path: Path, title: str, target: tuple[float, float] | None = None,
          levels: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    import altair as alt
    import pandas as pd

    from mgaki.surveillance.plots import save

    df = pd.DataFrame({"time_h": pred.times_h, "typical": pred.typical_mg_dl,
                       "lower": pred.lower_mg_dl if pred.lower_mg_dl is not None else pred.typical_mg_dl,
                       "upper": pred.upper_mg_dl if pred.upper_mg_dl is not None else pred.typical_mg_dl})
    x = alt.X("time_h:Q", title="hours from first dose")
    layers: list[Any] = [
        alt.Chart(df).mark_area(opacity=0.25, color="#4c78a8").encode(x=x, y="lower:Q", y2="upper:Q"),
        alt.Chart(df).mark_line(color="#4c78a8").encode(x=x, y=alt.Y("typical:Q", title="serum Mg, mg/dL")),
    ]
    if target:
        band = pd.DataFrame({"lo": [target[0]], "hi": [target[1]]})
        layers.append(alt.Chart(band).mark_rect(opacity=0.12, color="#54a24b").encode(y="lo:Q", y2="hi:Q"))
    if levels is not None:
        pts = pd.DataFrame({"time_h": levels[0], "level": levels[1]})
        layers.append(alt.Chart(pts).mark_point(color="#e45756", filled=True, size=60).encode(x=x, y="level:Q"))
    level = f" ({pred.level:.0%} band)" if pred.level else ""
    save(alt.layer(*layers).properties(width=560, height=280, title=title + level), path)


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    t = Table(title=title, show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    for k, v in rows:
        t.add_row(k, v)
    console().print(t)


Dose = Annotated[list[str] | None, typer.Option("--dose", help="Dose, repeatable: 4g, 16mEq, 8mmol, 50mg/kg")]
Over = Annotated[list[str] | None, typer.Option("--over", help="Duration of each --dose: 20min, 1h (0 = push)")]
Then = Annotated[str | None, typer.Option("--then", help="Maintenance rate after the doses: 1g/h, 3mmol/h")]
For = Annotated[str | None, typer.Option("--for", help="How long the maintenance runs (default 24h)")]
Every = Annotated[str | None, typer.Option("--every", help="Repeat each --dose at this interval: 12h")]
Times = Annotated[int, typer.Option("--times", help="How many times --every repeats")]
Weight = Annotated[float | None, typer.Option("--weight", help="Body weight, kg")]
Crcl = Annotated[float | None, typer.Option("--crcl", help="Creatinine clearance, mL/min (scales CL)")]
Baseline = Annotated[str | None, typer.Option("--baseline", help="Pre-dose serum Mg: 1.4mg/dL, 0.6mmol/L")]
Model = Annotated[str | None, typer.Option("--model", help="pk.yaml model id (default: the file's default)")]
Horizon = Annotated[str | None, typer.Option("--horizon", help="Predict up to this time (default 24 h past "
                                                                "the last dose end, at least 24h)")]
Plot = Annotated[Path | None, typer.Option("--plot", help="Write the predicted course to a PNG/SVG")]
FmtOpt = Annotated[Fmt, typer.Option("--format", "-f")]


def _times(reg: Any, horizon: str | None) -> Any:
    from mgaki.pk import time_grid

    return time_grid(reg, parse_hours(horizon, "--horizon") if horizon else None)


@pk_app.command()
def simulate(dose: Dose = None, over: Over = None, then: Then = None, for_: For = None, every: Every = None,
             times: Times = 1, weight: Weight = None, crcl: Crcl = None, baseline: Baseline = None,
             model: Model = None, horizon: Horizon = None, seed: int = 0, plot: Plot = None,
             fmt: FmtOpt = Fmt.text) -> None:
    """Predict serum Mg for a regimen, with a band over between-patient variability."""
    from mgaki.pk import simulate as sim

    def go() -> tuple[Any, Any, Any]:
        reg = _regimen(dose or [], over or [], then, for_, every, times, weight)
        pop = _pop(model, weight, crcl, baseline)
        return reg, pop, sim(pop, reg, _times(reg, horizon), seed=seed, baseline_known=baseline is not None)

    reg, pop, pred = run_or_exit(go)
    _emit("simulate", reg, pop, pred, fmt, plot, extra={})


def _emit(kind: str, reg: Any, pop: Any, pred: Any, fmt: Fmt, plot: Path | None, extra: dict[str, Any],
          target: tuple[float, float] | None = None, levels: Any = None) -> None:
    from mgaki.pk import toxicity_level_mg_dl

    tox_id, tox = toxicity_level_mg_dl(target[1] if target else 0.0)
    doses = [{"start_h": round(s, 3), "g_mgso4": round(g, 3), "mmol": round(m, 2), "duration_h": round(d, 3)}
             for s, g, m, d in zip(reg.start_h, reg.g_mgso4(), reg.mmol, reg.duration_h, strict=True)]
    out = {"command": kind, "model": pop.spec.id, "model_source": pop.spec.source.citation,
           "typical_parameters": {n: round(float(v), 4) for n, v in zip(pop.names, pop.typical, strict=True)},
           "notes": list(pop.notes), "doses": doses, **extra,
           "toxicity_mg_dl": round(tox, 3), "toxicity_id": tox_id,
           "p_peak_above_toxicity": pred.p_peak_above(tox), "prediction": pred.to_dict(),
           "disclaimer": "Population model from pregnant women; renal scaling is an assumption (docs/pk.md). "
                         "Supports, does not replace, clinical judgement."}
    if plot is not None:
        _plot(pred, plot, f"mgaki pk {kind}: {pop.spec.id}", target, levels)
    if fmt is Fmt.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    rows = [("model", f"{pop.spec.name} [{pop.spec.source.verification}]"),
            ("doses", "; ".join(f"{d['g_mgso4']:g} g ({d['mmol']:g} mmol) at {d['start_h']:g} h over "
                                f"{d['duration_h'] * 60:.0f} min" for d in doses))]
    rows += [(k, str(v)) for k, v in extra.items() if not isinstance(v, dict | list)]
    band = ""
    if pred.peak_samples_mg_dl is not None:
        q = (1 - pred.level) / 2
        lo, hi = np.quantile(pred.peak_samples_mg_dl, [q, 1 - q])
        band = f" ({pred.level:.0%} interval {lo:.2f}-{hi:.2f})"
    rows += [("predicted peak", f"{pred.peak_mg_dl:.2f} mg/dL at {pred.peak_time_h:.1f} h{band}"),
             ("at end of horizon", f"{pred.typical_mg_dl[-1]:.2f} mg/dL at {pred.times_h[-1]:.1f} h"),
             ("P(peak > toxicity)", f"{(pred.p_peak_above(tox) or 0.0):.1%} (toxicity {tox:.2f} mg/dL, {tox_id})")]
    rows += [("note", n) for n in pop.notes]
    _table(f"mgaki pk {kind}", rows)
    if plot is not None:
        err.print(f"plot written to {plot}")


@pk_app.command()
def fit(level: Annotated[list[str], typer.Option("--level", help="Measured level, repeatable: 6h=2.1mg/dL "
                                                                  "(hours from the first dose)")],
        dose: Dose = None, over: Over = None, then: Then = None, for_: For = None, every: Every = None,
        times: Times = 1, weight: Weight = None, crcl: Crcl = None, baseline: Baseline = None,
        model: Model = None, horizon: Horizon = None, seed: int = 0, plot: Plot = None,
        fmt: FmtOpt = Fmt.text) -> None:
    """Fit the patient's own parameters (Bayesian MAP) from measured levels and the doses given."""
    from mgaki.pk import fit_map, posterior_predict

    def go() -> tuple[Any, Any, Any, Any, Any]:
        reg = _regimen(dose or [], over or [], then, for_, every, times, weight)
        pop = _pop(model, weight, crcl, baseline)
        t, y = parse_levels(level)
        f = fit_map(pop, reg, t, y)
        return reg, pop, f, (t, y), posterior_predict(f, reg, _times(reg, horizon), seed=seed)

    reg, pop, f, levels, pred = run_or_exit(go)
    est = {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in f.estimates().items()}
    extra = {"estimates_95": est, "converged": f.converged,
             "fitted": ", ".join(f"{k} {v['map']:.3g} ({v['lower']:.3g}-{v['upper']:.3g})" for k, v in est.items())}
    _emit("fit", reg, pop, pred, fmt, plot, extra, levels=levels)


@pk_app.command()
def find(target: Annotated[str, typer.Option("--target", help="Target serum Mg range, mg/dL: 2.0-2.5")],
         weight: Weight = None, crcl: Crcl = None, baseline: Baseline = None, model: Model = None,
         egfr: Annotated[float | None, typer.Option("--egfr", help="eGFR, mL/min/1.73m2 (renal cap rule)")] = None,
         aki_stage: Annotated[int, typer.Option("--aki-stage", help="KDIGO AKI stage 0-3 (renal cap rule)")] = 0,
         horizon: Annotated[str, typer.Option("--horizon", help="Plan length")] = "24h",
         jurisdiction: Annotated[str, typer.Option(help="us | uk (daily maximum)")] = "us",
         emergency: Annotated[bool, typer.Option(help="Label rate limit (150 mg/min) instead of 2 g/h")] = False,
         severe_renal: Annotated[bool, typer.Option(
             "--severe-renal", help="Apply the severe-renal cap (20 g/48 h) even when eGFR/CrCl/AKI stage do not "
                                    "meet its rule (regimens.yaml cap_severe_renal); it always applies when they do")
         ] = False,
         seed: int = 0, plot: Plot = None, fmt: FmtOpt = Fmt.text) -> None:
    """Find a regimen that keeps serum Mg in the target range within the labelled limits."""
    from mgaki.pk import find_dose
    from mgaki.record import KidneyState

    def go() -> tuple[Any, Any, tuple[float, float]]:
        m = re.fullmatch(r"\s*" + _NUM + r"\s*-\s*" + _NUM + r"\s*", target)
        if not m:
            raise InputError("--target", f"cannot read {target!r}; write e.g. 2.0-2.5 (mg/dL)")
        if not 0 <= aki_stage <= 3:
            raise InputError("--aki-stage", f"KDIGO AKI stage is 0-3, got {aki_stage}")
        if egfr is not None and egfr < 0:
            raise InputError("--egfr", f"eGFR must not be negative, got {egfr:g}")
        lo, hi = float(m.group(1)), float(m.group(2))
        pop = _pop(model, weight, crcl, baseline)
        kidney = KidneyState(egfr=egfr, crcl=crcl, aki_stage=aki_stage)
        return pop, find_dose(pop, lo, hi, parse_hours(horizon, "--horizon"), jurisdiction=jurisdiction,
                              severe_renal=severe_renal, emergency=emergency, seed=seed, kidney=kidney), (lo, hi)

    pop, d, tgt = run_or_exit(go)
    info = d.to_dict()
    extra = {"regimen": d.description, "time_in_range": round(d.time_in_range, 3),
             "overshoot": d.overshoot, "overshoot_threshold": d.overshoot_threshold,
             "limits": info["limits"], "candidates": d.candidates,
             "limits_checked": "; ".join(
                 f"{c.limit_id} {c.value:.3g}/{c.limit:g} {c.unit} {'ok' if c.ok else 'EXCEEDED'}" for c in d.limits),
             "renal_cap": info["renal_cap"]}
    if d.renal_cap is not None:
        extra["renal_cap_applied"] = d.renal_cap.text()
    if d.notes:
        extra["finder_notes"] = "; ".join(d.notes)
    _emit("find", d.regimen, pop, d.prediction, fmt, plot, extra, target=tgt)


def register(app: typer.Typer) -> None:
    app.add_typer(pk_app, name="pk")
