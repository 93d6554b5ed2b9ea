"""A synthetic inpatient for the dashboard tests: low Mg (critical alert), AKI, IV MgSO4 and levels after it."""

from __future__ import annotations

from typing import Any

from mgaki.synth.fhir import UCUM, at
from mgaki.synth.fhir import BundleBuilder as B

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

CREATININE = [(-10.0, 0.9), (6.0, 1.1), (18.0, 1.5), (30.0, 2.0)]  # ratio 2.2 at 30 h: KDIGO stage 2
MAGNESIUM = [(0.0, 0.8), (4.0, 1.6), (12.0, 1.5), (20.0, 1.3)]  # 0.8 mg/dL: CTCAE grade 3 (critical)
POTASSIUM = [(0.0, 3.1), (8.0, 3.2), (20.0, 3.4)]
CALCIUM = [(0.0, 8.1), (20.0, 8.4)]
URINE = [(float(h), 90.0) for h in range(0, 32, 4)]  # 90 mL / 4 h at 70 kg: 0.32 mL/kg/h
UNITS = {"creatinine": "mg/dL", "magnesium": "mg/dL", "potassium": "mmol/L", "calcium": "mg/dL", "urine_output": "mL"}
MGSO4_DOSES = [(1.0, 2.0, 2.0), (13.0, 15.0, 2.0)]  # (start h, end h, g MgSO4·7H2O)


def _mgso4(pid: str, i: int, start: float, end: float, grams: float) -> dict[str, Any]:
    coding = [{"system": RXNORM, "code": "6585", "display": "magnesium sulfate"}]
    return {"resourceType": "MedicationAdministration", "id": f"{pid}-mg{i}", "status": "completed",
            "subject": {"reference": f"Patient/{pid}"},
            "medicationCodeableConcept": {"text": "magnesium sulfate", "coding": coding},
            "effectivePeriod": {"start": at(start), "end": at(end)},
            "dosage": {"route": {"text": "IV"}, "dose": {"value": grams, "unit": "g", "system": UCUM, "code": "g"}}}


def dashboard_bundle(pid: str = "dash1", series: dict[str, list[tuple[float, float]]] | None = None,
                     open_encounter: bool = True, doses: bool = True) -> dict[str, Any]:
    """The patient as a batch Bundle (what POST /fhir takes); ``series`` replaces the default lab series."""
    b = B(sex="female", birth="1958-04-02", pid=pid, id_prefix=f"{pid}-")
    period = {"start": at(-12)} if open_encounter else {"start": at(-12), "end": at(40)}
    b.entries.append({"resource": {"resourceType": "Encounter", "id": f"{pid}-enc",
                                   "status": "in-progress" if open_encounter else "finished",
                                   "class": {"code": "IMP"}, "subject": {"reference": f"Patient/{pid}"},
                                   "period": period}})
    b.obs("weight", 70.0, "kg", -11)
    chosen = series if series is not None else {"creatinine": CREATININE, "magnesium": MAGNESIUM,
                                                "potassium": POTASSIUM, "calcium": CALCIUM, "urine_output": URINE}
    for analyte, points in chosen.items():
        b.series(analyte, UNITS[analyte], points)
    if doses:
        for i, (s, e, g) in enumerate(MGSO4_DOSES):
            b.entries.append({"resource": _mgso4(pid, i, s, e, g)})
    out = b.build()
    out["type"] = "batch"
    return out


def calm_bundle(pid: str = "calm") -> dict[str, Any]:
    """Normal Mg, stable creatinine, no doses: no alert."""
    return dashboard_bundle(pid, {"creatinine": [(-10.0, 0.9), (20.0, 0.9)], "magnesium": [(0.0, 2.0), (20.0, 2.1)]},
                            doses=False)


def discharged_bundle(pid: str = "gone") -> dict[str, Any]:
    """Mildly low Mg (CTCAE grade 1: a warning) in an encounter that has ended."""
    return dashboard_bundle(pid, {"creatinine": [(-10.0, 0.9), (20.0, 0.9)], "magnesium": [(0.0, 1.5)]},
                            open_encounter=False, doses=False)
