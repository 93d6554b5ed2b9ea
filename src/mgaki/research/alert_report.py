"""The report of ``mgaki evaluate`` (issue 17 point 4): tables and charts of ``alert_eval.evaluate``'s result.

One renderer for the CLI (a standalone HTML file with its PNGs beside it) and the dashboard's report page (the
same HTML fragment, images inline). Every chart states what it counts and shows its 95% intervals.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["burden_chart", "charts", "clean", "inline_images", "lab_to_action_chart", "ppv_chart",
           "render_fragment", "render_html", "risk_chart"]

_W = 520
_ARMS = alt.Scale(domain=["live", "silent"], range=["#d62728", "#7f7f7f"])


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not math.isnan(float(x))


def burden_chart(res: dict[str, Any]) -> alt.Chart | None:
    rows = [{"kind": b["label"], "arm": arm, "rate": 100 * n / res["patient_days"]}
            for b in res["burden"] for arm, n in (("live", b["shown"]), ("silent", b["silent"]))
            if res["patient_days"] and n]
    if not rows:
        return None
    chart: alt.Chart = alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        y=alt.Y("kind:N", title=None, sort="-x"),
        x=alt.X("rate:Q", stack=True, title="alerts per 100 patient-days (bars count alerts)"),
        color=alt.Color("arm:N", scale=_ARMS, title="arm (live: shown; silent: shadow)"),
        tooltip=["kind", "arm", alt.Tooltip("rate:Q", format=".1f")],
    ).properties(width=_W, title="Alert burden by kind and arm")
    return chart


def ppv_chart(res: dict[str, Any]) -> alt.LayerChart | None:
    rows = [{"kind": p["label"], "target": p["target_label"], "ppv": p["all"]["ppv"], "lo": p["all"]["low"],
             "hi": p["all"]["high"], "n": p["all"]["n"]} for p in res["ppv"] if p["all"]["n"]]
    if not rows:
        return None
    base = alt.Chart(pd.DataFrame(rows))
    y = alt.Y("kind:N", title=None)
    rule = base.mark_rule(strokeWidth=2, color="#4c78a8").encode(y=y, x="lo:Q", x2="hi:Q")
    pts = base.mark_point(filled=True, size=70, color="#4c78a8").encode(
        y=y, x=alt.X("ppv:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"),
                     title="PPV: share of alerts followed by the outcome they exist to prevent (95% CI)"),
        tooltip=["kind", "target", "n", alt.Tooltip("ppv:Q", format=".1%")])
    out: alt.LayerChart = (rule + pts).properties(width=_W, title="Positive predictive value of each alert kind")
    return out


def _km_steps(minutes: list[list[Any]], arm: str, kind: str) -> list[dict[str, Any]]:
    if not minutes:
        return []
    t = np.array([m[0] for m in minutes], float)
    e = np.array([m[1] for m in minutes], bool)
    out = [{"kind": kind, "arm": arm, "minutes": 0.0, "acted": 0.0}]
    if e.any():
        res = stats.ecdf(stats.CensoredData(uncensored=t[e], right=t[~e]))
        for q, p in zip(res.sf.quantiles, res.sf.probabilities, strict=True):
            out.append({"kind": kind, "arm": arm, "minutes": float(q), "acted": float(1 - p)})
    out.append({"kind": kind, "arm": arm, "minutes": float(t.max()), "acted": out[-1]["acted"]})
    return out


def lab_to_action_chart(res: dict[str, Any]) -> alt.FacetChart | None:
    rows: list[dict[str, Any]] = []
    for c in res["comparisons"]:
        lab = c["lab_to_action"]
        if lab is None or (not c["n_live"] and not c["n_silent"]):
            continue
        label = next((b["label"] for b in res["burden"] if b["kind"] == c["kind"]), c["kind"])
        for arm in ("live", "silent"):
            rows += _km_steps(lab["minutes"].get(arm, []), arm, label)
    if not rows:
        return None
    d = pd.DataFrame(rows)
    d["hours"] = d["minutes"] / 60
    chart = alt.Chart(d).mark_line(interpolate="step-after").encode(
        x=alt.X("hours:Q", title="hours from the triggering result"),
        y=alt.Y("acted:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1]),
                title="share acted on (Kaplan-Meier)"),
        color=alt.Color("arm:N", scale=_ARMS, title="arm"),
    ).properties(width=240, height=170)
    out: alt.FacetChart = chart.facet(facet=alt.Facet("kind:N", title=None), columns=2).properties(
        title="Lab-to-action: first Mg dose (or hold, or next Mg) after the alert, censored at 24 h or discharge")
    return out


def risk_chart(res: dict[str, Any]) -> alt.FacetChart | None:
    rows = []
    for c in res["comparisons"]:
        label = next((b["label"] for b in res["burden"] if b["kind"] == c["kind"]), c["kind"])
        for b in c["binary"]:
            if c["n_live"] and c["n_silent"] and _finite(b["rd"]):
                rows.append({"kind": label, "outcome": b["label"], "rd": 100 * b["rd"], "lo": 100 * b["rd_low"],
                             "hi": 100 * b["rd_high"]})
    if not rows:
        return None
    d = pd.DataFrame(rows)
    base = alt.Chart(d)
    y = alt.Y("outcome:N", title=None)
    rule = base.mark_rule(strokeWidth=2).encode(y=y, x="lo:Q", x2="hi:Q", color=alt.value("#4c78a8"))
    pts = base.mark_point(filled=True, size=60, color="#4c78a8").encode(
        y=y, x=alt.X("rd:Q", title="risk difference, live minus silent, percentage points (95% CI)"),
        tooltip=["kind", "outcome", alt.Tooltip("rd:Q", format=".1f")])
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(strokeDash=[4, 3], color="#666").encode(x="x:Q")
    layered = alt.layer(zero, rule, pts, data=d).properties(width=_W, height=110)
    out: alt.FacetChart = layered.facet(row=alt.Row("kind:N", title=None)).properties(
        title="Outcomes, live against silent arm (first alert per patient)")
    return out


def charts(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Vega-Lite specs of the report's charts (charts without data are left out)."""
    made = {"burden": burden_chart(res), "ppv": ppv_chart(res), "lab_to_action": lab_to_action_chart(res),
            "risk": risk_chart(res)}
    return {k: c.to_dict(validate=False) for k, c in made.items() if c is not None}


