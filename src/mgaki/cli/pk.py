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
from mgaki.errors import InputError, UnitError
from mgaki.units import dose_unit, rate_unit, to_hours

__all__ = ["parse_amount", "parse_hours", "parse_levels", "parse_rate", "register"]

pk_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                     help="Magnesium sulfate pharmacokinetics: simulate, fit from levels, find a dose.")

_NUM = r"(\d+(?:\.\d+)?)"


class Fmt(StrEnum):
    text = "text"
    json = "json"


def parse_hours(text: str, what: str = "time") -> float:
    """'20min', '1.5h', '2d' or a bare number of hours (units read by mgaki.units)."""
    m = re.fullmatch(_NUM + r"\s*([A-Za-z]*)", text.strip())
    if not m:
        raise InputError(what, f"cannot read {text!r} as a time (e.g. 20min, 1.5h)")
    if not m.group(2):
        return float(m.group(1))
    try:
        return to_hours(float(m.group(1)), m.group(2), what)
    except UnitError:
        raise InputError(what, f"cannot read {text!r} as a time (e.g. 20min, 1.5h)") from None


def parse_amount(text: str, what: str = "dose") -> tuple[float, str]:
    """'4g', '16mEq', '8mmol', '50mg/kg' -> (amount, UCUM dose unit)."""
    m = re.fullmatch(_NUM + r"\s*([A-Za-z/]+)", text.strip())
    if not m:
        raise InputError(what, f"cannot read {text!r} as a dose (e.g. 4g, 16mEq, 8mmol, 50mg/kg)")
    return float(m.group(1)), dose_unit(m.group(2), f"{what} {text!r}")


def parse_rate(text: str, what: str = "rate") -> tuple[float, str]:
    """'1g/h', '3mmol/h', '15mg/kg/h' -> (amount per hour, UCUM dose unit)."""
    m = re.fullmatch(_NUM + r"\s*([A-Za-z/]+)", text.strip())
    rate = rate_unit(m.group(2), f"{what} {text!r}") if m else None
    if not m or rate is None:
        raise InputError(what, f"cannot read {text!r} as a rate (e.g. 1g/h, 3mmol/h)")
    return float(m.group(1)) / rate.hours, dose_unit(rate.amount, f"{what} {text!r}")


