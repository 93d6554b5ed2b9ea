"""Every applied model against the published cohorts (src/mgaki/pk/published.yaml) and its own published
values (published_values.yaml): the validation table of docs/pk.md is this output, and the default model is
the one that reproduces the largest share of it. Non-pregnant data calibrate the added uncertainty; the
retention assumption is stated and checked against what the model predicts for depleted patients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_reproduction import PUBLISHED, _reproduced, reproduce

from mgaki.cli.pk import validation_markdown
from mgaki.knowledge import load
from mgaki.pk import Covariates, Regimen, concentrations, population
from mgaki.pk._vpc import Check, datasets, regimen, validate
from mgaki.units import convert

KB = load()
APPLIED = [m.id for m in KB.pk.models if m.applied]
DOC = (Path(__file__).parents[2] / "docs" / "pk.md").read_text()


@pytest.fixture(scope="module")
def checks() -> dict[str, list[Check]]:
    # the command that writes the docs table: mgaki pk vpc --model <each applied model> -f markdown (n 400, seed 0)
    return {m: [c for d in datasets() for c in validate(d.id, m, n=400, seed=0)] for m in APPLIED}


def test_docs_carry_the_validation_table_as_computed(checks: dict[str, list[Check]]) -> None:
    table = validation_markdown([c for m in APPLIED for c in checks[m]])
    assert table in DOC, "docs/pk.md validation table is stale: regenerate with `mgaki pk vpc` (docs/pk.md)"


def test_every_data_set_is_located_and_checked(checks: dict[str, list[Check]]) -> None:
    for d in datasets():
        assert d.location and d.read and d.assumed and d.tolerance.why
        assert (d.points or d.shares) and d.id in DOC
        assert {c.dataset for c in checks[KB.pk.default_model]} >= {d.id}


def _own(model: str) -> tuple[int, int]:
    """Published values of the model's own paper (published_values.yaml) reproduced / checked."""
    n_ok = n_all = 0
    for c in PUBLISHED:
        if c["model"] != model or c["expect"] == "not_found":
            continue
        got, ok = reproduce(c)
        hits = [lo <= g <= hi for g, (lo, hi) in zip(got, ok, strict=True)]
        if "published_range_mmol_l" in c or "published_range_mg_dl" in c:  # one statement, however many times
            hits = [all(hits)]
        n_all += len(hits)
        n_ok += sum(hits)
    return n_ok, n_all


def test_the_default_model_is_the_best_validated(checks: dict[str, list[Check]]) -> None:
    share = {}
    for m in APPLIED:
        own_ok, own_all = _own(m)
        cohort_ok = sum(c.passed for c in checks[m])
        share[m] = (own_ok + cohort_ok) / (own_all + len(checks[m]))
    assert max(share, key=lambda m: share[m]) == KB.pk.default_model, share
    assert "Du 2019" in KB.pk.default_model_reason and "validation table" in KB.pk.default_model_reason
    # the figures: steady state on 2 g/h vs Brookfield's 7.2 mg/dL
    brook = {m: next(c for c in checks[m] if c.dataset == "brookfield_2016_css") for m in APPLIED}
    assert brook["du_2019_2cpt"].passed and brook["du_2019_2cpt"].simulated == pytest.approx(7.09, abs=0.02)
    assert not brook["ucsf_2002_2cpt"].passed and brook["ucsf_2002_2cpt"].simulated == pytest.approx(5.74, abs=0.1)


def test_du_clearance_is_brookfields_pre_eclampsia_clearance() -> None:
    # Brookfield 2016 (abstract): CL 3.98 L/h in the pre-eclamptic women Du 2019 re-analysed (5.88 without)
    cl = population("du_2019_2cpt", Covariates(weight_kg=85, creatinine_mg_dl=0.8)).typical[0]
    assert cl == pytest.approx(3.98, rel=0.10) and abs(cl - 3.98) < abs(cl - 5.88)


def test_du_reproduces_its_own_table_4_in_full() -> None:
    for cid in ("du_2019_table4_zuspan_rate_by_weight", "du_2019_table4_pritchard_dose_by_weight",
                "du_2019_zuspan_24h_average", "du_2019_pritchard_24h_average"):
        assert _reproduced(next(c for c in PUBLISHED if c["id"] == cid)), cid


