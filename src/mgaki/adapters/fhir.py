"""FHIR R4 Bundle -> PatientRecord, parsed and validated with fhir.resources (R4B models).

Observations are mapped by LOINC (codes.yaml) and converted by mgaki.units; a
mapped observation with a missing or unknown unit, an impossible value or a
time without a timezone fails the whole bundle with an error that names the
resource. Unmapped observations are counted, never silently used.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from functools import cache
from typing import Annotated, Any, Literal, NoReturn

from pydantic import AfterValidator, BaseModel, ConfigDict, Strict, StringConstraints, ValidationError, model_validator

from mgaki.adapters.maps import CONTEXT_SYSTEM, KIND_SYSTEM
from mgaki.errors import BundleError, InputError, TimeError, UnitError
from mgaki.knowledge import KnowledgeBase, load
from mgaki.record import Condition, Measurement, Medication, PatientRecord, Stay
from mgaki.units import normalize_unit, salt_amounts, to_canonical

__all__ = ["medication_concept", "medication_index", "parse_bundle", "record_from_bundle"]

UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
INACTIVE = {"stopped", "cancelled", "entered-in-error", "not-taken", "on-hold", "not-done",
            "draft", "unknown"}
SKIP_OBS = {"entered-in-error", "cancelled", "registered"}
ICU_WORDS = ("intensive care", "icu", "critical care")


def _where(raw: dict[str, Any], i: int | None = None) -> str:
    rid = f"{raw.get('resourceType', '?')}/{raw.get('id', '?')}"
    return rid if i is None else f"Bundle.entry[{i}] ({rid})"


def medication_index(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Medication resources among ``resources``, by id (what ``medicationReference`` names)."""
    return {r["id"]: r for r in resources if r.get("resourceType") == "Medication" and isinstance(r.get("id"), str)}


