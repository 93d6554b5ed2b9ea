"""Vega-Lite specs of the dashboard, built server-side with Altair from the JSON the API returns.

The browser only embeds them (vendored vega-embed): zoom and pan on time (drag, wheel), tooltips
on every point. The timeline is one panel per series sharing the time axis, with AKI stage bands
(surveillance) and the knowledge base's reference range shaded; the dose chart is the predicted
course with its band, the target range and the toxicity level.
"""

from __future__ import annotations

import warnings
from typing import Any

import altair as alt
import pandas as pd

from mgaki.plots import STAGE_COLORS

__all__ = ["LABELS", "dose_chart", "timeline_chart"]

LABELS = {"magnesium": "Mg", "creatinine": "Creatinine", "potassium": "K", "calcium": "Ca",
          "urine_output": "Urine output"}
_AKI = alt.Scale(domain=["1", "2", "3"], range=[STAGE_COLORS[s] for s in ("1", "2", "3")])
_PANEL_H = 130
_WIDTH = 720  # the page sets the real width from its container


def _zoom(name: str) -> Any:
    return alt.selection_interval(bind="scales", encodings=["x"], name=name)


def _frame(rows: list[dict[str, Any]], time_cols: tuple[str, ...]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in time_cols:
        if c in df:
            df[c] = pd.to_datetime(df[c])
    return df


def _bands(tl: dict[str, Any]) -> alt.Chart | None:
    if not tl["aki_bands"]:
        return None
    df = _frame(tl["aki_bands"], ("start", "end"))
    df["stage"] = df["stage"].astype(str)
    return alt.Chart(df).mark_rect(opacity=0.18).encode(
        x="start:T", x2="end:T",
        color=alt.Color("stage:N", scale=_AKI, title="AKI stage (KDIGO)", legend=alt.Legend(orient="top")),
        tooltip=[alt.Tooltip("stage:N", title="AKI stage"), alt.Tooltip("criterion:N", title="criterion"),
                 alt.Tooltip("start:T", title="from", format="%d %b %H:%M"),
                 alt.Tooltip("end:T", title="until", format="%d %b %H:%M")])


def _panel(tl: dict[str, Any], analyte: str, x: alt.X, zoom: Any) -> alt.LayerChart | None:
    rows = tl["series"][analyte]
    unit = tl["units"][analyte]
    rate = analyte == "urine_output" and tl.get("urine_rate")
    if rate:
        rows, unit = tl["urine_rate"], tl["urine_rate_unit"]
    if not rows:
        return None
    df = _frame(rows, ("time",))
    title = f"{LABELS[analyte]}{' rate (6 h)' if rate else ''}, {unit}"
    y = alt.Y("value:Q", title=title, scale=alt.Scale(zero=False, nice=True, padding=6))
    tips = [alt.Tooltip("time:T", title="time", format="%d %b %Y %H:%M"), alt.Tooltip("value:Q", title=unit)]
    if analyte == "creatinine" and "aki_stage" in df:
        tips += [alt.Tooltip("aki_stage:Q", title="KDIGO stage"), alt.Tooltip("kdigo_reference:Q", title="reference"),
                 alt.Tooltip("criterion:N", title="criterion")]
    if "source" in df:
        tips.append(alt.Tooltip("source:N", title="source"))
    layers: list[Any] = []
    bands = _bands(tl)
    if bands is not None:
        layers.append(bands)
    ref = tl["reference_ranges"].get(analyte) if not rate else None
    if ref:
        rdf = pd.DataFrame([{**ref, "label": f"reference {ref['low']:g}–{ref['high']:g} {ref['unit']}"}])
        layers.append(alt.Chart(rdf).mark_rect(opacity=0.13, color="#54a24b").encode(
            y="low:Q", y2="high:Q", tooltip=[alt.Tooltip("label:N", title="range"),
                                             alt.Tooltip("source:N", title="source")]))
    if rate and tl.get("urine_threshold"):
        th = tl["urine_threshold"]
        layers.append(alt.Chart(pd.DataFrame([th])).mark_rule(color="#e45756", strokeDash=[4, 3]).encode(
            y="value:Q", tooltip=[alt.Tooltip("meaning:N", title="KDIGO"), alt.Tooltip("source:N", title="source")]))
    line = alt.Chart(df).mark_line(point=alt.OverlayMarkDef(size=45, filled=True), color="#2f5f98").encode(
        x=x, y=y, tooltip=tips)
    layers.append(line)
    # the zoom on every layer: a wheel or drag over a shaded band must zoom too
    return alt.layer(*(la.add_params(zoom) for la in layers)).properties(width=_WIDTH, height=_PANEL_H)


def timeline_chart(tl: dict[str, Any]) -> dict[str, Any]:
    """One panel per series with data (shared, zoomable time axis), then the Mg doses."""
    zoom = _zoom("zoom")
    x = alt.X("time:T", title=None, axis=alt.Axis(format="%d %b %H:%M", labelOverlap=True),
              scale=alt.Scale(padding=8))
    panels = [p for a in tl["series"] if (p := _panel(tl, a, x, zoom)) is not None]
    if tl["doses"]:
        df = _frame(tl["doses"], ("start", "end"))
        df["end"] = df["end"].fillna(df["start"])
        df["amount"] = df["g_mgso4"].fillna(df["mg_mmol"])
        df["label"] = [f"{g:g} g MgSO4" if pd.notna(g) else f"{m:g} mmol Mg" for g, m in zip(df["g_mgso4"],
                                                                                              df["mg_mmol"], strict=True)]
        base = alt.Chart(df)
        tips = [alt.Tooltip("label:N", title="dose"), alt.Tooltip("name:N", title="drug"),
                alt.Tooltip("route:N", title="route"), alt.Tooltip("start:T", title="start", format="%d %b %H:%M"),
                alt.Tooltip("end:T", title="end", format="%d %b %H:%M"), alt.Tooltip("source:N", title="source")]
        bars = base.mark_bar(color="#54a24b", height=10, cornerRadius=2).encode(
            x=alt.X("start:T", title=None, axis=alt.Axis(format="%d %b %H:%M", labelOverlap=True)), x2="end:T",
            y=alt.Y("label:N", title="Mg doses"), tooltip=tips)
        ticks = base.mark_tick(color="#2e7d32", thickness=3, size=16).encode(x="start:T", y="label:N", tooltip=tips)
        panels.append(alt.layer(bars.add_params(zoom), ticks.add_params(zoom)).properties(width=_WIDTH, height=max(40, 24 * df["label"].nunique())))
    if not panels:
        return {}
    with warnings.catch_warnings():
        # One zoom on purpose: Altair merges the panels' identical selection into one top-level
        # parameter over every view (what a shared zoom needs) and says so with a UserWarning.
        warnings.filterwarnings("ignore", message="Automatically deduplicated selection parameter",
                                category=UserWarning)
        chart = alt.vconcat(*panels, spacing=12).resolve_scale(x="shared", color="shared")
        spec: dict[str, Any] = chart.to_dict()
    return spec


def dose_chart(plan: dict[str, Any]) -> dict[str, Any]:
    """Predicted serum Mg (typical and band) from the first dose to the horizon; hours from now."""
    level = f"{plan['level']:.0%} band" if plan.get("level") else "band"
    cur = pd.DataFrame(plan["curve"]).assign(part="planned")
    past = pd.DataFrame(plan["past_curve"]).assign(part="so far") if plan["past_curve"] else None
    df = pd.concat([past, cur]) if past is not None else cur
    x = alt.X("time_h:Q", title="hours from now (latest data)")
    y = alt.Y("typical_mg_dl:Q", title="predicted serum Mg, mg/dL", scale=alt.Scale(zero=False))
    tips = [alt.Tooltip("time_h:Q", title="h from now", format=".2f"),
            alt.Tooltip("typical_mg_dl:Q", title="typical, mg/dL", format=".2f"),
            alt.Tooltip("lower_mg_dl:Q", title=f"{level} low", format=".2f"),
            alt.Tooltip("upper_mg_dl:Q", title=f"{level} high", format=".2f")]
    zoom = _zoom("dosezoom")
    base = alt.Chart(df)
    layers: list[Any] = []
    if plan.get("target_mg_dl"):
        lo, hi = plan["target_mg_dl"]
        layers.append(alt.Chart(pd.DataFrame([{"lo": lo, "hi": hi, "label": f"target {lo:g}–{hi:g} mg/dL"}]))
                      .mark_rect(opacity=0.14, color="#54a24b").encode(y="lo:Q", y2="hi:Q", tooltip=["label:N"]))
    layers += [
        base.mark_area(opacity=0.25, color="#4c78a8").encode(x=x, y="lower_mg_dl:Q", y2="upper_mg_dl:Q",
                                                             detail="part:N"),
        base.mark_line(strokeWidth=2.5).encode(
            x=x, y=y, tooltip=tips,
            color=alt.Color("part:N", scale=alt.Scale(domain=["so far", "planned"], range=["#888888", "#2f5f98"]),
                            title=None, legend=alt.Legend(orient="top"))).add_params(zoom),
        alt.Chart(pd.DataFrame([{"tox": plan["toxicity_mg_dl"],
                                 "label": f"toxicity {plan['toxicity_mg_dl']:.2f} mg/dL: {plan['toxicity_meaning']}"}]))
        .mark_rule(color="#d62728", strokeDash=[6, 4], strokeWidth=2).encode(y="tox:Q", tooltip=["label:N"]),
        alt.Chart(pd.DataFrame([{"t": 0.0, "label": "now (latest data)"}])).mark_rule(color="#555", strokeDash=[2, 2])
        .encode(x="t:Q", tooltip=["label:N"]),
    ]
    if plan["measured"]:
        layers.append(alt.Chart(pd.DataFrame(plan["measured"])).mark_point(
            filled=True, size=70, color="#e45756", shape="diamond").encode(
            x="time_h:Q", y="mg_dl:Q", tooltip=[alt.Tooltip("time_h:Q", title="h from now", format=".1f"),
                                                alt.Tooltip("mg_dl:Q", title="measured Mg, mg/dL")]))
    spec: dict[str, Any] = alt.layer(*layers).properties(width="container", height=280).to_dict()
    return spec
