"""Urine output that is not urine (issue 13 point 2): bladder irrigation and charting gaps.

True urine = output - irrigant instilled over the same interval (the MIMIC code repository's urine_output
concept); a window that cannot be netted (negative net) or that overlaps a long charting gap is not
assessable, so a gap is never oliguria or anuria. Both engines, row for row."""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from tests.surveillance.build import Patient, at, tables

import mgaki
from mgaki.adapters.mimic import FILES, read_mimic
from mgaki.engine.kidney import stage_urine_output
from mgaki.events import EventStore, normalize
from mgaki.knowledge import load
from mgaki.surveillance import run
from mgaki.synth.fhir import BundleBuilder

WEIGHT = 80.0


def _mimic_root(tmp: Path, outputs: list[tuple[float, str, float]]) -> Path:
    """A MIMIC-IV root (raw layout) with one ICU stay and the given (hour, itemid, mL) outputevents rows."""
    t0 = datetime(2150, 1, 1, 0, 0)  # noqa: DTZ001 - MIMIC times are naive

    def ts(h: float) -> str:
        return (t0 + timedelta(hours=h)).strftime("%Y-%m-%d %H:%M:%S")

    rows = {
        "hosp/patients": [{"subject_id": "1", "gender": "M", "anchor_age": "70", "anchor_year": "2150"}],
        "hosp/admissions": [{"subject_id": "1", "hadm_id": "20000001", "admittime": ts(-2),
                             "dischtime": ts(24 * 6)}],
        "icu/icustays": [{"subject_id": "1", "hadm_id": "20000001", "stay_id": "30000001", "intime": ts(0),
                          "outtime": ts(24 * 5)}],
        "icu/inputevents": [{"subject_id": "1", "hadm_id": "20000001", "stay_id": "30000001", "starttime": ts(0.5),
                             "orderid": "1", "patientweight": str(WEIGHT)}],
        "icu/outputevents": [{"subject_id": "1", "hadm_id": "20000001", "stay_id": "30000001", "charttime": ts(h),
                              "itemid": item, "value": f"{v:g}", "valueuom": "ml"} for h, item, v in outputs],
    }
    for rel, rs in rows.items():
        path = tmp / f"{rel}.csv.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FILES[rel])
            w.writeheader()
            w.writerows(rs)
    return tmp


def _irrigated_stay() -> list[tuple[float, str, float]]:
    """Foley hourly, then 20 h of continuous bladder irrigation charted every 2 h (irrigant in 1000 mL, irrigant
    plus urine out 1227.5 mL: 2,275 mL of urine in all), then a first Foley volume of 125 mL, then Foley again."""
    out = [(float(h), "226559", 80.0) for h in range(1, 11)]
    for h in range(12, 31, 2):
        out += [(float(h), "227488", 1000.0), (float(h), "227489", 1227.5)]
    out += [(31.0, "226559", 125.0)] + [(float(h), "226559", 80.0) for h in range(32, 60)]
    return out


def _surveil(root: Path, store_dir: Path) -> dict[str, list[dict[str, object]]]:
    store = EventStore(store_dir)
    store.append(normalize(read_mimic(root)))
    return {k: v.to_pylist() for k, v in run(store).tables.items()}


def test_irrigation_is_netted_not_read_as_stage_3(tmp_path: Path) -> None:
    res = _surveil(_mimic_root(tmp_path / "mimic", _irrigated_stay()), tmp_path / "store")
    uo = res["kdigo_urine"]
    assert uo and max(r["stage"] for r in uo) == 0  # 2,275 mL over 20 h at 80 kg: 1.4 mL/kg/h
    assert not [e for e in res["aki_episodes"]]
    assert not [a for a in res["alerts"] if a["kind"].startswith("aki")]
    # the net volume of the irrigation chartings is the urine, 227.5 mL every 2 h
    assert [r["volume_ml"] for r in uo if r["volume_ml"] not in (80.0, 125.0)] == [227.5] * 10


