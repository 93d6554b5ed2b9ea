"""Build small FHIR R4 bundles for tests and vignettes (one place, so fixtures stay valid)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)

# analyte -> (LOINC code for a mass unit, LOINC for molar unit)
CODES = {
    "magnesium": "19123-9", "creatinine": "2160-0", "potassium": "2823-3", "calcium": "17861-6",
    "ionized_calcium": "1995-0", "albumin": "1751-7", "pth": "2731-8", "urine_magnesium": "19124-7",
    "urine_creatinine": "2161-8", "urine_magnesium_24h": "24447-5", "urine_calcium": "17862-4",
    "weight": "29463-7", "urine_output": "9187-6", "qtc": "8636-3", "ph": "2744-1",
}


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


class B:
    """Fluent bundle builder: B(sex, birth).obs(...).med(...).build()."""

    def __init__(self, sex: str = "female", birth: str = "1960-05-01", pid: str = "p1", id_prefix: str = "") -> None:
        self.pid = pid
        self.id_prefix = id_prefix  # FHIR ids are server-wide: bundles of several patients posted to one store need one
        self.entries: list[dict[str, Any]] = [{"resource": {
            "resourceType": "Patient", "id": pid, "gender": sex, "birthDate": birth}}]
        self.n = 0

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"{self.id_prefix}{prefix}{self.n}"

    def obs(self, analyte: str, value: float, unit: str | None, hours: float = 0.0,
            code: str | None = None, time: str | None = None, **extra: Any) -> B:
        q: dict[str, Any] = {"value": value}
        if unit is not None:
            q.update(unit=unit, system=UCUM, code=unit)
        res: dict[str, Any] = {
            "resourceType": "Observation", "id": self._id("obs"), "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code or CODES[analyte]}]},
            "subject": {"reference": f"Patient/{self.pid}"},
            "effectiveDateTime": time or at(hours), "valueQuantity": q, **extra}
        self.entries.append({"resource": res})
        return self

    def series(self, analyte: str, unit: str, points: list[tuple[float, float]]) -> B:
        for h, v in points:
            self.obs(analyte, v, unit, h)
        return self

    def med(self, name: str, rxcui: str | None = None, kind: str = "MedicationRequest",
            hours: float = 0.0, status: str = "active", dose_g: float | None = None) -> B:
        concept: dict[str, Any] = {"text": name}
        if rxcui:
            concept["coding"] = [{"system": RXNORM, "code": rxcui, "display": name}]
        res: dict[str, Any] = {"resourceType": kind, "id": self._id("med"), "status": status,
                               "subject": {"reference": f"Patient/{self.pid}"},
                               "medicationCodeableConcept": concept}
        if kind == "MedicationRequest":
            res.update(intent="order", authoredOn=at(hours))
        elif kind == "MedicationAdministration":
            res["status"] = "completed" if status == "active" else status
            res["effectiveDateTime"] = at(hours)
            if dose_g is not None:
                res["dosage"] = {"dose": {"value": dose_g, "unit": "g", "system": UCUM, "code": "g"}}
        else:
            res["effectiveDateTime"] = at(hours)
        self.entries.append({"resource": res})
        return self

    def condition(self, text: str, icd10: str | None = None) -> B:
        code: dict[str, Any] = {"text": text}
        if icd10:
            code["coding"] = [{"system": "http://hl7.org/fhir/sid/icd-10", "code": icd10}]
        self.entries.append({"resource": {"resourceType": "Condition", "id": self._id("cond"),
                                          "subject": {"reference": f"Patient/{self.pid}"},
                                          "code": code}})
        return self

    def rrt(self, hours: float) -> B:
        self.entries.append({"resource": {
            "resourceType": "Procedure", "id": self._id("proc"), "status": "in-progress",
            "subject": {"reference": f"Patient/{self.pid}"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "714749008"}]},
            "performedDateTime": at(hours)}})
        return self

    def build(self) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "collection", "entry": self.entries}
