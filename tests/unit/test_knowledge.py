"""Every knowledge file loads, validates and cites every entry."""

from __future__ import annotations

import re
from importlib import resources

import pytest
import yaml
from pydantic import ValidationError

from mgaki.knowledge import iter_cited, load_file
from mgaki.knowledge.schema import FILES, Source, Study


def test_every_data_file_is_registered_and_loaded(kb):
    shipped = {p.name for p in resources.files("mgaki.knowledge").joinpath("data").iterdir()
               if p.name.endswith(".yaml")}
    assert shipped == set(FILES), "a knowledge file exists that nothing loads (or vice versa)"
    assert set(kb.files()) == set(FILES)


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_entry_has_a_source_with_a_locator(kb, name):
    entries = list(iter_cited(kb.files()[name]))
    assert entries, f"{name} has no cited entries"
    for path, _entry, src in entries:
        assert isinstance(src, Source), f"{name}:{path} lacks a source"
        assert src.doi or src.document, f"{name}:{path} source has no DOI or document"
        if src.doi:
            assert re.fullmatch(r"10\.\d{4,9}/\S+", src.doi), f"{name}:{path} bad DOI {src.doi}"


def test_uncited_entry_is_rejected():
    with pytest.raises(ValidationError):
        Source(citation="x", verification="V")


def test_unverified_study_cannot_be_applied():
    raw = yaml.safe_load(resources.files("mgaki.knowledge").joinpath(
        "data", "evidence.yaml").read_text())
    zheng = next(s for s in raw["studies"] if s["id"] == "zheng_2023")
    zheng["applied"] = True
    with pytest.raises(ValidationError, match="unverified"):
        Study.model_validate(zheng)


def test_every_review_table1_study_is_present(kb):
    table1 = {"lv_2022", "ribeiro_2022", "xiong_2023", "zheng_2023", "stevens_2021",
              "morooka_2022", "koh_2022", "yu_2021", "liu_2023", "shen_2020", "li_2021",
              "chen_2024"}
    ids = {s.id for s in kb.evidence.studies if s.in_review_table1}
    assert ids == table1
    assert {"cheungpasitporn_2015", "suppadungsuk_2024"} <= {s.id for s in kb.evidence.studies}


def test_review_unit_slips_are_corrected(kb):
    yu = next(s for s in kb.evidence.studies if s.id == "yu_2021")
    assert yu.risk_regions[0].unit == "mmol/L" and yu.correction
    barbosa = kb.regimen("icu-barbosa-2016")
    assert barbosa.steps[0].amount_unit == "meq" and "5.92" in (barbosa.correction or "")


def test_units_used_by_thresholds_are_known_where_converted(kb):
    from mgaki.units import normalize_unit

    for tid in ("mg_toxicity_reflexes_decrease_above", "urine_mg_24h_wasting_above",
                "mg_symptomatic_below"):
        normalize_unit(kb.threshold(tid).unit)


def test_load_file_names_the_bad_file(monkeypatch):
    from mgaki.errors import KnowledgeError
    from mgaki.knowledge import schema

    monkeypatch.setitem(schema.FILES, "units.yaml", schema.DrugsFile)
    with pytest.raises(KnowledgeError, match=r"units\.yaml"):
        load_file("units.yaml")


def test_fast_yaml_loader_reads_the_same_knowledge():
    from importlib import resources

    import yaml

    from mgaki.knowledge import _LOADER
    from mgaki.knowledge.schema import FILES

    assert _LOADER is yaml.CSafeLoader  # libyaml present: the CLI start-up depends on it
    for name in FILES:
        text = resources.files("mgaki.knowledge").joinpath("data", name).read_text("utf-8")
        assert yaml.load(text, Loader=_LOADER) == yaml.safe_load(text), name
