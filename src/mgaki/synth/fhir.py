"""Synthetic FHIR R4 patients: the one bundle builder the tests, vignettes and benchmarks share.

``BundleBuilder`` writes the resources mgaki reads (Patient, Observation with LOINC + UCUM,
MedicationRequest / MedicationAdministration / MedicationStatement with RxNorm, Condition with
ICD-10, Encounter, an RRT Procedure), times in hours from ``T0``. ``week_bundle()`` is one week in
hospital with AKI and a falling Mg (the assess benchmark); ``patient_week(i)`` is synthetic
inpatient ``i`` of a seeded population (the service benchmark). Nothing here is clinical knowledge:
the values are test data, not thresholds.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["CODES", "LOINC", "RXNORM", "T0", "UCUM", "BundleBuilder", "at", "patient_week", "week_bundle"]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)

# analyte -> LOINC code of the mass (or the only) unit
CODES = {
    "magnesium": "19123-9", "creatinine": "2160-0", "potassium": "2823-3", "calcium": "17861-6",
    "ionized_calcium": "1995-0", "albumin": "1751-7", "pth": "2731-8", "urine_magnesium": "19124-7",
    "urine_creatinine": "2161-8", "urine_magnesium_24h": "24447-5", "urine_calcium": "17862-4",
    "weight": "29463-7", "urine_output": "9187-6", "qtc": "8636-3", "ph": "2744-1",
    "sodium": "2951-2",  # not used by mgaki: exercises the "ignored observation" path
}
VITALS = frozenset({"weight", "urine_output"})
_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def at(hours: float) -> str:
    """``T0`` + ``hours`` as an ISO 8601 dateTime with its offset."""
    return (T0 + timedelta(hours=hours)).isoformat()


class BundleBuilder:
    """Fluent bundle builder: ``BundleBuilder(sex, birth).obs(...).med(...).build()``.

    ``id_prefix`` makes resource ids unique across patients (FHIR ids are server-wide: bundles of
    several patients posted to one store need one); ``categories`` adds the Observation category
    (laboratory / vital-signs) an EHR sends; ``full_urls`` gives every entry a ``urn:uuid`` fullUrl.
    """

    def __init__(self, sex: str = "female", birth: str = "1960-05-01", pid: str = "p1", id_prefix: str = "",
                 *, categories: bool = False, full_urls: bool = False) -> None:
        self.pid = pid
        self.id_prefix = id_prefix
        self.categories = categories
        self.full_urls = full_urls
        self.entries: list[dict[str, Any]] = []
        self.n = 0
        self._add({"resourceType": "Patient", "id": pid, "gender": sex, "birthDate": birth})

    @property
    def resources(self) -> list[dict[str, Any]]:
        return [e["resource"] for e in self.entries]

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"{self.id_prefix}{prefix}{self.n}"

    def _add(self, res: dict[str, Any]) -> None:
        entry: dict[str, Any] = {"resource": res}
        if self.full_urls:
            entry = {"fullUrl": f"urn:uuid:{self.id_prefix}{res['id']}", "resource": res}
        self.entries.append(entry)

    def _subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.pid}"}

    def obs(self, analyte: str, value: float, unit: str | None, hours: float = 0.0,
            code: str | None = None, time: str | None = None, **extra: Any) -> BundleBuilder:
        q: dict[str, Any] = {"value": value}
        if unit is not None:
            q.update(unit=unit, system=UCUM, code=unit)
        res: dict[str, Any] = {"resourceType": "Observation", "id": self._id("obs"), "status": "final"}
        if self.categories:
            res["category"] = [{"coding": [{"system": _CATEGORY,
                                            "code": "vital-signs" if analyte in VITALS else "laboratory"}]}]
        res.update({"code": {"coding": [{"system": LOINC, "code": code or CODES[analyte]}]},
                    "subject": self._subject(), "effectiveDateTime": time or at(hours), "valueQuantity": q, **extra})
        self._add(res)
        return self

    def series(self, analyte: str, unit: str, points: list[tuple[float, float]]) -> BundleBuilder:
        for h, v in points:
            self.obs(analyte, v, unit, h)
        return self

    def med(self, name: str, rxcui: str | None = None, kind: str = "MedicationRequest",
            hours: float = 0.0, status: str = "active", dose_g: float | None = None,
            dose: tuple[float, str] | None = None, time: str | None = None) -> BundleBuilder:
        """A medication resource; ``dose_g`` a UCUM ``g`` dose, ``dose`` (value, unit text) a dose as an
        eMAR writes it (``(2, "gm")``: unit text only, no UCUM code); ``time`` replaces ``hours``."""
        concept: dict[str, Any] = {"text": name}
        if rxcui:
            concept["coding"] = [{"system": RXNORM, "code": rxcui, "display": name}]
        res: dict[str, Any] = {"resourceType": kind, "id": self._id("med"), "status": status,
                               "subject": self._subject(), "medicationCodeableConcept": concept}
        when = time or at(hours)
        if kind == "MedicationRequest":
            res.update(intent="order", authoredOn=when)
        elif kind == "MedicationAdministration":
            res["status"] = "completed" if status == "active" else status
            res["effectiveDateTime"] = when
            if dose_g is not None:
                res["dosage"] = {"dose": {"value": dose_g, "unit": "g", "system": UCUM, "code": "g"}}
            elif dose is not None:
                res["dosage"] = {"dose": {"value": dose[0], "unit": dose[1]}}
        else:
            res["effectiveDateTime"] = when
        self._add(res)
        return self

    def condition(self, text: str, icd10: str | None = None) -> BundleBuilder:
        code: dict[str, Any] = {"text": text}
        if icd10:
            code["coding"] = [{"system": ICD10, "code": icd10}]
        self._add({"resourceType": "Condition", "id": self._id("cond"), "subject": self._subject(), "code": code})
        return self

    def encounter(self, hours: float, icu: bool = True, end_hours: float | None = None, eid: str | None = None,
                  part_of: str | None = None) -> BundleBuilder:
        """An inpatient stay starting at ``hours`` (in progress unless ``end_hours``): an ICU or a medical ward
        stay. ``eid`` names it; an ICU stay ``part_of`` an admission carries mgaki's kind coding, as the
        FHIR writer exports ICU stays (docs/adapters/fhir.md)."""
        period = {"start": at(hours)} | ({"end": at(end_hours)} if end_hours is not None else {})
        kind: dict[str, Any] = {"text": "Intensive care unit stay" if icu else "Medical ward stay"}
        if icu and part_of:
            kind["coding"] = [{"system": "urn:mgaki:encounter-kind", "code": "icu"}]
        res: dict[str, Any] = {
            "resourceType": "Encounter", "id": eid or self._id("enc"),
            "status": "in-progress" if end_hours is None else "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "ACUTE",
                      "display": "inpatient acute"},
            "type": [kind], "subject": self._subject(), "period": period}
        if part_of:
            res["partOf"] = {"reference": f"Encounter/{part_of}"}
        self._add(res)
        return self

    def context(self, context: str, hours: float) -> BundleBuilder:
        """A clinical context recorded at ``hours`` (e.g. ``cardiac-surgery`` at the operation): an active Flag
        with the ``urn:mgaki:context`` coding, as mgaki's FHIR writer exports contexts."""
        self._add({"resourceType": "Flag", "id": self._id("flag"), "status": "active",
                   "code": {"coding": [{"system": "urn:mgaki:context", "code": context}]},
                   "subject": self._subject(), "period": {"start": at(hours)}})
        return self

    def rrt(self, hours: float) -> BundleBuilder:
        self._add({"resourceType": "Procedure", "id": self._id("proc"), "status": "in-progress",
                   "subject": self._subject(),
                   "code": {"coding": [{"system": "http://snomed.info/sct", "code": "714749008"}]},
                   "performedDateTime": at(hours)})
        return self

    def build(self) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "collection", "entry": self.entries}


