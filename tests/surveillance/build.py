"""A tiny builder of canonical tables for surveillance vignettes (hours after admission)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa

from mgaki.events.schema import TABLES

ADMIT = datetime(2024, 5, 1, 8, 0)  # noqa: DTZ001 - canonical tables hold naive UTC times (MEDS)


def at(hours: float) -> datetime:
    return ADMIT + timedelta(hours=hours)


class Patient:
    def __init__(self, subject: str = "P1", days: float = 10, encounter: str = "H1") -> None:
        self.subject, self.encounter = subject, encounter
        self.rows: dict[str, list[dict[str, object]]] = {k: [] for k in TABLES}
        self.rows["encounters"].append({"subject_id": subject, "encounter_id": encounter, "kind": "inpatient",
                                        "start": ADMIT, "end": at(days * 24), "parent_id": None, "source": "b"})

    def ev(self, analyte: str, *points: tuple[float, float | None]) -> Patient:
        unit = {"creatinine": "mg/dL", "magnesium": "mg/dL", "potassium": "mmol/L", "calcium": "mg/dL",
                "urine_output": "mL", "urine_irrigant": "mL", "urine_irrigant_out": "mL", "rrt": None}[analyte]
        for h, v in points:
            self.rows["events"].append({"subject_id": self.subject, "encounter_id": self.encounter, "time": at(h),
                                        "code": analyte, "analyte": analyte, "numeric_value": v, "unit": unit,
                                        "source": f"{analyte}@{h}"})
        return self

    def icu(self, start_h: float, end_h: float, stay: str = "ICU1") -> Patient:
        self.rows["encounters"].append({"subject_id": self.subject, "encounter_id": stay, "kind": "icu",
                                        "start": at(start_h), "end": at(end_h), "parent_id": self.encounter,
                                        "source": "b"})
        return self

    def weight(self, kg: float, h: float = 0) -> Patient:
        self.rows["weights"].append({"subject_id": self.subject, "time": at(h), "weight_kg": kg, "source": "b"})
        return self

    def drug(self, name: str, start_h: float, end_h: float | None = None) -> Patient:
        self.rows["medications"].append({
            "subject_id": self.subject, "encounter_id": self.encounter, "start": at(start_h),
            "end": None if end_h is None else at(end_h), "drug": name, "name": name, "rxcui": None, "route": "iv",
            "dose_value": None, "dose_unit": None, "mg_mmol": None, "source": "b"})
        return self

    def context(self, ctx: str) -> Patient:
        self.rows["contexts"].append({"subject_id": self.subject, "encounter_id": self.encounter, "time": None,
                                      "context": ctx, "source": "b"})
        return self


def tables(*patients: Patient) -> dict[str, pa.Table]:
    return {k: pa.Table.from_pylist([r for p in patients for r in p.rows[k]], schema=s) for k, s in TABLES.items()}
