"""Charts carry the right data and render offline to PNG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
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
