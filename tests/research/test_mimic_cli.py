"""`mgaki study` end to end on the MIMIC-IV demo subset (tiny: it runs and reports its n) and on bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mgaki.cli import app
from mgaki.events import EventStore
from mgaki.research import StudyConfig
from mgaki.research.pipeline import STAGES, study_store

MIMIC = Path(__file__).parents[1] / "data" / "mimic-iv-demo-subset"
runner = CliRunner()


def test_study_runs_end_to_end_on_the_mimic_subset(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert runner.invoke(app, ["ingest", str(MIMIC), "--store", str(store)]).exit_code == 0
    out = tmp_path / "study"
    r = runner.invoke(app, ["study", "--store", str(store), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    flow = summary["flow"]
    assert flow[0]["label"] == "hospital admissions" and flow[0]["remaining"] == summary["admissions"] > 0
    assert summary["n"] == flow[-1]["remaining"] and 0 < summary["n"] < summary["admissions"]
    assert sum(s["excluded"] for s in flow) == summary["admissions"] - summary["n"]
    assert summary["events"]["aki"] <= summary["n"]
    assert len(summary["crude"]) == 6 and [b["band"] for b in summary["crude"]][3] == "1.9-2.1"
    assert sum(b["n"] for b in summary["crude"]) == summary["n"]
    html = (out / "report.html").read_text()
    assert "Cohort flow" in html and "Death = in-hospital death" in html and "statsmodels" in html
    # the subset's one in-hospital death (admissions.deathtime of hadm 28661809) is the only death counted
    cohort = pq.read_table(out / "cohort.parquet", columns=["encounter_id", "death"]).to_pylist()
    dead = {r["encounter_id"] for r in cohort if r["death"]}
    assert dead == {"28661809"}  # (its admission is in the analysis cohort: AKI-free at entry)
    assert summary["events"]["death"] == len(dead)
    assert "http://" not in html.replace("http://www.w3.org", "") and "<script" not in html  # self-contained
    # issue 15: what a reviewer checks on real admissions
    assert "Outcome ascertainment" in html and "Sensitivity analysis: creatinine only" in html
    assert summary["outcome_definition"] == "creatinine+urine" and "aki" in summary["sensitivity"]
    assert summary["sensitivity"]["aki"]["events"] <= summary["events"]["aki"]  # urine output only adds AKI
    assert "higher = positive" not in html and "U-shaped: crude spline risk" in html
    assert "adjusted for:" in html and "Included vs excluded admissions" in html
    assert "Multiplicity: 6 outcomes x 5 non-reference bands = 30" in html
    pred = summary["prediction"]
    assert pred["test_patients"] < 50 and pred["interpretable"] is False  # a handful of test patients: no claim
    assert "descriptive only, no significance claimed" in html and "not interpreted" in html
    assert "Protocol (the seven components of the target trial)" in html
    trial = summary["target_trial"][0]
    assert trial["population"] == "hypomagnesaemia" and not trial["estimable"]
    assert trial["notes"][-1].startswith("not estimable: ")
    assert "0.00<" not in html.replace(" ", "")  # p-values print as '< 0.001', never 0.00
    assert summary["competing"]["cause_specific"] and summary["cox_continuous"]
    assert all(r["meaning"] for r in summary["cox"])
    assert (out / "figures" / "forest.png").stat().st_size > 1000 and (out / "cohort.parquet").exists()
    # the human-readable form prints the band table and the report path
    r2 = runner.invoke(app, ["study", "--store", str(store), "--out", str(tmp_path / "s2")])
    assert r2.exit_code == 0 and "1 (ref)" in r2.output
    # the U-shaped spline score is a model score, not a Mg value: no "cut-off ... mg/dL" for it
    assert re.search(r"U-shaped.*: AUC [\d.]+, a two-sided risk score: no Mg cut-off", r2.output)
    assert re.search(r"n = \d+", r2.output)
    # each stage is printed as it finishes, with its wall time and peak memory, in order
    done = re.findall(r"done (\w+)\s+(\d+\.\d) s\s+peak memory (\d+\.\d\d) GB", r2.stderr)
    assert [d[0] for d in done] == [*STAGES, "report"]
    assert all(float(gb) > 0.01 for _, _, gb in done)


def test_covariates_are_measured_before_the_index_time(tmp_path: Path) -> None:
    """On the real admissions: a baseline ICU stay or nephrotoxic drug began at or before time zero; one that
    began later is a time-varying exposure (its start after the index time), never a baseline one."""
    import pandas as pd

    store = tmp_path / "store"
    assert runner.invoke(app, ["ingest", str(MIMIC), "--store", str(store)]).exit_code == 0
    res = study_store(EventStore(store), StudyConfig(bootstrap_reps=20, prediction=False,
                                                     target_trial={"enabled": False}))
    f = res.cohort.frame
    idx = f["start"] + pd.to_timedelta(f["index_hours"], unit="h")
    assert (idx >= f["mg_time"] - pd.Timedelta(microseconds=1)).all()
    enc = EventStore(store).read("encounters").to_pandas()
    icu = enc[enc["kind"] == "icu"]
    meds = EventStore(store).read("medications").to_pandas()
    for i, row in f.iterrows():
        stays = icu[icu["parent_id"] == row["encounter_id"]]
        if row["icu"]:
            assert (stays["start"] <= idx[i]).any()
        if pd.notna(row["icu_later_hours"]):
            assert row["icu_later_hours"] > row["index_hours"]
        if row["nephrotoxic"]:
            assert (meds[meds["subject_id"] == row["subject_id"]]["start"] <= idx[i]).any()
    assert f["icu_later_hours"].notna().sum() >= 3 and (~f["icu"] & f["icu_any"]).sum() >= 3
    assert f["nephrotoxic_later_hours"].notna().sum() >= 3


def test_the_python_api_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    assert runner.invoke(app, ["ingest", str(MIMIC), "--store", str(store)]).exit_code == 0
    capfd.readouterr()
    seen: list[str] = []
    res = study_store(EventStore(store), StudyConfig(bootstrap_reps=20, prediction=False))
    out, err = capfd.readouterr()
    assert out == "" and err == "" and len(res.cohort.frame) > 0
    study_store(EventStore(store), StudyConfig(bootstrap_reps=20, prediction=False),
                progress=lambda st, i, n: seen.append(st))
    assert seen == list(STAGES)


def test_study_bad_input_exits_2_naming_the_problem(tmp_path: Path) -> None:
    r = runner.invoke(app, ["study", "--store", str(tmp_path / "none")])
    assert r.exit_code == 2 and "no event store" in " ".join(r.output.split())
    (tmp_path / "store" / "events").mkdir(parents=True)
    bad = tmp_path / "c.yaml"
    bad.write_text("outcomes: [aki, death_90d]\n")
    r = runner.invoke(app, ["study", "--store", str(tmp_path / "store"), "--config", str(bad)])
    assert r.exit_code == 2 and "unknown outcome(s) ['death_90d']" in " ".join(r.output.split())
    bad.write_text("covariates: [age, bmi]\n")
    r = runner.invoke(app, ["study", "--store", str(tmp_path / "store"), "--config", str(bad)])
    assert r.exit_code == 2 and "bmi" in r.output
