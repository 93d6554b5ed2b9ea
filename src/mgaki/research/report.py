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
import numpy as np
import pandas as pd

from mgaki.research.provenance import versions
from mgaki.research.results import StudyResult
from mgaki.research.stats import format_p

__all__ = ["calibration_chart", "cif_chart", "decision_chart", "forest_chart", "love_chart", "prediction_roc_chart",
           "render_report", "roc_chart", "spline_chart"]

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


def spline_chart(curve: pd.DataFrame, knots: list[float], ref: float, title: str,
                 values: list[float] | None = None, adjusted_for: str = "") -> alt.LayerChart:
    """OR vs admission Mg with its CI band, knots (red ticks), a rug of the patients' Mg values (grey ticks
    along the axis) and the adjustment set in the subtitle."""
    lo_mg, hi_mg = float(curve["mg"].min()), float(curve["mg"].max())
    x = alt.X("mg:Q", title="admission Mg, mg/dL", scale=alt.Scale(zero=False, domain=[lo_mg, hi_mg]))
    band = alt.Chart(curve).mark_area(opacity=0.2, color="#4c78a8").encode(x=x, y="lo:Q", y2="hi:Q")
    line = alt.Chart(curve).mark_line(color="#4c78a8").encode(
        x="mg:Q", y=alt.Y("or:Q", scale=alt.Scale(type="log"), title=f"odds ratio vs Mg {ref:g} mg/dL"))
    k = alt.Chart(pd.DataFrame({"knot": knots})).mark_tick(color="#e45756", thickness=2).encode(
        x="knot:Q", y=alt.value(250))
    rug_vals = [v for v in (values or []) if lo_mg <= v <= hi_mg]
    rug = alt.Chart(pd.DataFrame({"mg": rug_vals})).mark_tick(color="#555", opacity=0.35, size=8).encode(
        x="mg:Q", y=alt.value(256))
    one = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(strokeDash=[4, 3], color="#666").encode(y="y:Q")
    sub = f"adjusted for: {adjusted_for or 'nothing (crude)'}; grey ticks: patients' values; red: knots"
    out: alt.LayerChart = (band + line + one + k + rug).properties(
        width=_W, height=260, title=alt.Title(title, subtitle=sub))
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
        color=alt.Color("predictor:N", legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=0,
                                                          title=None)))
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


def decision_chart(fits: list[object]) -> alt.LayerChart:
    """Decision curves: net benefit of each model against treating everyone (and no one, the zero line)."""
    d = pd.concat([f.decision.assign(model=f"{f.model_set} / {f.learner}",  # type: ignore[attr-defined]
                                     learner=f.learner) for f in fits])  # type: ignore[attr-defined]
    low = float(min(d["net_benefit"].min(), 0.0)) - 0.01
    high = float(max(d["net_benefit"].max(), d["treat_all"].max(), 0.0)) + 0.01
    allc = d.drop_duplicates("threshold")[["threshold", "treat_all"]]
    allc = allc[allc["treat_all"] >= low]  # treat-all falls steeply below zero: shown down to the models' range
    scale = alt.Scale(domain=[low, high], clamp=True)
    lines = alt.Chart(d).mark_line().encode(
        x=alt.X("threshold:Q", title="risk threshold"), y=alt.Y("net_benefit:Q", title="net benefit", scale=scale),
        color=alt.Color("model:N", legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=0)),
        strokeDash=alt.StrokeDash("learner:N", scale=_DASH, legend=None))
    treat = alt.Chart(allc).mark_line(color="#999", strokeDash=[2, 2]).encode(
        x="threshold:Q", y=alt.Y("treat_all:Q", scale=scale))
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="#666").encode(y="y:Q")
    out: alt.LayerChart = (zero + treat + lines).properties(
        width=360, height=300, title=alt.Title("Decision curve (test patients)",
                                               subtitle="grey dashed: treat everyone; black: treat no one"))
    return out


