"""AKI episodes and each alert rule: when it fires, that it fires once, what silences it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.surveillance.build import Patient, at, tables

from mgaki.events import EventStore
from mgaki.surveillance import SurveillanceResult, run


def _run(tmp_path: Path, *patients: Patient, baseline_rule: str | None = None) -> SurveillanceResult:
    store = EventStore(tmp_path)
    store.append(tables(*patients))
    return run(store, baseline_rule=baseline_rule)


def _alerts(res: SurveillanceResult, kind: str) -> list[dict[str, object]]:
    return sorted((a for a in res.tables["alerts"].to_pylist() if a["kind"] == kind), key=lambda a: str(a["time"]))


def test_episode_onset_peak_recovery_and_second_episode(tmp_path: Path) -> None:
    p = Patient(days=20).ev("creatinine", (0, 1.0), (24, 1.2), (40, 1.6), (72, 2.2), (120, 3.1), (168, 1.8),
                            (200, 1.3), (230, 1.1), (300, 1.2), (320, 1.6))
    res = _run(tmp_path, p)
    eps = sorted(res.tables["aki_episodes"].to_pylist(), key=lambda e: e["episode"])
    assert [(e["episode"], e["onset"], e["peak_stage"], e["peak_time"], e["recovery"]) for e in eps] == [
        (1, at(40), 3, at(120), at(200)),  # 1.3 < 1.5 x 1.0: recovered (ADQI); 1.8 is not
        (2, at(320), 1, at(320), None),  # 1.6 = rise >= 0.3 in 48 h after recovery: a new episode
    ]
    assert eps[0]["baseline"] == 1.0 and eps[0]["baseline_method"] == "lowest_in_encounter_so_far"
    assert eps[0]["onset_criterion"] == "rise_0.3_48h"  # 1.6 vs 1.2 in 48 h, ratio 1.6 x 1.0 too
    onset = _alerts(res, "aki_onset")
    assert [a["time"] for a in onset] == [at(40), at(320)]
    worse = _alerts(res, "aki_worsening")
    assert [(a["time"], a["value"]) for a in worse] == [(at(72), 2.0), (at(120), 3.0)]


def test_preadmission_baseline_is_the_median_7_to_365_days_before(tmp_path: Path) -> None:
    """The outpatient-median rule (issue 13.4 keeps it as a named option; the default is NHS England)."""
    p = Patient().ev("creatinine", (-24 * 200, 0.8), (-24 * 100, 1.0), (-24 * 30, 0.9), (-24 * 3, 5.0),
                     (2, 1.4), (30, 1.45))
    res = _run(tmp_path, p, baseline_rule="outpatient_median")
    rows = {r["time"]: r for r in res.tables["kdigo_creatinine"].to_pylist()}
    # the value 3 days before admission is inside KDIGO's 7-day window, not part of the median
    assert rows[at(2)]["reference"] == pytest.approx(5.0 if False else 0.9)
    assert rows[at(2)]["reference_method"] == "preadmission_median"
    assert rows[at(2)]["stage"] == 1 and rows[at(2)]["criterion"] == "ratio_preadmission_median"
    eps = res.tables["aki_episodes"].to_pylist()
    assert eps[0]["baseline"] == pytest.approx(0.9) and eps[0]["baseline_method"] == "preadmission_median"


def test_stable_ckd_at_4_mg_dl_is_not_aki(tmp_path: Path) -> None:
    # (a rise to 4.5 at 72 h would be 0.3 above 4.2 at 48 h: AKI, and stage 3 by the 4.0 rule)
    res = _run(tmp_path, Patient().ev("creatinine", (0, 4.3), (24, 4.4), (48, 4.2), (72, 4.4)))
    assert res.tables["aki_episodes"].num_rows == 0
    assert not _alerts(res, "aki_onset")


def test_rrt_is_stage_3_and_blocks_recovery(tmp_path: Path) -> None:
    p = Patient().ev("creatinine", (0, 1.0), (20, 1.4), (50, 2.0), (100, 1.0)).ev("rrt", (60, None))
    res = _run(tmp_path, p)
    ep = res.tables["aki_episodes"].to_pylist()[0]
    assert ep["peak_stage"] == 3 and ep["rrt"] and ep["recovery"] is None


def test_anuria_12h_is_stage_3_and_oliguria_ends_when_charting_stops(tmp_path: Path) -> None:
    p = Patient().icu(0, 48).weight(70).ev("urine_output", *[(h, 60.0) for h in range(0, 10)],
                                           *[(h, 0.0) for h in range(10, 23)])
    p.ev("creatinine", (0, 1.0), (60, 1.0))
    res = _run(tmp_path, p)
    uo = {r["time"]: r for r in res.tables["kdigo_urine"].to_pylist()}
    assert uo[at(21)]["stage"] == 3 and uo[at(21)]["criterion"] == "anuria_12h"
    assert uo[at(20)]["stage"] == 2  # 11 h of zero: 12-h rate < 0.5 but not yet 12 h of anuria
    ep = res.tables["aki_episodes"].to_pylist()[0]
    assert ep["peak_stage"] == 3 and ep["recovery"] == at(60)  # creatinine normal, charting long stopped


def test_mg_out_of_range_fires_once_per_entry_and_again_on_worse_grade(tmp_path: Path) -> None:
    p = Patient().ev("magnesium", (0, 2.0), (24, 1.5), (48, 1.4), (72, 1.1), (96, 0.8), (120, 2.0), (144, 1.6))
    res = _run(tmp_path, p)
    assert [a["time"] for a in _alerts(res, "mg_out_of_range")] == [at(24), at(144)]
    worse = _alerts(res, "mg_grade_worsened")
    # severity from the cited mapping: grade 2 (1.1 mg/dL) asks for action within hours, grade 3 (0.8) now
    assert [(a["time"], a["severity"]) for a in worse] == [(at(72), "warning"), (at(96), "critical")]
    assert "grade 3" in str(worse[1]["detail"])


def test_falling_trend_is_suppressed_for_24h(tmp_path: Path) -> None:
    p = Patient().ev("magnesium", (0, 2.5), (12, 2.3), (20, 1.95), (30, 1.8), (60, 1.72), (70, 1.5))
    res = _run(tmp_path, p)
    # 1.95 at 20 h: 0.55 below 2.5, and its fall since 12 h (0.35 in 8 h) projects 1.6 by the next measurement
    # (8 h on): fires; 1.8 at 30 h meets the rule within 24 h of that: silent; 1.72 at 60 h (2.3 at 12 h is in its
    # 48-h window; 0.08 in 30 h, projected over 24 h: 1.656) comes 30 h after the last time the rule was met:
    # fires; 1.5 at 70 h is 10 h after that: silent
    assert [a["time"] for a in _alerts(res, "mg_falling")] == [at(20), at(60)]


def test_refractory_hypokalemia_with_low_or_missing_mg(tmp_path: Path) -> None:
    p = Patient().ev("potassium", (0, 3.1), (3, 3.2), (10, 3.0), (80, 3.3), (90, 3.2))
    p.ev("magnesium", (1, 1.4))
    res = _run(tmp_path, p)
    got = _alerts(res, "refractory_k_ca")
    # 3 h after the first low K is a repeat draw (< 6 h); 10 h fires (Mg 1.4 low); at 90 h Mg is 89 h old
    assert [a["time"] for a in got] == [at(10), at(90)]
    assert "1.4 mg/dL" in str(got[0]["detail"]) and "not measured" in str(got[1]["detail"])


def test_no_mg_48h_only_for_high_risk_patients(tmp_path: Path) -> None:
    icu = Patient("A").icu(24, 200).ev("magnesium", (1, 2.0), (30, 2.0))
    drug = Patient("B", encounter="HB").drug("cisplatin", 100).ev("magnesium", (1, 2.0))
    low_risk = Patient("C", encounter="HC").ev("magnesium", (1, 2.0))
    res = _run(tmp_path, icu, drug, low_risk)
    got = {(a["subject_id"], a["time"]) for a in _alerts(res, "no_mg_48h")}
    # A: ICU from 24 h, last Mg at 30 h -> due at 78 h; B: Mg at 1 h, cisplatin at 100 h (exposure 24 h) -> due 100 h
    assert got == {("A", at(78)), ("B", at(100))}


def test_relapse_within_48h_of_recovery_continues_the_episode(tmp_path: Path) -> None:
    # stage 1 at 30 h, recovered at 50 h (1.1 < 1.5 x 1.0), AKI again at 70 h (1.45 vs 1.1: rise 0.35)
    p = Patient().ev("creatinine", (0, 1.0), (30, 1.5), (50, 1.1), (70, 1.45), (90, 2.2), (140, 1.0))
    res = _run(tmp_path, p)
    eps = res.tables["aki_episodes"].to_pylist()
    assert len(eps) == 1
    assert (eps[0]["onset"], eps[0]["relapses"], eps[0]["peak_stage"], eps[0]["recovery"]) == (at(30), 1, 2, at(140))
    assert [a["time"] for a in _alerts(res, "aki_onset")] == [at(30)]
    assert [(a["time"], a["value"]) for a in _alerts(res, "aki_worsening")] == [(at(90), 2.0)]