def parse_levels(items: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """'6h=2.1mg/dL' (unit optional, mg/dL default) -> (times h, mg/dL), checked by the unit layer."""
    from mgaki.units import to_canonical

    times, values = [], []
    for item in items:
        m = re.fullmatch(r"\s*([^=]+)=\s*" + _NUM + r"\s*([A-Za-z/]*)\s*", item)
        if not m:
            raise InputError("level", f"cannot read {item!r}; write e.g. 6h=2.1mg/dL")
        times.append(_signed_hours(m.group(1), "level time"))
        values.append(to_canonical(float(m.group(2)), "magnesium", m.group(3) or "mg/dL", f"level {item}"))
    return np.array(times), np.array(values)


def _regimen(dose: list[str], over: list[str], then: str | None, for_h: str | None, every: str | None,
             times: int, weight: float | None, im: list[str] | None = None) -> Any:
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
        reg = reg + Regimen.rate(per_h, unit, t, run, weight_kg=weight)
    for item in im or []:
        m = re.fullmatch(r"\s*([^@]+)@\s*(.+)", item)
        if not m:
            raise InputError("--im", f"cannot read {item!r}; write e.g. 10g@0h")
        amount, unit = parse_amount(m.group(1), "--im")
        reg = reg + Regimen.dose(amount, unit, parse_hours(m.group(2), "--im time"), 0.0, weight_kg=weight,
                                 route="im")
    if not reg.mmol:
        raise InputError("regimen", "give at least one --dose, a --then rate or an --im injection")
    return reg


def _signed_hours(text: str, what: str) -> float:
    t = text.strip()
    return -parse_hours(t[1:], what) if t.startswith("-") else parse_hours(t, what)


class PatientOpts:
    """The patient options every command shares, turned into mgaki.pk Covariates (and a kidney course)."""

    def __init__(self, weight: float | None, crcl: float | None, creatinine: str | None, age: float | None,
                 pregnant: bool | None, aki: bool, creatinine_at: list[str] | None, dialysis: str | None,
                 session: list[str] | None, effluent: float | None, retention: float | None,
                 baseline: str | None) -> None:
        self.weight, self.crcl, self.creatinine, self.age = weight, crcl, creatinine, age
        self.pregnant, self.aki, self.creatinine_at = pregnant, aki, creatinine_at or []
        self.dialysis, self.session, self.effluent, self.retention = dialysis, session or [], effluent, retention
        self.baseline = baseline

    def baseline_mg_dl(self) -> float | None:
        from mgaki.units import to_canonical

        if not self.baseline:
            return None
        m = re.fullmatch(_NUM + r"\s*([A-Za-z/]*)", self.baseline.strip())
        if not m:
            raise InputError("--baseline", f"cannot read {self.baseline!r}; write e.g. 1.4mg/dL or 0.6mmol/L")
        return to_canonical(float(m.group(1)), "magnesium", m.group(2) or "mg/dL", "--baseline")

    def covariates(self) -> Any:
        from datetime import UTC, datetime, timedelta

        from mgaki.engine.repletion import pk_kidney_course
        from mgaki.knowledge import load
        from mgaki.pk import Covariates, Dialysis
        from mgaki.units import to_canonical

        scr = None
        if self.creatinine:
            m = re.fullmatch(_NUM + r"\s*([A-Za-z/]*)", self.creatinine.strip())
            if not m:
                raise InputError("--creatinine", f"cannot read {self.creatinine!r}; write e.g. 0.9mg/dL or 80umol/L")
            scr = to_canonical(float(m.group(1)), "creatinine", m.group(2) or "mg/dL", "--creatinine")
        course = None
        if self.creatinine_at:
            t0 = datetime(2000, 1, 1, tzinfo=UTC)
            series = []
            for item in self.creatinine_at:
                m = re.fullmatch(r"\s*([^=]+)=\s*" + _NUM + r"\s*([A-Za-z/]*)\s*", item)
                if not m:
                    raise InputError("--creatinine-at", f"cannot read {item!r}; write e.g. -24h=0.9 or 0h=1.8mg/dL")
                h = _signed_hours(m.group(1), "--creatinine-at time")
                v = to_canonical(float(m.group(2)), "creatinine", m.group(3) or "mg/dL", f"--creatinine-at {item}")
                series.append((t0 + timedelta(hours=h), v))
            if len(series) < 2:
                raise InputError("--creatinine-at", "a creatinine course needs at least two values")
            course = pk_kidney_course(load(), series, t0)
        dial = None
        if self.dialysis:
            kind = self.dialysis.lower()
            if kind not in ("hd", "crrt"):
                raise InputError("--dialysis", f"dialysis is hd or crrt, got {self.dialysis!r}")
            sessions = []
            for item in self.session:
                m = re.fullmatch(r"\s*([^+]+)\+\s*(.+)", item)
                if not m:
                    raise InputError("--session", f"cannot read {item!r}; write start+duration, e.g. 20h+4h")
                sessions.append((parse_hours(m.group(1), "--session start"), parse_hours(m.group(2), "--session")))
            if kind == "crrt" and sessions:
                raise InputError("--session", "CRRT is continuous: give --effluent, not sessions")
            dial = Dialysis(kind, tuple(sessions), self.effluent)  # type: ignore[arg-type]
        elif self.session or self.effluent is not None:
            raise InputError("--dialysis", "--session/--effluent need --dialysis hd|crrt")
        return Covariates(weight_kg=self.weight, crcl_ml_min=self.crcl, creatinine_mg_dl=scr, age_years=self.age,
                          pregnant=self.pregnant, aki=self.aki, kidney_course=course, dialysis=dial,
                          retained_fraction=self.retention)

    def population(self, model: str | None) -> Any:
        from mgaki.pk import population

        return population(model, self.covariates(), baseline_mg_dl=self.baseline_mg_dl())


def _plot(pred: Any, path: Path, title: str, target: tuple[float, float] | None = None,
          levels: tuple[np.ndarray, np.ndarray] | None = None, toxicity: tuple[float, str] | None = None,
          target_label: str = "target") -> None:
    """The predicted course (typical line, prediction band), the target band labelled, the toxicity line
    marked, measured levels: each named on the chart."""
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
    t_end = float(pred.times_h[-1])
    if target:
        band = pd.DataFrame({"lo": [target[0]], "hi": [target[1]], "t": [t_end],
                             "label": [f"{target_label} {target[0]:.1f}–{target[1]:.1f} mg/dL"]})
        layers.append(alt.Chart(band).mark_rect(opacity=0.12, color="#54a24b").encode(y="lo:Q", y2="hi:Q"))
        layers.append(alt.Chart(band).mark_text(align="right", baseline="bottom", dy=-2, color="#2e7d32").encode(
            x="t:Q", y="hi:Q", text="label:N"))
    if toxicity is not None:
        tox = pd.DataFrame({"y": [toxicity[0]], "t": [t_end], "label": [f"toxicity {toxicity[0]:.1f} mg/dL: "
                                                                        f"{toxicity[1]}"[:80]]})
        layers.append(alt.Chart(tox).mark_rule(color="#d62728", strokeDash=[6, 4], strokeWidth=2).encode(y="y:Q"))
        layers.append(alt.Chart(tox).mark_text(align="right", baseline="bottom", dy=-2, color="#d62728").encode(
            x="t:Q", y="y:Q", text="label:N"))
    if levels is not None:
        pts = pd.DataFrame({"time_h": levels[0], "level": levels[1]})
        layers.append(alt.Chart(pts).mark_point(color="#e45756", filled=True, size=60).encode(x=x, y="level:Q"))
    band_words = f"shaded: {pred.level:.0%} prediction band" if pred.level else "no band (typical course only)"
    subtitle = f"line: typical course; {band_words}" + ("; points: measured levels" if levels is not None else "")
    save(alt.layer(*layers).properties(width=560, height=280,
                                       title=alt.TitleParams(title, subtitle=subtitle)), path)


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    t = Table(title=title, show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    for k, v in rows:
        t.add_row(k, v)
    console().print(t)


Dose = Annotated[list[str] | None, typer.Option("--dose", help="IV dose, repeatable: 4g, 16mEq, 8mmol, 50mg/kg")]
Over = Annotated[list[str] | None, typer.Option("--over", help="Duration of each --dose: 20min, 1h (0 = push)")]
Then = Annotated[str | None, typer.Option("--then", help="Maintenance rate after the doses: 1g/h, 3mmol/h")]
For = Annotated[str | None, typer.Option("--for", help="How long the maintenance runs (default 24h)")]
Every = Annotated[str | None, typer.Option("--every", help="Repeat each --dose at this interval: 12h")]
Times = Annotated[int, typer.Option("--times", help="How many times --every repeats")]
Im = Annotated[list[str] | None, typer.Option("--im", help="IM injection, repeatable: 10g@0h, 5g@4h")]
Weight = Annotated[float | None, typer.Option("--weight", help="Body weight, kg")]
Crcl = Annotated[float | None, typer.Option("--crcl", help="Creatinine clearance, mL/min (renal cap rule; the "
                                                            "covariate of models that use CrCl; 0 is refused)")]
Creat = Annotated[str | None, typer.Option("--creatinine", help="Serum creatinine: 0.9 (mg/dL), 80umol/L")]
CreatAt = Annotated[list[str] | None, typer.Option(
    "--creatinine-at", help="Creatinine course, repeatable, hours from the first dose: -24h=0.9 0h=1.8 (AKI: "
                            "clearance follows the kinetic eGFR, Chen 2013)")]
Age = Annotated[float | None, typer.Option("--age", help="Age, years (adult models: < 18 is refused)")]
Pregnant = Annotated[bool | None, typer.Option("--pregnant/--not-pregnant",
                                               help="Antepartum (the models' population); default: not stated, "
                                                    "treated as outside it (wider uncertainty)")]
Aki = Annotated[bool, typer.Option("--aki", help="The patient has an AKI: a creatinine is then required")]
Dial = Annotated[str | None, typer.Option("--dialysis", help="hd (intermittent) or crrt (continuous); anuric assumed")]
Session = Annotated[list[str] | None, typer.Option("--session", help="HD session start+duration, repeatable: 20h+4h")]
Effluent = Annotated[float | None, typer.Option("--effluent", help="CRRT effluent, L/h (default pk.yaml)")]
Retention = Annotated[float | None, typer.Option("--retention", help="Share of each dose retained outside the model "
                                                                    "in a depleted patient, 0-0.95 (default 0)")]
Baseline = Annotated[str | None, typer.Option("--baseline", help="Pre-dose serum Mg: 1.4mg/dL, 0.6mmol/L")]
Model = Annotated[str | None, typer.Option("--model", help="pk.yaml model id (default: the file's default)")]
Context = Annotated[str | None, typer.Option("--context", help="Target and harm: eclampsia | repletion "
                                                                "(pk.yaml contexts; default repletion)")]
Horizon = Annotated[str | None, typer.Option("--horizon", help="Predict up to this time (default 24 h past "
                                                                "the last dose end, at least 24h)")]
Plot = Annotated[Path | None, typer.Option("--plot", help="Write the predicted course to a PNG/SVG")]
FmtOpt = Annotated[Fmt, typer.Option("--format", "-f")]


def _times(reg: Any, horizon: str | None) -> Any:
    from mgaki.pk import time_grid

    return time_grid(reg, parse_hours(horizon, "--horizon") if horizon else None)


@pk_app.command()
def simulate(dose: Dose = None, over: Over = None, then: Then = None, for_: For = None, every: Every = None,
             times: Times = 1, im: Im = None, weight: Weight = None, crcl: Crcl = None, creatinine: Creat = None,
             creatinine_at: CreatAt = None, age: Age = None, pregnant: Pregnant = None, aki: Aki = False,
             dialysis: Dial = None, session: Session = None, effluent: Effluent = None,
             retention: Retention = None, baseline: Baseline = None, model: Model = None, context: Context = None,
             horizon: Horizon = None, seed: int = 0, plot: Plot = None, fmt: FmtOpt = Fmt.text) -> None:
    """Predict serum Mg for a regimen, with a band over the model's variability, target attainment and harm."""
    from mgaki.pk import simulate as sim
    from mgaki.pk import targets

    pt = PatientOpts(weight, crcl, creatinine, age, pregnant, aki, creatinine_at, dialysis, session, effluent,
                     retention, baseline)

    def go() -> tuple[Any, Any, Any, Any]:
        reg = _regimen(dose or [], over or [], then, for_, every, times, weight, im)
        pop = pt.population(model)
        return reg, pop, sim(pop, reg, _times(reg, horizon), seed=seed), targets(context)

    reg, pop, pred, tg = run_or_exit(go)
    _emit("simulate", reg, pop, pred, tg, fmt, plot, extra={})


def _emit(kind: str, reg: Any, pop: Any, pred: Any, tg: Any, fmt: Fmt, plot: Path | None, extra: dict[str, Any],
          levels: Any = None, rows_extra: list[tuple[str, str]] | None = None) -> None:
    from mgaki.pk import risk
    from mgaki.pk._fit import parameter_units
    from mgaki.units import convert

    at_h = reg.end_h if reg.end_h > 0 else float(pred.times_h[-1])
    rk = risk(pred, tg, at_h)
    doses = [{"start_h": round(s, 3), "g_mgso4": round(g, 3), "mmol": round(m, 2), "duration_h": round(d, 3),
              "route": "im" if i else "iv"}
             for s, g, m, d, i in zip(reg.start_h, reg.g_mgso4(), reg.mmol, reg.duration_h, reg.im_flags(),
                                      strict=True)]
    base_mg = convert(pop.baseline_mmol_l, "magnesium", "mmol/L", "mg/dL")
    base_src = "measured (given)" if pop.baseline_known else f"assumed: {pop.spec.id}'s population baseline"
    units = parameter_units(pop)
    typical = {n: {"value": round(float(v), 4), "unit": units[n]} for n, v in zip(pop.names, pop.typical, strict=True)}
    out = {"command": kind, "model": pop.spec.id, "model_source": pop.spec.source.citation,
           "population": pop.population_label, "outside_population": list(pop.outside),
           "baseline": {"mg_dl": round(base_mg, 3), "mmol_l": round(pop.baseline_mmol_l, 4), "source": base_src},
           "typical_parameters": typical, "notes": list(pop.notes), "doses": doses, **extra,
           "risk": rk.to_dict(), "toxicity_mg_dl": round(tg.harm_mg_dl, 3), "toxicity_id": tg.harm_id,
           "p_peak_above_toxicity": rk.p_harm, "prediction": pred.to_dict(),
           "disclaimer": f"Population model built in {pop.population_label}; outside that population mgaki widens "
                         "the uncertainty (docs/pk.md). Supports, does not replace, clinical judgement."}
    if plot is not None:
        _plot(pred, plot, f"mgaki pk {kind}: {pop.spec.id}", (tg.low_mg_dl, tg.high_mg_dl), levels,
              (tg.harm_mg_dl, tg.harm_meaning), f"target ({tg.name})")
    if fmt is Fmt.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    rows = [("model", f"{pop.spec.name} [{pop.spec.source.verification}]"),
            ("built in", pop.population_label + ("; this patient is OUTSIDE it: " + "; ".join(pop.outside)
                                                 if pop.outside else "")),
            ("baseline", f"{base_mg:.2f} mg/dL ({pop.baseline_mmol_l:.2f} mmol/L), {base_src}"),
            ("doses", "; ".join(f"{d['g_mgso4']:g} g ({d['mmol']:g} mmol) {d['route'].upper()} at {d['start_h']:g} h"
                                + (f" over {d['duration_h'] * 60:.0f} min" if d['route'] == "iv" else "")
                                for d in doses))]
    rows += [(k, str(v)) for k, v in extra.items() if not isinstance(v, dict | list)]
    rows += rows_extra or []
    band = ""
    if pred.peak_samples_mg_dl is not None:
        q = (1 - pred.level) / 2
        lo, hi = np.quantile(pred.peak_samples_mg_dl, [q, 1 - q])
        band = f" ({pred.level:.0%} interval {lo:.2f}-{hi:.2f})"
    pt = "not sampled" if rk.p_target is None else f"{rk.p_target:.1%}"
    ph = rk.harm_text()
    rows += [("predicted peak", f"{pred.peak_mg_dl:.2f} mg/dL at {pred.peak_time_h:.1f} h{band}"),
             ("at end of horizon", f"{pred.typical_mg_dl[-1]:.2f} mg/dL at {pred.times_h[-1]:.1f} h"),
             (f"P(target, {tg.context})", f"{pt} inside {tg.low_mg_dl:.2f}-{tg.high_mg_dl:.2f} mg/dL at {rk.at_h:g} h"),
             ("P(harm)", f"{ph} peak above {tg.harm_mg_dl:.2f} mg/dL ({tg.harm_id}: {tg.harm_meaning.lower()})"
              + ("  OVERSHOOT RISK" if rk.overshoot else ""))]
    rows += [("note", n) for n in pop.notes]
    _table(f"mgaki pk {kind}", rows)
    if plot is not None:
        err.print(f"plot written to {plot}")


@pk_app.command()
def fit(level: Annotated[list[str], typer.Option("--level", help="Measured level, repeatable: 6h=2.1mg/dL "
                                                                  "(hours from the first dose; 0h or before = "
                                                                  "the pre-dose baseline)")],
        dose: Dose = None, over: Over = None, then: Then = None, for_: For = None, every: Every = None,
        times: Times = 1, im: Im = None, weight: Weight = None, crcl: Crcl = None, creatinine: Creat = None,
        creatinine_at: CreatAt = None, age: Age = None, pregnant: Pregnant = None, aki: Aki = False,
        dialysis: Dial = None, session: Session = None, effluent: Effluent = None, retention: Retention = None,
        baseline: Baseline = None, model: Model = None, context: Context = None, horizon: Horizon = None,
        seed: int = 0, plot: Plot = None, fmt: FmtOpt = Fmt.text) -> None:
    """Fit the patient's own parameters (Bayesian MAP) from measured levels and the doses given."""
    from mgaki.pk import fit_map, posterior_predict, targets
    from mgaki.pk._fit import MEANING, parameter_units

    pt = PatientOpts(weight, crcl, creatinine, age, pregnant, aki, creatinine_at, dialysis, session, effluent,
                     retention, baseline)

    def go() -> tuple[Any, Any, Any, Any, Any]:
        reg = _regimen(dose or [], over or [], then, for_, every, times, weight, im)
        pop = pt.population(model)
        t, y = parse_levels(level)
        f = fit_map(pop, reg, t, y)
        return reg, f, (t, y), posterior_predict(f, reg, _times(reg, horizon), seed=seed), targets(context)

    reg, f, levels, pred, tg = run_or_exit(go)
    est = {k: {"map": round(v["map"], 4), "lower": round(v["lower"], 4), "upper": round(v["upper"], 4),
               "unit": parameter_units(f.pop)[k], "meaning": MEANING.get(k, "")} for k, v in f.estimates().items()}
    extra: dict[str, Any] = {
        "estimates_95": est,
        "fit": {"converged": f.converged, "status": f.status(), "at_bound": list(f.at_bound),
                "baseline_from": f.baseline_from, "levels_fitted": f.n_levels,
                "inconsistent_levels": [{"time_h": i.time_h, "measured_mg_dl": i.measured_mg_dl,
                                         "fitted_mg_dl": round(i.fitted_mg_dl, 3), "z": round(i.z, 2)}
                                        for i in f.inconsistent],
                "notes": list(f.notes)}}
    rows = [("fit", f.status()), ("baseline from", f.baseline_from)]
    rows += [(f"fitted {k}", f"{v['map']:.3g} {v['unit']} (95% {v['lower']:.3g}-{v['upper']:.3g}) {v['meaning']}")
             for k, v in est.items()]
    rows += [("INCONSISTENT", i.text()) for i in f.inconsistent] + [("fit note", n) for n in f.notes]
    _emit("fit", reg, f.pop, pred, tg, fmt, plot, extra, levels=levels, rows_extra=rows)


@pk_app.command()
def find(target: Annotated[str | None, typer.Option("--target", help="Target serum Mg range, mg/dL: 2.0-2.5 "
                                                                     "(default: the --context's target)")] = None,
         weight: Weight = None, crcl: Crcl = None, creatinine: Creat = None, creatinine_at: CreatAt = None,
         age: Age = None, pregnant: Pregnant = None, aki: Aki = False, dialysis: Dial = None,
         session: Session = None, effluent: Effluent = None, retention: Retention = None,
         baseline: Baseline = None, model: Model = None, context: Context = None,
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
    from mgaki.pk import find_dose, targets
    from mgaki.record import KidneyState

    pt = PatientOpts(weight, crcl, creatinine, age, pregnant, aki or aki_stage >= 1, creatinine_at, dialysis,
                     session, effluent, retention, baseline)

    def go() -> tuple[Any, Any, Any]:
        if not 0 <= aki_stage <= 3:
            raise InputError("--aki-stage", f"KDIGO AKI stage is 0-3, got {aki_stage}")
        if egfr is not None and egfr < 0:
            raise InputError("--egfr", f"eGFR must not be negative, got {egfr:g}")
        tg = targets(context)
        if target is not None:
            m = re.fullmatch(r"\s*" + _NUM + r"\s*-\s*" + _NUM + r"\s*", target)
            if not m:
                raise InputError("--target", f"cannot read {target!r}; write e.g. 2.0-2.5 (mg/dL)")
            lo, hi = float(m.group(1)), float(m.group(2))
        else:
            lo, hi = tg.low_mg_dl, tg.high_mg_dl
        pop = pt.population(model)
        kidney = KidneyState(egfr=egfr, crcl=crcl, aki_stage=aki_stage)
        d = find_dose(pop, lo, hi, parse_hours(horizon, "--horizon"), jurisdiction=jurisdiction,
                      severe_renal=severe_renal, emergency=emergency, seed=seed, kidney=kidney,
                      context=tg.context if context is not None else None)
        return pop, d, tg

    pop, d, tg = run_or_exit(go)
    if context is None:  # a custom target without a context: harm = the first toxicity level above it
        from dataclasses import replace

        tg = replace(tg, context="custom", low_mg_dl=d.target_mg_dl[0], high_mg_dl=d.target_mg_dl[1],
                     harm_mg_dl=d.toxicity_mg_dl, harm_id=d.toxicity_id,
                     harm_meaning=_threshold_meaning(d.toxicity_id))
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
    _emit("find", d.regimen, pop, d.prediction, tg, fmt, plot, extra)


def _threshold_meaning(threshold_id: str) -> str:
    from mgaki.knowledge import load

    return load().threshold(threshold_id).meaning


@pk_app.command()
def vpc(dataset: Annotated[list[str] | None, typer.Option("--dataset", help="Published data set id, repeatable "
                                                                           "(default: all; see --list)")] = None,
        model: Annotated[list[str] | None, typer.Option("--model", help="pk.yaml model id, repeatable "
                                                                       "(default: the default model)")] = None,
        n: Annotated[int, typer.Option("--n", help="Simulated patients per cohort")] = 400,
        seed: int = 0, list_: Annotated[bool, typer.Option("--list", help="List the data sets and exit")] = False,
        plot: Annotated[Path | None, typer.Option("--plot", help="Write the VPC of the first data set to PNG/SVG")]
        = None,
        fmt: Annotated[str, typer.Option("--format", "-f", help="text | json | markdown (the docs table)")] = "text",
        ) -> None:
    """Visual predictive check against published cohorts (src/mgaki/pk/published.yaml): simulated vs published."""
    from mgaki.pk._vpc import datasets, validate

    if list_:
        for d in datasets():
            sys.stdout.write(f"{d.id}\t{d.population}\t{d.read}\n")
        return
    ids = dataset or [d.id for d in datasets()]
    models: list[str | None] = list(model) if model else [None]

    def go() -> list[Any]:
        if fmt not in ("text", "json", "markdown"):
            raise InputError("--format", f"text, json or markdown, got {fmt!r}")
        if not 10 <= n <= 5000:
            raise InputError("--n", "simulate 10-5000 patients per cohort")
        return [c for m in models for i in ids for c in validate(i, m, n=n, seed=seed)]

    checks = run_or_exit(go)
    if plot is not None:
        run_or_exit(lambda: _vpc_plot(ids[0], models[0], n, seed, plot))
        err.print(f"plot written to {plot}")
    if fmt == "json":
        sys.stdout.write(json.dumps([c.__dict__ for c in checks], indent=2) + "\n")
        return
    if fmt == "markdown":
        sys.stdout.write(validation_markdown(checks))
        return
    t = Table(title="mgaki pk vpc: published vs simulated")
    for col in ("data set", "model", "what", "published", "simulated", "tolerance", "pass"):
        t.add_column(col)
    for c in checks:
        t.add_row(c.dataset, c.model, c.what, f"{c.published:g} {c.published_spread}".strip(),
                  f"{c.simulated:g} {c.simulated_spread}".strip(), c.tolerance, "yes" if c.passed else "NO")
    console().print(t)


def validation_markdown(checks: list[Any]) -> str:
    """The validation table of docs/pk.md (one row per published value and model)."""
    lines = ["| data set | model | published value | unit | published | mgaki (simulated cohort) | tolerance | pass |",
             "|---|---|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| `{c.dataset}` | {c.model} | {c.what} | {c.unit} | {c.published:g} {c.published_spread} "
                     f"| {c.simulated:g} {c.simulated_spread} | {c.tolerance} | {'yes' if c.passed else '**no**'} |")
    return "\n".join(lines) + "\n"


def _vpc_plot(dataset_id: str, model: str | None, n: int, seed: int, path: Path) -> None:
    import altair as alt
    import pandas as pd

    from mgaki.pk._vpc import _dataset, simulate_cohort
    from mgaki.surveillance.plots import save
    from mgaki.units import convert, unit_kind

    ds = _dataset(dataset_id)
    arm = ds.arms["g_per_h"][0] if ds.arms else None
    t, c, _ = simulate_cohort(ds, model, arm, n, seed)
    per_equivalent = unit_kind(ds.unit) == "equivalent"  # published in mEq/L: plotted in mmol/L
    u = "mmol/L" if per_equivalent else ds.unit
    k = convert(1.0, "magnesium", "mmol/L", u)
    q = np.quantile(c, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0) * k
    df = pd.DataFrame({"time_h": t, "p05": q[0], "p25": q[1], "p50": q[2], "p75": q[3], "p95": q[4]})
    x = alt.X("time_h:Q", title="hours from the first dose")
    layers: list[Any] = [
        alt.Chart(df).mark_area(opacity=0.15, color="#4c78a8").encode(x=x, y="p05:Q", y2="p95:Q"),
        alt.Chart(df).mark_area(opacity=0.3, color="#4c78a8").encode(x=x, y="p25:Q", y2="p75:Q"),
        alt.Chart(df).mark_line(color="#4c78a8").encode(x=x, y=alt.Y("p50:Q", title=f"serum Mg, {u}")),
    ]
    pts = [{"time_h": p.t_h, "center": p.center * (k if per_equivalent else 1.0),
            "lo": (p.q25 if p.q25 is not None else p.center - (p.sd or 0.0)),
            "hi": (p.q75 if p.q75 is not None else p.center + (p.sd or 0.0))} for p in ds.points
           if p.statistic != "mean_rise"]
    if pts:
        pdf = pd.DataFrame(pts)
        layers += [alt.Chart(pdf).mark_rule(color="#e45756").encode(x=x, y="lo:Q", y2="hi:Q"),
                   alt.Chart(pdf).mark_point(color="#e45756", filled=True, size=70).encode(x=x, y="center:Q")]
    title = f"VPC {ds.id} ({model or 'default model'}): simulated 5/25/50/75/95% vs published (red)"
    save(alt.layer(*layers).properties(width=560, height=280, title=title), path)


def register(app: typer.Typer) -> None:
    app.add_typer(pk_app, name="pk")
