"""Charts carry the right data and render offline to PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tests.surveillance.build import Patient, tables

from mgaki.events import EventStore
from mgaki.knowledge import KnowledgeBase
from mgaki.surveillance import plots, surveil


def _result(tmp_path: Path):  # type: ignore[no-untyped-def]
    a = Patient("A").ev("creatinine", (0, 1.0), (30, 1.6), (60, 2.4)).ev("magnesium", (1, 1.1), (30, 1.5))
    b = Patient("B", encounter="HB").ev("creatinine", (0, 1.0), (30, 1.0)).ev("magnesium", (1, 2.0))
    c = Patient("C", encounter="HC").ev("creatinine", (0, 1.0), (30, 1.1)).ev("magnesium", (1, 2.1))
    tabs = tables(a, b, c)
    store = EventStore(tmp_path / "s")
    store.append(tabs)
    return tabs, surveil(store).tables


def test_mg_bands_follow_the_knowledge_base(kb: KnowledgeBase) -> None:
    bands = plots.mg_bands(kb)
    edges = [b[1] for b in bands]
    assert edges == sorted(edges)
    assert 1.7 in edges and 2.5 in edges and 1.2 in edges  # reference range and CTCAE grade-2 cut


def test_cohort_chart_counts_every_encounter_once(tmp_path: Path) -> None:
    _, res = _result(tmp_path)
    chart = plots.cohort_mg_aki(res)
    top = chart.vconcat[0]
    bars = top.layer[0].data if isinstance(top.layer[0].data, pd.DataFrame) else top.data
    assert isinstance(bars, pd.DataFrame)
    assert int(bars["encounters"].sum()) == 3
    low = bars[bars["band"] == "0.9–1.2"].iloc[0]
    assert (low["encounters"], low["aki_rate"]) == (1, 1.0)  # A: min Mg 1.1, AKI
    out = plots.save(chart, tmp_path / "cohort.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_timeline_shows_the_encounter_only(tmp_path: Path) -> None:
    tabs, res = _result(tmp_path)
    chart = plots.patient_timeline(tabs, res, "A", "H1")
    cr = chart.vconcat[0].layer[1].data
    assert list(cr["value"]) == [1.0, 1.6, 2.4] and list(cr["stage"]) == ["0", "1", "2"]
    mg = chart.vconcat[1].layer[1].data
    assert list(mg["value"]) == [1.1, 1.5]
    svg = plots.save(chart, tmp_path / "a.svg").read_text()
    assert svg.startswith("<svg") and "creatinine" in svg


def test_charts_say_what_they_count_with_intervals_dialysis_and_alert_names(tmp_path: Path) -> None:
    """Issue 17 point 7: bars say what they count and carry 95% CIs; the timeline marks dialysis start and names
    each alert marker."""
    a = Patient("A").ev("creatinine", (0, 1.0), (30, 1.6), (60, 2.4)).ev("magnesium", (1, 1.1), (30, 1.5)) \
        .ev("rrt", (62, None))
    b = Patient("B", encounter="HB").ev("creatinine", (0, 1.0), (30, 1.0)).ev("magnesium", (1, 2.0))
    tabs = tables(a, b)
    store = EventStore(tmp_path / "s")
    store.append(tabs)
    res = surveil(store).tables
    cohort = plots.cohort_mg_aki(res)
    spec = cohort.to_dict()
    assert "share of encounters with AKI" in json.dumps(spec)
    top = cohort.vconcat[0]
    bars = top.data if isinstance(top.data, pd.DataFrame) else next(
        la.data for la in top.layer if isinstance(la.data, pd.DataFrame))
    assert ((bars["lo"] <= bars["aki_rate"]) & (bars["aki_rate"] <= bars["hi"])).all()
    low = bars[bars["band"] == "0.9–1.2"].iloc[0]
    assert (low["lo"], low["hi"]) == pytest.approx((0.2065, 1.0), abs=1e-3)  # Wilson 95% CI of 1/1
    timeline = plots.patient_timeline(tabs, res, "A", "H1")
    text = plots.save(timeline, tmp_path / "a.svg").read_text()
    assert "dialysis (RRT) start" in text
    assert "Mg out of range" in text and "mg_out_of_range" not in text  # the legend names each marker's alert


def test_pk_plots_mark_toxicity_and_label_the_target(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mgaki.cli import app

    runner = CliRunner()
    svg = tmp_path / "sim.svg"
    r = runner.invoke(app, ["pk", "simulate", "--dose", "4g", "--over", "20min", "--then", "1g/h", "--for", "24h",
                            "--weight", "85", "--creatinine", "1.2mg/dL", "--plot", str(svg)])
    assert r.exit_code == 0, r.output
    text = svg.read_text()
    assert "toxicity" in text and "prediction band" in text and "target (" in text
    svg2 = tmp_path / "find.svg"
    r = runner.invoke(app, ["pk", "find", "--target", "2.0-2.5", "--weight", "70", "--creatinine", "1.0mg/dL",
                            "--plot", str(svg2)])
    assert r.exit_code == 0, r.output
    assert "2.0–2.5 mg/dL" in svg2.read_text()
