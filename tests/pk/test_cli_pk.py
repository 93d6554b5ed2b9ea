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
                            "--weight", "85", "--creatinine", "1.2mg/dL", "--baseline", "1.4mg/dL", "-f", "json",
                            "--plot", str(png)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["model"] == "du_2019_2cpt" and "pre-eclampsia" in out["population"]
    assert out["typical_parameters"]["cl"] == {"value": pytest.approx(3.72 * 1.5 ** -0.731, abs=1e-4), "unit": "L/h"}
    assert out["baseline"]["source"].startswith("measured")
    assert out["risk"]["context"] == "repletion" and out["risk"]["p_target"] is not None
    assert [d["g_mgso4"] for d in out["doses"]] == [4.0, 24.0]
    pts = out["prediction"]["points"]
    assert pts[0]["typical_mg_dl"] == pytest.approx(1.4, abs=1e-3)
    assert out["prediction"]["peak_mg_dl"] > 4.0
    assert png.stat().st_size > 5000


def test_fit_and_find(tmp_path: Path):
    r = runner.invoke(app, ["pk", "fit", "--dose", "4g", "--over", "1h", "--level", "2h=3.0", "--level",
                            "8h=2.6mg/dL", "--creatinine", "1.4", "-f", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    est = out["estimates_95"]["cl"]
    assert est["lower"] < est["map"] < est["upper"] and est["unit"] == "L/h"
    assert out["estimates_95"]["v1"]["unit"] == "L" and out["fit"]["status"] == "converged"
    r = runner.invoke(app, ["pk", "find", "--target", "2.0-2.5", "--crcl", "20", "--creatinine", "3.0",
                            "--weight", "60", "--baseline", "1.3", "-f", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert {c["id"] for c in out["limits"]} >= {"iv_rate_max_repletion", "severe_renal_max_48h"}
    assert all(c["ok"] for c in out["limits"])


@pytest.mark.parametrize(("args", "says"), [
    (["pk", "simulate", "--dose", "4 bananas"], "dose unit 'bananas' not understood"),
    (["pk", "fit", "--dose", "4g", "--level", "2h=abc"], "cannot read"),
    (["pk", "find", "--target", "3-2"], "low < high"),
    (["pk", "simulate", "--dose", "4g", "--baseline", "90mmol/L"], "baseline"),
    # the cases: no reassuring number from an impossible input
    (["pk", "simulate", "--dose", "4g", "--over", "4h", "--baseline", "1.2mg/dL", "--crcl", "0", "--weight", "70"],
     "CrCl 0"),
    (["pk", "find", "--target", "2.0-2.5", "--crcl", "0"], "CrCl 0"),
    (["pk", "simulate", "--dose", "400g"], "exceeds every labelled maximum"),
    (["pk", "simulate", "--dose", "4g", "--aki"], "AKI without a serum creatinine"),
    (["pk", "simulate", "--dose", "4g", "--creatinine", "12"], "far outside"),
    (["pk", "simulate", "--dose", "4g", "--weight", "20"], "far outside"),
    (["pk", "simulate", "--dose", "4g", "--age", "12"], "adult"),
    (["pk", "simulate", "--dose", "4g", "--model", "ucsf_2002_2cpt", "--creatinine", "2.0"], "no kidney covariate"),
    (["pk", "simulate", "--dose", "4g", "--horizon", "5000h"], "horizon"),
    (["pk", "simulate", "--dose", "4g", "--session", "2h+4h"], "--dialysis"),
    # a CrCl alone cannot set the clearance of a model whose covariate is creatinine (it would use the reference)
    (["pk", "simulate", "--dose", "4g", "--crcl", "20"], "not CrCl"),
])
def test_bad_input_exits_2_with_nothing_on_stdout(args: list[str], says: str):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    assert says in " ".join(r.stderr.split())


def test_assumed_baseline_and_population_are_printed():
    r = runner.invoke(app, ["pk", "simulate", "--dose", "2g", "--over", "1h", "--weight", "70", "--creatinine", "0.9"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.replace("│", " ").split())
    assert "1.80 mg/dL (0.74 mmol/L), assumed" in text
    assert "pregnant and post-partum women with pre-eclampsia" in text and "OUTSIDE it" in text
    assert "P(target, repletion)" in text and "P(harm)" in text


def test_dialysis_and_kinetic_creatinine_course_from_the_cli():
    base = ["pk", "simulate", "--dose", "2g", "--over", "1h", "--weight", "70", "--baseline", "2.0", "-f", "json"]
    hd = json.loads(runner.invoke(app, [*base, "--dialysis", "hd", "--session", "6h+4h"]).stdout)
    none = json.loads(runner.invoke(app, [*base, "--dialysis", "hd"]).stdout)
    end_hd = hd["prediction"]["points"][-1]["typical_mg_dl"]
    end_none = none["prediction"]["points"][-1]["typical_mg_dl"]
    assert end_hd < end_none  # the session removed Mg
    assert any("anuric" in n for n in hd["notes"])
    aki = json.loads(runner.invoke(app, [*base, "--creatinine-at", "-24h=1.0", "--creatinine-at", "0h=1.8"]).stdout)
    flat = json.loads(runner.invoke(app, [*base, "--creatinine", "1.8"]).stdout)
    assert any("kinetic eGFR" in n for n in aki["notes"])
    assert aki["typical_parameters"]["cl"]["value"] < flat["typical_parameters"]["cl"]["value"]


def test_fit_on_a_bound_and_an_im_pritchard_regimen():
    r = runner.invoke(app, ["pk", "fit", "--dose", "2g", "--over", "1h", "--level", "2h=25", "--baseline", "1.8",
                            "--creatinine", "0.8"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.replace("│", " ").split())
    assert "ended on its search bound" in text and "fitted cl" in text and "L/h" in text
    r = runner.invoke(app, ["pk", "simulate", "--dose", "4g", "--over", "20min", "--im", "10g@0h", "--im", "5g@4h",
                            "--weight", "85", "--creatinine", "0.8", "--pregnant", "--context", "eclampsia",
                            "-f", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [d["route"] for d in out["doses"]] == ["iv", "im", "im"]
    assert out["risk"]["target_mg_dl"] == [4.861, 8.507]


def test_vpc_lists_prints_and_plots(tmp_path: Path):
    r = runner.invoke(app, ["pk", "vpc", "--list"])
    assert r.exit_code == 0 and "to_2025" in r.stdout and "biesenbach_jcva_2018" in r.stdout
    png = tmp_path / "vpc.png"
    r = runner.invoke(app, ["pk", "vpc", "--dataset", "to_2025", "--n", "100", "-f", "json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert {row["what"] for row in rows} == {"median at 0.5 h", "median at 4 h"}
    assert png.stat().st_size > 5000
    assert runner.invoke(app, ["pk", "vpc", "--dataset", "nope"]).exit_code == 2


def test_find_applies_the_renal_cap_from_kidney_function():
    args = ["pk", "find", "--target", "4.0-5.0", "--weight", "70", "--creatinine", "1.0", "--baseline", "1.6mg/dL",
            "-f", "json"]
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
