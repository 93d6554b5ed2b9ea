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
import re
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import altair as alt

from mgaki.surveillance.plots import STAGE_COLORS

__all__ = ["LABELS", "clinician_text", "criterion_text", "dose_chart", "link_of", "local_times", "timeline_chart",
           "words_for_ids"]

LABELS = {"magnesium": "Mg", "creatinine": "Creatinine", "potassium": "K", "calcium": "Ca",
          "urine_output": "Urine output"}
_AKI = alt.Scale(domain=["1", "2", "3"], range=[STAGE_COLORS[s] for s in ("1", "2", "3")])
_PANEL_H = 130
_WIDTH = 720  # the page sets the real width from its container
_TIME = "%d %b %H:%M"
_MIN_SPAN = 0.5  # a panel's y axis spans at least this share of its largest value: no zoom into lab noise

_REFERENCE = {"lowest_prior_7d": "the lowest value of the prior 7 days",
              "preadmission_median": "the pre-admission baseline (median)",
              "lowest_in_encounter_so_far": "the lowest value of the stay so far", "none": "no reference"}


def criterion_text(code: str | None) -> str | None:
    """A surveillance criterion id in words (``uo_lt_0.5_6h`` -> 'urine output < 0.5 mL/kg/h for 6 h'):
    the ids carry their numbers (surveillance/stages.py), so the words follow the knowledge base's values."""
    if not code:
        return code
    if m := re.fullmatch(r"uo_lt_([\d.]+)_([\d.]+)h", code):
        return f"urine output < {m[1]} mL/kg/h for {m[2]} h"
    if m := re.fullmatch(r"anuria_([\d.]+)h", code):
        return f"no urine (anuria) for {m[1]} h"
    if m := re.fullmatch(r"rise_([\d.]+)_([\d.]+)h", code):
        return f"creatinine rise of at least {m[1]} mg/dL within {m[2]} h"
    if m := re.fullmatch(r"ratio_(\w+)", code):
        return f"creatinine ratio to {_REFERENCE.get(m[1], m[1].replace('_', ' '))}"
    if m := re.fullmatch(r"scr_ge_([\d.]+)_during_aki", code):
        return f"creatinine at least {m[1]} mg/dL during AKI"
    return {"rrt": "renal replacement therapy started", "no_weight": "no weight: urine criteria not assessed",
            "uo_stage": "urine output"}.get(code, code.replace("_", " "))


_CRITERION_IDS = re.compile(r"\b(uo_lt_[\d.]+_[\d.]+h|anuria_[\d.]+h|rise_[\d.]+_[\d.]+h|ratio_[a-z0-9_]+|"
                            r"scr_ge_[\d.]+_during_aki)\b")
# internal references of the knowledge files (the project's own notes) that mean nothing to a clinician
_INTERNAL = (re.compile(r"\s*\([^()]*knowledge-brief[^()]*\)"),
             re.compile(r";?\s*knowledge-brief section [\w.]+(, [VSU])?"),
             re.compile(r"\s*\(?(shared/)?SPEC(\.md)?(#[\w()% -]+)?\)?(?=[\s,;.)]|$)"))


def words_for_ids(text: str | None) -> str | None:
    """Surveillance criterion ids inside a text (an alert's detail) replaced by their words."""
    return text if not text else _CRITERION_IDS.sub(lambda m: criterion_text(m[1]) or m[1], text)


def clinician_text(text: str | None) -> str | None:
    """A source's text without the project's internal notes ("knowledge-brief section 4, U", "SPEC C7")."""
    if not text:
        return text
    out = re.sub(r"\bmgaki SPEC C\d+\b", "mgaki design", text)
    out = re.sub(r"\bSPEC C\d+\b", "design", out)
    for rx in _INTERNAL:
        out = rx.sub("", out)
    return re.sub(r"\s{2,}", " ", out).strip(" ;,") or None


_REPO_FILE = re.compile(r"(knowledge-brief|^docs/|^shared/|\.md\b)")


def link_of(document: str | None) -> tuple[str | None, str | None]:
    """(URL, note) of a source's document field: "https://dailymed.nlm.nih.gov (magnesium sulfate injection)"
    is the address and what to look for there; a link made of the whole text is broken. A document that names
    one of the project's own files (knowledge-brief.md, docs/...) is no reference for a clinician: none."""
    if not document or not document.startswith(("http://", "https://")):
        return None, None if document and _REPO_FILE.search(document) else document
    url, _, note = document.partition(" ")
    return url, note.strip().strip("()") or None


def local_times(rows: list[dict[str, Any]], tz: str, keys: tuple[str, ...] = ("time", "start", "end")) -> list[
        dict[str, Any]]:
    """Rows with their naive UTC times as naive times of the site's zone (the chart draws the clock digits)."""
    zone = ZoneInfo(tz)
    out = []
    for row in rows:
        r = dict(row)
        for k in keys:
            v = r.get(k)
            if isinstance(v, str) and v:
                t = datetime.fromisoformat(v)
                r[k] = (t.replace(tzinfo=UTC) if t.tzinfo is None else t).astimezone(zone).replace(
                    tzinfo=None).isoformat()
        out.append(r)
    return out


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