def love_chart(balance: pd.DataFrame, title: str) -> alt.LayerChart:
    """Love plot: absolute standardised mean differences before and after weighting, 0.1 marked."""
    d = pd.concat([balance.assign(smd=balance["smd_before"].abs(), when="before weighting"),
                   balance.assign(smd=balance["smd_after"].abs(), when="after weighting")])
    pts = alt.Chart(d).mark_point(filled=True, size=60).encode(
        y=alt.Y("covariate:N", sort=list(balance["covariate"]), title=None),
        x=alt.X("smd:Q", title="absolute standardised mean difference", axis=alt.Axis(tickCount=6)),
        color=alt.Color("when:N", sort=["before weighting", "after weighting"],
                        scale=alt.Scale(range=["#e45756", "#4c78a8"]), legend=alt.Legend(title=None, orient="bottom")))
    ten = alt.Chart(pd.DataFrame({"x": [0.1]})).mark_rule(strokeDash=[4, 3], color="#666").encode(x="x:Q")
    out: alt.LayerChart = (ten + pts).properties(width=360, height=22 * max(len(balance), 3), title=title)
    return out


def cif_chart(curves: pd.DataFrame, color: str, title: str) -> alt.Chart:
    """Cumulative incidence step curves (Aalen-Johansen) by group, x in days."""
    d = curves.assign(days=curves["hours"] / 24.0)
    out: alt.Chart = alt.Chart(d).mark_line(interpolate="step-after").encode(
        x=alt.X("days:Q", title="days from time zero"), y=alt.Y("risk:Q", title="cumulative incidence"),
        color=alt.Color(f"{color}:N", legend=alt.Legend(orient="bottom", labelLimit=0))).properties(
        width=360, height=260, title=title)
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
            f"{_table(pr.table())}{show('pred_roc')}{show('calibration')}{show('decision')}"  # type: ignore[operator]
            f"<p class='note'>Models, feature lists and the model card: models/ beside this report.</p>"
            f"<ul class='note'>{notes}</ul>")


def _png(chart: alt.TopLevelMixin, path: Path) -> str:
    import vl_convert as vlc

    data = vlc.vegalite_to_png(chart.to_json(), scale=1.5)
    path.write_bytes(data)
    return base64.b64encode(data).decode("ascii")


def _fmt(v: object, nd: int = 2) -> str:
    """A number for a table: 3 significant digits below 1 (no '1.00 (1.00-1.00)'), 2 decimals above."""
    if isinstance(v, float | np.floating):
        x = float(v)
        if pd.isna(x):
            return ""
        if x == 0:
            return "0"
        return f"{x:.{max(nd, 3)}g}" if abs(x) < 1 else (f"{x:.{nd}f}" if abs(x) < 1e4 else f"{x:.3g}")
    return html.escape(str(v))


def _table(df: pd.DataFrame) -> str:
    """An HTML table; a column named p (or ending in ' p') is shown as 'p < 0.001' / three decimals."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    pcols = {i for i, c in enumerate(df.columns) if str(c) == "p" or str(c).endswith(" p")}
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_p(v)) if i in pcols else _fmt(v)}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in df.itertuples(False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}.flow div{border:1px solid #4c78a8;border-radius:4px;padding:6px 10px;margin:4px 0;
width:520px}.flow .x{margin-left:60px;border-color:#e45756;color:#a33;width:440px;font-size:13px}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}.note{color:#555;font-size:13px}
.na{color:#a33;font-size:13px}"""


def _notes(items: list[str], cls: str = "note") -> str:
    return f"<ul class='{cls}'>" + "".join(f"<li>{html.escape(n)}</li>" for n in items) + "</ul>" if items else ""


def _fit_html(fit: object, what: str) -> str:
    """A band-OR table with its n, its adjustment set and its own notes (not estimable reasons, EPV)."""
    f = fit  # stats.BandFit
    return (f"<p>{html.escape(what)}: n = {f.n_used} (left out for missing data: {f.n_missing}); adjusted for: "  # type: ignore[attr-defined]
            f"{html.escape(', '.join(f.adjusted_for) or 'nothing')}.</p>{_table(f.table)}"  # type: ignore[attr-defined]
            f"{_notes(list(f.notes))}")  # type: ignore[attr-defined]