def test_without_the_irrigant_rows_the_gap_is_not_assessable_never_anuria(tmp_path: Path) -> None:
    """The charting gap irrigation leaves when its rows are missing (e.g. 226566, not read): not oliguria."""
    no_irrigation = [r for r in _irrigated_stay() if r[1] == "226559"]
    res = _surveil(_mimic_root(tmp_path / "mimic", no_irrigation), tmp_path / "store")
    uo = res["kdigo_urine"]
    assert max(r["stage"] for r in uo) == 0
    after_gap = next(r for r in uo if r["volume_ml"] == 125.0)
    assert after_gap["rate_6h"] is None and after_gap["rate_24h"] is None  # windows over the gap: not assessable


def test_engine_and_sql_agree_on_the_irrigated_stay(tmp_path: Path) -> None:
    rows = _irrigated_stay()
    p = Patient(days=5).icu(0, 24 * 5).weight(WEIGHT)
    p.ev("urine_output", *[(h, v) for h, item, v in rows if item == "226559"])
    p.ev("urine_irrigant_out", *[(h, v) for h, item, v in rows if item == "227489"])
    p.ev("urine_irrigant", *[(h, v) for h, item, v in rows if item == "227488"])
    _compare(tmp_path, [p])


def test_a_net_negative_window_is_not_assessable(tmp_path: Path) -> None:
    """Irrigant charted in before it drained out: the windows holding only the instillation are negative."""
    out = [(float(h), 60.0) for h in range(0, 8)] + [(9.0, 30.0), (15.0, 1500.0)] + [
        (float(h), 60.0) for h in range(16, 40)]
    p = Patient(days=3).weight(70).ev("urine_output", *out).ev("urine_irrigant", (8.5, 1500.0))
    got = _compare(tmp_path, [p])
    assert all(s == 0 for _, s, _ in got["P1"])


def _compare(tmp_path: Path, patients: list[Patient]) -> dict[str, list[tuple[datetime, int, float | None]]]:
    """SQL kdigo_urine == engine stage_urine_output, row for row (time, stage, 6-h rate)."""
    kb = load()
    store = EventStore(tmp_path / "cmp")
    store.append(tables(*patients))
    sql: dict[str, list[tuple[datetime, int, float | None]]] = defaultdict(list)
    for r in run(store).tables["kdigo_urine"].to_pylist():
        sql[r["subject_id"]].append((r["time"], r["stage"], r["rate_6h"]))
    for p in patients:
        ev = p.rows["events"]
        uo = [(r["time"], r["numeric_value"]) for r in ev if r["analyte"] == "urine_output"]
        irr = [(r["time"], r["numeric_value"]) for r in ev if r["analyte"] == "urine_irrigant"]
        irr_out = [(r["time"], r["numeric_value"]) for r in ev if r["analyte"] == "urine_irrigant_out"]
        weight = p.rows["weights"][0]["weight_kg"]
        ref = stage_urine_output(kb, uo, weight, irr, irr_out)
        got = sorted(sql[p.subject])
        assert [(x.time, x.stage) for x in ref] == [(t, s) for t, s, _ in got], p.subject
        for x, (_, _, r6) in zip(ref, got, strict=True):
            assert (x.rate_6h is None) == (r6 is None), (p.subject, x.time)
            if r6 is not None:
                assert r6 == pytest.approx(x.rate_6h, rel=1e-9, abs=1e-12)
    return sql


