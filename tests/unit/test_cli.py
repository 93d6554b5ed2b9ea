"""CLI: the README's main job works and the knowledge catalogue prints with sources."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mgaki.cli import app
from mgaki.knowledge.schema import FILES

runner = CliRunner()


def test_default_assess_runs_the_shipped_example_as_text():
    r = runner.invoke(app, ["assess"])
    assert r.exit_code == 0, r.output
    assert "hypomagnesemia" in r.output and "Vanderbilt" in r.output
    assert "does not replace clinical judgement" in r.output


def test_default_assess_json_contract():
    r = runner.invoke(app, ["assess", "--format", "json"])
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert out["magnesium"]["status"] == "low"
    assert out["magnesium"]["value_mmol_l"] == 0.52
    assert out["kidney"]["aki_stage"] == 1
    for f in out["findings"]:
        assert set(f) >= {"code", "severity", "message", "evidence"}
        assert all(e["doi"] or e["document"] for e in f["evidence"])
    assert out["plan"]["doses"][0]["g_mgso4"] == 4.0


def test_knowledge_catalogue_lists_every_file_with_sources():
    r = runner.invoke(app, ["knowledge", "--format", "json"])
    assert r.exit_code == 0
    rows = json.loads(r.stdout)["entries"]
    assert {row["file"] for row in rows} == set(FILES)
    assert all(row["source"] and row["doi"] for row in rows)
    r = runner.invoke(app, ["knowledge", "evidence"], env={"COLUMNS": "300"})
    assert r.exit_code == 0 and "cheungpasitporn_2015" in r.output


def test_missing_file_exit_2():
    r = runner.invoke(app, ["assess", "/nonexistent.json"])
    assert r.exit_code == 2


def test_text_report_names_each_unit_once_and_shows_the_pk_peak_and_trough():
    """Issue 17 point 6: no '0.52 mmol/L = 1.26 mg/dL = 0.52 mmol/L'; the text has the PK trough the JSON has."""
    import re

    r = runner.invoke(app, ["assess"])
    line = next(x for x in r.output.splitlines() if "Magnesium " in x)
    for unit in ("mmol/L", "mg/dL", "mEq/L"):
        assert line.count(unit) == 1, line
    j = json.loads(runner.invoke(app, ["assess", "--format", "json"]).stdout)
    pr = j["plan"]["prediction"]
    if pr is not None:
        text = " ".join(r.output.split())
        assert f"peak {pr['peak_mg_dl']:.2f} mg/dL" in text and f"trough {pr['trough_mg_dl']:.2f} mg/dL" in text, \
            re.findall(r"PK .{0,200}", text)