def _roc_rows(result: StudyResult) -> pd.DataFrame:
    rows = []
    for r in result.rocs:
        discriminates = r.auc_ci[0] > 0.5 or r.auc_ci[1] < 0.5
        cut = "n/a: two-sided score" if r.direction == "high" else (
            f"<= {r.cutoff:.2f} (CI {r.cutoff_ci[0]:.2f}-{r.cutoff_ci[1]:.2f})" if discriminates
            else "not shown: the AUC CI includes 0.5 (no discrimination)")
        sens = f"{r.sensitivity:.2f} ({r.sensitivity_ci[0]:.2f}-{r.sensitivity_ci[1]:.2f})" \
            if discriminates and r.direction == "low" else ""
        spec = f"{r.specificity:.2f} ({r.specificity_ci[0]:.2f}-{r.specificity_ci[1]:.2f})" \
            if discriminates and r.direction == "low" else ""
        rows.append({"predictor": r.name, "n": r.n, "events": r.events, "AUC": r.auc,
                     "AUC CI": f"{r.auc_ci[0]:.3f}-{r.auc_ci[1]:.3f}", "Youden cut-off (mg/dL)": cut,
                     "sensitivity (CI)": sens, "specificity (CI)": spec})
    return pd.DataFrame(rows)


def _ascertainment_html(result: StudyResult) -> str:
    """Outcome ascertainment: AKI by each definition, urine-only AKI by ICU stay, the sensitivity ORs."""
    f, cfg = result.cohort.frame, result.config
    if not result.cohort.has_alternative:
        return "<p class='note'>The other outcome definition was not computed (no creatinine-only episodes).</p>"
    main, alt = f["aki"].astype(bool), f["sens_aki"].astype("boolean").fillna(False).astype(bool)
    urine = cfg.outcome_definition == "creatinine+urine"
    only = (main & ~alt) if urine else (alt & ~main)
    icu = f["icu_any"].astype(bool)
    rows = pd.DataFrame([
        {"": "AKI, creatinine + urine output", "all": int((main if urine else alt).sum()),
         "with an ICU stay": int(((main if urine else alt) & icu).sum()),
         "without": int(((main if urine else alt) & ~icu).sum())},
        {"": "AKI, creatinine only", "all": int((alt if urine else main).sum()),
         "with an ICU stay": int(((alt if urine else main) & icu).sum()),
         "without": int(((alt if urine else main) & ~icu).sum())},
        {"": "AKI by urine output alone", "all": int(only.sum()), "with an ICU stay": int((only & icu).sum()),
         "without": int((only & ~icu).sum())}])
    other = "creatinine only" if urine else "creatinine + urine output"
    sens = "".join(_fit_html(v, f"{k}, {other} (adjusted)") for k, v in result.sensitivity.items())
    return (f"<p>Primary definition: KDIGO {html.escape(cfg.outcome_definition)}. Urine output is charted "
            "hourly mostly in ICU, so AKI by urine output is ascertained differentially (ICU patients are looked "
            "at more closely); the creatinine-only definition, ascertained alike everywhere, is the sensitivity "
            f"analysis below.</p>{_table(rows)}<h3>Sensitivity analysis: {html.escape(other)}</h3>{sens}")


def _trial_html(result: StudyResult, img: object) -> str:
    if not result.trials:
        return "<p class='note'>not requested (target_trial.enabled: false)</p>"
    show = img
    first = result.trials[0]
    parts = [f"<h3>Protocol (the seven components of the target trial)</h3>{_table(first.protocol)}"]
    for t in result.trials:
        head = (f"<h3>Population: {html.escape(t.population)}</h3><p>{t.n_eligible} eligible admissions, "
                f"{t.n_treated} with IV MgSO4 within the grace period; {t.n_used} analysed.</p>")
        if not t.estimable:
            parts.append(head + _notes(t.notes, "na"))
            continue
        key = f"trial_{t.population}"
        w = t.weights
        parts.append(
            head + f"<h4>Emulated trial (clone-censor-weight)</h4>{_table(t.table('emulation'))}"
            f"<p>E-value of the AKI risk ratio: {_fmt(t.e_value)} (CI limit nearest 1: {_fmt(t.e_value_ci)}): the "
            "risk ratio an unmeasured confounder would need with both treatment and AKI to explain the estimate "
            "away.</p>"
            f"<h4>Naive comparison (dose within the grace period or not, unweighted)</h4>{_table(t.table('naive'))}"
            f"<h4>Balance</h4><p>Weights: {_fmt(w.get('min', float('nan')))} to {_fmt(w.get('max', float('nan')))} "
            f"(mean {_fmt(w.get('mean', float('nan')))}); propensity {_fmt(w.get('propensity_min', float('nan')))} "
            f"to {_fmt(w.get('propensity_max', float('nan')))}.</p>{_table(t.balance)}"
            f"{show(key + '_love')}{show(key + '_cif')}{_notes(t.notes)}")  # type: ignore[operator]
    return "".join(parts)


