"""Issue 13 point 7: a dose unit is read the same way at the bedside and in the cohort.

The MgSO4 administrations of the MIMIC-IV demo subset record their dose as ``2 gm``
(hosp/emar_detail.dose_given_unit, read here with the csv module, not the adapter). Each is
sent the way an eMAR interface sends it (FHIR ``dosage.dose`` with the unit text and no UCUM
code) through the bedside path (``mgaki assess``) and the cohort path (NDJSON -> fhir_bulk ->
normalize), and both must give the same amount of Mg; before, the bedside refused ``gm``
("magnesium dose unit 'gm' not understood") while the cohort took it.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgaki.adapters.fhir import record_from_bundle
from mgaki.adapters.fhir_bulk import read_fhir
from mgaki.cli import app
from mgaki.errors import UnitError
from mgaki.events import normalize
from mgaki.synth.fhir import BundleBuilder
from mgaki.units import salt_amounts

MIMIC = Path(__file__).resolve().parents[1] / "data" / "mimic-iv-demo-subset" / "hosp"
MGSO4_RXCUI = "6585"


def _rows(name: str) -> list[dict[str, str]]:
    with gzip.open(MIMIC / f"{name}.csv.gz", "rt", newline="") as f:
        return list(csv.DictReader(f))


def _mimic_mgso4_doses() -> dict[str, list[tuple[str, float, str]]]:
    """subject -> [(charttime, dose_given, dose_given_unit)] of MgSO4 eMAR rows with a dose, as recorded."""
    emar = {r["emar_id"]: r for r in _rows("emar") if "magnesium sulfate" in r["medication"].lower()}
    out: dict[str, list[tuple[str, float, str]]] = defaultdict(list)
    for d in _rows("emar_detail"):
        e = emar.get(d["emar_id"])
        if e and d["dose_given"] and d["dose_given_unit"]:
            out[e["subject_id"]].append((e["charttime"], float(d["dose_given"]), d["dose_given_unit"]))
    return out


DOSES = _mimic_mgso4_doses()


def _bundle(subject: str) -> dict:
    b = BundleBuilder(pid=subject, id_prefix=f"s{subject}-")
    b.obs("magnesium", 1.6, "mg/dL", 0.0)
    for when, value, unit in DOSES[subject]:
        b.med("Magnesium Sulfate", MGSO4_RXCUI, kind="MedicationAdministration",
              dose=(value, unit), time=when.replace(" ", "T") + "Z")
    return b.build()


def test_the_subset_records_mgso4_doses_in_gm() -> None:
    units = {u for doses in DOSES.values() for _, _, u in doses}
    assert units == {"gm"} and sum(map(len, DOSES.values())) >= 10


@pytest.mark.parametrize("subject", sorted(DOSES))
def test_bedside_and_cohort_read_the_same_gm_doses(subject: str, tmp_path: Path) -> None:
    bundle = _bundle(subject)
    rec = record_from_bundle(bundle)  # raised UnitError on 'gm' before
    bedside = {m.source_id: salt_amounts(m.dose_g, "g")["mmol"] for m in rec.medications if m.dose_g is not None}
    assert len(bedside) == len(DOSES[subject])
    expected = sorted(salt_amounts(v, "g")["mmol"] for _, v, _ in DOSES[subject])  # 'gm' is grams of MgSO4.7H2O
    assert sorted(bedside.values()) == pytest.approx(expected)

    (tmp_path / "MedicationAdministration.ndjson").write_text(
        "\n".join(json.dumps(e["resource"]) for e in bundle["entry"]
                  if e["resource"]["resourceType"] == "MedicationAdministration") + "\n")
    (tmp_path / "Patient.ndjson").write_text(json.dumps(bundle["entry"][0]["resource"]) + "\n")
    meds = normalize(read_fhir(tmp_path))["medications"].to_pylist()
    cohort = {r["source"].split("/_history/")[0]: r["mg_mmol"] for r in meds}
    assert cohort == pytest.approx(bedside)  # row for row, by resource


def test_assess_cli_reads_a_gm_dose(tmp_path: Path) -> None:
    subject = sorted(DOSES)[0]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(_bundle(subject)))
    r = CliRunner().invoke(app, ["assess", str(path), "--format", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["patient_id"] == subject


@pytest.mark.parametrize("unit,mmol", [("g", 8.1146), ("gm", 8.1146), ("GM", 8.1146), ("mg", 0.0081146),
                                       ("mmol", 2.0), ("mEq", 1.0), ("meq", 1.0)])
def test_every_site_spelling_reads_through_the_unit_layer(unit: str, mmol: float) -> None:
    b = BundleBuilder().obs("magnesium", 1.6, "mg/dL", 0.0)
    b.med("Magnesium Sulfate", MGSO4_RXCUI, kind="MedicationAdministration", dose=(2, unit), hours=1.0)
    (med,) = record_from_bundle(b.build()).medications
    assert med.dose_g is not None and salt_amounts(med.dose_g, "g")["mmol"] == pytest.approx(mmol, rel=1e-4)


def test_a_dose_unit_the_layer_does_not_know_names_the_resource() -> None:
    b = BundleBuilder().obs("magnesium", 1.6, "mg/dL", 0.0)
    b.med("Magnesium Sulfate", MGSO4_RXCUI, kind="MedicationAdministration", dose=(1, "vial"), hours=1.0)
    with pytest.raises(UnitError, match=r"MedicationAdministration/med2 dosage.dose: dose unit 'vial' not understood"):
        record_from_bundle(b.build())
