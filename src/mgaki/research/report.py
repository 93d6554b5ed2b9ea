"""One self-contained HTML report of a study: flow, Table 1, forest plot, spline, ROC, Cox, config, versions.

Figures are Altair charts rendered offline by vl-convert to PNG, written beside the
report and inlined into it as base64, so the HTML needs no network and no CDN.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import altair as alt
import pandas as pd

from mgaki.research.provenance import versions
from mgaki.research.results import StudyResult

__all__ = ["calibration_chart", "forest_chart", "prediction_roc_chart", "render_report", "roc_chart",
           "spline_chart"]

_W = 560
# prediction figures: logistic solid, gradient boosting dashed (explicit, not alphabetical order)
_DASH = alt.Scale(domain=["logistic", "gbm"], range=[[1, 0], [6, 3]])


def forest_chart(crude: pd.DataFrame, adjusted: pd.DataFrame, title: str) -> alt.LayerChart:
    """Band ORs with CIs, crude and adjusted side by side, log scale, reference line at 1."""
    d = pd.concat([crude.assign(model="crude"), adjusted.assign(model="adjusted")])
    d = d[d["or"].notna()].copy()
    d["lo"] = d["lo"].fillna(d["or"])
    d["hi"] = d["hi"].fillna(d["or"])
    order = list(crude["band"])
    y = alt.Y("band:N", sort=order, title="admission Mg, mg/dL")
    off = alt.YOffset("model:N", sort=["crude", "adjusted"])
    x = alt.X("or:Q", scale=alt.Scale(type="log"), title="odds ratio (95% CI, log scale)")
    color = alt.Color("model:N", sort=["crude", "adjusted"], scale=alt.Scale(range=["#9ecae9", "#4c78a8"]))
    base = alt.Chart(d)
    bars = base.mark_rule(strokeWidth=2).encode(y=y, yOffset=off, x="lo:Q", x2="hi:Q", color=color)
    pts = base.mark_point(filled=True, size=60).encode(y=y, yOffset=off, x=x, color=color,
                                                        tooltip=["band", "model", "n", "events", "or", "lo", "hi"])
    one = alt.Chart(pd.DataFrame({"x": [1.0]})).mark_rule(strokeDash=[4, 3], color="#666").encode(x="x:Q")
    out: alt.LayerChart = (one + bars + pts).properties(width=_W, height=260, title=title)
    return out


def spline_chart(curve: pd.DataFrame, knots: list[float], ref: float, title: str) -> alt.LayerChart:
    band = alt.Chart(curve).mark_area(opacity=0.2, color="#4c78a8").encode(
        x=alt.X("mg:Q", title="admission Mg, mg/dL", scale=alt.Scale(zero=False)), y="lo:Q", y2="hi:Q")
    line = alt.Chart(curve).mark_line(color="#4c78a8").encode(
        x="mg:Q", y=alt.Y("or:Q", scale=alt.Scale(type="log"), title=f"odds ratio vs Mg {ref:g} mg/dL"))
    k = alt.Chart(pd.DataFrame({"knot": knots})).mark_tick(color="#e45756", thickness=2).encode(
        x="knot:Q", y=alt.value(250))
    one = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(strokeDash=[4, 3], color="#666").encode(y="y:Q")
    out: alt.LayerChart = (band + line + one + k).properties(width=_W, height=260, title=title)
    return out


def roc_chart(rocs: list[object]) -> alt.LayerChart:
    frames = []
    for r in rocs:
        c = r.curve.assign(predictor=f"{r.name}: AUC {r.auc:.3f}")  # type: ignore[attr-defined]
        frames.append(c)
    d = pd.concat(frames) if frames else pd.DataFrame({"fpr": [], "tpr": [], "predictor": []})
    diag = alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line(strokeDash=[4, 3], color="#999").encode(
        x="x:Q", y="y:Q")
    line = alt.Chart(d).mark_line(interpolate="step-after").encode(
        x=alt.X("fpr:Q", title="1 - specificity"), y=alt.Y("tpr:Q", title="sensitivity"),
        color=alt.Color("predictor:N", legend=alt.Legend(orient="bottom", direction="vertical")))
    out: alt.LayerChart = (diag + line).properties(width=360, height=360, title="ROC, admission Mg")
    return out


def prediction_roc_chart(fits: list[object], horizon: float) -> alt.LayerChart:
    """Test-set ROC of every prediction model, coloured by feature set, dashed for gradient boosting."""
    d = pd.concat([f.roc.assign(model=f"{f.model_set} / {f.learner}: AUROC {f.auroc:.3f}",  # type: ignore[attr-defined]
                                learner=f.learner) for f in fits])  # type: ignore[attr-defined]
    diag = alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line(strokeDash=[4, 3], color="#999").encode(
        x="x:Q", y="y:Q")
    line = alt.Chart(d).mark_line().encode(
        x=alt.X("fpr:Q", title="1 - specificity"), y=alt.Y("tpr:Q", title="sensitivity"),
        color=alt.Color("model:N", legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=0)),
        strokeDash=alt.StrokeDash("learner:N", scale=_DASH, legend=None))
    out: alt.LayerChart = (diag + line).properties(width=360, height=360,
                                                   title=f"ROC, AKI in the next {horizon:g} h (test patients)")
    return out


def calibration_chart(fits: list[object]) -> alt.LayerChart:
    """Reliability curves (equal-count bins of predicted risk) against the diagonal."""
    d = pd.concat([f.calibration.assign(model=f"{f.model_set} / {f.learner}",  # type: ignore[attr-defined]
                                        learner=f.learner) for f in fits])  # type: ignore[attr-defined]
    top = float(max(d["predicted"].max(), d["observed"].max(), 0.05))
    diag = alt.Chart(pd.DataFrame({"x": [0, top], "y": [0, top]})).mark_line(strokeDash=[4, 3], color="#999").encode(
        x="x:Q", y="y:Q")
    line = alt.Chart(d).mark_line(point=True).encode(
        x=alt.X("predicted:Q", title="predicted risk (bin mean)"), y=alt.Y("observed:Q", title="observed share"),
        color=alt.Color("model:N", legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=0)),
        strokeDash=alt.StrokeDash("learner:N", scale=_DASH, legend=None))
    out: alt.LayerChart = (diag + line).properties(width=360, height=360, title="Calibration (test patients)")
    return out


def _prediction_html(result: StudyResult, img: object) -> str:
    pr = result.prediction
    if pr is None:
        return "<p class='note'>not requested (prediction: false)</p>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in pr.notes)
    if not pr.fits:
        return f"<ul>{notes}</ul>"
    show = img  # a callable name -> <img>
    return (f"<p>{pr.n_landmarks} landmarks of {pr.n_admissions} admissions ({pr.n_patients} patients); "
            f"train {pr.train_rows} rows / {pr.train_patients} patients ({pr.events_train} with AKI in the horizon), "
            f"test {pr.test_rows} rows / {pr.test_patients} patients ({pr.events_test}).</p>"
            f"{_table(pr.table())}{show('pred_roc')}{show('calibration')}"  # type: ignore[operator]
            f"<p class='note'>Models, feature lists and the model card: models/ beside this report.</p>"
            f"<ul class='note'>{notes}</ul>")


def _png(chart: alt.TopLevelMixin, path: Path) -> str:
    import vl_convert as vlc

    data = vlc.vegalite_to_png(chart.to_json(), scale=1.5)
    path.write_bytes(data)
    return base64.b64encode(data).decode("ascii")


def _fmt(v: object, nd: int = 2) -> str:
    if isinstance(v, float):
        return "" if pd.isna(v) else (f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.{nd}f}")
    return html.escape(str(v))


def _table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}.flow div{border:1px solid #4c78a8;border-radius:4px;padding:6px 10px;margin:4px 0;
width:520px}.flow .x{margin-left:60px;border-color:#e45756;color:#a33;width:440px;font-size:13px}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}.note{color:#555;font-size:13px}"""


