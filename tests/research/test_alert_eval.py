"""Do the alerts help? Outcomes after each alert and the silent-vs-live comparison (issue 17 points 3-4).

The statistics are checked against statsmodels; the whole path (synthetic trial -> store -> surveillance ->
allocation -> outcomes -> evaluate) recovers a planted effect (live-arm clinicians dose sooner) and calls a null
effect significant no more often than its alpha says.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from mgaki.cli import app
from mgaki.events import EventStore, normalize
from mgaki.events.schema import TABLES
from mgaki.knowledge import KnowledgeBase, load
from mgaki.research.alert_eval import (
    km_median,
    logrank,
    outcomes,
    rate_ratio,
    retrospective_alerts,
    risk_difference,
    run,
    wilson,
)
from mgaki.research.alert_trial import AlertPolicy, AllocationSettings, MemoryLedger, assign_mode
from mgaki.surveillance import surveil
from mgaki.synth.alert_trial import alert_trial_cohort

T0 = datetime(2031, 5, 1, 8, 0, tzinfo=UTC).replace(tzinfo=None)  # the store keeps naive UTC


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return load()


def _table(name: str, rows: list[dict[str, Any]]) -> pa.Table:
    schema = TABLES[name]
    return pa.table({f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in schema}, schema=schema)


def _ev(sid: str, h: float, analyte: str, value: float | None, unit: str | None = "mg/dL") -> dict[str, Any]:
    return {"subject_id": sid, "encounter_id": f"{sid}-e", "time": T0 + timedelta(hours=h), "analyte": analyte,
            "code": {"death": "MEDS_DEATH"}.get(analyte, analyte), "numeric_value": value,
            "unit": unit if value is not None else None, "source": "test"}


def test_outcomes_follow_each_alert(tmp_path: Path, kb: KnowledgeBase) -> None:
    """Hand-built patients, each outcome known: dose 90 min after, none before discharge (censored), a running
    infusion stopped for a high Mg (hold), dialysis and death within 14 days, Mg back in range."""
    enc = [{"subject_id": s, "encounter_id": f"{s}-e", "kind": "hospital", "start": T0 - timedelta(hours=2),
            "end": T0 + timedelta(hours=end), "source": "test"} for s, end in (("dose", 200), ("none", 10),
                                                                                 ("high", 200), ("dies", 100))]
    events = [_ev("dose", 0, "magnesium", 1.2), _ev("dose", 6, "magnesium", 1.9),
              _ev("none", 0, "magnesium", 1.3), _ev("none", 8, "magnesium", 1.35),
              _ev("high", 0, "magnesium", 4.5), _ev("high", 12, "magnesium", 2.2),
              _ev("dies", 0, "magnesium", 1.1), _ev("dies", 30, "rrt", None), _ev("dies", 90, "death", None)]
    meds = [{"subject_id": "dose", "encounter_id": "dose-e", "start": T0 + timedelta(minutes=90),
             "end": T0 + timedelta(minutes=150), "drug": "magnesium sulfate", "mg_mmol": 8.1, "source": "t"},
            {"subject_id": "dose", "encounter_id": "dose-e", "start": T0 + timedelta(hours=30),  # outside 24 h
             "end": T0 + timedelta(hours=31), "drug": "magnesium sulfate", "mg_mmol": 8.1, "source": "t"},
            {"subject_id": "high", "encounter_id": "high-e", "start": T0 - timedelta(hours=3),
             "end": T0 + timedelta(minutes=30), "drug": "magnesium sulfate", "mg_mmol": 16.2, "source": "t"}]
    store = EventStore(tmp_path / "s")
    store.append({"encounters": _table("encounters", enc), "events": _table("events", events),
                  "medications": _table("medications", meds)})
    alerts = pa.table({"alert_id": [1, 2, 3, 4], "subject_id": ["dose", "none", "high", "dies"],
                       "encounter_id": ["dose-e", "none-e", "high-e", "dies-e"],
                       "kind": ["mg_out_of_range"] * 4, "time": pa.array([T0] * 4, pa.timestamp("us")),
                       "severity": ["warning"] * 4, "value": [1.2, 1.3, 4.5, 1.1],
                       "mode": ["live", "silent", "live", "silent"]})
    got = {r["subject_id"]: r for r in outcomes(store, kb, alerts).to_pylist()}
    assert got["dose"]["lab_to_action_min"] == 90.0 and got["dose"]["acted"]
    assert got["dose"]["mg_in_range_24h"] and not got["dose"]["mg_out_of_range_24h"]
    assert got["none"]["lab_to_action_min"] == 600.0 and not got["none"]["acted"]  # censored at discharge
    assert got["none"]["mg_out_of_range_24h"] and not got["none"]["mg_in_range_24h"]
    assert got["high"]["action"] == "hold" and got["high"]["lab_to_action_min"] == 30.0 and got["high"]["acted"]
    assert got["dies"]["rrt"] and got["dies"]["death"] and not got["dose"]["death"]
    assert got["dies"]["lab_to_action_min"] == 1440.0 and not got["dies"]["acted"]  # censored at 24 h


def test_statistics_match_statsmodels() -> None:
    sm = pytest.importorskip("statsmodels.stats.proportion")
    for k, n in ((0, 10), (3, 17), (40, 40), (120, 300)):
        assert wilson(k, n) == pytest.approx(sm.proportion_confint(k, n, method="wilson"), abs=1e-9)
    for k1, n1, k0, n0 in ((30, 100, 45, 100), (3, 40, 9, 38), (0, 20, 4, 25)):
        ref = sm.confint_proportions_2indep(k1, n1, k0, n0, method="newcomb", compare="diff")
        rd = risk_difference(k1, n1, k0, n0)
        assert rd[0] == pytest.approx(k1 / n1 - k0 / n0) and rd[1:] == pytest.approx(ref, abs=1e-9)
    rr = rate_ratio(30, 100, 45, 100)
    assert rr[0] == pytest.approx(30 / 45)
    ref = sm.confint_proportions_2indep(30, 100, 45, 100, method="log", compare="ratio")
    assert rr[1:3] == pytest.approx(ref, rel=1e-6)
    assert rr[3] == pytest.approx(sm.test_proportions_2indep(30, 100, 45, 100, method="score",
                                                             correction=False).pvalue, rel=0.05)
    survdiff = pytest.importorskip("statsmodels.duration.survfunc").survdiff
    rng = np.random.default_rng(3)
    t1, t0 = rng.exponential(60, 80), rng.exponential(150, 70)
    e1, e0 = t1 < 240, t0 < 240
    t1, t0 = np.minimum(t1, 240), np.minimum(t0, 240)
    _, p = survdiff(np.r_[t1, t0], np.r_[e1, e0].astype(int), np.r_[np.ones(80), np.zeros(70)])
    assert logrank(t1, e1, t0, e0) == pytest.approx(p, rel=1e-6)
    med = km_median(t1, e1)
    assert med[1] <= med[0] <= med[2]
    assert math.isnan(km_median(np.array([5.0, 6.0]), np.array([False, False]))[0])  # never reached


def _trial(tmp: Path, kb: KnowledgeBase, seed: int, n: int, live_h: float, silent_h: float) -> dict[str, Any]:
    """The whole path: generate (arms from the allocation), store, surveil, allocate the alerts, evaluate."""
    policy = AlertPolicy(default="randomised", allocation=AllocationSettings(seed=seed))
    ledger = MemoryLedger()
    cohort = alert_trial_cohort(n, seed, lambda s, cu, t: assign_mode(policy, ledger, s, "mg_out_of_range", cu)[0],
                                live_mean_h=live_h, silent_mean_h=silent_h)
    store = EventStore(tmp / f"trial-{seed}")
    store.append(normalize(cohort.raw))
    surveil(store)
    alerts = retrospective_alerts(store, policy)
    # the service's allocation (in time order, at first eligibility) gives each patient the arm it was dosed by
    arm_of = dict(zip(alerts["subject_id"].to_pylist(), alerts["mode"].to_pylist(), strict=False))
    assert all(arm_of[s] == a for s, a in cohort.arms.items())
    res, _ = run(store, kb, alerts, "patient")
    return next(c for c in res["comparisons"] if c["kind"] == "mg_out_of_range")


@pytest.mark.parametrize("seed", [101, 202, 303])
def test_planted_effect_is_recovered(tmp_path: Path, kb: KnowledgeBase, seed: int) -> None:
    c = _trial(tmp_path, kb, seed, 240, live_h=1.0, silent_h=3.0)
    lab = c["lab_to_action"]
    assert c["n_live"] > 90 and c["n_silent"] > 90  # balanced blocks
    assert lab["significant"] and lab["live_sooner"] and lab["p_logrank"] < 0.01
    # the medians are near the planted ones (exponential median = mean x ln 2)
    assert lab["median_min"]["live"] == pytest.approx(60 * math.log(2), rel=0.35)
    assert lab["median_min"]["silent"] == pytest.approx(180 * math.log(2), rel=0.35)


def test_null_effect_is_not_called_significant(tmp_path: Path, kb: KnowledgeBase) -> None:
    """No planted effect, 20 trials: about alpha (5%) of them may be significant by chance (2 of these 20 are);
    4 or more would be a false-positive rate above alpha (binomial P(>= 4 | 20, 0.05) = 0.016)."""
    significant = [_trial(tmp_path, kb, seed, 80, live_h=2.0, silent_h=2.0)["lab_to_action"]["significant"]
                   for seed in range(500, 520)]
    assert sum(significant) <= 3, significant
    first = _trial(tmp_path, kb, 777, 240, live_h=2.0, silent_h=2.0)["lab_to_action"]
    assert not first["significant"] and not first["live_sooner"]


def test_evaluate_cli_renders_the_report_on_the_demo(tmp_path: Path) -> None:
    runner = CliRunner()
    demo = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "-n", "200", "--no-plots", "-o", str(demo)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "--store", str(demo / "store"), "-o", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "ev" / "evaluation.html").read_text()
    for section in ("Alert burden", "Positive predictive value", "Live against silent", "Outcome definitions",
                    "per 100 patient-days", "Retrospective shadow run"):
        assert section in page, section
    for chart in ("burden", "ppv", "lab_to_action", "risk"):
        png = tmp_path / "ev" / f"evaluation_{chart}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", chart
        assert f"src='{png.name}'" in page
    assert "mg_out_of_range" not in page.split("<h2>")[1]  # words, not internal ids, in the tables
    bad = runner.invoke(app, ["evaluate", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "exactly one" in bad.output


def test_every_alert_kind_has_its_evaluation_entry(kb: KnowledgeBase) -> None:
    """evaluation.yaml covers every surveillance alert kind once, with a defined target outcome."""
    from mgaki.errors import KnowledgeError
    from mgaki.knowledge import _check_evaluation

    assert {a.kind for a in kb.evaluation.alerts} == {a.id for a in kb.surveillance.alerts}, \
        "a surveillance alert kind without its evaluation.yaml entry (label, action, target)"
    wrong = kb.evaluation.model_copy(update={"alerts": (*kb.evaluation.alerts, kb.evaluation.alerts[0])})
    with pytest.raises(KnowledgeError, match="listed twice"):
        _check_evaluation(wrong, kb.surveillance)
    assert all(o.source.citation for o in kb.evaluation.outcomes)


def test_degenerate_samples_give_no_test_not_a_warning() -> None:
    one = np.array([5.0])
    assert math.isnan(logrank(one, np.array([True]), one, np.array([True])))
    assert math.isnan(logrank(np.array([]), np.array([], bool), one, np.array([True])))
    assert math.isnan(risk_difference(1, 0, 1, 3)[0]) and math.isnan(rate_ratio(0, 0, 1, 1)[0])


def test_an_informational_kind_has_no_target_and_an_actionable_one_must(kb: KnowledgeBase) -> None:
    """kdigo_not_applicable asks for nothing: no PPV target; a kind asking for an action must name one."""
    from mgaki.errors import KnowledgeError
    from mgaki.knowledge import _check_evaluation

    info = next(a for a in kb.evaluation.alerts if a.kind == "kdigo_not_applicable")
    assert info.action == "none" and info.target is None
    assert kb.severity("kdigo_not_applicable", None) == "info"
    dose = kb.evaluation.alerts[0].model_copy(update={"target": None})
    wrong = kb.evaluation.model_copy(update={"alerts": (dose, *kb.evaluation.alerts[1:])})
    with pytest.raises(KnowledgeError, match="names no target outcome"):
        _check_evaluation(wrong, kb.surveillance)


def test_a_repeat_request_is_acted_on_by_the_next_result_of_a_checked_analyte(tmp_path: Path,
                                                                            kb: KnowledgeBase) -> None:
    """suspect_specimen asks for the repeat: its lab-to-action is the next result of an analyte the specimen rules
    check (a creatinine 2 h after a held creatinine, not the Mg 5 h after); it has no PPV target, and a kind asking
    for a repeat may name none."""
    enc = [{"subject_id": s, "encounter_id": f"{s}-e", "kind": "hospital", "start": T0 - timedelta(hours=2),
            "end": T0 + timedelta(hours=200), "source": "test"} for s in ("rep", "never")]
    events = [_ev("rep", 0, "creatinine", 0.4), _ev("rep", 2, "creatinine", 1.1), _ev("rep", 5, "magnesium", 2.0),
              _ev("never", 0, "magnesium", 0.9), _ev("never", 30, "magnesium", 2.0)]
    store = EventStore(tmp_path / "s")
    store.append({"encounters": _table("encounters", enc), "events": _table("events", events)})
    alerts = pa.table({"alert_id": [1, 2], "subject_id": ["rep", "never"], "encounter_id": ["rep-e", "never-e"],
                       "kind": ["suspect_specimen"] * 2, "time": pa.array([T0] * 2, pa.timestamp("us")),
                       "severity": ["warning"] * 2, "value": [0.4, 0.9], "mode": ["live", "live"]})
    got = {r["subject_id"]: r for r in outcomes(store, kb, alerts).to_pylist()}
    assert got["rep"]["action"] == "repeat" and got["rep"]["lab_to_action_min"] == 120.0 and got["rep"]["acted"]
    assert got["never"]["lab_to_action_min"] == 1440.0 and not got["never"]["acted"]  # the repeat came at 30 h
    rep = next(a for a in kb.evaluation.alerts if a.kind == "suspect_specimen")
    assert rep.action == "repeat" and rep.target is None
    assert kb.severity("suspect_specimen", None) == "warning"
