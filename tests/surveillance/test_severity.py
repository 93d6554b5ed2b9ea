"""Alert and finding severity follows what the clinician must do and how fast (issue 13 point 9).

The mapping is knowledge data (surveillance.yaml ``severity``); the SQL alerts and the bedside findings read
the same rules, so a stage-1 AKI is a warning in both and a stage-3 AKI critical in both."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.surveillance.build import Patient, at, tables

import mgaki
from mgaki.events import EventStore
from mgaki.knowledge import load
from mgaki.surveillance import run
from mgaki.synth.fhir import BundleBuilder


def _alerts(tmp_path: Path, p: Patient, kind: str) -> list[dict[str, object]]:
    store = EventStore(tmp_path)
    store.append(tables(p))
    rows = run(store).tables["alerts"].to_pylist()
    return sorted((a for a in rows if a["kind"] == kind), key=lambda a: str(a["time"]))


def test_every_alert_kind_is_rated_once_by_a_cited_rule() -> None:
    kb = load()
    for a in kb.surveillance.alerts:
        rule = kb.severity_rule(a.id)
        assert rule.source.doi or rule.source.document
        assert rule.action
    assert {lv.level for lv in kb.surveillance.severity_levels} == {"info", "warning", "critical"}
    assert [kb.severity("aki_onset", s) for s in (1, 2, 3)] == ["warning", "warning", "critical"]
    assert [kb.severity("mg_out_of_range", g) for g in (1, 2, 3, 4)] == ["warning", "warning", "critical",
                                                                        "critical"]
    assert kb.severity("arrhythmia_risk") == "critical"
    assert kb.severity("mg_falling") == "warning"


def test_stage_1_onset_is_a_warning_stage_3_worsening_is_critical(tmp_path: Path) -> None:
    p = Patient().ev("creatinine", (0, 1.0), (24, 1.4), (48, 2.1), (72, 3.2))
    onset = _alerts(tmp_path, p, "aki_onset")
    assert [(a["time"], a["severity"]) for a in onset] == [(at(24), "warning")]  # +0.4 in 48 h: stage 1
    worse = _alerts(tmp_path / "w", p, "aki_worsening")
    assert [(a["time"], a["value"], a["severity"]) for a in worse] == [(at(48), 2.0, "warning"),
                                                                        (at(72), 3.0, "critical")]


def test_an_onset_straight_at_stage_3_is_critical(tmp_path: Path) -> None:
    p = Patient().ev("creatinine", (0, 1.0), (24, 3.1))
    assert [a["severity"] for a in _alerts(tmp_path, p, "aki_onset")] == ["critical"]


def _mg_bundle(mg: float, creat: list[tuple[float, float]] | None = None) -> dict[str, object]:
    b = BundleBuilder().series("creatinine", "mg/dL", creat or [(0, 0.8)]).obs("magnesium", mg, "mg/dL", 2)
    return b.build()


def test_hold_at_grade_1_is_a_warning_and_does_not_say_dialysis() -> None:
    a = mgaki.assess(_mg_bundle(2.6))
    hold = next(f for f in a.findings if f.code == "hold_magnesium")
    assert hold.severity == "warning"
    assert "dialysis" not in hold.message and "calcium" not in hold.message
    assert next(f for f in a.findings if f.code == "hypermagnesemia").severity == "warning"
    assert all(f.severity != "critical" for f in a.findings)


def test_hold_at_a_toxic_level_is_critical_and_names_calcium_and_dialysis() -> None:
    a = mgaki.assess(_mg_bundle(6.5))  # 5.35 mEq/L: above the 4 mEq/L reflex level; CTCAE grade 3
    hold = next(f for f in a.findings if f.code == "hold_magnesium")
    assert hold.severity == "critical"
    assert "IV calcium" in hold.message and "dialysis" in hold.message


@pytest.mark.parametrize(("series", "stage"), [
    ([(0, 1.0), (24, 1.4)], 1),
    ([(0, 1.0), (24, 2.1)], 2),
    ([(0, 1.0), (24, 3.2)], 3),
])
def test_bedside_and_sql_rate_the_same_aki_alike(tmp_path: Path, series: list[tuple[float, float]],
                                                 stage: int) -> None:
    """Differential: the bedside ``aki`` finding and the SQL onset alert of one creatinine series."""
    bedside = mgaki.assess(BundleBuilder().series("creatinine", "mg/dL", series).build())
    aki = next(f for f in bedside.findings if f.code == "aki")
    assert aki.data["stage"] == stage
    sql = _alerts(tmp_path, Patient().ev("creatinine", *series), "aki_onset")
    assert [a["severity"] for a in sql] == [aki.severity] == [load().severity("aki", stage)]


# --- mg_falling: only a fall that leaves the range before the next measurement (or has left it) ---------------

def test_a_fall_that_stays_in_range_is_no_alert(tmp_path: Path) -> None:
    # 2.5 -> 2.1 -> 2.0 daily: 0.4-0.5 below the 48-h maximum, but 0.1/day projects 1.9 by the next value
    p = Patient().ev("magnesium", (0, 2.5), (24, 2.1), (48, 2.0))
    assert _alerts(tmp_path, p, "mg_falling") == []


def test_a_fall_projected_out_of_range_by_the_next_measurement_alerts(tmp_path: Path) -> None:
    # 2.4 -> 2.0 in 12 h: the next value, 12 h on at that rate, would be 1.6
    p = Patient().ev("magnesium", (0, 2.4), (12, 2.0))
    got = _alerts(tmp_path, p, "mg_falling")
    assert [(a["time"], a["severity"]) for a in got] == [(at(12), "warning")]
    assert "projected 1.6" in str(got[0]["detail"])


def test_the_projection_horizon_is_at_most_a_day(tmp_path: Path) -> None:
    # 2.3 -> 1.95 in 42 h: continued 24 h (not the 42-h interval, which would give 1.6) it is 1.75: no alert
    p = Patient().ev("magnesium", (30, 2.3), (72, 1.95))
    assert _alerts(tmp_path, p, "mg_falling") == []


def test_a_fall_that_crosses_out_of_range_alerts(tmp_path: Path) -> None:
    p = Patient().ev("magnesium", (0, 2.0), (48, 1.6))  # slow (0.4 in 48 h) but now below 1.7
    got = _alerts(tmp_path, p, "mg_falling")
    assert [a["time"] for a in got] == [at(48)] and "below range" in str(got[0]["detail"])
