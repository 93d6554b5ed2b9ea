"""C1: conversions computed from molar mass and valence; bad units rejected."""

from __future__ import annotations

import pytest

from mgaki.errors import ImplausibleValueError, UnitError
from mgaki.units import convert, factor, normalize_unit, salt_amounts, to_canonical


def test_mg_factors_match_the_brief():
    # knowledge-brief s1: mg/dL -> mmol/L x0.4114; -> mEq/L x0.8229; mEq/L -> mg/dL x1.215
    assert factor("magnesium", "mg/dL", "mmol/L") == pytest.approx(0.4114, abs=1e-4)
    assert factor("magnesium", "mg/dL", "meq/L") == pytest.approx(0.8229, abs=1e-4)
    assert factor("magnesium", "meq/L", "mg/dL") == pytest.approx(1.215, abs=1e-3)
    assert factor("magnesium", "mmol/L", "mg/dL") == pytest.approx(2.4305, abs=1e-4)


def test_creatinine_kdigo_equivalents():
    # KDIGO: 0.3 mg/dL = 26.5 umol/L; 4.0 mg/dL = 353.6 umol/L
    assert convert(0.3, "creatinine", "mg/dL", "umol/L") == pytest.approx(26.5, abs=0.05)
    assert convert(4.0, "creatinine", "mg/dL", "umol/L") == pytest.approx(353.6, abs=0.1)


def test_calcium_and_potassium():
    assert convert(10.0, "calcium", "mg/dL", "mmol/L") == pytest.approx(2.495, abs=1e-3)
    assert convert(4.0, "potassium", "mmol/L", "meq/L") == pytest.approx(4.0)
    assert convert(40.0, "albumin", "g/L", "g/dL") == pytest.approx(4.0)


def test_mgso4_doses_match_label_and_correct_the_review():
    one = salt_amounts(1.0, "g")
    assert one["mmol"] == pytest.approx(4.057, abs=1e-3)  # label 4.06 mmol/g
    assert one["meq"] == pytest.approx(8.11, abs=0.01)  # label 8.12 mEq/g
    assert one["elemental_mg"] == pytest.approx(98.6, abs=0.1)
    # review: "48 mEq ~ 3.95 g" is wrong; 48 mEq = 24 mmol = 5.92 g MgSO4.7H2O
    assert salt_amounts(48, "meq")["g_mgso4"] == pytest.approx(5.92, abs=0.01)
    # PRAGMATIC 16 mEq ~ 2 g
    assert salt_amounts(16, "meq")["g_mgso4"] == pytest.approx(1.97, abs=0.01)
    assert salt_amounts(50, "mg/kg", weight_kg=70)["g_mgso4"] == pytest.approx(3.5)


def test_pancreatitis_cutoff_conversion():
    # Yu 2021: 0.755 mmol/L, misreported by the review as mg/dL
    assert convert(0.755, "magnesium", "mmol/L", "mg/dL") == pytest.approx(1.835, abs=1e-3)


@pytest.mark.parametrize("alias,ucum", [("mEq/L", "meq/L"), ("µmol/L", "umol/L"),
                                        ("mg/dl", "mg/dL"), ("mmol/l", "mmol/L")])
def test_aliases(alias, ucum):
    assert normalize_unit(alias) == ucum


def test_missing_unit_names_the_observation():
    with pytest.raises(UnitError, match=r"Observation/7: unit is missing"):
        to_canonical(1.2, "magnesium", None, "Observation/7")


def test_unknown_unit_names_the_observation():
    with pytest.raises(UnitError, match=r"Observation/8: unknown unit 'mg/cup'"):
        to_canonical(1.2, "magnesium", "mg/cup", "Observation/8")


def test_wrong_dimension_rejected():
    with pytest.raises(UnitError, match="Observation/9"):
        to_canonical(1.2, "magnesium", "kg", "Observation/9")


def test_meq_for_albumin_rejected():
    with pytest.raises(UnitError):
        factor("albumin", "meq/L", "g/dL")


def test_impossible_value_rejected():
    # 20 mmol/L of Mg (48.6 mg/dL) cannot be a living patient's value
    with pytest.raises(ImplausibleValueError, match=r"Observation/1.*check the unit"):
        to_canonical(20, "magnesium", "mmol/L", "Observation/1")
    with pytest.raises(ImplausibleValueError):
        to_canonical(-1, "creatinine", "mg/dL", "Observation/2")


# --- precomputed SI scales (no pint at run time); pint is the oracle ----------------------


def test_generated_scales_match_pint():
    from mgaki._unit_scales import SCALES
    from mgaki.units import generate_scales

    assert generate_scales() == SCALES, "units.yaml changed: run mgaki.units.write_scales()"


def _pint_factor(ureg, analyte, src, dst):
    """The conversion as pint computes it (the implementation before the precomputed scales)."""
    def moles(u):
        q = ureg.Quantity(1.0, u.pint)
        if u.kind == "mass" and analyte.molar_mass_g_per_mol:
            return q / ureg.Quantity(analyte.molar_mass_g_per_mol, "g/mol")
        return q / analyte.valence if u.kind == "equivalent" else q
    return float((moles(src) / moles(dst)).to("").magnitude)


def test_every_factor_equals_pint(kb):
    import pint

    ureg = pint.UnitRegistry()
    checked = rejected = 0
    for a in kb.units.analytes:
        for src in kb.units.units:
            for dst in kb.units.units:
                try:
                    expected = _pint_factor(ureg, a, src, dst)
                except (pint.DimensionalityError, TypeError):
                    expected = None
                if "plain" in {src.kind, dst.kind} and src.kind != dst.kind:
                    expected = None
                if expected is None:
                    with pytest.raises(UnitError):
                        factor(a.id, src.ucum, dst.ucum)
                    rejected += 1
                else:
                    assert factor(a.id, src.ucum, dst.ucum) == pytest.approx(expected, rel=1e-12), (a.id, src, dst)
                    checked += 1
    assert checked > 300 and rejected > 1000


def test_stale_scale_is_refused(monkeypatch):
    from mgaki import units
    from mgaki.errors import KnowledgeError

    monkeypatch.setitem(units.SCALES, "mg/dL", ("mg/mL", 10.0, (("[length]", -3), ("[mass]", 1))))
    with pytest.raises(KnowledgeError, match="write_scales"):
        units._scale("mg/dL", "mg/dL")


def test_assess_does_not_import_pint():
    import subprocess
    import sys

    code = ("import sys, mgaki, mgaki.cli; from mgaki.cli.bedside import example_path; "
            "mgaki.assess(example_path().read_bytes(), ['cisplatin']); print('pint' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