def week_bundle() -> dict[str, Any]:
    """7 days in hospital: cisplatin + furosemide + vancomycin, creatinine rising to AKI, Mg falling,
    hourly urine output over the last 48 h falling to oliguria (ICU)."""
    b = BundleBuilder("male", "1954-09-17", "bench1", categories=True, full_urls=True)
    days = 7
    b.encounter(-2.0)
    b.condition("Squamous cell carcinoma of the head and neck", "C76.0")
    b.condition("Sepsis, unspecified organism", "A41.9")
    b.condition("Essential hypertension", "I10")
    for d in range(days + 1):
        h = 24.0 * d
        b.obs("weight", round(82.0 - 0.4 * d, 1), "kg", h)
        b.obs("albumin", round(3.6 - 0.1 * d, 2), "g/dL", h + 0.5)
    for k in range(2 * days + 1):  # every 12 h
        h = 12.0 * k
        cr = 0.9 if k < 6 else round(0.9 + 0.18 * (k - 5), 2)  # rises from day 3: KDIGO stage 2-3
        b.obs("creatinine", cr, "mg/dL", h)
        b.obs("magnesium", round(2.0 - 0.06 * k, 2), "mg/dL", h)
        b.obs("calcium", round(8.9 - 0.05 * k, 2), "mg/dL", h)
        b.obs("sodium", 138 - (k % 3), "mmol/L", h)
    for k in range(4 * days + 1):  # every 6 h
        b.obs("potassium", round(3.9 - 0.02 * k, 2), "mmol/L", 6.0 * k + 0.25)
    end = 24.0 * days
    for j in range(48):
        b.obs("urine_output", max(15.0, 80.0 - 1.4 * j), "mL", end - 47 + j)
    b.med("cisplatin 100 mg/m2 every 3 weeks", "2555", hours=2.0)
    b.med("furosemide 40 mg IV twice daily", "4603", hours=30.0)
    b.med("pantoprazole 40 mg daily", "40790", hours=0.0)
    b.med("vancomycin 15 mg/kg IV every 12 h", "11124", hours=72.0)
    b.med("magnesium sulfate 2 g IV", "6585", "MedicationAdministration", hours=100.0, dose_g=2.0)
    return b.build()