def render_report(result: StudyResult, out: Path) -> dict[str, Path]:
    """Write report.html and figures/*.png under ``out``; returns their paths."""
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    cfg, co, o = result.config, result.cohort, result.config.primary_outcome
    crude, adj = result.crude[o], result.adjusted[o]
    charts = {
        "forest": forest_chart(crude.table, adj.table, f"{o}: odds ratio by admission Mg band"),
        "spline": spline_chart(result.spline.curve, result.spline.knots, result.spline.reference_mg,
                               f"{o}: restricted cubic spline ({len(result.spline.knots)} knots)"),
        "roc": roc_chart(list(result.rocs)),
    }
    if result.prediction is not None and result.prediction.fits:
        fits: list[object] = list(result.prediction.fits)
        charts["pred_roc"] = prediction_roc_chart(fits, cfg.prediction_horizon_hours)
        charts["calibration"] = calibration_chart(fits)
    imgs, paths = {}, {}
    for name, ch in charts.items():
        if name == "spline" and result.spline.curve.empty:
            continue
        paths[name] = figs / f"{name}.png"
        imgs[name] = _png(ch, paths[name])

    def img(name: str) -> str:
        return f'<img alt="{name}" src="data:image/png;base64,{imgs[name]}">' if name in imgs else \
            "<p class='note'>not estimable (see notes)</p>"

    flow = []
    for s in co.flow:
        if s.excluded:
            flow.append(f"<div class='x'>excluded: {s.excluded} (not: {html.escape(s.label)})</div>")
        flow.append(f"<div>{html.escape(s.label)}: <b>{s.remaining}</b></div>")
    sp = result.spline
    roc_rows = pd.DataFrame([{
        "predictor": r.name, "n": r.n, "events": r.events, "AUC": r.auc,
        "AUC CI": f"{r.auc_ci[0]:.3f}-{r.auc_ci[1]:.3f}",
        "Youden cut-off (mg/dL)": f"{'<=' if r.direction == 'low' else '>='} {r.cutoff:.2f}",
        "cut-off CI": f"{r.cutoff_ci[0]:.2f}-{r.cutoff_ci[1]:.2f}", "sensitivity": r.sensitivity,
        "sens CI": f"{r.sensitivity_ci[0]:.2f}-{r.sensitivity_ci[1]:.2f}", "specificity": r.specificity,
        "spec CI": f"{r.specificity_ci[0]:.2f}-{r.specificity_ci[1]:.2f}"} for r in result.rocs])
    other = []
    for k in cfg.outcomes:
        if k == o:
            continue
        t = result.adjusted[k].table[["band", "n", "events", "or", "lo", "hi", "note"]]
        other.append(f"<h3>{html.escape(k)} (adjusted; n = {result.adjusted[k].n_used}, "
                     f"left out for missing data: {result.adjusted[k].n_missing})</h3>{_table(t)}")
    notes = [*result.notes, *(f"crude: {n}" for n in crude.notes), *(f"adjusted: {n}" for n in adj.notes),
             *(f"spline: {n}" for n in sp.notes), *(f"Cox: {n}" for n in result.cox_notes)]
    vers = versions()
    ref = next(b.label for b in co.bands if b.reference)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mgaki study: admission Mg and AKI</title>