def medication_concept(res: dict[str, Any], medications: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The CodeableConcept naming a medication resource's drug: ``medicationCodeableConcept``, else the
    ``code`` of the Medication its ``medicationReference`` points to, contained (``#id``) or among
    ``medications`` (Medication resources of the bundle, by id). None when it names none we can find.

    EHRs often send the drug as a (contained) Medication rather than a concept; the cohort
    adapter (fhir_bulk) resolves references to Medication resources of the export the same way.
    """
    concept = res.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return concept
    ref = res.get("medicationReference")
    target = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(target, str) or not target:
        return None
    med: Any = None
    if target.startswith("#"):
        med = next((c for c in res.get("contained") or [] if isinstance(c, dict)
                    and c.get("resourceType") == "Medication" and c.get("id") == target[1:]), None)
    elif "Medication/" in target:
        med = medications.get(target.rsplit("Medication/", 1)[1].split("/_history/")[0])
    code = med.get("code") if isinstance(med, dict) else None
    return code if isinstance(code, dict) else None


# --- the fast validation layer ------------------------------------------------------------
# fhir.resources validates every element of every resource in Python: ~0.13 ms per
# Observation (~20 ms for a week of labs), ~0.36 ms per MedicationAdministration. The
# resources mgaki reads most (Patient, Observations, medications) are validated here with
# slim pydantic models of the elements mgaki reads (FHIR R4 primitive regexes, compiled
# once, checked in Rust; choice elements [x] given once); the rare ones (Condition,
# Encounter, Procedure) keep their fhir.resources model; resource types mgaki does not
# read are only checked to be FHIR resource types. ``strict=True`` validates the whole
# Bundle with fhir.resources instead (tests check both build the same record).

_FHIR_CODE = r"^[^\s]+( [^\s]+)*$"  # FHIR R4 code
_FHIR_DECIMAL = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"
_FHIR_ID = r"^[A-Za-z0-9\-\.]{1,64}$"  # FHIR R4 id
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_FHIR_DATE = rf"^{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$"  # FHIR R4 date: no time
_FHIR_DATETIME = (  # FHIR R4 dateTime: year, year-month, date, or a time with its zone
    rf"^{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$")
# what a failed pattern means, in the words of the error the caller sees (_raise_validation)
_PATTERN_MEANING = {
    _FHIR_DATETIME: "is not a FHIR dateTime (a time needs a timezone, e.g. 2024-03-01T10:00:00Z)",
    _FHIR_DATE: "is not a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD)",
    _FHIR_DECIMAL: "is not a FHIR decimal",
}
_OBS_STATUS = Literal["registered", "preliminary", "final", "amended", "corrected", "cancelled",
                      "entered-in-error", "unknown"]


def _datetime_value(value: str) -> datetime | date | str:
    """A FHIR dateTime (pattern checked) -> aware datetime, date (day only) or the string (year or year-month)."""
    if "T" in value:
        return datetime.fromisoformat(value)
    return date.fromisoformat(value) if len(value) == 10 else value


# Patterns are checked by pydantic-core (Rust); only the conversion of a valid string runs in Python.
_DateTime = Annotated[str, StringConstraints(pattern=_FHIR_DATETIME), AfterValidator(_datetime_value)]
_Date = Annotated[str, StringConstraints(pattern=_FHIR_DATE), AfterValidator(_datetime_value)]
_Decimal = Annotated[float, Strict()] | Annotated[str, StringConstraints(pattern=_FHIR_DECIMAL), AfterValidator(float)]
_Id = Annotated[str, StringConstraints(pattern=_FHIR_ID)]
_Code = Annotated[str, StringConstraints(pattern=_FHIR_CODE)]
_Uri = Annotated[str, StringConstraints(pattern=r"^\S*$")]


class _Slim(BaseModel):
    """Validates the elements mgaki reads; other elements are passed over (not validated)."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)


class _Coding(_Slim):
    system: _Uri | None = None
    code: _Code | None = None
    display: str | None = None


class _CodeableConcept(_Slim):
    coding: list[_Coding] | None = None
    text: str | None = None


class _Quantity(_Slim):
    value: _Decimal | None = None
    unit: str | None = None
    system: _Uri | None = None
    code: _Code | None = None


class _Period(_Slim):
    start: _DateTime | None = None
    end: _DateTime | None = None


class _Observation(_Slim):
    resourceType: Literal["Observation"]
    id: str | None = None
    status: _OBS_STATUS
    code: _CodeableConcept
    valueQuantity: _Quantity | None = None
    effectiveDateTime: _DateTime | None = None
    effectivePeriod: _Period | None = None
    effectiveInstant: _DateTime | None = None
    issued: _DateTime | None = None

    @model_validator(mode="after")
    def _one_effective(self) -> _Observation:
        _one_of(self, "effective", ("effectiveDateTime", "effectivePeriod", "effectiveInstant"))
        return self


def _one_of(model: _Slim, choice: str, names: tuple[str, ...]) -> None:
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) > 1:
        raise ValueError(f"{choice}[x] is a choice: only one of {', '.join(given)} may be given")


class _Patient(_Slim):
    resourceType: Literal["Patient"]
    id: _Id | None = None
    gender: _Code | None = None  # required binding; any other code reads as unknown sex, as before
    birthDate: _Date | None = None


class _Reference(_Slim):
    reference: str | None = None


class _Dosage(_Slim):  # MedicationAdministration.dosage
    dose: _Quantity | None = None


class _Medication(_Slim):
    """The elements of MedicationRequest / Administration / Statement that mgaki reads."""

    id: _Id | None = None
    status: _Code
    medicationCodeableConcept: _CodeableConcept | None = None
    medicationReference: _Reference | None = None

    @model_validator(mode="after")
    def _one_medication(self) -> _Medication:
        _one_of(self, "medication", ("medicationCodeableConcept", "medicationReference"))
        return self


class _MedicationRequest(_Medication):
    resourceType: Literal["MedicationRequest"]
    authoredOn: _DateTime | None = None


class _MedicationEvent(_Medication):
    """Administration and Statement: a medication with an effective[x] time."""

    effectiveDateTime: _DateTime | None = None
    effectivePeriod: _Period | None = None

    @model_validator(mode="after")
    def _one_effective(self) -> _MedicationEvent:
        _one_of(self, "effective", ("effectiveDateTime", "effectivePeriod"))
        return self


class _MedicationAdministration(_MedicationEvent):
    resourceType: Literal["MedicationAdministration"]
    dosage: _Dosage | None = None


class _MedicationStatement(_MedicationEvent):
    resourceType: Literal["MedicationStatement"]


# Resource types mgaki reads, and how each is validated.
SLIM_MODELS: dict[str, type[_Slim]] = {
    "Observation": _Observation, "Patient": _Patient, "MedicationRequest": _MedicationRequest,
    "MedicationAdministration": _MedicationAdministration, "MedicationStatement": _MedicationStatement}
USED_TYPES = frozenset({"Patient", "Observation", "MedicationRequest", "MedicationAdministration",
                        "MedicationStatement", "Procedure", "Condition", "Encounter", "Flag"})


@cache
def _is_resource_type(name: str) -> bool:
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.resource import Resource

    try:
        return issubclass(get_fhir_model_class(name), Resource)
    except ValueError:
        return False


@cache
def _fhir_model(name: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(name)


_UNION_TAGS = frozenset({"float", "int", "str", "constrained-str"})  # union branches pydantic adds to a loc


def _field_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The element path of a pydantic error, without the validator and union-branch tags pydantic inserts."""
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS)))


def _raise_validation(exc: ValidationError, where: str, skip: int = 0) -> NoReturn:
    errs = exc.errors()
    first = _field_loc(errs[0]["loc"])
    same = [e for e in errs if _field_loc(e["loc"]) == first]
    # a decimal given as a bad string fails both its forms: the string form's error says why
    err = next((e for e in same if e["type"] == "string_pattern_mismatch"), same[0])
    field = ".".join(str(p) for p in first[skip:])
    meaning = _PATTERN_MEANING.get(err.get("ctx", {}).get("pattern", "")) \
        if err["type"] == "string_pattern_mismatch" else None
    msg = f"{err['input']!r} {meaning}" if meaning else err["msg"].removeprefix("Value error, ")
    raise BundleError(where, f"{field or 'resource'}: {msg}") from None


def parse_bundle(data: str | bytes | dict[str, Any], strict: bool = False,
                 ) -> tuple[list[Any], list[dict[str, Any]]]:
    """Validate a Bundle; returns each entry's validated resource and its raw dict (for messages).

    Entries of types mgaki does not read come back as None (checked only to be FHIR
    resource types) unless ``strict``, which validates the whole Bundle with fhir.resources.
    """
    try:
        raw = json.loads(data) if isinstance(data, str | bytes) else data
    except json.JSONDecodeError as exc:
        raise BundleError("Bundle", f"not valid JSON: {exc.msg} at line {exc.lineno} "
                                    f"column {exc.colno}") from None
    if not isinstance(raw, dict) or raw.get("resourceType") != "Bundle":
        got = raw.get("resourceType") if isinstance(raw, dict) else type(raw).__name__
        raise BundleError("Bundle", f"expected a FHIR Bundle, got {got!r}")
    entries = raw.get("entry") or []
    if not isinstance(entries, list):
        raise BundleError("Bundle.entry", "must be a list")
    resources = []
    for i, e in enumerate(entries):
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            raise BundleError(f"Bundle.entry[{i}]", "has no resource with a resourceType")
        resources.append(res)
    if strict:
        return _parse_strict(raw, resources), resources
    if raw.get("type") is not None and not isinstance(raw["type"], str):
        raise BundleError("Bundle", "type: must be a code")
    out: list[Any] = []
    for i, res in enumerate(resources):
        rtype = res["resourceType"]
        if rtype not in USED_TYPES:
            if not _is_resource_type(rtype):
                raise BundleError(_where(res, i), f"resourceType {rtype!r} is not a FHIR R4 resource type")
            out.append(None)
            continue
        model = SLIM_MODELS.get(rtype) or _fhir_model(rtype)
        try:
            out.append(model.model_validate(res))
        except ValidationError as exc:
            _raise_validation(exc, _where(res, i))
    return out, resources


def _parse_strict(raw: dict[str, Any], resources: list[dict[str, Any]]) -> list[Any]:
    from fhir.resources.R4B.bundle import Bundle

    try:
        bundle = Bundle.model_validate(raw)
    except ValidationError as exc:
        loc = list(exc.errors()[0]["loc"])
        if len(loc) >= 2 and loc[0] == "entry" and isinstance(loc[1], int) and loc[1] < len(resources):
            _raise_validation(exc, _where(resources[loc[1]], loc[1]), skip=3)
        _raise_validation(exc, "Bundle")
    return [e.resource for e in (bundle.entry or [])]


@cache
def _code_index(kb: KnowledgeBase) -> dict[tuple[str, str], str]:
    return {(c.system, c.code): c.analyte for c in kb.codes.observations}


@cache
def _rrt_index(kb: KnowledgeBase) -> frozenset[tuple[str, str]]:
    return frozenset((c.system, c.code) for c in kb.codes.rrt_procedures)


@cache
def _drug_pattern(kb: KnowledgeBase) -> re.Pattern[str]:
    names = sorted({n.lower() for d in kb.drugs.drugs for n in (d.ingredient, *d.synonyms)},
                   key=len, reverse=True)
    return re.compile(r"(?<![a-z])(" + "|".join(re.escape(n) for n in names) + r")(?![a-z])")


def _time(value: Any, where: str, what: str) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TimeError(where, f"{what} has no timezone")
        return value.astimezone(UTC)
    if isinstance(value, date):
        raise TimeError(where, f"{what} is a date without a time ({value}); a time with a "
                               "timezone is needed to order results")
    if isinstance(value, str) and value:
        raise TimeError(where, f"{what} is a partial date ({value}); a time with a timezone is "
                               "needed to order results")
    raise TimeError(where, f"{what} is missing")


def _obs_time(obs: Any, where: str) -> datetime:
    if obs.effectiveDateTime is not None:
        return _time(obs.effectiveDateTime, where, "effectiveDateTime")
    if obs.effectivePeriod is not None and obs.effectivePeriod.start is not None:
        return _time(obs.effectivePeriod.start, where, "effectivePeriod.start")
    if obs.effectiveInstant is not None:
        return _time(obs.effectiveInstant, where, "effectiveInstant")
    if obs.issued is not None:
        return _time(obs.issued, where, "issued")
    raise TimeError(where, "no effective time")


def _med_ingredient(kb: KnowledgeBase, concept: Any) -> tuple[str | None, str | None, str]:
    text = ""
    rxcui = None
    if concept is None:
        return None, None, text
    for c in concept.coding or []:
        if c.system == RXNORM and c.code:
            rxcui = c.code
            drug = kb.drug(f"rxcui:{c.code}")
            if drug:
                return drug.ingredient, rxcui, c.display or drug.ingredient
        text = text or (c.display or "")
    text = concept.text or text
    m = _drug_pattern(kb).search(text.lower())
    if m:
        drug = kb.drug(m.group(1))
        return (drug.ingredient if drug else None), rxcui, text
    return None, rxcui, text


def _dose_g(dosage: Any, where: str) -> float | None:
    """g MgSO4.7H2O of an administration's dose, its unit read by mgaki.units (UCUM code, else the text)."""
    if dosage is None or dosage.dose is None or dosage.dose.value is None:
        return None
    q = dosage.dose
    unit = q.code if (q.code and q.system in (None, UCUM)) else q.unit
    return salt_amounts(float(q.value), unit or "", where=f"{where} dosage.dose")["g_mgso4"]


def record_from_bundle(data: str | bytes | dict[str, Any], kb: KnowledgeBase | None = None,
                       strict: bool = False) -> PatientRecord:
    """Build the canonical record. Raises InputError (naming the resource) on bad input.

    ``strict`` validates every resource of the bundle with fhir.resources (slower).
    """
    kb = kb or load()
    parsed, raws = parse_bundle(data, strict)
    codes, rrt_codes = _code_index(kb), _rrt_index(kb)
    patient_id, sex, birth = None, None, None
    meas: dict[tuple[str, datetime, float], Measurement] = {}
    at_time: dict[tuple[str, datetime], Measurement] = {}  # the first value of an analyte at a time
    meds: list[Medication] = []
    conds: list[Condition] = []
    rrt: list[datetime] = []
    contexts: set[str] = set()
    context_times: list[tuple[str, datetime]] = []
    stays: list[Stay] = []
    warnings: list[str] = []
    seen_ids: set[str] = set()
    ignored = 0
    medications = medication_index(raws)
    for i, res in enumerate(parsed):
        raw = raws[i]
        rtype = raw["resourceType"]
        where = _where(raw)
        if raw.get("id") and where in seen_ids:
            warnings.append(f"{where} appears twice in the bundle; used once")
            continue
        seen_ids.add(where)
        try:
            if rtype == "Patient":
                if patient_id is not None and res.id != patient_id:
                    raise BundleError(where, "a second Patient: one bundle must hold one patient")
                patient_id = res.id or "unknown"
                sex = res.gender if res.gender in ("female", "male") else None
                birth = res.birthDate if isinstance(res.birthDate, date) else None
            elif rtype == "Observation":
                if res.status in SKIP_OBS:
                    warnings.append(f"{where} has status {res.status}: not used")
                    continue
                analyte = next((codes[(c.system, c.code)] for c in (res.code.coding or [])
                                if (c.system, c.code) in codes), None)
                if analyte is None:
                    ignored += 1
                    continue
                q = res.valueQuantity
                if q is None or q.value is None:
                    warnings.append(f"{where} ({analyte}) has no numeric value: not used")
                    continue
                unit = q.code if (q.code and (q.system in (None, UCUM))) else q.unit
                if unit is None:
                    raise UnitError(where, f"{analyte} value {q.value} has no unit")
                value = to_canonical(float(q.value), analyte, unit, where)
                t = _obs_time(res, where)
                m = Measurement(analyte, value, kb.analyte(analyte).canonical_unit, t, where,
                                float(q.value), normalize_unit(unit, where))
                key = (analyte, t, round(value, 9))
                if key in meas:
                    warnings.append(f"{where} duplicates {meas[key].source_id} (same time and "
                                    "value): counted once")
                    continue
                first = at_time.setdefault((analyte, t), m)
                if first is not m:
                    warnings.append(f"{where} and {first.source_id}: two different "
                                    f"{analyte} values at the same time; both kept")
                meas[key] = m
            elif rtype in ("MedicationRequest", "MedicationAdministration", "MedicationStatement"):
                meds.append(_medication(kb, res, rtype, where, raw, medications, warnings))
            elif rtype == "Procedure":
                hit = any((c.system, c.code) in rrt_codes for c in (res.code.coding or [])) \
                    if res.code else False
                if hit and res.status in ("completed", "in-progress"):
                    when = res.performedDateTime or (res.performedPeriod.start
                                                     if res.performedPeriod else None)
                    rrt.append(_time(when, where, "performed time"))
            elif rtype == "Condition":
                code = next((c.code for c in (res.code.coding or []) if c.code), None) \
                    if res.code else None
                text = (res.code.text if res.code and res.code.text else None) or " ".join(
                    c.display or "" for c in ((res.code.coding or []) if res.code else []))
                codings = tuple((c.system or "", c.code) for c in ((res.code.coding or []) if res.code else [])
                                if c.code)
                conds.append(Condition(code, text, where, codings, _condition_active(res)))
            elif rtype == "Encounter":
                words = " ".join(
                    [(res.class_fhir.display or res.class_fhir.code or "") if getattr(res, "class_fhir", None) else ""]
                    + [t.text or "" for t in (res.type or [])]).lower()
                kinds = {c.code for t in (res.type or []) for c in (t.coding or []) if c.system == KIND_SYSTEM}
                icu = "icu" in kinds or any(w in words for w in ICU_WORDS)
                if icu:
                    contexts.add("icu")
                stay = _stay(res, "icu" if icu else "hospital", where, warnings)
                if stay is not None:
                    stays.append(stay)
            elif rtype == "Flag":
                for c in (res.code.coding or []) if res.code else []:
                    if c.system == CONTEXT_SYSTEM and c.code and res.status == "active":
                        contexts.add(c.code)
                        when = res.period.start if res.period else None
                        if when is not None:
                            context_times.append((c.code, _time(when, where, "period.start")))
        except InputError:
            raise
        except (AttributeError, TypeError, ValueError) as exc:
            raise BundleError(where, f"cannot be read: {exc}") from None
    if patient_id is None:
        raise BundleError("Bundle", "no Patient resource")
    if ignored:
        warnings.append(f"{ignored} observation(s) with codes mgaki does not use were ignored")
    return PatientRecord(patient_id=patient_id, sex=sex, birth_date=birth,
                         measurements=tuple(meas.values()), medications=tuple(meds),
                         conditions=tuple(conds), rrt_times=tuple(rrt),
                         contexts=frozenset(contexts), warnings=tuple(warnings), stays=tuple(stays),
                         context_times=tuple(context_times))


_INACTIVE = frozenset({"inactive", "resolved", "remission"})
_NOT_TRUE = frozenset({"refuted", "entered-in-error"})


def _condition_active(res: Any) -> bool:
    """A Condition counts unless it is resolved/inactive, refuted or entered in error (no status: active)."""
    def codes(cc: Any) -> set[str]:
        return {c.code for c in (cc.coding or [])} if cc is not None else set()
    return not (codes(getattr(res, "clinicalStatus", None)) & _INACTIVE
                or codes(getattr(res, "verificationStatus", None)) & _NOT_TRUE)


def _stay(res: Any, kind: str, where: str, warnings: list[str]) -> Stay | None:
    """An Encounter's period as a stay (the anchor of admission-time evidence); None without a start time."""
    period = getattr(res, "period", None)
    if period is None or period.start is None:
        return None
    try:
        start = _time(period.start, where, "period.start")
        end = _time(period.end, where, "period.end") if period.end is not None else None
    except TimeError as exc:
        warnings.append(f"{exc}: the stay's times are not used")
        return None
    return Stay(kind, start, end, where)


def _medication(kb: KnowledgeBase, res: Any, rtype: str, where: str, raw: dict[str, Any],
                medications: dict[str, dict[str, Any]], warnings: list[str]) -> Medication:
    concept = getattr(res, "medicationCodeableConcept", None)
    if concept is None and res.medicationReference is not None:
        found = medication_concept(raw, medications)
        if found is None:
            warnings.append(f"{where}: medicationReference {res.medicationReference.reference!r} names no Medication "
                            "in the bundle (contained or included): the drug is not identified")
        else:
            try:
                concept = _CodeableConcept.model_validate(found)
            except ValidationError as exc:
                _raise_validation(exc, f"{where} (its Medication.code)")
    ingredient, rxcui, text = _med_ingredient(kb, concept)
    start = end = None
    dose = None
    route = None
    if rtype == "MedicationAdministration":
        when = res.effectiveDateTime or (res.effectivePeriod.start if res.effectivePeriod else None)
        start = _time(when, where, "effective time")
        if ingredient == "magnesium sulfate":
            dose = _dose_g(res.dosage, where)
    elif rtype == "MedicationRequest":
        if res.authoredOn is not None:
            start = _time(res.authoredOn, where, "authoredOn")
    elif res.effectiveDateTime is not None or res.effectivePeriod is not None:
        when = res.effectiveDateTime or res.effectivePeriod.start
        start = _time(when, where, "effective time") if when else None
    kind = {"MedicationRequest": "request", "MedicationAdministration": "administration",
            "MedicationStatement": "statement"}[rtype]
    return Medication(text=text, ingredient=ingredient, rxcui=rxcui, kind=kind, source_id=where,
                      start=start, end=end, dose_g=dose, route=route,
                      active=res.status not in INACTIVE)
