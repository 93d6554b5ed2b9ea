"""`mgaki pk` CLI: simulate / fit / find, JSON numbers, a plot, and bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgaki.cli import app
from mgaki.cli.pk import parse_amount, parse_hours, parse_rate

runner = CliRunner()


def test_parsers_read_clinical_notation():
    assert parse_hours("20min") == pytest.approx(1 / 3)
    assert parse_hours("1.5h") == 1.5
    assert parse_amount("16mEq") == (16.0, "meq")
    assert parse_rate("3mmol/h") == (3.0, "mmol")


def test_simulate_json_matches_the_library(tmp_path: Path):
    png = tmp_path / "c.png"
    r = runner.invoke(app, ["pk", "simulate", "--dose", "4g", "--over", "20min", "--then", "1g/h", "--for", "24h",
                            "--weight", "70", "--crcl", "40", "--baseline", "1.4mg/dL", "-f", "json",
                            "--plot", str(png)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["model"] == "ucsf_2002_2cpt"
    assert out["typical_parameters"]["cl"] == pytest.approx(2.0)  # 5.0 x 40/100
    assert [d["g_mgso4"] for d in out["doses"]] == [4.0, 24.0]
    pts = out["prediction"]["points"]
    assert pts[0]["typical_mg_dl"] == pytest.approx(1.4, abs=1e-3)
    assert out["prediction"]["peak_mg_dl"] > 4.0
    assert png.stat().st_size > 5000


def test_fit_and_find(tmp_path: Path):
    r = runner.invoke(app, ["pk", "fit", "--dose", "4g", "--over", "1h", "--level", "2h=3.0", "--level",
                            "8h=2.6mg/dL", "--crcl", "50", "-f", "json"])
    assert r.exit_code == 0, r.output
    est = json.loads(r.stdout)["estimates_95"]["cl"]
    assert est["lower"] < est["map"] < est["upper"]
    r = runner.invoke(app, ["pk", "find", "--target", "2.0-2.5", "--crcl", "20", "--weight", "60",
                            "--baseline", "1.3", "-f", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert {c["id"] for c in out["limits"]} >= {"iv_rate_max_repletion", "severe_renal_max_48h"}
    assert all(c["ok"] for c in out["limits"])


@pytest.mark.parametrize("args", [["pk", "simulate", "--dose", "4 bananas"],
                                  ["pk", "fit", "--dose", "4g", "--level", "2h=abc"],
                                  ["pk", "find", "--target", "3-2"],
                                  ["pk", "simulate", "--dose", "4g", "--baseline", "90mmol/L"]])
def test_bad_input_exits_2_with_nothing_on_stdout(args: list[str]):
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert r.stdout == ""


def test_find_applies_the_renal_cap_from_kidney_function():
    args = ["pk", "find", "--target", "4.0-5.0", "--weight", "70", "--baseline", "1.6mg/dL", "-f", "json"]
    r = runner.invoke(app, [*args, "--aki-stage", "2"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["renal_cap"]["rule"] == "cap_severe_renal" and out["renal_cap"]["ok"]
    assert out["renal_cap"]["plan_total_g"] <= 20.0
    assert "AKI stage 2" in out["renal_cap_applied"]
    normal = json.loads(runner.invoke(app, [*args, "--egfr", "95"]).stdout)
    assert normal["renal_cap"] is None
    assert sum(d["g_mgso4"] for d in normal["doses"]) > sum(d["g_mgso4"] for d in out["doses"])
    assert runner.invoke(app, [*args, "--aki-stage", "5"]).exit_code == 2