<style>{_CSS}</style></head><body>
<h1>Admission magnesium and in-hospital AKI</h1>
<p class="note">Generated by mgaki {html.escape(vers['mgaki'])} (knowledge {html.escape(vers['knowledge'])}).
Observational associations; they support and do not replace clinical judgement.
Exposure bands: {html.escape(cfg.band_study)} (evidence.yaml), reference {html.escape(ref)} mg/dL.</p>
<h2>Cohort flow</h2><div class="flow">{''.join(flow)}</div>
<h2>Table 1 (by {html.escape(o)})</h2>{result.table1_html}
<h2>Odds ratios by admission Mg band ({html.escape(o)})</h2>
<p>Crude n = {crude.n_used}; adjusted n = {adj.n_used} (left out for missing covariates: {adj.n_missing});
adjusted for: {html.escape(', '.join(adj.adjusted_for) or 'nothing')}.</p>
{img('forest')}
<h3>crude</h3>{_table(crude.table)}<h3>adjusted</h3>{_table(adj.table)}
<h2>Restricted cubic spline</h2>
<p>Knots (mg/dL): {', '.join(f'{k:.2f}' for k in sp.knots)}; likelihood-ratio test of non-linearity:
chi2 = {_fmt(sp.lr_stat)} on {sp.lr_df} df, p = {_fmt(sp.p_nonlinear, 4)} (n = {sp.n_used}).</p>{img('spline')}
<h2>ROC and Youden cut-offs</h2>{img('roc')}{_table(roc_rows) if len(roc_rows) else ''}
<p class="note">Percentile bootstrap ({cfg.bootstrap_reps} resamples, seed {cfg.seed}); the cut-off is chosen
again in every resample.</p>
<h2>Time-varying Cox: current Mg below/above the reference range</h2>
{_table(result.cox) if len(result.cox) else '<p class="note">not estimable (see notes)</p>'}
<h2>Combined-biomarker prediction: AKI in the next {cfg.prediction_horizon_hours:g} h</h2>
{_prediction_html(result, img)}
<h2>Other outcomes</h2>{''.join(other)}
<h2>Notes</h2><ul>{''.join(f'<li>{html.escape(n)}</li>' for n in notes)}</ul>
<h2>Configuration</h2><pre>{html.escape(json.dumps(cfg.model_dump(mode='json'), indent=1))}</pre>
<h2>Software</h2>{_table(pd.DataFrame(list(vers.items()), columns=['package', 'version']))}
<h2>Timing (s)</h2>{_table(pd.DataFrame(list(result.seconds.items()), columns=['stage', 'seconds']))}
</body></html>"""
    paths["report"] = out / "report.html"
    paths["report"].write_text(page, encoding="utf-8")
    return paths