def test_random_gaps_and_irrigation_agree_row_for_row(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    patients = []
    for i in range(40):
        p = Patient(subject=f"S{i:02d}", days=6, encounter=f"E{i:02d}").weight(float(rng.uniform(50, 110)))
        h, uo, irr, irr_out = 0.0, [], [], []
        while h < 24 * 5:
            h += float(rng.choice([0.5, 1, 1, 1, 2, 4, 7, 12, 20], p=[.1, .3, .2, .1, .1, .08, .06, .04, .02]))
            if rng.random() < 0.08:  # irrigation: in and out, at one time, minutes or hours apart, or out only
                instil = float(rng.choice([250, 1000, 3000]))
                lag = float(rng.choice([0, 0, 0.25, -0.2, 2.5]))
                if rng.random() < 0.8:
                    irr.append((h + lag, instil))
                irr_out.append((h, instil + float(rng.uniform(-50, 200))))
            else:
                uo.append((h, float(rng.choice([0, 5, 20, 40, 80, 150]))))
        p.ev("urine_output", *uo).ev("urine_irrigant", *irr)
        p.ev("urine_irrigant_out", *[(t, max(v, 0.0)) for t, v in irr_out])
        patients.append(p)
    got = _compare(tmp_path, patients)
    stages = {s for rows in got.values() for _, s, _ in rows}
    assert stages >= {0, 1, 2, 3}  # the cohort exercises every stage
    assert sum(1 for rows in got.values() for _, _, r in rows if r is None) > 100  # and not-assessable windows


def test_fhir_bundle_with_irrigant_is_netted_at_the_bedside() -> None:
    """A hand-built FHIR bundle: urine output (LOINC 9187-6) and irrigant instilled (mgaki's local code)."""
    b = BundleBuilder("male", "1950-01-01").obs("weight", WEIGHT, "kg", 0)
    b.series("creatinine", "mg/dL", [(0, 1.0), (30, 1.0)])
    local = {"227488": "urine-irrigant-in", "227489": "urine-irrigant-out"}
    for h, item, v in _irrigated_stay():
        if item in local:
            b.obs("urine_output", v, "mL", h, code=local[item])
            b.entries[-1]["resource"]["code"]["coding"][0]["system"] = "urn:mgaki:code"
        else:
            b.obs("urine_output", v, "mL", h)
    a = mgaki.assess(b.build())
    assert a.kidney.aki_stage == 0
    assert not [f for f in a.findings if f.code == "aki"]


def test_fhir_bundle_gap_after_foley_is_not_anuria() -> None:
    b = BundleBuilder("male", "1950-01-01").obs("weight", WEIGHT, "kg", 0)
    b.series("urine_output", "mL", [(float(h), 80.0) for h in range(1, 11)] + [(31.0, 125.0)]
             + [(float(h), 80.0) for h in range(32, 40)])
    a = mgaki.assess(b.build())
    assert a.kidney.aki_stage == 0, a.kidney


def test_before_and_after_charting_at_the_same_rate_is_unaffected(tmp_path: Path) -> None:
    """Control: hourly oliguria with no gap and no irrigation is still staged (the rules do not hide AKI)."""
    p = Patient(days=3).weight(80).ev("urine_output", *[(float(h), 15.0) for h in range(0, 30)])
    got = _compare(tmp_path, [p])
    assert max(s for _, s, _ in got["P1"]) == 3  # 15 mL/h at 80 kg = 0.19 mL/kg/h for 24 h
    assert at(29) in [t for t, _, _ in got["P1"]]


REAL = Path(__file__).parents[1] / "data" / "mimic-iv-demo-10007818"


def test_real_patient_10007818_irrigation_is_read_netted_and_anuria_still_staged(tmp_path: Path) -> None:
    """The real MIMIC-IV stay with bladder irrigation: 25 mL irrigant/urine out at 10:00, 25 mL irrigant in at
    10:13 (paired, net 0 mL). Reading the pair changes nothing else (every other charting stages as without it),
    the patient's real oligo-anuria is still staged, and the SQL equals the engine row for row."""
    raw = read_mimic(REAL)
    ev = normalize(raw)["events"].to_pylist()
    irr = [(r["time"], r["numeric_value"]) for r in ev if r["analyte"] == "urine_irrigant"]
    assert irr == [(datetime(2146, 6, 24, 10, 13), 25.0)]  # noqa: DTZ001 - naive UTC (MEDS)
    store = EventStore(tmp_path / "with")
    store.append(normalize(raw))
    with_irr = run(store).tables["kdigo_urine"].to_pylist()
    weight = with_irr[0]["weight_kg"]
    uo = [(r["time"], r["numeric_value"]) for r in ev if r["analyte"] == "urine_output"]
    irr_out = [(r["time"], r["numeric_value"]) for r in ev if r["analyte"] == "urine_irrigant_out"]
    assert irr_out == [(datetime(2146, 6, 24, 10, 0), 25.0)]  # noqa: DTZ001
    ref = stage_urine_output(load(), uo, weight, irr, irr_out)
    assert [(x.time, x.stage) for x in ref] == sorted((r["time"], r["stage"]) for r in with_irr)
    # the same stay with the irrigation pair dropped (as mgaki read it before)
    dropped = {k: v for k, v in raw.items()}
    codes = raw["events"].column("code").to_pylist()
    keep = [c not in ("MIMIC-IV/outputevents/227488", "MIMIC-IV/outputevents/227489") for c in codes]
    dropped["events"] = raw["events"].filter(pa.array(keep))
    store2 = EventStore(tmp_path / "without")
    store2.append(normalize(dropped))
    without = {r["time"]: r["stage"] for r in run(store2).tables["kdigo_urine"].to_pylist()}
    pair_time = datetime(2146, 6, 24, 10, 0)  # noqa: DTZ001
    assert {r["time"]: r["stage"] for r in with_irr if r["time"] != pair_time} == without
    assert max(without.values()) == 3  # real anuria (hours of 0 mL on the Foley) is still stage 3


def test_irrigant_output_with_no_instillation_is_not_assessable(tmp_path: Path) -> None:
    """'Urine and GU Irrigant Out' (226566) with no irrigant-in charted: its urine is unknown, so the windows
    over it stage nothing (neither the 2,275 mL-as-urine overcount hides oliguria, nor a gap invents it)."""
    rows = [(float(h), "226559", 80.0) for h in range(1, 11)]
    rows += [(float(h), "226566", 1227.5) for h in range(12, 31, 2)]
    rows += [(31.0, "226559", 125.0)] + [(float(h), "226559", 80.0) for h in range(32, 60)]
    res = _surveil(_mimic_root(tmp_path / "mimic", rows), tmp_path / "store")
    uo = res["kdigo_urine"]
    assert max(r["stage"] for r in uo) == 0
    during = [r for r in uo if r["volume_ml"] == 1227.5]
    assert len(during) == 10 and all(r["rate_6h"] is None for r in during)
    p = Patient(days=5).icu(0, 24 * 5).weight(WEIGHT)
    p.ev("urine_output", *[(h, v) for h, item, v in rows if item == "226559"])
    p.ev("urine_irrigant_out", *[(h, v) for h, item, v in rows if item == "226566"])
    _compare(tmp_path, [p])


def test_a_creatinine_only_run_leaves_out_every_urine_analyte(tmp_path: Path) -> None:
    """The study's creatinine-only sensitivity (exclude_analytes=URINE_ANALYTES) sees no irrigation either."""
    from mgaki.surveillance import URINE_ANALYTES

    p = Patient(days=5).icu(0, 24 * 5).weight(WEIGHT)
    p.ev("urine_irrigant_out", *[(float(h), 1000.0) for h in range(1, 30)]).ev("urine_irrigant", (2, 900.0))
    store = EventStore(tmp_path)
    store.append(tables(p))
    assert run(store).tables["kdigo_urine"].num_rows > 0
    assert run(store, exclude_analytes=URINE_ANALYTES).tables["kdigo_urine"].num_rows == 0


def test_a_window_starting_where_a_long_interval_ends_is_assessable(tmp_path: Path) -> None:
    """A window of h hours ending exactly h hours after a long interval's end does not overlap it (the SQL
    finds the latest long interval's end and compares it with t - h); one ending a second earlier does. Per
    window length (6, 12, 24 h), with the engine row for row."""
    gap_end = 24.0  # 10 h -> 24 h: 14 h between chartings, more than uo_max_interval_hours (13 h)
    out = [(float(h), 80.0) for h in range(1, 11)] + [(gap_end, 300.0)] + [
        (float(h), 80.0) for h in range(25, 61)] + [(gap_end + 6 - 1 / 3600, 1.0)]
    p = Patient(days=4).weight(80).ev("urine_output", *out)
    _compare(tmp_path, [p])
    store = EventStore(tmp_path / "cmp")
    rows = {r["time"]: r for r in run(store).tables["kdigo_urine"].to_pylist()}
    second = min(rows)  # the rows start at the second charting (hour 2): the first closes no interval
    t = lambda h: second + timedelta(hours=h - 2)  # noqa: E731
    for hours, col in ((6, "rate_6h"), (12, "rate_12h"), (24, "rate_24h")):
        assert rows[t(gap_end + hours)][col] is not None, hours
        assert rows[t(gap_end + hours - 1)][col] is None, hours
    assert rows[t(gap_end + 6) - timedelta(seconds=1)]["rate_6h"] is None