def _png(spec: dict[str, Any]) -> bytes:
    import vl_convert as vlc

    data: bytes = vlc.vegalite_to_png(json.dumps(spec), scale=1.5)
    return data


def _f(x: Any, pct: bool = False, nd: int = 1) -> str:
    if not _finite(x):
        return "–"
    return f"{100 * float(x):.{nd}f}%" if pct else f"{float(x):.{nd}f}"


def _p(p: Any) -> str:
    if not _finite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='grid'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def render_fragment(res: dict[str, Any], images: dict[str, str], source: str) -> str:
    """The report body: ``images`` maps chart names to image URLs (data: URIs or files beside the report)."""
    e = html.escape
    parts = [f"<p class='muted'>{e(source)}. {res['alerts']} alerts ({res['alerts_shown']} shown live), "
             f"{res['encounters']} encounters, {_f(res['patient_days'])} patient-days.</p>"]
    parts += [f"<p class='warn'>{e(w)}</p>" for w in res["warnings"]]
    parts.append("<h2>Alert burden</h2>")
    parts.append(_table(["Alert", "Alerts", "Shown (live)", "Silent", "per 100 patient-days",
                         "shown per 100 patient-days", "per encounter"],
                        [[e(b["label"]), str(b["alerts"]), str(b["shown"]), str(b["silent"]),
                          _f(b["per_100_patient_days"]), _f(b["shown_per_100_patient_days"]),
                          _f(b["per_encounter"], nd=2)] for b in res["burden"]]))
    if "burden" in images:
        parts.append(f"<img alt='alert burden chart' src='{images['burden']}'>")
    parts.append("<h2>Positive predictive value</h2><p class='muted'>Share of alerts followed by the outcome the "
                 "kind exists to prevent, with Wilson 95% intervals; the silent arm shows it without the "
                 "alert's influence.</p>")
    parts.append(_table(["Alert", "Outcome", "All", "Silent arm", "Live arm"],
                        [[e(p["label"]), e(p["target_label"])] +
                         [f"{_f(p[a]['ppv'], True)} ({p[a]['k']}/{p[a]['n']}; {_f(p[a]['low'], True)}–"
                          f"{_f(p[a]['high'], True)})" if p[a]["n"] else "–" for a in ("all", "silent", "live")]
                         for p in res["ppv"]]))
    if "ppv" in images:
        parts.append(f"<img alt='PPV chart' src='{images['ppv']}'>")
    parts.append("<h2>Live against silent</h2><p class='muted'>First alert of each kind per patient. "
                 "Lab-to-action: Kaplan-Meier median minutes (95% CI) and the log-rank test; outcomes: risk "
                 "difference (Newcombe) and ratio (log interval), chi-square p.</p>")
    lab_rows = []
    for c in res["comparisons"]:
        lab = c["lab_to_action"]
        label = next((b["label"] for b in res["burden"] if b["kind"] == c["kind"]), c["kind"])
        if lab is None:
            continue
        med = {a: f"{_f(lab['median_min'].get(a), nd=0)} ({_f(lab['median_ci'].get(a, [None])[0], nd=0)}–"
                  f"{_f(lab['median_ci'].get(a, [None, None])[1], nd=0)}); acted {lab['acted'].get(a, 0)}/"
                  f"{lab['n'].get(a, 0)}" for a in ("live", "silent")}
        verdict = ("live sooner" if lab["live_sooner"] else "different") if lab["significant"] else \
            "no significant difference"
        lab_rows.append([e(label), med["live"], med["silent"], _p(lab["p_logrank"]), verdict])
    parts.append(_table(["Alert", "Live: median min (CI); acted", "Silent: median min (CI); acted",
                         "log-rank p", "Finding"], lab_rows))
    if "lab_to_action" in images:
        parts.append(f"<img alt='lab-to-action chart' src='{images['lab_to_action']}'>")
    out_rows = []
    for c in res["comparisons"]:
        if not (c["n_live"] and c["n_silent"]):
            continue  # nothing to compare: said once in the warnings
        label = next((b["label"] for b in res["burden"] if b["kind"] == c["kind"]), c["kind"])
        for b in c["binary"]:
            out_rows.append([e(label), e(b["label"]), f"{b['live'][0]}/{b['live'][1]}",
                             f"{b['silent'][0]}/{b['silent'][1]}",
                             f"{_f(b['rd'], True)} ({_f(b['rd_low'], True)} to {_f(b['rd_high'], True)})",
                             f"{_f(b['rr'], nd=2)} ({_f(b['rr_low'], nd=2)}–{_f(b['rr_high'], nd=2)})",
                             _p(b["p"])])
    if out_rows:
        parts.append(_table(["Alert", "Outcome", "Live", "Silent", "Risk difference (95% CI)",
                             "Risk ratio (95% CI)", "p"], out_rows))
    if "risk" in images:
        parts.append(f"<img alt='risk difference chart' src='{images['risk']}'>")
    if "feedback" in res:
        fb = res["feedback"]
        parts.append("<h2>CDS Hooks feedback</h2><p class='muted'>Cards the EHR reported as accepted or overridden, "
                     "and the override reasons clinicians chose.</p>")
        parts.append(_table(["CDS service", "Accepted", "Overridden"],
                            [[e(s["service"]), str(s["accepted"]), str(s["overridden"])] for s in fb["services"]])
                     if fb["services"] else "<p class='muted'>No feedback received yet.</p>")
        if fb["override_reasons"]:
            parts.append(_table(["Override reason", "Code", "Times"],
                                [[e(r["display"]), e(r["code"]), str(r["n"])] for r in fb["override_reasons"]]))
    parts.append("<h2>Outcome definitions</h2>")
    parts.append(_table(["Outcome", "Window", "Meaning", "Source"],
                        [[e(o["label"]), f"{o['window_hours']:g} h", e(o["meaning"]), e(o["source"]["citation"])]
                         for o in res["outcomes"]]))
    if res["trials"]:
        parts.append("<h2>For scale: published trials of alerts</h2><ul>" + "".join(
            f"<li>{e(t['population'])}: {e(t['finding'])} ({e(t['source']['citation'])})</li>"
            for t in res["trials"]) + "</ul>")
    parts.append("<p class='muted'>Supports and does not replace clinical judgement. Definitions: "
                 "docs/evaluation.md.</p>")
    return "\n".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}