def _competing_html(result: StudyResult, img: object) -> str:
    c = result.competing
    if not c:
        return ""
    return (f"<p>Death before AKI is a competing event: cause-specific hazards (each cause's Cox model censors the "
            f"other; discharge alive censors) and Aalen-Johansen cumulative incidence by admission-Mg band at "
            f"{c['horizon_hours'] / 24:g} days from the index time.</p>{_table(c['cause_specific'])}"
            f"{_table(c['cif'])}{img('competing')}{_notes(list(c['notes']))}")  # type: ignore[operator]


def render_report(result: StudyResult, out: Path) -> dict[str, Path]:
    """Write report.html and figures/*.png under ``out``; returns their paths."""
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    cfg, co, o = result.config, result.cohort, result.config.primary_outcome
    crude, adj = result.crude[o], result.adjusted[o]
    sp = result.spline
    charts: dict[str, alt.TopLevelMixin] = {
        "forest": forest_chart(crude.table, adj.table, f"{o}: odds ratio by admission Mg band"),
        "roc": roc_chart(list(result.rocs)),
    }
    if not sp.curve.empty:
        charts["spline"] = spline_chart(sp.curve, sp.knots, sp.reference_mg,
                                        f"{o}: restricted cubic spline ({len(sp.knots)} knots, n = {sp.n_used})",
                                        co.frame["admission_mg"].dropna().astype(float).tolist(),
                                        ", ".join(adj.adjusted_for))
    if result.prediction is not None and result.prediction.fits:
        fits: list[object] = list(result.prediction.fits)
        charts["pred_roc"] = prediction_roc_chart(fits, cfg.prediction_horizon_hours)
        charts["calibration"] = calibration_chart(fits)
        charts["decision"] = decision_chart(fits)
    if result.competing and len(result.competing["curves"]):
        charts["competing"] = cif_chart(result.competing["curves"], "band",
                                        "Cumulative incidence of AKI by admission-Mg band (death competing)")
    for t in result.trials:
        if t.estimable:
            charts[f"trial_{t.population}_love"] = love_chart(t.balance, f"Balance, {t.population}")
            charts[f"trial_{t.population}_cif"] = cif_chart(t.curves, "arm", f"AKI, emulated arms, {t.population}")
    imgs, paths = {}, {}
    for name, ch in charts.items():
        paths[name] = figs / f"{name}.png"
        imgs[name] = _png(ch, paths[name])

    def img(name: str) -> str:
        return f'<img alt="{name}" src="data:image/png;base64,{imgs[name]}">' if name in imgs else \
            "<p class='na'>not estimable (see the notes of this section)</p>"

    flow = []
    for s in co.flow:
        if s.excluded:
            flow.append(f"<div class='x'>excluded: {s.excluded} (not: {html.escape(s.label)})</div>")
        flow.append(f"<div>{html.escape(s.label)}: <b>{s.remaining}</b></div>")
    roc_rows = _roc_rows(result)
    other = []
    for k in cfg.outcomes:
        if k == o:
            continue
        other.append(f"<h3>{html.escape(k)}</h3>{_fit_html(result.adjusted[k], 'adjusted')}")
        if k in result.censoring:
            cc = result.censoring.get(f"{k}_complete_case")
            other.append(f"<p class='note'>{html.escape(result.censoring[k])}. Complete-case fit for comparison:</p>"
                         + (_table(cc.table) if cc is not None else ""))
    cox_cont = result.cox_continuous if result.cox_continuous is not None else pd.DataFrame()
    vers = versions()
    ref = next(b.label for b in co.bands if b.reference)
    included = _table(result.included) if result.included is not None else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mgaki study: admission Mg and AKI</title>