# (display, RxCUI) of drugs mgaki knows; MgSO4 is always ordered in patient_week, the others by chance
MGSO4 = ("magnesium sulfate 2 g IV over 2 h", "6585")
OTHER_DRUGS = [("furosemide 40 mg IV twice daily", "4603"), ("pantoprazole 40 mg daily", "40790"),
               ("cisplatin 75 mg/m2", "2555"), ("vancomycin 15 mg/kg IV every 12 h", "11124"),
               ("gentamicin 5 mg/kg IV daily", "4413")]
_CONDITIONS = [("Sepsis, unspecified organism", "A41.9"), ("Essential hypertension", "I10"),
               ("Heart failure, unspecified", "I50.9"), ("Alcohol dependence", "F10.20"),
               ("Malignant neoplasm of lung", "C34.90")]


def patient_week(i: int, seed: int = 20261121) -> list[dict[str, Any]]:
    """Every resource of synthetic inpatient ``i`` (id ``bench-0000i``): Patient, Encounter, Conditions,
    a week of Mg, creatinine, K, Ca, albumin, weight, spot urine Mg/creatinine, hourly urine output for
    ICU patients, MgSO4 orders and administrations and other Mg-relevant drugs; values vary by patient."""
    rng = random.Random(seed * 100_003 + i)
    pid = f"bench-{i:05d}"
    b = BundleBuilder(rng.choice(["male", "female"]), f"{rng.randint(1935, 1995)}-{rng.randint(1, 12):02d}-15",
                      pid, id_prefix=f"{pid}-", categories=True)
    icu = rng.random() < 0.5
    b.encounter(-2.0, icu=icu)
    for text, icd in rng.sample(_CONDITIONS, 2):
        b.condition(text, icd)
    days = 7
    mg0, mg_slope = rng.uniform(1.3, 2.4), rng.uniform(-0.07, 0.03)
    cr0, aki_from = rng.uniform(0.6, 1.3), rng.choice([None, None, 4, 6, 8])  # 12-h index where Cr starts rising
    k0, ca0, alb0, wt0 = rng.uniform(3.0, 4.6), rng.uniform(7.9, 9.6), rng.uniform(2.6, 4.2), rng.uniform(55, 110)

    def obs(analyte: str, value: float, unit: str, hours: float) -> None:
        b.obs(analyte, round(value, 2), unit, hours)

    for d in range(days + 1):
        obs("weight", wt0 - 0.3 * d, "kg", 24.0 * d)
        obs("albumin", max(1.8, alb0 - 0.05 * d), "g/dL", 24.0 * d + 0.5)
    for k in range(2 * days + 1):
        h = 12.0 * k + rng.uniform(-0.5, 0.5)
        cr = cr0 if aki_from is None or k < aki_from else cr0 * (1 + 0.25 * (k - aki_from + 1))
        obs("creatinine", cr, "mg/dL", h)
        obs("magnesium", max(0.6, mg0 + mg_slope * k + rng.uniform(-0.1, 0.1)), "mg/dL", h)
        obs("calcium", ca0 - 0.03 * k + rng.uniform(-0.2, 0.2), "mg/dL", h)
    for k in range(4 * days + 1):
        obs("potassium", k0 + rng.uniform(-0.3, 0.3), "mmol/L", 6.0 * k + 0.25)
    for h in (30.0, 126.0):  # spot urine for the fractional excretion of Mg
        obs("urine_magnesium", rng.uniform(2.0, 12.0), "mg/dL", h)
        obs("urine_creatinine", rng.uniform(40.0, 150.0), "mg/dL", h)
    if icu:
        end = 24.0 * days
        uo = rng.uniform(40.0, 120.0)
        for j in range(48):
            obs("urine_output", max(5.0, uo - (1.2 if aki_from is not None else 0.1) * j), "mL", end - 47 + j)
    for h in rng.sample([20.0, 44.0, 68.0, 92.0, 116.0, 140.0], rng.randint(1, 3)):
        b.med(MGSO4[0], MGSO4[1], hours=h)
        b.med(MGSO4[0], MGSO4[1], "MedicationAdministration", hours=h + 1.0, dose_g=2.0)
    for drug in rng.sample(OTHER_DRUGS, rng.randint(1, 3)):
        b.med(drug[0], drug[1], hours=rng.uniform(0.0, 100.0))
    return b.resources
