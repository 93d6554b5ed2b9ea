"""In-hospital death as a study outcome: counted from the MEDS_DEATH rows, planted deaths recovered."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import statsmodels.api as sm

from mgaki.research import StudyConfig, build_cohort, connect_tables
from mgaki.research.pipeline import run_study
from mgaki.synth import load_params


def test_death_per_admission_is_the_planted_death(planted) -> None:  # type: ignore[no-untyped-def]
    cfg = StudyConfig(min_age_years=None, require_creatinine=False, exclude_rrt_at_entry=False,
                      exclude_egfr_below=None, exclude_aki_at_entry=False, admission_window_hours=1e6)
    co = build_cohort(connect_tables(planted.tables), planted.results, cfg)
    truth = planted.truth.to_pandas().set_index("encounter_id")
    assert len(co.frame) == len(truth)  # no exclusions: every admission
    m = co.frame.set_index("encounter_id").join(truth[["death"]], rsuffix="_truth")
    assert (m["death"].astype(bool) == m["death_truth"]).all()
    assert int(m["death"].sum()) == int(truth["death"].sum()) > 100


def test_the_study_recovers_the_planted_death_odds_ratio_of_aki(planted) -> None:  # type: ignore[no-untyped-def]
    co = build_cohort(connect_tables(planted.tables), planted.results)
    f = co.frame
    x = sm.add_constant(f["aki"].astype(float).rename("aki"))
    fit = sm.Logit(f["death"].astype(float), x).fit(disp=0)
    lo, hi = np.exp(fit.conf_int().loc["aki"])
    planted_or = load_params().value("death_or_aki")
    assert lo <= planted_or <= hi, (lo, hi)
    assert lo > 1.0


def test_study_runs_with_death_as_the_primary_outcome(planted) -> None:  # type: ignore[no-untyped-def]
    cfg = StudyConfig(primary_outcome="death", outcomes=("aki", "death"), bootstrap_reps=20, prediction=False,
                      time_varying_cox=False)
    res = run_study(dict(planted.tables), planted.results, cfg)
    f = res.cohort.frame
    n_dead = int(f["death"].sum())
    s = res.summary()
    assert s["primary_outcome"] == "death" and s["events"]["death"] == n_dead > 50
    t = res.adjusted["death"].table
    assert int(t["events"].sum()) == n_dead and len(t) == len(co_bands(res))
    # the per-band counts are the cohort's own
    counts = f.groupby("mg_band", observed=False)["death"].sum()
    assert list(t["events"]) == [int(counts[b]) for b in t["band"]]
    assert {r.events for r in res.rocs} == {n_dead}


def co_bands(res) -> list[str]:  # type: ignore[no-untyped-def]
    return [b.label for b in res.cohort.bands]


def test_death_outside_the_admission_is_not_in_hospital_death(planted) -> None:  # type: ignore[no-untyped-def]
    t = dict(planted.tables)
    ev = t["events"]
    enc = t["encounters"].filter(pc.equal(t["encounters"]["kind"], "inpatient"))
    alive = set(planted.truth.filter(pc.invert(planted.truth["death"]))["encounter_id"].to_pylist())
    a, b, c = [r for r in enc.to_pylist() if r["encounter_id"] in alive][:3]  # one admission per patient
    rows = [  # a: 1 day after discharge (not in hospital); b: at discharge, no encounter named (in hospital);
        # c: 1 h after its recorded end but naming the admission (MIMIC's deathtime can trail dischtime)
        {"subject_id": a["subject_id"], "encounter_id": None, "time": a["end"] + timedelta(days=1)},
        {"subject_id": b["subject_id"], "encounter_id": None, "time": b["end"]},
        {"subject_id": c["subject_id"], "encounter_id": c["encounter_id"], "time": c["end"] + timedelta(hours=1)},
    ]
    extra = pa.Table.from_pylist([{**r, "code": "MEDS_DEATH", "analyte": "death", "numeric_value": None,
                                   "unit": None, "source": "test"} for r in rows], schema=ev.schema)
    t["events"] = pa.concat_tables([ev, extra])
    cfg = StudyConfig(min_age_years=None, require_creatinine=False, exclude_rrt_at_entry=False,
                      exclude_egfr_below=None, exclude_aki_at_entry=False, admission_window_hours=1e6)
    f = build_cohort(connect_tables(t), planted.results, cfg).frame.set_index("encounter_id")
    assert not f.loc[a["encounter_id"], "death"]
    assert f.loc[b["encounter_id"], "death"] and f.loc[c["encounter_id"], "death"]
    assert int(f["death"].sum()) == int(pc.sum(planted.truth["death"]).as_py()) + 2


def test_death_is_an_outcome_a_config_may_name() -> None:
    assert "death" in StudyConfig(outcomes=("aki", "death")).outcomes
    with pytest.raises(ValueError, match="unknown outcome"):
        StudyConfig(outcomes=("aki", "death_90d"))
