"""Issue 13 point 11: the bedside work-up reads current data and says what it did.

- A result older than its window (electrolytes.yaml ``current_within``) is set aside with a
  warning: a 3.5-day-old ionized Ca no longer overrides a current total Ca.
- A spot urine Mg/creatinine pair is read whenever present, whatever the serum Mg; checked on a
  real MIMIC-IV demo patient (10021487) whose pair was drawn at a normal serum Mg.
- ``plan.recheck_in_h`` is the number of hours the recheck text states, for every tier and regimen.
- The renal adjustment names the criterion the patient met, with its value.
- ``--context`` is checked against the knowledge files (any case), and ``--help`` lists them all.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mgaki
from mgaki.cli import app
from mgaki.engine.repletion import PlanRequest, plan_repletion
from mgaki.errors import InputError
from mgaki.knowledge import load
from mgaki.record import KidneyState
from mgaki.synth.fhir import T0
from mgaki.synth.fhir import BundleBuilder as B
from mgaki.units import convert

MIMIC = Path(__file__).resolve().parents[1] / "data" / "mimic-iv-demo-subset" / "hosp"
runner = CliRunner()


def _codes(a, code: str) -> list:
    return [f for f in a.findings if f.code == code]


# --- staleness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("extra_h,used", [(0.0, True), (1.0, False)])
def test_ionized_ca_is_used_up_to_its_window_and_not_after(kb, extra_h: float, used: bool) -> None:
    """Low iCa at exactly its window still counts; one hour older, the current total Ca (normal) decides."""
    window = kb.current_within_hours("ionized_calcium")
    assert window is not None and window < kb.current_within_hours("calcium")
    b = (B().obs("ionized_calcium", 0.95, "mmol/L", -(window + extra_h)).obs("creatinine", 0.8, "mg/dL")
         .obs("calcium", 9.6, "mg/dL").obs("magnesium", 1.3, "mg/dL"))
    a = mgaki.assess(b.build())
    assert bool(_codes(a, "mg_dependent_hypocalcemia")) is used
    stale = [w for w in a.warnings if "Observation/obs1" in w and "not used" in w]
    assert bool(stale) is not used
    if used:
        assert "ionized Ca 0.95" in _codes(a, "mg_dependent_hypocalcemia")[0].message


def test_an_old_low_potassium_does_not_raise_refractory_hypokalaemia(kb) -> None:
    window = kb.current_within_hours("potassium")
    b = (B().obs("potassium", 2.9, "mmol/L", -(window + 12)).obs("creatinine", 0.8, "mg/dL")
         .obs("magnesium", 1.3, "mg/dL"))
    a = mgaki.assess(b.build())
    assert not _codes(a, "refractory_hypokalemia_risk")
    assert any("Potassium" in w and "not used" in w for w in a.warnings)


def test_results_after_the_assessment_time_are_not_current() -> None:
    from mgaki.adapters.fhir import record_from_bundle
    from mgaki.engine.assess import AssessOptions, assess_record

    b = B().obs("creatinine", 0.8, "mg/dL").obs("magnesium", 1.3, "mg/dL").obs("potassium", 2.9, "mmol/L", 5)
    rec = record_from_bundle(b.build())
    assert _codes(assess_record(rec), "refractory_hypokalemia_risk")
    assert not _codes(assess_record(rec, AssessOptions(now=T0 + timedelta(hours=1))), "refractory_hypokalemia_risk")


# --- the urine pair, on a real patient -----------------------------------------------------------

SUBJECT, ADMISSION, AS_OF = "10021487", "28998349", "2116-12-17 15:48:00"
LABS = {"50960": "magnesium", "50912": "creatinine", "50971": "potassium", "50893": "calcium",
        "50808": "ionized_calcium", "50862": "albumin", "51088": "urine_magnesium",
        "51082": "urine_creatinine", "51077": "urine_calcium"}


def _csv(name: str) -> list[dict[str, str]]:
    with gzip.open(MIMIC / f"{name}.csv.gz", "rt", newline="") as f:
        return list(csv.DictReader(f))


def _iso(t: str) -> str:
    return t.replace(" ", "T") + "Z"


def _mimic_bundle(with_mg_order: bool) -> tuple[dict, dict[str, list[tuple[str, float]]]]:
    """Admission 28998349 of MIMIC-IV demo patient 10021487 up to AS_OF, labs as recorded (csv module)."""
    pat = next(r for r in _csv("patients") if r["subject_id"] == SUBJECT)
    birth = f"{int(pat['anchor_year']) - int(pat['anchor_age'])}-01-01"
    b = B(sex="male" if pat["gender"] == "M" else "female", birth=birth, pid=SUBJECT)
    series: dict[str, list[tuple[str, float]]] = {}
    for r in _csv("labevents"):
        if r["subject_id"] == SUBJECT and r["hadm_id"] == ADMISSION and r["itemid"] in LABS \
                and r["valuenum"] and r["charttime"] <= AS_OF:
            analyte = LABS[r["itemid"]]
            b.obs(analyte, float(r["valuenum"]), r["valueuom"], time=_iso(r["charttime"]))
            series.setdefault(analyte, []).append((r["charttime"], float(r["valuenum"])))
    if with_mg_order:  # MgSO4 in the parenteral nutrition prescribed 2116-12-03 to 2116-12-18
        rx = next(r for r in _csv("prescriptions") if r["subject_id"] == SUBJECT and r["drug"] == "Magnesium Sulfate"
                  and r["starttime"] <= AS_OF <= r["stoptime"])
        b.med("Magnesium Sulfate", "6585", time=_iso(rx["starttime"]))
    return b.build(), series


def _nearest(points: list[tuple[str, float]], at: str) -> float:
    from datetime import datetime

    t = datetime.fromisoformat(at)
    return min(points, key=lambda p: abs((datetime.fromisoformat(p[0]) - t).total_seconds()))[1]


def _expected_fe(series: dict[str, list[tuple[str, float]]]) -> float:
    """FE_Mg by hand from the pair and the serum values nearest it (the urine sample's own time)."""
    (u_time, u_mg), = series["urine_magnesium"]
    u_cr = _nearest(series["urine_creatinine"], u_time)
    p_mg, p_cr = _nearest(series["magnesium"], u_time), _nearest(series["creatinine"], u_time)
    return (u_mg * p_cr) / (0.7 * p_mg * u_cr) * 100


def test_real_patient_urine_pair_at_a_normal_serum_mg_is_read() -> None:
    bundle, series = _mimic_bundle(with_mg_order=False)
    a = mgaki.assess(bundle)
    assert a.magnesium is not None and a.magnesium.status == "normal"  # the work-up used to stop here
    (f,) = _codes(a, "renal_mg_wasting")
    assert f.data["value"] == pytest.approx(_expected_fe(series), abs=0.01)
    assert "at a normal serum Mg" in f.message


def test_real_patient_urine_pair_during_mg_in_parenteral_nutrition_is_not_interpreted() -> None:
    bundle, series = _mimic_bundle(with_mg_order=True)
    a = mgaki.assess(bundle)
    assert not _codes(a, "renal_mg_wasting")
    (f,) = _codes(a, "urine_index_not_interpretable")
    assert "magnesium sulfate order MedicationRequest/" in f.message and f.data["index"] == "FE_Mg"
    assert f"FE_Mg {_expected_fe(series):.1f}" in f.message


def test_urine_mg_and_creatinine_from_different_samples_form_no_ratio(kb) -> None:
    apart = kb.value("urine_pair_max_apart_hours")
    b = (B().obs("urine_magnesium", 10, "mg/dL", -(apart + 1)).obs("urine_creatinine", 50, "mg/dL")
         .obs("creatinine", 0.7, "mg/dL").obs("magnesium", 1.3, "mg/dL"))
    a = mgaki.assess(b.build())
    assert not [f for f in a.findings if f.data.get("index") == "FE_Mg"]
    assert any("no urine creatinine from the same sample" in w for w in a.warnings)


# --- recheck time and its text ---------------------------------------------------------------------


def _hours_in(text: str) -> float:
    m = re.search(r"(?:: |within |in )(\d+(?:\.\d+)?) h(?: from its start)?", text)
    assert m, text
    return float(m.group(1))


def _plans(kb):
    for nom in kb.regimens.nomograms:
        for tier in nom.tiers:
            lo = tier.lower if tier.lower is not None else (tier.upper or 1.0) / 2
            hi = tier.upper if tier.upper is not None else lo * 2
            mg = convert((lo + hi) / 2, "magnesium", nom.unit, "mg/dL")
            yield f"{nom.id}:{tier.action}", plan_repletion(kb, PlanRequest(mg, nomogram_id=nom.id), "low")
    for r in kb.regimens.regimens:
        status = {"low": "low", "not_low": "normal"}.get(r.requires_status, "low")
        mg = 1.3 if status == "low" else 2.0
        yield r.id, plan_repletion(kb, PlanRequest(mg, frozenset(r.contexts), weight_kg=70.0,
                                                   jurisdiction="uk" if r.jurisdiction == "uk" else "us"), status)


def test_recheck_hours_agree_with_the_recheck_text(kb) -> None:
    checked = 0
    for name, po in _plans(kb):
        p = po.plan
        if p.recheck is None:
            assert p.recheck_in_h is None, name
            continue
        assert _hours_in(p.recheck) == pytest.approx(p.recheck_in_h), (name, p.recheck, p.recheck_in_h)
        first = p.doses[0]
        if "after the infusion ends" in p.recheck:  # the planned infusion, at the plan's rate
            assert first.duration_h and first.rate_g_per_h and first.g_mgso4
            assert first.g_mgso4 / first.rate_g_per_h == pytest.approx(first.duration_h, rel=1e-2)
            assert p.recheck_in_h - first.duration_h == pytest.approx(float(p.recheck.split(" h after")[0].split()[-1]))
        checked += 1
    assert checked >= 8


def test_four_grams_at_one_gram_an_hour_rechecks_at_ten_hours() -> None:
    a = mgaki.assess(B().obs("creatinine", 0.8, "mg/dL").obs("magnesium", 1.4, "mg/dL").build())
    d = a.plan.doses[0]
    assert (d.g_mgso4, d.rate_g_per_h, d.duration_h) == (4.0, 1.0, 4.0)
    assert a.plan.recheck_in_h == 10.0 and "10 h from its start" in (a.plan.recheck or "")


# --- the renal criterion that was met -----------------------------------------------------------------


@pytest.mark.parametrize("kidney,says,not_says", [
    (KidneyState(egfr=24.0, crcl=45.0), "eGFR 24 mL/min/1.73 m2 < 30", "CrCl"),
    (KidneyState(egfr=45.0, crcl=24.0), "CrCl 24 mL/min < 30", "eGFR"),
    (KidneyState(egfr=80.0, crcl=90.0, aki_stage=2, egfr_label="kinetic eGFR"), "KDIGO AKI stage 2", "CrCl"),
    (KidneyState(egfr=22.0, crcl=90.0, aki_stage=1, egfr_label="kinetic eGFR"), "kinetic eGFR 22", "AKI stage"),
])
def test_renal_adjustment_names_the_criterion_met(kb, kidney: KidneyState, says: str, not_says: str) -> None:
    po = plan_repletion(kb, PlanRequest(1.3, kidney=kidney), "low")
    (text,) = po.adjusted
    met = text.split("met: ", 1)[1]
    assert says in met and not_says not in met, text


# --- contexts -----------------------------------------------------------------------------------------


def test_contexts_come_from_every_knowledge_file(kb) -> None:
    named = ({c for s in kb.evidence.studies for c in (*s.contexts, *s.not_in_contexts)}
             | {c for r in kb.regimens.regimens for c in r.contexts} | set(kb.magnesium.high_risk_contexts)
             | {d.context for d in kb.drugs.drugs if d.context} | {kb.kidney.maintenance_dialysis.context})
    assert set(kb.contexts) == named and list(kb.contexts) == sorted(named)


def test_context_in_any_case_is_accepted() -> None:
    b = B().obs("creatinine", 0.8, "mg/dL").obs("magnesium", 1.3, "mg/dL").build()
    assert mgaki.assess(b, ["ICU"]).contexts == mgaki.assess(b, ["icu"]).contexts == ["icu"]


def test_unknown_context_is_an_input_error_listing_the_valid_ones(kb, tmp_path: Path) -> None:
    b = B().obs("creatinine", 0.8, "mg/dL").obs("magnesium", 1.3, "mg/dL").build()
    with pytest.raises(InputError, match=r"context 'cardiac surgery': unknown"):
        mgaki.assess(b, ["cardiac surgery"])
    path = tmp_path / "b.json"
    path.write_text(json.dumps(b))
    r = runner.invoke(app, ["assess", str(path), "--context", "ICU", "--context", "heart", "-f", "json"],
                      env={"COLUMNS": "400"})
    assert r.exit_code == 2 and r.stdout == ""
    listed = r.stderr.split("valid contexts: ", 1)[1].split()
    assert [c.rstrip(",") for c in listed] == list(kb.contexts)


def test_help_lists_every_context_of_the_knowledge_files(kb) -> None:
    r = runner.invoke(app, ["assess", "--help"], env={"COLUMNS": "400"})
    assert r.exit_code == 0
    line = next(ln for ln in r.stdout.splitlines() if "--context" in ln)
    assert line.split("any case: ", 1)[1].split("│")[0].strip() == ", ".join(kb.contexts)


def test_knowledge_has_the_contexts_the_docs_promise() -> None:
    # SPEC `mgaki assess` contract: these contexts must be accepted
    for c in ("cardiac-surgery", "contrast", "icu", "cirrhosis", "covid19", "pediatric-icu", "pancreatitis",
              "tbi", "malignancy", "cisplatin", "vanco-pip-tazo", "sepsis"):
        assert load().context(c) == c
