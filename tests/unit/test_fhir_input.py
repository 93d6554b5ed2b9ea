"""Bad input: each error names the offending resource; nothing partial is returned."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mgaki
from mgaki.adapters.fhir import record_from_bundle
from mgaki.errors import BundleError, ImplausibleValueError, TimeError, UnitError
from mgaki.synth.fhir import BundleBuilder as B


def base() -> B:
    return B().obs("magnesium", 1.4, "mg/dL", 0).obs("creatinine", 1.0, "mg/dL", 0)


def test_missing_unit():
    b = base().obs("magnesium", 1.2, None, 2).build()
    with pytest.raises(UnitError, match=r"Observation/obs3: magnesium value 1.2 has no unit"):
        mgaki.assess(b)


def test_unknown_unit():
    b = base().obs("creatinine", 1.2, "mg/spoon", 2).build()
    with pytest.raises(UnitError, match=r"Observation/obs3.*unknown unit 'mg/spoon'"):
        mgaki.assess(b)


def test_impossible_value():
    b = base().obs("magnesium", 24, "mmol/L", 2).build()
    with pytest.raises(ImplausibleValueError, match=r"Observation/obs3"):
        mgaki.assess(b)


def test_timezone_naive_time():
    b = base().obs("magnesium", 1.2, "mg/dL", time="2024-03-01T10:00:00").build()
    with pytest.raises(BundleError, match=r"Bundle.entry\[3\] \(Observation/obs3\).*effectiveDateTime"):
        mgaki.assess(b)


def test_date_only_time():
    b = base().obs("magnesium", 1.2, "mg/dL", time="2024-03-01").build()
    with pytest.raises(TimeError, match=r"Observation/obs3: effectiveDateTime is a date"):
        mgaki.assess(b)


def test_malformed_json_and_wrong_type():
    with pytest.raises(BundleError, match="not valid JSON"):
        mgaki.assess("{not json")
    with pytest.raises(BundleError, match="expected a FHIR Bundle"):
        mgaki.assess({"resourceType": "Patient"})


def test_invalid_resource_named():
    b = base().build()
    b["entry"][1]["resource"]["valueQuantity"]["value"] = "one point four"
    with pytest.raises(BundleError, match=r"Observation/obs1"):
        mgaki.assess(b)


def test_no_patient():
    b = base().build()
    b["entry"] = b["entry"][1:]
    with pytest.raises(BundleError, match="no Patient"):
        mgaki.assess(b)


def test_mixed_units_in_one_series_are_converted():
    # creatinine 88.4 umol/L = 1.0 mg/dL, then 2.0 mg/dL: ratio 2 -> stage 2
    b = (B().obs("creatinine", 88.4, "umol/L", 0).obs("creatinine", 2.0, "mg/dL", 30)
         .obs("magnesium", 0.8, "mmol/L", 30).obs("magnesium", 2.0, "mg/dL", 31).build())
    a = mgaki.assess(b)
    assert a.kidney.aki_stage == 2
    assert a.kidney.baseline.value_mg_dl == pytest.approx(1.0, abs=1e-3)
    assert a.magnesium.value_mg_dl == pytest.approx(2.0)


def test_duplicate_timestamps_counted_once_and_reported():
    b = base().obs("magnesium", 1.4, "mg/dL", 0).build()
    a = mgaki.assess(b)
    assert any("counted once" in w for w in a.warnings)
    b2 = base().obs("magnesium", 1.6, "mg/dL", 0).build()
    a2 = mgaki.assess(b2)
    assert any("two different magnesium values" in w for w in a2.warnings)
    # order-free: the larger value at a tie sorts last whatever the bundle order
    b2["entry"][1:3] = reversed(b2["entry"][1:3])
    assert mgaki.assess(b2).magnesium.value_mg_dl == a2.magnesium.value_mg_dl


def test_cli_bad_input_exits_2_and_prints_nothing_on_stdout(tmp_path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps(base().obs("magnesium", 1.2, None, 2).build()))
    r = subprocess.run([sys.executable, "-m", "mgaki", "assess", str(p), "-f", "json"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Observation/obs3" in r.stderr


def test_cli_json_ok(tmp_path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps(base().build()))
    r = subprocess.run([sys.executable, "-m", "mgaki", "assess", str(p), "-f", "json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"magnesium", "kidney", "findings", "plan", "warnings"} <= set(out)
    assert out["magnesium"]["status"] == "low"


# --- the fast validation layer vs full fhir.resources validation ---------------------------

VIGNETTES = sorted((Path(__file__).resolve().parents[1] / "vignettes" / "bundles").glob("*.json"))


@pytest.mark.parametrize("path", VIGNETTES, ids=lambda p: p.stem)
def test_fast_path_builds_the_same_record_as_full_validation(path):
    text = path.read_text(encoding="utf-8")
    fast = record_from_bundle(text)
    assert fast == record_from_bundle(text, strict=True)
    assert fast.measurements  # the comparison is not vacuous


def test_fast_path_validates_what_mgaki_reads():
    b = base().build()
    b["entry"][1]["resource"]["status"] = "done"
    with pytest.raises(BundleError, match=r"Bundle.entry\[1\] \(Observation/obs1\): status"):
        mgaki.assess(b)
    b = base().build()
    b["entry"][1]["resource"]["code"]["coding"][0]["code"] = "19123-9 "
    with pytest.raises(BundleError, match=r"\(Observation/obs1\): code.coding.0.code: String should match"):
        mgaki.assess(b)
    b = base().build()
    b["entry"][1]["resource"]["effectivePeriod"] = {"start": "2024-03-01T08:00:00Z"}
    with pytest.raises(BundleError, match=r"Observation/obs1.*only one of effectiveDateTime, effectivePeriod"):
        mgaki.assess(b)
    b = base().build()
    b["entry"][0]["resource"]["birthDate"] = "1960-13-01"  # Patient: validated by its fhir.resources model
    with pytest.raises(BundleError, match=r"Bundle.entry\[0\] \(Patient/p1\): birthDate"):
        mgaki.assess(b)


def _meds() -> B:
    return (base().med("magnesium sulfate", "6585", "MedicationAdministration", 1.0, dose_g=2.0)
            .med("furosemide", "4603", "MedicationRequest", 2.0)
            .med("omeprazole", "7646", "MedicationStatement", 3.0))


def test_fast_path_reads_medications_like_full_validation():
    b = _meds().build()
    fast = record_from_bundle(b)
    assert fast == record_from_bundle(b, strict=True)
    assert [m.kind for m in fast.medications] == ["administration", "request", "statement"]
    assert fast.medications[0].dose_g == pytest.approx(2.0)


@pytest.mark.parametrize(("entry", "element", "value", "message"), [
    (3, "status", None, r"\(MedicationAdministration/med3\): status: Field required"),
    (3, "status", " completed", r"\(MedicationAdministration/med3\): status: String should match"),
    (3, "effectiveDateTime", "2024-03-01 09:00", r"\(MedicationAdministration/med3\): effectiveDateTime: "
                                                  r"'2024-03-01 09:00' is not a FHIR dateTime"),
    (3, "effectivePeriod", {"start": "2024-03-01T09:00:00Z"}, r"only one of effectiveDateTime, effectivePeriod"),
    (3, "dosage", {"dose": {"value": "2 g", "unit": "g"}}, r"dosage.dose.value: '2 g' is not a FHIR decimal"),
    (3, "dosage", {"dose": {"value": True, "unit": "g"}}, r"dosage.dose.value: Input should be a valid number"),
    (4, "authoredOn", "March 1st", r"\(MedicationRequest/med4\): authoredOn: 'March 1st' is not a FHIR dateTime"),
    (4, "medicationReference", {"reference": "Medication/m1"},
     r"only one of medicationCodeableConcept, medicationReference"),
    (5, "id", "has space", r"\(MedicationStatement/has space\): id: String should match"),
    (0, "birthDate", "1960-02-30T00:00:00Z", r"\(Patient/p1\): birthDate: '1960-02-30T00:00:00Z' is not a FHIR date"),
])
def test_fast_path_validates_the_medication_and_patient_elements_mgaki_reads(entry, element, value, message):
    """Each element read from a Patient or a medication is checked, and the error names resource and element."""
    b = _meds().build()
    res = b["entry"][entry]["resource"]
    if value is None:
        del res[element]
    else:
        res[element] = value
    with pytest.raises(BundleError, match=message):
        mgaki.assess(b)
    with pytest.raises(BundleError):  # full validation refuses it too
        record_from_bundle(b, strict=True)


def test_partial_date_is_named():
    b = base().obs("magnesium", 1.2, "mg/dL", time="2024-03").build()
    with pytest.raises(TimeError, match=r"Observation/obs3: effectiveDateTime is a partial date"):
        mgaki.assess(b)


def test_decimal_string_accepted_like_fhir_resources():
    b = base().build()
    b["entry"][1]["resource"]["valueQuantity"]["value"] = "1.4"
    assert record_from_bundle(b) == record_from_bundle(b, strict=True)


def test_unused_resource_types_checked_for_type_only_unless_strict():
    b = base().build()
    b["entry"].append({"resource": {"resourceType": "Specimen", "id": "s1", "receivedTime": "yesterday"}})
    assert mgaki.assess(b).magnesium.value_mg_dl == pytest.approx(1.4)  # mgaki does not read Specimen
    with pytest.raises(BundleError, match=r"Bundle.entry\[3\] \(Specimen/s1\): receivedTime"):
        record_from_bundle(b, strict=True)
    b["entry"][-1]["resource"]["resourceType"] = "Specimin"
    with pytest.raises(BundleError, match=r"Bundle.entry\[3\] \(Specimin/s1\).*not a FHIR R4 resource type"):
        mgaki.assess(b)


def test_cli_strict_fhir_rejects_what_the_fast_path_skips(tmp_path):
    b = base().build()
    b["entry"].append({"resource": {"resourceType": "Specimen", "id": "s1", "receivedTime": "yesterday"}})
    p = tmp_path / "b.json"
    p.write_text(json.dumps(b))
    cmd = [sys.executable, "-m", "mgaki", "assess", str(p), "-f", "json"]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    r = subprocess.run([*cmd, "--strict-fhir"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert "Specimen/s1" in r.stderr


def _mgso4_by_reference(contained: bool) -> dict:
    """The MgSO4 administration of ``_meds`` naming its drug through a Medication resource."""
    b = _meds().build()
    adm = b["entry"][3]["resource"]
    med = {"resourceType": "Medication", "id": "mgso4", "code": adm.pop("medicationCodeableConcept")}
    if contained:
        adm.update(contained=[med], medicationReference={"reference": "#mgso4"})
    else:
        adm["medicationReference"] = {"reference": "Medication/mgso4"}
        b["entry"].append({"resource": med})
    return b


@pytest.mark.parametrize("contained", [True, False])
def test_medication_reference_is_resolved_to_its_medication(contained):
    b = _mgso4_by_reference(contained)
    fast = record_from_bundle(b)
    assert fast == record_from_bundle(b, strict=True)
    adm = fast.medications[0]
    assert (adm.ingredient, adm.rxcui, adm.dose_g) == ("magnesium sulfate", "6585", pytest.approx(2.0))
    assert not [w for w in fast.warnings if "medicationReference" in w]


def test_unresolved_medication_reference_is_a_warning_not_a_failure():
    b = _mgso4_by_reference(contained=False)
    b["entry"].pop()  # the Medication is not in the bundle
    rec = record_from_bundle(b)
    assert rec.medications[0].ingredient is None
    assert any("MedicationAdministration/med3: medicationReference 'Medication/mgso4' names no Medication" in w
               for w in rec.warnings)
    assert mgaki.assess(b).magnesium is not None  # the rest of the assessment stands


def test_a_referenced_medication_code_is_validated():
    b = _mgso4_by_reference(contained=True)
    b["entry"][3]["resource"]["contained"][0]["code"]["coding"][0]["code"] = "6585 "
    with pytest.raises(BundleError, match=r"MedicationAdministration/med3 \(its Medication.code\): coding.0.code"):
        record_from_bundle(b)
