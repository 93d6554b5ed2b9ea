"""The canonical patient record every adapter produces and every rule reads.

Values are already in the analyte's canonical unit (mgaki.units) and every
time is timezone-aware UTC; adapters are the only place that deal with
source formats. The batch pipeline uses the same vocabulary in columns
(MEDS: subject_id, time, code, numeric_value, unit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

__all__ = ["Condition", "KidneyState", "Measurement", "Medication", "PatientRecord", "Stay"]


@dataclass(frozen=True, slots=True)
class Measurement:
    analyte: str
    value: float  # canonical unit of the analyte
    unit: str  # that canonical unit (UCUM)
    time: datetime
    source_id: str  # e.g. "Observation/123": named in every message about it
    reported_value: float
    reported_unit: str


@dataclass(frozen=True, slots=True)
class Medication:
    text: str
    ingredient: str | None  # knowledge-base ingredient when recognised
    rxcui: str | None
    kind: str  # request | administration | statement
    source_id: str
    start: datetime | None = None
    end: datetime | None = None
    dose_g: float | None = None  # MgSO4 administrations, grams of salt
    route: str | None = None
    active: bool = True


@dataclass(frozen=True, slots=True)
class Condition:
    code: str | None
    text: str
    source_id: str
    codings: tuple[tuple[str, str], ...] = ()  # every (system, code) of the Condition
    active: bool = True  # False: resolved/inactive, refuted or entered in error


@dataclass(frozen=True, slots=True)
class Stay:
    """A hospital admission or an ICU stay: the anchors of a study's exposure time (engine/risk.py)."""

    kind: str  # "hospital" | "icu"
    start: datetime
    end: datetime | None = None  # None: still in progress
    source_id: str = ""


@dataclass(frozen=True)
class PatientRecord:
    patient_id: str
    sex: str | None = None  # "female" | "male" | None
    birth_date: date | None = None
    measurements: tuple[Measurement, ...] = ()
    medications: tuple[Medication, ...] = ()
    conditions: tuple[Condition, ...] = ()
    rrt_times: tuple[datetime, ...] = ()
    contexts: frozenset[str] = frozenset()
    warnings: tuple[str, ...] = ()
    stays: tuple[Stay, ...] = ()
    context_times: tuple[tuple[str, datetime], ...] = ()  # (context, when it was recorded), e.g. the operation
    _series: dict[str, tuple[Measurement, ...]] = field(default_factory=dict, repr=False,
                                                        compare=False)

    def series(self, analyte: str) -> tuple[Measurement, ...]:
        """Measurements of one analyte in time order (ties broken by value: order-free)."""
        cached = self._series.get(analyte)
        if cached is None:
            cached = tuple(sorted((m for m in self.measurements if m.analyte == analyte),
                                  key=lambda m: (m.time, m.value)))
            self._series[analyte] = cached
        return cached

    def latest(self, analyte: str) -> Measurement | None:
        s = self.series(analyte)
        return s[-1] if s else None

    def as_of(self) -> datetime | None:
        times = [m.time for m in self.measurements]
        return max(times) if times else None

    def age_years(self, at: datetime) -> float | None:
        if self.birth_date is None:
            return None
        b = self.birth_date
        years = at.year - b.year - ((at.month, at.day) < (b.month, b.day))
        return float(years)


@dataclass(frozen=True)
class KidneyState:
    """Kidney function as dosing sees it: what the repletion engine and the PK dose finder both read."""

    egfr: float | None = None
    crcl: float | None = None
    aki_stage: int = 0
    egfr_label: str = "eGFR"  # what ``egfr`` is: "eGFR" (CKD-EPI 2021), "kinetic eGFR" during AKI, ...
    creatinine_mg_dl: float | None = None
    rrt: bool = False
    anuric: bool = False
    maintenance_dialysis: bool = False  # ESKD on maintenance dialysis: no AKI staging, no eGFR/CrCl dosing
