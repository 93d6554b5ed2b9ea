"""Charts a clinician would rather look at than read: one patient's course, the cohort's Mg vs AKI.

Built with Altair (Vega-Lite) and rendered to PNG/SVG offline by vl-convert;
the data behind each chart is aggregated in DuckDB first, so a cohort chart
carries a few dozen rows whatever the cohort size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import altair as alt
import duckdb
import pandas as pd
import pyarrow as pa

from mgaki.knowledge import KnowledgeBase, load
from mgaki.units import convert, normalize_unit

__all__ = ["cohort_mg_aki", "mg_bands", "patient_timeline", "save"]

STAGE_COLORS = {"0": "#4c78a8", "1": "#f2cf5b", "2": "#f58518", "3": "#e45756"}
STAGE_SCALE = alt.Scale(domain=list(STAGE_COLORS), range=list(STAGE_COLORS.values()))
_WIDTH = 640


def mg_bands(kb: KnowledgeBase) -> list[tuple[str, float, float]]:
    """Mg bands (mg/dL) from the CTCAE low scale, the reference range and the CTCAE high scale."""
    rr = kb.magnesium.reference_range
    lo, hi = (convert(x, "magnesium", rr.unit, "mg/dL") for x in (rr.low, rr.high))
    canonical = kb.analyte("magnesium").canonical_unit
    low = next(g for g in kb.magnesium.grades if g.direction == "low" and normalize_unit(g.unit) == canonical)
    cuts = sorted({b for band in low.bands for b in (band.lower, band.upper) if b is not None})
    edges = [0.0, *cuts, lo, (lo + hi) / 2, hi, hi + 0.5, 99.0]
    out = []
    for a, b in pairwise(edges):
        label = f"< {b:g}" if a == 0.0 else (f"≥ {a:g}" if b == 99.0 else f"{a:g}–{b:g}")
        out.append((label, a, b))
    return out


def cohort_mg_aki(results: Mapping[str, pa.Table], kb: KnowledgeBase | None = None) -> alt.VConcatChart:
    """AKI rate by lowest Mg of the encounter (is the review's U shape there?), and Mg by peak stage."""
    kb = kb or load()
    con = duckdb.connect()
    con.register("traj", results["mg_trajectory"])
    con.register("eps", results["aki_episodes"])
    bands = pd.DataFrame(mg_bands(kb), columns=["band", "lo", "hi"])
    bands["order"] = range(len(bands))
    con.register("bands", bands)
    per_enc = """SELECT t.subject_id, t.encounter_id, t.min_mg, t.time_weighted_mean,
                        COALESCE(MAX(e.peak_stage), 0) AS peak_stage
                 FROM traj t LEFT JOIN eps e ON e.subject_id = t.subject_id AND e.encounter_id = t.encounter_id
                 GROUP BY t.subject_id, t.encounter_id, t.min_mg, t.time_weighted_mean"""
    by_band = con.sql(f"""
        SELECT b.band, b."order", COUNT(*) AS encounters, AVG(CASE WHEN p.peak_stage > 0 THEN 1.0 ELSE 0 END)
               AS aki_rate
        FROM ({per_enc}) p JOIN bands b ON p.min_mg >= b.lo AND p.min_mg < b.hi
        GROUP BY b.band, b."order" ORDER BY b."order" """).df()
    by_stage = con.sql(f"""
        SELECT CAST(peak_stage AS VARCHAR) AS stage, COUNT(*) AS n,
               quantile_cont(time_weighted_mean, 0.05) AS p05, quantile_cont(time_weighted_mean, 0.25) AS q1,
               median(time_weighted_mean) AS med, quantile_cont(time_weighted_mean, 0.75) AS q3,
               quantile_cont(time_weighted_mean, 0.95) AS p95
        FROM ({per_enc}) GROUP BY peak_stage ORDER BY peak_stage""").df()
    con.close()
    order = list(by_band["band"])
    cis = [_wilson(round(r * n), int(n)) for r, n in zip(by_band["aki_rate"], by_band["encounters"], strict=True)]
    by_band["lo"] = [c[0] for c in cis]
    by_band["hi"] = [c[1] for c in cis]
    by_band["label"] = [f"n={int(n)}" for n in by_band["encounters"]]
    title = alt.TitleParams("AKI (any stage) by lowest serum Mg of the encounter",
                            subtitle="Bars: share of encounters with AKI in each Mg band (one encounter counted once); "
                                     "lines: 95% Wilson CI; n: encounters in the band")
    x = alt.X("band:N", sort=order, title="lowest Mg of the encounter, mg/dL", axis=alt.Axis(labelAngle=0))
    bars = alt.Chart(by_band, title=title).mark_bar(color="#4c78a8").encode(
        x=x, y=alt.Y("aki_rate:Q", axis=alt.Axis(format="%"), title="encounters with AKI (95% CI)",
                     scale=alt.Scale(domain=[0, 1])),
        tooltip=["band", "encounters", alt.Tooltip("aki_rate:Q", format=".1%"), alt.Tooltip("lo:Q", format=".1%"),
                 alt.Tooltip("hi:Q", format=".1%")],
    ).properties(width=_WIDTH, height=220)
    ci = alt.Chart(by_band).mark_rule(color="#222", strokeWidth=1.5).encode(x=x, y="lo:Q", y2="hi:Q")
    labels = alt.Chart(by_band).mark_text(dy=-6).encode(x=x, y="hi:Q", text="label:N")
    bars = bars + ci
    base = alt.Chart(by_stage, title="Time-weighted mean Mg by peak KDIGO stage (box 25–75%, whiskers 5–95%)")
    x = alt.X("stage:N", title="peak KDIGO stage (0 = no AKI)", axis=alt.Axis(labelAngle=0))
    color = alt.Color("stage:N", scale=STAGE_SCALE, legend=None)
    whisk = base.mark_rule().encode(x=x, y=alt.Y("p05:Q", title="mg/dL", scale=alt.Scale(zero=False)), y2="p95:Q")
    box = base.mark_bar(size=28).encode(x=x, y="q1:Q", y2="q3:Q", color=color,
                                        tooltip=["stage", "n", "med", "q1", "q3"])
    med = base.mark_tick(color="black", size=28).encode(x=x, y="med:Q")
    return alt.vconcat(bars + labels, (whisk + box + med).properties(width=_WIDTH, height=220))


def _wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of k/n (the same as research.alert_eval.wilson; surveillance imports no research)."""
    if n == 0:
        return (math.nan, math.nan)
    z = 1.959963984540054
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def patient_timeline(tables: dict[str, pa.Table], results: Mapping[str, pa.Table], subject_id: str,
                     encounter_id: str, kb: KnowledgeBase | None = None) -> alt.VConcatChart:
    """Creatinine with KDIGO stage, AKI episodes shaded; Mg with range, MgSO4 doses and alerts; urine rate."""
    kb = kb or load()
    con = duckdb.connect()
    for name in ("events", "medications", "encounters"):
        con.register(name, tables[name])
    for name in ("kdigo_creatinine", "kdigo_urine", "aki_episodes", "alerts"):
        con.register(name, results[name])
    params: dict[str, Any] = {"s": subject_id, "e": encounter_id}
    cr = con.sql("""SELECT time, value, CAST(stage AS VARCHAR) AS stage, COALESCE(criterion, '') AS criterion
                    FROM kdigo_creatinine WHERE subject_id = $s AND encounter_id = $e ORDER BY time""",
                 params=params).df()
    eps = con.sql("""SELECT onset, COALESCE(recovery, (SELECT max(time) FROM events WHERE subject_id = $s)) AS until,
                            peak_stage FROM aki_episodes WHERE subject_id = $s AND encounter_id = $e""",
                  params=params).df()
    window = """(SELECT min(start) FROM encounters WHERE subject_id = $s AND encounter_id = $e) AND
                (SELECT max(COALESCE("end", start + INTERVAL 30 DAY)) FROM encounters
                 WHERE subject_id = $s AND encounter_id = $e)"""
    mg = con.sql(f"""SELECT time, numeric_value AS value FROM events WHERE subject_id = $s
                     AND analyte = 'magnesium' AND time BETWEEN {window} ORDER BY time""", params=params).df()
    doses = con.sql(f"""SELECT start AS time, mg_mmol, name FROM medications WHERE subject_id = $s
                        AND drug = 'magnesium sulfate' AND start BETWEEN {window}""", params=params).df()
    alerts = con.sql("""SELECT time, kind, severity, detail FROM alerts WHERE subject_id = $s AND encounter_id = $e""",
                     params=params).df()
    uo = con.sql("""SELECT time, rate_6h FROM kdigo_urine WHERE subject_id = $s AND encounter_id = $e
                    AND rate_6h IS NOT NULL ORDER BY time""", params=params).df()
    rrt = con.sql(f"""SELECT min(time) AS time FROM events WHERE subject_id = $s AND analyte = 'rrt'
                      AND time BETWEEN {window} HAVING min(time) IS NOT NULL""", params=params).df()
    con.close()
    rr = kb.magnesium.reference_range
    lo, hi = (convert(x, "magnesium", rr.unit, "mg/dL") for x in (rr.low, rr.high))
    x = alt.X("time:T", title=None)
    shade = alt.Chart(eps).mark_rect(opacity=0.15, color="#e45756").encode(x="onset:T", x2="until:T")
    cr_line = alt.Chart(cr).mark_line(color="#888").encode(x=x, y=alt.Y("value:Q", title="creatinine, mg/dL"))
    cr_pts = alt.Chart(cr).mark_circle(size=60).encode(
        x=x, y="value:Q", color=alt.Color("stage:N", title="KDIGO stage", scale=STAGE_SCALE),
        tooltip=["time:T", "value:Q", "stage:N", "criterion:N"])
    title = f"{subject_id} / {encounter_id}: creatinine (AKI episodes shaded)"
    cr_layers: list[Any] = [shade, cr_line, cr_pts]
    if len(rrt):  # dialysis start: the KDIGO stage-3 criterion, and the end of what creatinine means
        rrt["label"] = "dialysis (RRT) start"
        cr_layers += [alt.Chart(rrt).mark_rule(color="#6a3d9a", strokeWidth=2).encode(x="time:T",
                                                                                     tooltip=["label:N", "time:T"]),
                      alt.Chart(rrt).mark_text(align="left", dx=4, dy=-70, color="#6a3d9a").encode(
                          x="time:T", text="label:N")]
        title += "; purple line: dialysis (RRT) start"
    top = alt.layer(*cr_layers).properties(width=_WIDTH, height=160, title=title)
    band = alt.Chart(pd.DataFrame({"lo": [lo], "hi": [hi]})).mark_rect(opacity=0.12, color="#54a24b").encode(
        y="lo:Q", y2="hi:Q")
    mg_line = alt.Chart(mg).mark_line(point=True, color="#4c78a8").encode(
        x=x, y=alt.Y("value:Q", title="Mg, mg/dL", scale=alt.Scale(zero=False)), tooltip=["time:T", "value:Q"])
    layers = [band, mg_line]
    if len(doses):
        layers.append(alt.Chart(doses).mark_rule(color="#54a24b", strokeDash=[4, 2]).encode(
            x="time:T", tooltip=["time:T", "name:N", alt.Tooltip("mg_mmol:Q", format=".1f", title="mmol Mg")]))
    if len(alerts):
        words = {a.kind: a.label for a in kb.evaluation.alerts}
        alerts["alert"] = [words.get(k, k) for k in alerts["kind"]]
        # which alert each marker is: shape and colour by kind (legend), severity in the tooltip
        layers.append(alt.Chart(alerts).mark_point(size=110, filled=True).encode(
            x="time:T", y=alt.value(6),
            shape=alt.Shape("alert:N", title="alert", legend=alt.Legend(orient="right")),
            color=alt.Color("alert:N", title="alert", scale=alt.Scale(scheme="dark2")),
            tooltip=["time:T", "alert:N", "severity:N", "detail:N"]))
    middle = alt.layer(*layers).properties(width=_WIDTH, height=160,
                                           title="Mg (range shaded), MgSO4 doses (dashed green lines), alerts "
                                                 "(markers at the top, by kind)")
    charts: list[Any] = [top, middle]
    if len(uo):
        thr = kb.value("kdigo_uo_stage1_rate")
        rule = alt.Chart(pd.DataFrame({"y": [thr]})).mark_rule(color="#e45756", strokeDash=[3, 3]).encode(y="y:Q")
        charts.append((alt.Chart(uo).mark_line(color="#72b7b2").encode(
            x=x, y=alt.Y("rate_6h:Q", title="urine, mL/kg/h (6 h)")) + rule).properties(width=_WIDTH, height=120))
    out: alt.VConcatChart = alt.vconcat(*charts).resolve_scale(x="shared", color="independent")
    return out


def save(chart: alt.TopLevelMixin, path: Path) -> Path:
    """PNG or SVG by suffix, rendered offline (vl-convert)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(str(path), scale_factor=1.5) if path.suffix == ".png" else chart.save(str(path))
    return path