table.grid{border-collapse:collapse;margin:.5rem 0 1rem}table.grid td,table.grid th{border:1px solid #ccc;
padding:.25rem .5rem;text-align:left;font-size:.9rem}.muted{color:#555}.warn{color:#8a4b00;font-weight:600}
img{max-width:100%;display:block;margin:.5rem 0 1.5rem}"""


def render_html(res: dict[str, Any], out: Path, source: str) -> dict[str, Path]:
    """evaluation.html, evaluation.json and one PNG per chart in ``out``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    images: dict[str, str] = {}
    for name, spec in charts(res).items():
        p = out / f"evaluation_{name}.png"
        p.write_bytes(_png(spec))
        paths[name] = p
        images[name] = p.name
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>mgaki evaluate</title>"
            f"<style>{_CSS}</style></head><body><h1>Do the alerts help?</h1>"
            f"{render_fragment(res, images, source)}</body></html>")
    paths["html"] = out / "evaluation.html"
    paths["html"].write_text(page, encoding="utf-8")
    paths["json"] = out / "evaluation.json"
    paths["json"].write_text(json.dumps(clean(res), default=_json_default, indent=1, allow_nan=False), encoding="utf-8")
    return paths


def inline_images(res: dict[str, Any]) -> dict[str, str]:
    """Chart name -> a data: URI of its PNG (the dashboard's report page)."""
    return {name: "data:image/png;base64," + base64.b64encode(_png(spec)).decode("ascii")
            for name, spec in charts(res).items()}


def _json_default(o: Any) -> Any:
    return str(o)


def clean(obj: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj
