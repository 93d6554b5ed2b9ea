"""Vega-Lite specs of the dashboard, built server-side with Altair from the JSON the API returns.

The browser only embeds them (vendored vega-embed): zoom and pan on time (drag, wheel), tooltips
on every point. The timeline is one panel per series sharing the time axis, with AKI stage bands
(surveillance) and the knowledge base's reference range shaded; the dose chart is the predicted
course with its band, the target range and the toxicity level.

Altair builds the structure only: every layer reads a *named* dataset and the rows are put into
the spec's ``datasets`` afterwards, so the cost of a chart does not grow with the number of points
(Altair copies and validates whatever data a chart holds, at every layer and parameter).
Times stay naive UTC strings: the browser draws the same clock digits the rest of the page shows.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import altair as alt

from mgaki.surveillance.plots import STAGE_COLORS

__all__ = ["LABELS", "dose_chart", "timeline_chart"]

LABELS = {"magnesium": "Mg", "creatinine": "Creatinine", "potassium": "K", "calcium": "Ca",
          "urine_output": "Urine output"}
_AKI = alt.Scale(domain=["1", "2", "3"], range=[STAGE_COLORS[s] for s in ("1", "2", "3")])
_PANEL_H = 130
_WIDTH = 720  # the page sets the real width from its container
_TIME = "%d %b %H:%M"


class _Data:
    """Named datasets: charts refer to them by name, the rows join the spec at the end."""

    def __init__(self) -> None:
        self.sets: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, name: str, rows: list[dict[str, Any]]) -> alt.Chart:
        self.sets[name] = rows
        return alt.Chart(alt.Data(name=name))  # type: ignore[no-untyped-call]

    def spec(self, chart: Any) -> dict[str, Any]:
        out: dict[str, Any] = chart.to_dict(validate=False)  # the tests compile it with vl-convert
        out["datasets"] = {**out.get("datasets", {}), **self.sets}
        return out


def _one_zoom(build: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """One zoom on purpose: Altair merges the layers' identical selection into one top-level parameter
    over every view (what a shared zoom needs) and says so with a UserWarning, here expected."""

    @functools.wraps(build)
    def wrapped(arg: dict[str, Any]) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Automatically deduplicated selection parameter",
                                    category=UserWarning)
            return build(arg)
    return wrapped


def _zoom(name: str) -> Any:
    return alt.selection_interval(bind="scales", encodings=["x"], name=name)


def _bands(tl: dict[str, Any], data: _Data) -> alt.Chart | None:
    if not tl["aki_bands"]:
        return None
    rows = [{**b, "stage": str(b["stage"])} for b in tl["aki_bands"]]
    chart: alt.Chart = data("aki_bands", rows).mark_rect(opacity=0.18).encode(
        x="start:T", x2="end:T",
        color=alt.Color("stage:N", scale=_AKI, title="AKI stage (KDIGO)", legend=alt.Legend(orient="top")),
        tooltip=[alt.Tooltip("stage:N", title="AKI stage"), alt.Tooltip("criterion:N", title="criterion"),
                 alt.Tooltip("start:T", title="from", format=_TIME), alt.Tooltip("end:T", title="until", format=_TIME)])
    return chart


def _panel(tl: dict[str, Any], analyte: str, x: alt.X, zoom: Any, data: _Data) -> Any:
    rows = tl["series"][analyte]
    unit = tl["units"][analyte]
    rate = bool(analyte == "urine_output" and tl.get("urine_rate"))
    if rate:
        rows, unit = tl["urine_rate"], tl["urine_rate_unit"]
    if not rows:
        return None
    ref = tl["reference_ranges"].get(analyte) if not rate else None
    th = tl.get("urine_threshold") if rate else None
    values = [float(r["value"]) for r in rows]
    span = [min(values), max(values)] + ([ref["low"], ref["high"]] if ref else []) + ([th["value"]] if th else [])
    pad = (max(span) - min(span)) * 0.08 or abs(max(span)) * 0.1 or 1.0
    title = f"{LABELS[analyte]}{' rate (6 h)' if rate else ''}, {unit}"
    # an explicit domain with room around it: zooming clips marks at the edge, a point must not sit on it
    scale = alt.Scale(domain=[min(span) - pad, max(span) + pad], nice=False, zero=False)
    y = alt.Y("value:Q", title=title, scale=scale)
    tips = [alt.Tooltip("time:T", title="time (UTC)", format="%d %b %Y %H:%M"), alt.Tooltip("value:Q", title=unit)]
    if analyte == "creatinine":
        tips += [alt.Tooltip("aki_stage:Q", title="KDIGO stage"), alt.Tooltip("kdigo_reference:Q", title="reference"),
                 alt.Tooltip("criterion:N", title="criterion")]
    if not rate:
        tips.append(alt.Tooltip("source:N", title="source"))
    layers: list[Any] = []
    bands = _bands(tl, data)
    if bands is not None:
        layers.append(bands)
    if ref:
        label = {**ref, "label": f"reference {ref['low']:g}–{ref['high']:g} {ref['unit']}"}
        layers.append(data(f"range_{analyte}", [label]).mark_rect(opacity=0.13, color="#54a24b").encode(
            y=alt.Y("low:Q", scale=scale), y2="high:Q", tooltip=[alt.Tooltip("label:N", title="range"),
                                             alt.Tooltip("source:N", title="source")]))
    if th:
        layers.append(data("urine_threshold", [th]).mark_rule(color="#e45756", strokeDash=[4, 3]).encode(
            y=alt.Y("value:Q", scale=scale),
            tooltip=[alt.Tooltip("meaning:N", title="KDIGO"), alt.Tooltip("source:N", title="source")]))
    layers.append(data(f"series_{analyte}", rows).mark_line(
        point=alt.OverlayMarkDef(size=45, filled=True), color="#2f5f98").encode(x=x, y=y, tooltip=tips))
    # the zoom on every layer: a wheel or drag over a shaded band must zoom too
    return alt.layer(*(la.add_params(zoom) for la in layers)).properties(width=_WIDTH, height=_PANEL_H)


@_one_zoom
def timeline_chart(tl: dict[str, Any]) -> dict[str, Any]:
    """One panel per series with data (shared, zoomable time axis), then the Mg doses."""
    data = _Data()
    zoom = _zoom("zoom")
    x = alt.X("time:T", title=None, axis=alt.Axis(format=_TIME, labelOverlap=True), scale=alt.Scale(padding=8))
    panels: list[Any] = [p for a in tl["series"] if (p := _panel(tl, a, x, zoom, data)) is not None]
    if tl["doses"]:
        rows = [{**d, "end": d["end"] or d["start"],
                 "label": f"{d['g_mgso4']:g} g MgSO4" if d["g_mgso4"] is not None else f"{d['mg_mmol']:g} mmol Mg"}
                for d in tl["doses"]]
        tips = [alt.Tooltip("label:N", title="dose"), alt.Tooltip("name:N", title="drug"),
                alt.Tooltip("route:N", title="route"), alt.Tooltip("start:T", title="start", format=_TIME),
                alt.Tooltip("end:T", title="end", format=_TIME), alt.Tooltip("source:N", title="source")]
        base = data("doses", rows)
        bars = base.mark_bar(color="#54a24b", height=10, cornerRadius=2).encode(
            x=alt.X("start:T", title=None, axis=alt.Axis(format=_TIME, labelOverlap=True)), x2="end:T",
            y=alt.Y("label:N", title="Mg doses"), tooltip=tips)
        ticks = base.mark_tick(color="#2e7d32", thickness=3, size=16).encode(x="start:T", y="label:N", tooltip=tips)
        height = max(40, 24 * len({r["label"] for r in rows}))
        panels.append(alt.layer(bars.add_params(zoom), ticks.add_params(zoom)).properties(width=_WIDTH, height=height))
    if not panels:
        return {}
    return data.spec(alt.vconcat(*panels, spacing=12).resolve_scale(x="shared", color="shared"))


@_one_zoom
def dose_chart(plan: dict[str, Any]) -> dict[str, Any]:
    """Predicted serum Mg (typical and band) from the first dose to the horizon; hours from now."""
    data = _Data()
    level = f"{plan['level']:.0%} band" if plan.get("level") else "band"
    rows = [{**q, "part": "so far"} for q in plan["past_curve"]] + [{**q, "part": "planned"} for q in plan["curve"]]
    x = alt.X("time_h:Q", title="hours from now (latest data)")
    scale = alt.Scale(zero=False)
    y = alt.Y("typical_mg_dl:Q", title="predicted serum Mg, mg/dL", scale=scale)
    tips = [alt.Tooltip("time_h:Q", title="h from now", format=".2f"),
            alt.Tooltip("typical_mg_dl:Q", title="typical, mg/dL", format=".2f"),
            alt.Tooltip("lower_mg_dl:Q", title=f"{level} low", format=".2f"),
            alt.Tooltip("upper_mg_dl:Q", title=f"{level} high", format=".2f")]
    zoom = _zoom("dosezoom")
    base = data("curve", rows)
    layers: list[Any] = []
    if plan.get("target_mg_dl"):
        lo, hi = plan["target_mg_dl"]
        layers.append(data("target", [{"lo": lo, "hi": hi, "label": f"target {lo:g}–{hi:g} mg/dL"}])
                      .mark_rect(opacity=0.14, color="#54a24b").encode(y="lo:Q", y2="hi:Q", tooltip=["label:N"]))
    tox = {"tox": plan["toxicity_mg_dl"],
           "label": f"toxicity {plan['toxicity_mg_dl']:.2f} mg/dL: {plan['toxicity_meaning']}"}
    layers += [
        base.mark_area(opacity=0.25, color="#4c78a8").encode(x=x, y=alt.Y("lower_mg_dl:Q", scale=scale),
                                                             y2="upper_mg_dl:Q",
                                                             detail="part:N"),
        base.mark_line(strokeWidth=2.5).encode(
            x=x, y=y, tooltip=tips,
            color=alt.Color("part:N", scale=alt.Scale(domain=["so far", "planned"], range=["#888888", "#2f5f98"]),
                            title=None, legend=alt.Legend(orient="top"))),
        data("toxicity", [tox]).mark_rule(color="#d62728", strokeDash=[6, 4], strokeWidth=2).encode(
            y="tox:Q", tooltip=["label:N"]),
        data("now", [{"t": 0.0, "label": "now (latest data)"}]).mark_rule(color="#555", strokeDash=[2, 2]).encode(
            x="t:Q", tooltip=["label:N"]),
    ]
    if plan["measured"]:
        layers.append(data("measured", plan["measured"]).mark_point(
            filled=True, size=70, color="#e45756", shape="diamond").encode(
            x="time_h:Q", y="mg_dl:Q", tooltip=[alt.Tooltip("time_h:Q", title="h from now", format=".1f"),
                                                alt.Tooltip("mg_dl:Q", title="measured Mg, mg/dL")]))
    return data.spec(alt.layer(*(la.add_params(zoom) for la in layers)).properties(width="container", height=280))
