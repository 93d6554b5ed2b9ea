"""Bad input: each error names the offending resource; nothing partial is returned."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mgaki
from fhirbuild import B
from mgaki.errors import BundleError, ImplausibleValueError, TimeError, UnitError


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
