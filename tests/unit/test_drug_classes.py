"""drugs.yaml ``classes``: the Mg-lowering classes the CDS order hooks check; schema rejects inconsistent entries."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from mgaki.knowledge import load
from mgaki.knowledge.schema import DrugsFile

SRC = {"citation": "c", "doi": "10.1/x", "verification": "V"}
DRUG = {"ingredient": "furosemide", "drug_class": "loop diuretic", "mechanism": "m", "effect": "renal_wasting",
        "source": SRC}


def drugs_file(*classes: dict[str, object]) -> dict[str, object]:
    return {"version": "t", "drugs": [DRUG], "classes": list(classes)}


def cls(**over: object) -> dict[str, object]:
    return {"id": "loop", "label": "loop diuretic", "drug_classes": ["loop diuretic"], "reason": "r",
            "source": SRC, **over}


def test_requested_classes_are_present_with_sources():
    kb = load()
    by_drug = {d.ingredient: kb.drug_class(d.drug_class) for d in kb.drugs.drugs}
    for ingredient, class_id in [("omeprazole", "proton_pump_inhibitor"), ("furosemide", "loop_diuretic"),
                                 ("hydrochlorothiazide", "thiazide_diuretic"), ("chlorthalidone", "thiazide_diuretic"),
                                 ("gentamicin", "aminoglycoside"), ("cisplatin", "platinum")]:
        c = by_drug[ingredient]
        assert c is not None and c.id == class_id
        assert c.source.doi or c.source.document
    assert by_drug["magnesium sulfate"] is None and by_drug["vancomycin"] is None  # not Mg-lowering
    assert kb.drug("cisplatin").context == "cisplatin"
    assert "cisplatin" in kb.regimen("cisplatin-pragmatic-2022").contexts


def test_ppi_name_pattern_excludes_piprazole_antipsychotics():
    ppi = next(c for c in load().drugs.classes if c.id == "proton_pump_inhibitor")
    pat = re.compile(f"^(?:{ppi.name_pattern})$")
    assert pat.match("ilaprazole") and pat.match("tenatoprazole")
    assert not pat.match("aripiprazole") and not pat.match("brexpiprazole")


@pytest.mark.parametrize("classes, msg", [
    ([cls(drug_classes=["loop diuretik"])], "no drug has"),
    ([cls(), cls(id="again")], "more than one class"),
    ([cls(name_pattern="([a-z")], "not a regex"),
    ([cls(source={"citation": "c", "verification": "V"})], "needs a doi or a document"),
])
def test_inconsistent_classes_are_rejected(classes, msg):
    with pytest.raises(ValidationError, match=re.escape(msg)):
        DrugsFile.model_validate(drugs_file(*classes))