def _bands(tl: dict[str, Any], data: _Data, x: alt.X, zoom: Any) -> Any:
    """AKI stages as a strip of their own above the panels (full colour, the stage written in it): never
    blended with a panel's reference shading."""
    if not tl["aki_bands"]:
        return None
    rows = [{**b, "stage": str(b["stage"]), "label": f"stage {b['stage']}",
             "criterion_text": criterion_text(b.get("criterion"))} for b in tl["aki_bands"]]
    base = data("aki_bands", rows)
    tips = [alt.Tooltip("stage:N", title="AKI stage"), alt.Tooltip("criterion_text:N", title="criterion"),
            alt.Tooltip("start:T", title="from", format=_TIME), alt.Tooltip("end:T", title="until", format=_TIME)]
    rect = base.mark_rect(opacity=0.85, stroke="#fff", strokeWidth=1).encode(
        x=x, x2="end:T", y=alt.value(0), y2=alt.value(26),
        color=alt.Color("stage:N", scale=_AKI, title="AKI stage (KDIGO)", legend=alt.Legend(orient="top")),
        tooltip=tips)
    text = base.mark_text(align="left", dx=4, fontSize=11, color="#222").encode(
        x=alt.X("start:T"), y=alt.value(13), text="label:N", tooltip=tips)
    return alt.layer(rect.add_params(zoom), text.add_params(zoom)).properties(
        width=_WIDTH, height=26, title=alt.TitleParams("AKI stage (KDIGO)", fontSize=11, anchor="start"))


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
    need = _MIN_SPAN * max(abs(v) for v in span)  # 0.92-0.96 mg/dL is noise, not a trend: show it flat
    if max(span) - min(span) < need:
        mid = (max(span) + min(span)) / 2
        span += [max(0.0, mid - need / 2) if min(span) >= 0 else mid - need / 2, mid + need / 2]
    pad = (max(span) - min(span)) * 0.08 or abs(max(span)) * 0.1 or 1.0
    title = f"{LABELS[analyte]}{' rate (6 h)' if rate else ''}, {unit}"
    # an explicit domain with room around it: zooming clips marks at the edge, a point must not sit on it
    scale = alt.Scale(domain=[min(span) - pad, max(span) + pad], nice=False, zero=False)
    y = alt.Y("value:Q", title=title, scale=scale)
    tips = [alt.Tooltip("time:T", title=f"time ({tl.get('timezone', 'UTC')})", format="%d %b %Y %H:%M"),
            alt.Tooltip("value:Q", title=unit, format=".2f")]
    if analyte == "creatinine":
        rows = [{**r, "criterion_text": criterion_text(r.get("criterion"))} for r in rows]
        tips += [alt.Tooltip("aki_stage:Q", title="KDIGO stage"),
                 alt.Tooltip("kdigo_reference:Q", title="reference", format=".2f"),
                 alt.Tooltip("criterion_text:N", title="criterion")]
    if not rate:
        tips.append(alt.Tooltip("source:N", title="source"))
    layers: list[Any] = []
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
    tz = tl.get("timezone", "UTC")
    tl = {**tl, "series": {a: local_times(r, tz) for a, r in tl["series"].items()},
          "urine_rate": local_times(tl.get("urine_rate") or [], tz), "doses": local_times(tl["doses"], tz),
          "aki_bands": local_times(tl["aki_bands"], tz)}
    # Vega's own multi-scale time labels (day at midnight, hours between), spaced so they never overlap
    axis = alt.Axis(labelOverlap="greedy", labelSeparation=10, labelFlush=True, tickCount=8)
    x = alt.X("time:T", title=f"time ({tz})", axis=axis, scale=alt.Scale(padding=8))
    panels: list[Any] = [p for a in tl["series"] if (p := _panel(tl, a, x, zoom, data)) is not None]
    strip = _bands(tl, data, alt.X("start:T", title=None, axis=None, scale=alt.Scale(padding=8)), zoom)
    if strip is not None:
        panels.insert(0, strip)
    if tl["doses"]:
        rows = [{**d, "end": d["end"] or d["start"],
                 "label": f"{d['g_mgso4']:g} g MgSO4" if d["g_mgso4"] is not None else f"{d['mg_mmol']:g} mmol Mg"}
                for d in tl["doses"]]
        tips = [alt.Tooltip("label:N", title="dose"), alt.Tooltip("name:N", title="drug"),
                alt.Tooltip("route:N", title="route"), alt.Tooltip("start:T", title="start", format=_TIME),
                alt.Tooltip("end:T", title="end", format=_TIME), alt.Tooltip("source:N", title="source")]
        base = data("doses", rows)
        bars = base.mark_bar(color="#54a24b", height=10, cornerRadius=2).encode(
            x=alt.X("start:T", title=f"time ({tz})", axis=axis), x2="end:T",
            y=alt.Y("label:N", title="Mg doses"), tooltip=tips)
        ticks = base.mark_tick(color="#2e7d32", thickness=3, size=16).encode(x="start:T", y="label:N", tooltip=tips)
        height = max(40, 24 * len({r["label"] for r in rows}))
        panels.append(alt.layer(bars.add_params(zoom), ticks.add_params(zoom)).properties(width=_WIDTH, height=height))
    if not panels:
        return {}
    spec = data.spec(alt.vconcat(*panels, spacing=12).resolve_scale(x="shared", color="shared"))
    for view in spec["vconcat"][:-1]:  # the time axis is named once, under the last panel
        for layer in view.get("layer", [view]):
            x_enc = layer.get("encoding", {}).get("x")
            if isinstance(x_enc, dict):
                x_enc["title"] = None
    return spec


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
