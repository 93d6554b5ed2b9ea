"""Synthetic cohort: determinism, schema, planted truth checked independently, raw round trip, size."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from mgaki.engine.kidney import stage_creatinine, stage_urine_output
from mgaki.errors import KnowledgeError
from mgaki.events import TABLES, normalize
from mgaki.knowledge import KnowledgeBase
from mgaki.synth import DIRTY_KINDS, Cohort, SynthParams, generate, load_params, to_raw

N = 1500


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return generate(N, seed=11)


def _by_encounter(table: pa.Table, analyte: str) -> dict[str, list[tuple[datetime, float]]]:
    rows = table.filter(pc.equal(table["analyte"], analyte))
    out: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for e, t, v in zip(rows["encounter_id"].to_pylist(), rows["time"].to_pylist(),
                       rows["numeric_value"].to_pylist(), strict=True):
        out[e].append((t, v))
    return out


def _truth(cohort: Cohort) -> list[dict[str, object]]:
    return cohort.truth.to_pylist()


# --- determinism and schema ----------------------------------------------------------------------

def test_same_seed_same_cohort_different_seed_different() -> None:
    a, b, c = generate(200, seed=5), generate(200, seed=5), generate(200, seed=6)
    for name in TABLES:
        assert a.tables[name].equals(b.tables[name]), name
    assert a.truth.equals(b.truth)
    assert not a.tables["events"].equals(c.tables["events"])
    assert not a.truth.equals(c.truth)


def test_tables_have_the_canonical_schema(cohort: Cohort) -> None:
    assert set(cohort.tables) == set(TABLES)
    for name, schema in TABLES.items():
        assert cohort.tables[name].schema.equals(schema), name
    assert cohort.tables["quarantine"].num_rows == 0
    assert cohort.truth.num_rows == N == cohort.tables["subjects"].num_rows
    sources = cohort.tables["events"]["source"]
    assert sources[0].as_py() == "synth:events:0" and pc.count_distinct(sources).as_py() == len(sources)


def test_times_are_whole_seconds_and_encounters_2_to_20_days(cohort: Cohort) -> None:
    ev = cohort.tables["events"]
    us = pc.cast(ev["time"], pa.int64()).to_numpy()
    assert (us % 1_000_000 == 0).all()
    enc = cohort.tables["encounters"].to_pandas()
    adm = enc[enc.kind == "inpatient"].set_index("encounter_id")
    days = (adm["end"] - adm["start"]).dt.total_seconds() / 86400
    assert days.min() >= 2.0 and days.max() <= 20.0
    icu = enc[enc.kind == "icu"]
    assert 0.12 < len(icu) / len(adm) < 0.3
    parent = adm.loc[icu.parent_id]
    assert (icu.start.to_numpy() >= parent.start.to_numpy()).all()
    assert (icu.end.to_numpy() <= parent.end.to_numpy()).all()
    # every event lies inside its encounter
    e = ev.to_pandas().merge(enc[["encounter_id", "start", "end"]], on="encounter_id")
    assert len(e) == ev.num_rows and ((e.time >= e.start) & (e.time <= e.end)).all()


def test_contexts_use_knowledge_ids(cohort: Cohort, kb: KnowledgeBase) -> None:
    contexts = set(cohort.tables["contexts"]["context"].to_pylist())
    assert contexts == {"cardiac-surgery", "cisplatin", "sepsis", "contrast", "icu"}
    known = {c for s in kb.evidence.studies for c in s.contexts} | {c for r in kb.regimens.regimens
                                                                    for c in r.contexts}
    assert contexts <= known


def test_values_are_plausible_and_codes_map_to_their_analyte(cohort: Cohort, kb: KnowledgeBase) -> None:
    ev = cohort.tables["events"].to_pandas()
    for analyte, grp in ev[~ev.analyte.isin(["rrt", "death"])].groupby("analyte"):
        a = kb.analyte(str(analyte))
        assert grp.numeric_value.between(a.plausible_min, a.plausible_max).all(), analyte
        assert set(grp.unit) == {a.canonical_unit}
    prefix = {"http://loinc.org": "LOINC", "http://snomed.info/sct": "SNOMED"}
    codes = {f"{prefix[c.system]}/{c.code}": c.analyte for c in (*kb.codes.observations, *kb.codes.rrt_procedures)
             if c.system in prefix} | {"MEDS_DEATH": "death"}
    for code, analyte in ev[["code", "analyte"]].drop_duplicates().itertuples(index=False):
        assert codes[code] == analyte, code
    assert ev[ev.analyte.isin(["rrt", "death"])].numeric_value.isna().all()
    assert ev[ev.analyte == "death"].unit.isna().all()


def test_drugs_and_magnesium_doses(cohort: Cohort) -> None:
    meds = cohort.tables["medications"].to_pandas()
    assert {"cisplatin", "furosemide", "pantoprazole", "gentamicin", "vancomycin", "piperacillin",
            "magnesium sulfate"} == set(meds.drug)
    mg = meds[meds.drug == "magnesium sulfate"]
    assert np.allclose(mg.mg_mmol, mg.dose_value * 1000 / 246.47)  # MgSO4.7H2O: 4.06 mmol per g
    assert meds[meds.drug != "magnesium sulfate"].mg_mmol.isna().all()
    assert (meds.end >= meds.start).all()


# --- planted truth, checked from the tables ---------------------------------------------------------

def test_planted_aki_share_and_stages(cohort: Cohort) -> None:
    t = cohort.truth.to_pandas()
    assert 0.15 <= t.aki.mean() <= 0.25
    assert set(t[t.aki].aki_stage) == {1, 2, 3}
    assert (t[~t.aki].aki_stage == 0).all() and t[~t.aki].aki_onset.isna().all()
    assert set(t[t.aki].aki_mechanism) == {"creatinine", "oliguria", "rrt"}
    assert not (t.ckd_high & t.aki).any()


def test_creatinine_stage_equals_the_engine_kdigo_stage(cohort: Cohort, kb: KnowledgeBase) -> None:
    """The planted creatinine stage is what the bedside KDIGO engine computes from the rows."""
    series = _by_encounter(cohort.tables["events"], "creatinine")
    rrt = _by_encounter(cohort.tables["events"], "rrt")
    mismatches = []
    for row in _truth(cohort):
        enc = str(row["encounter_id"])
        got = max(s.stage for s in stage_creatinine(kb, series[enc]))
        if got != row["aki_stage_creatinine"]:
            mismatches.append((enc, got, row["aki_stage_creatinine"]))
        with_rrt = max(s.stage for s in stage_creatinine(kb, series[enc], rrt_times=[t for t, _ in rrt[enc]]))
        assert (with_rrt == 3) == (row["rrt"] or row["aki_stage_creatinine"] == 3)
        assert bool(rrt.get(enc)) == row["rrt"]
    assert mismatches == []


def test_stage3_creatinine_rises_threefold_or_to_4_within_7_days(cohort: Cohort) -> None:
    con = duckdb.connect()
    con.register("ev", cohort.tables["events"])
    con.register("truth", cohort.truth)
    found = dict(con.execute("""
        WITH cr AS (SELECT encounter_id, time, numeric_value v FROM ev WHERE analyte = 'creatinine')
        SELECT t.encounter_id, bool_or(b.v >= 3 * a.v OR (b.v >= 4.0 AND b.v - a.v >= 0.3
                                                             AND b.time - a.time <= INTERVAL 48 HOUR))
        FROM truth t JOIN cr a ON a.encounter_id = t.encounter_id
        JOIN cr b ON b.encounter_id = a.encounter_id AND b.time > a.time AND b.time - a.time <= INTERVAL 7 DAY
        WHERE t.aki_stage_creatinine = 3 GROUP BY 1""").fetchall())
    planted = [r["encounter_id"] for r in _truth(cohort) if r["aki_stage_creatinine"] == 3]
    assert len(planted) > 10 and all(found[e] for e in planted)


def test_urine_stage_equals_the_engine_kdigo_stage(cohort: Cohort, kb: KnowledgeBase) -> None:
    uo = _by_encounter(cohort.tables["events"], "urine_output")
    w = cohort.tables["weights"].to_pandas().sort_values("time").groupby("subject_id").weight_kg.first()
    n_oliguric = 0
    for row in _truth(cohort):
        icu = row["icu_encounter_id"]
        if icu is None:
            assert row["aki_stage_urine"] == 0
            continue
        stages = stage_urine_output(kb, uo[str(icu)], float(w[row["subject_id"]]))
        assert max(s.stage for s in stages) == row["aki_stage_urine"], icu
        n_oliguric += row["aki_stage_urine"] > 0
    assert n_oliguric > 10


def test_anuria_is_charted_as_zero_volume_hours(cohort: Cohort) -> None:
    uo = _by_encounter(cohort.tables["events"], "urine_output")
    anuric = [r["icu_encounter_id"] for r in _truth(cohort) if r["anuria"]]
    for icu in anuric:
        pts = sorted(uo[str(icu)])
        zero_h = [t for t, v in pts if v == 0.0]
        assert len(zero_h) >= 12 and zero_h[-1] - zero_h[0] >= timedelta(hours=11)
    others = [r["icu_encounter_id"] for r in _truth(cohort) if r["icu_encounter_id"] and not r["anuria"]]
    assert all(v > 0 for icu in others for _, v in uo[str(icu)])


def test_ckd_high_is_stable_above_4_without_aki(cohort: Cohort) -> None:
    series = _by_encounter(cohort.tables["events"], "creatinine")
    high = [r for r in _truth(cohort) if r["ckd_high"]]
    assert len(high) >= 10
    for r in high:
        values = [v for _, v in series[str(r["encounter_id"])]]
        assert min(values) >= 4.0 and not r["aki"]
        assert max(values) - min(values) < 0.3


def test_planted_hypomagnesemia_is_exactly_the_low_magnesium_patients(cohort: Cohort, kb: KnowledgeBase) -> None:
    low = kb.magnesium.reference_range.low
    mg = _by_encounter(cohort.tables["events"], "magnesium")
    for r in _truth(cohort):
        values = [v for _, v in sorted(mg[str(r["encounter_id"])])]
        assert (min(values) < low) == r["hypomagnesemia"], r["encounter_id"]
        if r["hypomg_pattern"] == "falling":
            assert values[0] >= low  # a falling trend starts in range
        if r["hypomg_pattern"] == "admission":
            assert values[0] < low


def test_hypomagnesemia_follows_drugs_and_couples_k(cohort: Cohort) -> None:
    t = cohort.truth.to_pandas()
    cis = t.context == "cisplatin"
    assert t[cis].hypomagnesemia.mean() > 2 * t[~t.mg_wasting_drug].hypomagnesemia.mean()
    ev = cohort.tables["events"].to_pandas()
    k = ev[ev.analyte == "potassium"].groupby("encounter_id").numeric_value.min()
    t = t.set_index("encounter_id")
    assert k[t.index[t.k_ca_coupled]].mean() < k[t.index[~t.hypomagnesemia]].mean() - 0.3


def test_magnesium_sulfate_raises_the_next_magnesium(cohort: Cohort) -> None:
    ev = cohort.tables["events"].to_pandas()
    mg = ev[ev.analyte == "magnesium"]
    meds = cohort.tables["medications"].to_pandas()
    doses = meds[meds.drug == "magnesium sulfate"]
    rises = []
    for d in doses.itertuples():
        m = mg[mg.encounter_id == d.encounter_id]
        before, after = m[m.time <= d.start], m[(m.time >= d.end) & (m.time <= d.end + timedelta(hours=12))]
        if len(before) and len(after):
            rises.append(after.numeric_value.iloc[0] - before.numeric_value.iloc[-1])
    assert len(rises) > 20 and np.mean(rises) > 0.1


def test_planted_monitoring_gaps(cohort: Cohort, kb: KnowledgeBase) -> None:
    con = duckdb.connect()
    con.register("ev", cohort.tables["events"])
    con.register("enc", cohort.tables["encounters"])
    con.register("truth", cohort.truth)
    rows = con.execute("""
        WITH times AS (
            SELECT encounter_id, time FROM ev WHERE analyte = 'magnesium'
            UNION ALL SELECT encounter_id, start FROM enc WHERE kind = 'inpatient'
            UNION ALL SELECT encounter_id, "end" FROM enc WHERE kind = 'inpatient'),
        gaps AS (SELECT encounter_id, time - lag(time) OVER (PARTITION BY encounter_id ORDER BY time) AS gap
                 FROM times)
        SELECT t.encounter_id, t.mg_monitoring_gap, t.mg_high_risk, max(epoch(g.gap)) / 3600 AS max_gap_h
        FROM truth t JOIN gaps g USING (encounter_id) GROUP BY ALL""").fetchall()
    planted = [h for _, gap, _, h in rows if gap]
    high_risk_rest = [h for _, gap, risk, h in rows if risk and not gap]
    assert len(planted) > 10 and min(planted) > 48
    assert max(high_risk_rest) <= 48
    # each planted gap lies inside an order of a nephrotoxic drug (drugs.yaml nephrotoxic: true)
    con.register("meds", cohort.tables["medications"])
    nephrotoxic = [d.ingredient for d in kb.drugs.drugs if d.nephrotoxic]
    covered = con.execute("""
        SELECT count(DISTINCT t.encounter_id) FROM truth t JOIN meds m ON m.encounter_id = t.encounter_id
        WHERE t.mg_monitoring_gap AND list_contains($1, m.drug) AND m.start <= t.mg_gap_start
          AND m."end" >= t.mg_gap_end""", [nephrotoxic]).fetchone()
    assert covered is not None and covered[0] == len(planted)


# --- raw form -------------------------------------------------------------------------------------

def test_to_raw_round_trips_and_quarantines_exactly_the_dirty_rows() -> None:
    c = generate(300, seed=2)
    for mix in (True, False):
        raw = to_raw(c, unit_mix=mix, dirty_fraction=0.01, seed=4)
        out = normalize(raw)
        for name in TABLES:
            if name != "quarantine":
                assert out[name].sort_by("source").equals(c.tables[name].sort_by("source")), (mix, name)
        q = out["quarantine"].to_pylist()
        dirty = [s for s in raw["events"]["source"].to_pylist() if s.startswith("synth:dirty:")]
        assert sorted(r["source"] for r in q) == sorted(dirty)
        assert len(dirty) == round(0.01 * (c.tables["events"].num_rows + c.tables["weights"].num_rows))
        for r in q:
            kind = r["source"].split(":")[2]
            assert r["reason"].startswith(DIRTY_KINDS[kind]), r
        assert {r["source"].split(":")[2] for r in q} == set(DIRTY_KINDS)


def test_raw_units_are_a_realistic_mix() -> None:
    raw = to_raw(generate(300, seed=2), dirty_fraction=0.0)
    ev = raw["events"].to_pandas()
    assert set(ev[ev.analyte == "magnesium"].unit) == {"mg/dL", "mmol/L", "mEq/L"}
    assert set(ev[ev.analyte == "creatinine"].unit) == {"mg/dL", "umol/L"}
    assert set(ev[ev.analyte == "weight"].unit) == {"kg", "lb"}
    assert ev[ev.analyte == "rrt"].value.isna().all()
    plain = to_raw(generate(300, seed=2), unit_mix=False, dirty_fraction=0.0)["events"].to_pandas()
    assert set(plain[plain.analyte == "magnesium"].unit) == {"mg/dL"}


# --- size, parameters, errors -------------------------------------------------------------------------

@pytest.mark.parametrize("target", [None, 60.0, 180.0])
def test_events_per_patient_meets_the_target(target: float | None) -> None:
    c = generate(2000, seed=1, events_per_patient=target)
    want = target or load_params().value("events_per_patient")
    assert c.tables["events"].num_rows / 2000 == pytest.approx(want, rel=0.1)


def test_parameter_file_is_validated() -> None:
    from importlib import resources

    raw = yaml.safe_load(resources.files("mgaki").joinpath("synth_params.yaml").read_text("utf-8"))
    SynthParams.model_validate(raw)
    bad = dict(raw, sites=[dict(raw["sites"][0], share=0.9), *raw["sites"][1:]])
    with pytest.raises(ValueError, match="shares must sum to 1"):
        SynthParams.model_validate(bad)
    wrong_code = dict(raw["sites"][0], units=dict(raw["sites"][0]["units"],
                                                   magnesium={"unit": "mg/dL", "code": "LOINC/2160-0", "decimals": 1}))
    with pytest.raises(ValueError, match="not an magnesium code"):
        SynthParams.model_validate(dict(raw, sites=[wrong_code, *raw["sites"][1:]]))
    with pytest.raises(KnowledgeError, match="no parameter 'nope'"):
        load_params().get("nope")


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="n_patients"):
        generate(0)
    with pytest.raises(ValueError, match="dirty_fraction"):
        to_raw(generate(5), dirty_fraction=2.0)


def test_in_hospital_deaths_are_planted_at_discharge_with_the_aki_odds_ratio() -> None:
    c = generate(20_000, seed=3)
    truth = c.truth.to_pandas().set_index("encounter_id")
    ev = c.tables["events"].filter(pc.equal(c.tables["events"]["analyte"], "death")).to_pandas()
    assert set(ev.code) == {"MEDS_DEATH"} and ev.numeric_value.isna().all() and ev.unit.isna().all()
    assert sorted(ev.encounter_id) == sorted(truth.index[truth.death])  # one death row per planted death
    end = c.tables["encounters"].to_pandas().set_index("encounter_id")["end"]
    assert (ev.set_index("encounter_id").time == end.loc[ev.encounter_id]).all()  # the admission ends in death
    assert (truth.loc[truth.death, "death_time"] == end.loc[truth.index[truth.death]]).all()
    p = load_params()
    base, planted_or = p.value("death_prob"), p.value("death_or_aki")
    # the empirical rate without AKI and the odds ratio agree with the parameters (~3 standard errors)
    no_aki = truth[~truth.aki]
    se = np.sqrt(base * (1 - base) / len(no_aki))
    assert abs(no_aki.death.mean() - base) < 3 * se
    a, b = truth[truth.aki].death.sum(), (~truth[truth.aki].death).sum()
    cc, d = no_aki.death.sum(), (~no_aki.death).sum()
    log_or, se_log = np.log(a * d / (b * cc)), np.sqrt(1 / a + 1 / b + 1 / cc + 1 / d)
    assert abs(log_or - np.log(planted_or)) < 3 * se_log
    # normalize keeps every death (no value, no unit, no plausibility check) through to_raw
    back = normalize(to_raw(c, dirty_fraction=0.0))
    assert pc.sum(pc.equal(back["events"]["analyte"], "death")).as_py() == len(ev)
