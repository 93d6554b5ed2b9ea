"""Suspect specimens (issue 13 point 6): drawn during an infusion of the analyte, a delta-check jump that returns,
co-dilution. Marked with the reason, kept out of baselines, critical findings and alerts until a repeat confirms
them, and the output says "repeat the sample". Bedside engine and SQL stages, row for row."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
from tests.surveillance.build import Patient, at, tables

import mgaki
from mgaki.engine.kidney import stage_creatinine
from mgaki.engine.specimen import Infusion, review_specimens
from mgaki.events import EventStore
from mgaki.knowledge import load
from mgaki.surveillance import SurveillanceResult, run
from mgaki.synth.fhir import BundleBuilder


def _run(tmp_path: Path, *patients: Patient) -> SurveillanceResult:
    store = EventStore(tmp_path)
    store.append(tables(*patients))
    return run(store)


def _alerts(res: SurveillanceResult, kind: str | None = None) -> list[dict[str, object]]:
    return sorted((a for a in res.tables["alerts"].to_pylist() if kind is None or a["kind"] == kind),
                  key=lambda a: str(a["time"]))


def _suspects(res: SurveillanceResult) -> list[tuple[object, ...]]:
    return sorted((r["subject_id"], r["analyte"], r["time"], r["value"], r["rule"], r["kind"])
                  for r in res.tables["suspect_specimens"].to_pylist())


# --- the infusion case ---------------------------------------------------------------------------------

def _infusion_patient() -> Patient:
    """Mg 1.7, then 10.0 drawn during a 2 g MgSO4 infusion (started 1 h before the draw), then 2.3."""
    return (Patient().ev("magnesium", (0, 1.7), (4, 10.0), (6, 2.3), (30, 2.1))
            .ev("creatinine", (0, 0.9), (30, 0.9)).drug("magnesium sulfate", 3.0, 5.0))


def test_a_sample_drawn_during_an_infusion_raises_no_alert_but_the_repeat(tmp_path: Path) -> None:
    res = _run(tmp_path, _infusion_patient())
    assert _suspects(res) == [("P1", "magnesium", at(4), 10.0, "infusion_magnesium", "infusion")]
    row = res.tables["suspect_specimens"].to_pylist()[0]
    assert row["action"] == "repeat the sample" and "infusion" in row["reason"]
    mg_alerts = [a for a in _alerts(res) if str(a["kind"]).startswith("mg_")]
    assert all(a["value"] != 10.0 for a in mg_alerts)
    assert not [a for a in _alerts(res) if a["severity"] == "critical"]
    # the one alert the held value raises asks for the repeat (a ward on the alert list learns it is held)
    (held,) = _alerts(res, "suspect_specimen")
    assert (held["encounter_id"], held["time"], held["value"], held["severity"]) == ("H1", at(4), 10.0, "warning")
    assert "infusion" in held["detail"] and "repeat the sample" in held["detail"]
    traj = res.tables["mg_trajectory"].to_pylist()[0]
    assert traj["max_mg"] == 2.3 and traj["n_measurements"] == 3


def test_without_the_infusion_record_the_delta_check_holds_the_spike(tmp_path: Path) -> None:
    p = Patient().ev("magnesium", (0, 1.7), (4, 10.0), (6, 2.3))
    res = _run(tmp_path, p)
    assert _suspects(res) == [("P1", "magnesium", at(4), 10.0, "delta_magnesium", "delta_check")]
    assert not [a for a in _alerts(res) if a["severity"] == "critical"]
    # the alert says what was known when the 10.0 arrived (no repeat yet), not what the repeat showed later:
    # an incremental run that raised it then and a full recomputation give the same row
    (held,) = _alerts(res, "suspect_specimen")
    assert held["time"] == at(4) and "jumped from 1.7" in held["detail"] and "unconfirmed" in held["detail"]


def _bundle_infusion(with_repeat: bool) -> dict[str, object]:
    b = BundleBuilder().series("creatinine", "mg/dL", [(0, 0.9)]).obs("magnesium", 1.7, "mg/dL", 0)
    b.med("magnesium sulfate", "6585", kind="MedicationAdministration", hours=3.0, dose_g=2.0)
    b.obs("magnesium", 10.0, "mg/dL", 4)
    if with_repeat:
        b.obs("magnesium", 2.3, "mg/dL", 6)
    return b.build()


def test_bedside_the_infused_sample_is_no_critical_finding_and_says_repeat() -> None:
    a = mgaki.assess(_bundle_infusion(with_repeat=False))
    assert not [f for f in a.findings if f.severity == "critical"], [f.code for f in a.findings]
    sus = [f for f in a.findings if f.code == "suspect_specimen"]
    assert len(sus) == 1 and "repeat the sample" in sus[0].message and sus[0].severity == "warning"
    assert sus[0].data["rule"] == "infusion_magnesium"
    assert not any("dialysis" in f.message for f in a.findings)
    # no status or dose from the 1.7 drawn before the infusion either: the repeat decides
    assert a.magnesium is None and a.plan.action == "none" and not a.plan.doses
    assert any("suspect specimen" in w and "wait for the repeat" in w for w in a.warnings)
    # the plan says why there is none (a clinician review read "No serum magnesium" beside a quoted Mg)
    assert "suspect specimen: repeat the sample" in (a.plan.regimen or ""), a.plan.regimen


def test_bedside_after_the_repeat_the_spike_is_only_a_warning_line() -> None:
    a = mgaki.assess(_bundle_infusion(with_repeat=True))
    assert a.magnesium is not None and a.magnesium.value_mg_dl == 2.3
    assert not [f for f in a.findings if f.code in ("suspect_specimen", "hypermagnesemia", "hold_magnesium")]
    assert any("Set aside as a suspect specimen" in w and "10" in w for w in a.warnings)


# --- the co-dilution case --------------------------------------------------------------------------------

def _diluted() -> list[tuple[str, list[tuple[float, float]]]]:
    """Creatinine 1.0 -> 2.5 -> 2.6 (stage 2); a diluted draw at 66 h (creatinine and Mg both 0.9); 2.7 at 72 h."""
    return [("creatinine", [(0, 1.0), (48, 2.5), (60, 2.6), (66, 0.9), (72, 2.7)]),
            ("magnesium", [(0, 2.3), (60, 2.4), (66, 0.9), (72, 2.3)])]


def test_a_diluted_sample_is_not_the_baseline(tmp_path: Path) -> None:
    p = Patient()
    for analyte, pts in _diluted():
        p.ev(analyte, *pts)
    res = _run(tmp_path, p)
    assert _suspects(res) == [("P1", "creatinine", at(66), 0.9, "co_dilution", "co_dilution"),
                              ("P1", "magnesium", at(66), 0.9, "co_dilution", "co_dilution")]
    cr = {r["time"]: r for r in res.tables["kdigo_creatinine"].to_pylist()}
    assert at(66) not in cr  # not staged, not a reference
    assert cr[at(72)]["reference"] == 1.0 and cr[at(72)]["stage"] == 2
    assert [e["peak_stage"] for e in res.tables["aki_episodes"].to_pylist()] == [2]
    assert not [a for a in _alerts(res) if a["severity"] == "critical"]  # Mg 0.9 is grade 3
    # one alert for the draw, not one per analyte: Mg's reason
    held = [a for a in _alerts(res) if a["value"] == 0.9 or a["time"] == at(66)]
    assert [(a["kind"], a["time"], a["value"], a["severity"]) for a in held] == [
        ("suspect_specimen", at(66), 0.9, "warning")]
    assert held[0]["detail"].startswith("Held until repeated: magnesium 0.9")
    assert "fell with other analytes" in held[0]["detail"]
    # the engine on the same series: the same suspects, the same stages
    kb = load()
    review = review_specimens(kb, {a: [(at(h), v) for h, v in pts] for a, pts in _diluted()})
    assert sorted((s.analyte, s.time, s.value, s.rule) for s in review.suspects.values()) == [
        ("creatinine", at(66), 0.9, "co_dilution"), ("magnesium", at(66), 0.9, "co_dilution")]
    kept = [(at(h), v) for h, v in _diluted()[0][1] if not review.is_suspect("creatinine", at(h), v)]
    assert [(s.time, s.stage) for s in stage_creatinine(kb, kept)] == [(r["time"], r["stage"]) for r in
                                                                       sorted(cr.values(), key=lambda r: r["time"])]


def test_bedside_fhir_dilution_keeps_stage_2() -> None:
    b = BundleBuilder()
    for analyte, pts in _diluted():
        b.series(analyte, "mg/dL", pts)
    a = mgaki.assess(b.build())
    assert a.kidney.aki_stage == 2, a.kidney
    assert a.magnesium is not None and a.magnesium.value_mg_dl == 2.3


def test_dialysis_lowers_them_together_for_real(tmp_path: Path) -> None:
    p = Patient().ev("creatinine", (0, 5.0), (24, 2.5)).ev("magnesium", (0, 3.0), (24, 1.9)).ev("rrt", (20, None))
    res = _run(tmp_path, p)
    assert not [s for s in _suspects(res) if s[5] == "co_dilution"]


# --- delta check: returned, confirmed, unconfirmed ------------------------------------------------------------------

def test_a_confirmed_jump_alerts_at_its_repeat(tmp_path: Path) -> None:
    p = Patient().ev("magnesium", (0, 1.9), (24, 0.3), (30, 0.35))
    res = _run(tmp_path, p)
    assert _suspects(res) == []  # the repeat confirms it: not suspect
    oor = _alerts(res, "mg_out_of_range")
    assert [(a["time"], a["value"], a["severity"]) for a in oor] == [(at(30), 0.35, "critical")]


def test_an_unconfirmed_jump_waits_for_a_repeat(tmp_path: Path) -> None:
    p = Patient().ev("magnesium", (0, 1.9), (24, 0.3))
    res = _run(tmp_path, p)
    assert _suspects(res) == [("P1", "magnesium", at(24), 0.3, "delta_magnesium", "delta_check_unconfirmed")]
    assert not _alerts(res, "mg_out_of_range")
    a = mgaki.assess(BundleBuilder().series("magnesium", "mg/dL", [(0, 1.9), (24, 0.3)]).build())
    sus = next(f for f in a.findings if f.code == "suspect_specimen")
    assert sus.data["kind"] == "delta_check_unconfirmed" and "repeat the sample" in sus.message
    assert not [f for f in a.findings if f.severity == "critical"]


# --- differential: random patients, engine vs SQL --------------------------------------------------------------------

def test_random_patients_engine_and_sql_mark_the_same_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    patients, expected = [], []
    held_on_arrival: list[tuple[str, datetime]] = []
    kb = load()
    for i in range(60):
        p = Patient(subject=f"S{i:02d}", days=12, encounter=f"E{i:02d}")
        series: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
        levels = {"creatinine": float(rng.uniform(0.6, 3)), "magnesium": float(rng.uniform(1.2, 2.6)),
                  "potassium": float(rng.uniform(3, 5))}
        h = 0.0
        infusions = []
        while h < 24 * 10:
            h += float(rng.choice([2, 6, 12, 24]))
            dilute = rng.random() < 0.08
            spike = rng.random() < 0.06
            if rng.random() < 0.07:
                start = h - float(rng.choice([0.5, 1.5, 3]))
                end = None if rng.random() < 0.5 else start + float(rng.choice([1, 2, 8]))
                p.drug("magnesium sulfate", start, end)
                infusions.append(Infusion("magnesium sulfate", at(start), None if end is None else at(end)))
            for a, level in list(levels.items()):
                levels[a] = level * float(rng.normal(1, 0.05))
                v = levels[a] * (float(rng.uniform(0.3, 0.65)) if dilute else 1.0)
                if spike and a == "magnesium":
                    v += float(rng.choice([-1.0, 2.0, 6.0]))
                v = round(max(v, 0.2), 2)
                p.ev(a, (h, v))
                series[a].append((at(h), v))
            if rng.random() < 0.02:
                p.ev("rrt", (h - 1, None))
        rrt = [at(float(str(r["source"]).split("@")[1])) for r in p.rows["events"] if r["analyte"] == "rrt"]
        review = review_specimens(kb, series, infusions, rrt)
        expected += [(p.subject, s.analyte, s.time, s.value, s.rule, s.kind) for s in review.suspects.values()]
        # the engine when each draw arrived (only it and what came before): the draws it held then
        for t in sorted({t for pts in series.values() for t, _ in pts}):
            then = review_specimens(kb, {a: [(u, v) for u, v in pts if u <= t] for a, pts in series.items()},
                                    infusions, [r for r in rrt if r <= t])
            if any(s.time == t for s in then.suspects.values()):
                held_on_arrival.append((p.subject, t))
        patients.append(p)
    res = _run(tmp_path, *patients)
    assert _suspects(res) == sorted(expected)
    kinds = {e[5] for e in expected}
    assert kinds == {"infusion", "co_dilution", "delta_check", "delta_check_unconfirmed"}, kinds
    # one suspect_specimen alert per draw the engine held when it arrived: a jump its repeat later confirmed
    # too (it asked for that repeat), never a draw held only in hindsight
    asked = [(a["subject_id"], a["time"]) for a in _alerts(res, "suspect_specimen")]
    assert sorted(asked) == sorted(held_on_arrival) and len(set(asked)) == len(asked)
    final = {(e[0], e[2]) for e in expected}
    assert final <= set(held_on_arrival)  # every value set aside now was held when it arrived ...
    assert set(held_on_arrival) - final  # ... and some jumps held then were confirmed by their repeat since


def test_a_suspect_draw_still_counts_as_monitoring(tmp_path: Path) -> None:
    """no_mg_48h asks for a measurement; a draw whose value is set aside was one (its repeat is asked for)."""
    p = (Patient(days=5).icu(0, 120).ev("magnesium", (0, 1.9), (40, 6.0), (80, 1.9))
         .drug("magnesium sulfate", 39.5, 41.0))
    res = _run(tmp_path, p)
    assert [s[4] for s in _suspects(res)] == ["infusion_magnesium"]
    assert _alerts(res, "no_mg_48h") == []


def test_what_is_not_suspect(tmp_path: Path) -> None:
    """A value unchanged by the infusion (not the infusate), a fall across a dialysis session, a 'return' seen only
    weeks later, and a small fall at the assay's floor: none is set aside (real patterns of the MIMIC subset)."""
    p1 = Patient(subject="A").ev("magnesium", (0, 1.8), (5, 1.8)).drug("magnesium sulfate", 3, None)
    p2 = (Patient(subject="B").ev("creatinine", (0, 3.3), (11, 1.5), (24, 2.7)).ev("rrt", (6, None)))
    p3 = Patient(subject="C", days=40).ev("creatinine", (0, 3.0), (24, 1.2), (24 * 30, 3.1))
    p4 = Patient(subject="D").ev("creatinine", (0, 0.6), (12, 0.3), (24, 0.7))
    res = _run(tmp_path, p1, p2, p3, p4)
    assert _suspects(res) == []
    kb = load()
    for p in (p1, p2, p3, p4):
        ev = p.rows["events"]
        series: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
        for r in ev:
            if r["numeric_value"] is not None:
                series[str(r["analyte"])].append((r["time"], r["numeric_value"]))
        rrt = [r["time"] for r in ev if r["analyte"] == "rrt"]
        inf = [Infusion("magnesium sulfate", m["start"], m["end"]) for m in p.rows["medications"]]
        assert not review_specimens(kb, series, inf, rrt).suspects, p.subject
