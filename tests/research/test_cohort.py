"""Inclusion/exclusion, exposures and outcomes of the study cohort on a small edited synthetic cohort."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mgaki.events import EventStore
from mgaki.research import StudyConfig, build_cohort, connect_tables
from mgaki.surveillance import run
from mgaki.synth import generate


def _edited() -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    c = generate(400, seed=11)
    t = dict(c.tables)
    subj = t["subjects"]
    # S0000001 becomes a 10-year-old; S0000002 gets dialysis 2 h after admission
    by = pc.if_else(pc.equal(subj["subject_id"], "S0000001"), pa.scalar(2020, pa.int32()), subj["birth_year"])
    t["subjects"] = subj.set_column(2, "birth_year", by)
    enc = t["encounters"].filter(pc.equal(t["encounters"]["encounter_id"], "A0000002")).to_pylist()[0]
    rrt = pa.Table.from_pylist([{"subject_id": "S0000002", "encounter_id": "A0000002",
                                 "time": enc["start"] + timedelta(hours=2), "code": "SNOMED/714749008",
                                 "analyte": "rrt", "numeric_value": None, "unit": None, "source": "test"}],
                               schema=t["events"].schema)
    t["events"] = pa.concat_tables([t["events"], rrt])
    with tempfile.TemporaryDirectory() as d:
        store = EventStore(Path(d))
        store.append(t)
        res = run(store)
    return t, res.tables


def test_flow_excludes_children_and_dialysis_at_entry_and_outcomes_follow_episodes() -> None:
    tables, results = _edited()
    co = build_cohort(connect_tables(tables), results)
    ids = set(co.frame["encounter_id"])
    assert "A0000001" not in ids and "A0000002" not in ids
    flow = {s.label: s for s in co.flow}
    assert flow["age >= 18 years (age and sex known)"].excluded == 1
    assert flow["no RRT at entry"].excluded == 1
    assert co.flow[-1].remaining == len(co.frame) and co.all_admissions == 400
    f = co.frame
    # outcomes are nested: stage >= 2, > 48 h and AKD are AKI; non-recovery is AKI not recovered
    for k in ("aki_stage2plus", "aki_over_48h", "akd_7d", "non_recovery"):
        assert not (f[k].fillna(False).astype(bool) & ~f["aki"].astype(bool)).any(), k
    eps = results["aki_episodes"].to_pandas()
    assert set(f.loc[f["aki"].astype(bool), "encounter_id"]) == set(eps["encounter_id"]) & ids
    # admission Mg is the first Mg of the admission when it falls in the window
    traj = results["mg_trajectory"].to_pandas().set_index("encounter_id")
    row = f.iloc[0]
    assert row["admission_mg"] == traj.loc[row["encounter_id"], "first_mg"]


def test_a_short_window_and_no_exclusions_change_the_flow_not_the_code() -> None:
    tables, results = _edited()
    loose = build_cohort(connect_tables(tables), results, StudyConfig(
        min_age_years=None, exclude_rrt_at_entry=False, exclude_egfr_below=None, exclude_aki_at_entry=False))
    assert len(loose.frame) >= 399  # only admissions without Mg or creatinine in the window are left out
    tight = build_cohort(connect_tables(tables), results, StudyConfig(admission_window_hours=0.5))
    assert 0 < len(tight.frame) < len(loose.frame) - 50  # the first Mg is drawn 0-2 h after admission


def test_egfr_is_unknown_without_a_creatinine_or_a_known_sex() -> None:
    """least/greatest skip NULLs in SQL: without the guard a missing creatinine gave 142 x 0.9938^age."""
    tables, results = _edited()
    ev = tables["events"]
    tables["events"] = ev.filter(pc.invert(pc.and_(pc.equal(ev["analyte"], "creatinine"),
                                                   pc.equal(ev["subject_id"], "S0000003"))))
    kc = results["kdigo_creatinine"]
    results = {**results, "kdigo_creatinine": kc.filter(pc.not_equal(kc["subject_id"], "S0000003"))}
    subj = tables["subjects"]
    sex = pc.if_else(pc.equal(subj["subject_id"], "S0000004"), pa.scalar(None, pa.string()), subj["sex"])
    tables["subjects"] = subj.set_column(subj.schema.get_field_index("sex"), "sex", sex)
    co = build_cohort(connect_tables(tables), results, StudyConfig(require_creatinine=False, min_age_years=None))
    f = co.frame.set_index("subject_id")
    assert pd.isna(f.loc["S0000003", "admission_creatinine"]) and pd.isna(f.loc["S0000003", "egfr"])
    assert pd.notna(f.loc["S0000004", "admission_creatinine"]) and pd.isna(f.loc["S0000004", "egfr"])
    known = f.drop(["S0000003", "S0000004"])
    assert known["egfr"].notna().all() and (known["egfr"] > 0).all()