def _nonpregnant_errors() -> list[float]:
    """log(published / typical predicted) drug-derived rise at each non-pregnant published value."""
    out = []
    for ds in datasets():
        if ds.pregnant:
            continue
        assert ds.cohort is not None and ds.baseline is not None
        co = ds.cohort
        assert co.weight_kg and co.creatinine_mg_dl and co.age_years
        base = ds.baseline.center
        pop = population(None, Covariates(weight_kg=co.weight_kg.mean, creatinine_mg_dl=co.creatinine_mg_dl.mean,
                                          age_years=co.age_years.mean, pregnant=True),
                         baseline_mg_dl=convert(base, "magnesium", "mmol/L", "mg/dL"))
        for p in ds.points:
            c = concentrations(pop, regimen(ds), np.array([p.t_h]), np.zeros(pop.n_eta))[0] - pop.baseline_mmol_l
            pub = convert(p.center, "magnesium", ds.unit, "mmol/L")
            out.append(float(np.log((pub if p.statistic == "mean_rise" else pub - base) / c)))
    return out


def test_the_non_pregnant_uncertainty_is_calibrated_on_non_pregnant_data() -> None:
    errs = np.array(_nonpregnant_errors())
    assert len(errs) == 9
    rms = float(np.sqrt(np.mean(errs ** 2)))
    assert rms == pytest.approx(0.42, abs=0.01) and abs(errs.mean()) < 0.1  # measured: RMS 0.424, mean -0.024
    assert KB.value("pk_nonpregnant_sd") >= rms
    inside = population(None, Covariates(weight_kg=85, creatinine_mg_dl=0.8, age_years=30, pregnant=True))
    outside = population(None, Covariates(weight_kg=85, creatinine_mg_dl=0.8, age_years=30, pregnant=False))
    i = inside.names.index("f")
    assert inside.omega[i] == 0.0 and outside.omega[i] == pytest.approx(KB.value("pk_nonpregnant_sd"))


def test_the_retention_assumption_is_stated_and_acts_as_stated() -> None:
    cov: dict[str, Any] = {"weight_kg": 80, "creatinine_mg_dl": 1.0, "age_years": 60}
    depleted = population(None, Covariates(**cov), baseline_mg_dl=1.2)
    assert any("retention of 0% of each dose assumed" in n and "recheck levels" in n for n in depleted.notes)
    held = population(None, Covariates(**cov, retained_fraction=0.4), baseline_mg_dl=1.2)
    reg = Regimen.dose(4, "g", 0, 4)
    t = np.array([6.0, 12.0, 24.0])
    rise = concentrations(depleted, reg, t, np.zeros(depleted.n_eta)) - depleted.baseline_mmol_l
    rise_held = concentrations(held, reg, t, np.zeros(held.n_eta)) - held.baseline_mmol_l
    np.testing.assert_allclose(rise_held, 0.6 * rise)  # the retained share never reaches serum
    # against the published rise in depleted ICU patients (J Anaesthesiol Clin Pharmacol 2022, abstract:
    # 0.13 +- 0.05 mg/dL per g, time not stated): the model's rise per g with no retention is above it 6 h
    # after the start and below it from 12 h (measured 0.196, 0.089, 0.035 mg/dL per g at 6/12/24 h), so
    # the data do not show retention; they show a slower fall than the model (as Kwon 2023 does at 24 h)
    per_g = [convert(float(x), "magnesium", "mmol/L", "mg/dL") / 4.0 for x in rise]
    assert per_g[0] > 0.13 > per_g[1] > per_g[2]
    assert per_g == pytest.approx([0.196, 0.089, 0.035], abs=0.002)


def test_ucsf_maintenance_is_read_as_a_rate_with_its_evidence() -> None:
    ucsf = KB.pk_model("ucsf_2002_2cpt")
    assert "24 mg/kg/h for 5 h" in ucsf.population
    note = ucsf.parameters[0].source.note or ""
    assert "7.5 g in 1 h then 7.5 g in 5 h" in note and "inference" in note
    # the regimen the reading implies, through the unit layer: at 62.5 kg both infusions are 7.5 g
    from mgaki.pk import Regimen as R

    first = R.dose(120, "mg/kg", 0.0, 1.0, weight_kg=62.5)
    second = R.rate(24, "mg/kg", 1.0, 5.0, weight_kg=62.5)
    assert first.g_mgso4()[0] == pytest.approx(7.5) and second.g_mgso4()[0] == pytest.approx(7.5)