<style>{_CSS}</style></head><body>
<h1>Admission magnesium and in-hospital AKI</h1>
<p class="note">Generated by mgaki {html.escape(vers['mgaki'])} (knowledge {html.escape(vers['knowledge'])}).
Observational associations; they support and do not replace clinical judgement. Reported following STROBE
(cohort) and TRIPOD (prediction model). Exposure bands: {html.escape(cfg.band_study)} (evidence.yaml), reference
{html.escape(ref)} mg/dL. An analysis with fewer than {cfg.min_events} events says "not estimable" and why.</p>
<h2>Cohort flow</h2><div class="flow">{''.join(flow)}</div>
<h3>Included vs excluded admissions</h3>{included}
<h2>Table 1 (by admission-Mg band)</h2>{result.table1_html}
<h2>Odds ratios by admission Mg band ({html.escape(o)})</h2>
{img('forest')}
<h3>crude</h3>{_fit_html(crude, 'crude')}<h3>adjusted</h3>{_fit_html(adj, 'adjusted')}
<h2>Outcome ascertainment</h2>{_ascertainment_html(result)}
<h2>Restricted cubic spline</h2>
<p>Adjusted for: {html.escape(', '.join(adj.adjusted_for) or 'nothing')}. Knots (mg/dL):
{', '.join(f'{k:.2f}' for k in sp.knots)}; likelihood-ratio test of non-linearity: chi2 = {_fmt(sp.lr_stat)} on
{sp.lr_df} df, p {'= ' if format_p(sp.p_nonlinear)[:1] != '<' else ''}{format_p(sp.p_nonlinear)}
(n = {sp.n_used}).</p>{img('spline')}{_notes(list(sp.notes))}
<h2>ROC</h2><p>Admission Mg is U-shaped against AKI, so no single monotone ROC summarises it: the "lower Mg"
curve is shown (the "higher Mg" AUC is exactly 1 minus it), beside the crude spline risk, which lets both tails
count (in-sample, so optimistic). A cut-off is shown only when the AUC's CI excludes 0.5.</p>
{img('roc')}{_table(roc_rows) if len(roc_rows) else ''}
<p class="note">Percentile bootstrap ({cfg.bootstrap_reps} resamples, seed {cfg.seed}); the cut-off is chosen
again in every resample.</p>
<h2>Time-varying Cox: current Mg below/above the reference range</h2>
<p>Follow-up from the index time (time zero) to AKI onset, censored at discharge or death. Exposures that start
after the index time (ICU, nephrotoxic drug, new context) are time-varying terms. Hazard ratios per the unit in
the term's meaning.</p>
{_table(result.cox) if len(result.cox) else '<p class="na">not estimable (see the notes)</p>'}
<h3>Current Mg as a distance from the range (per 0.1 mg/dL)</h3>
{_table(cox_cont) if len(cox_cont) else '<p class="na">not estimable (see the notes)</p>'}
{_notes(result.cox_notes)}
<h2>Competing risk of death</h2>{_competing_html(result, img)}
<h2>Combined-biomarker prediction: AKI in the next {cfg.prediction_horizon_hours:g} h</h2>
{_prediction_html(result, img)}
<h2>Target-trial emulation: IV MgSO4 for hypomagnesaemia and AKI</h2>{_trial_html(result, img)}
<h2>Other outcomes</h2>{''.join(other)}
<h2>Notes</h2>{_notes(result.notes, "")}
<h2>Configuration</h2><pre>{html.escape(json.dumps(cfg.model_dump(mode='json'), indent=1))}</pre>
<h2>Software</h2>{_table(pd.DataFrame(list(vers.items()), columns=['package', 'version']))}
<h2>Timing (s)</h2>{_table(pd.DataFrame(list(result.seconds.items()), columns=['stage', 'seconds']))}
</body></html>"""
    paths["report"] = out / "report.html"
    paths["report"].write_text(page, encoding="utf-8")
    return paths
