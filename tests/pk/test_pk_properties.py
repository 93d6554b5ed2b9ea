"""Property: over the whole input space, mgaki.pk either refuses (an InputError naming the item) or returns
finite numbers. No NaN or inf ever leaves the package, and no probability is outside [0, 1]."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mgaki.errors import InputError
from mgaki.knowledge import load
from mgaki.pk import (
    Covariates,
    Dialysis,
    KidneyCourse,
    Regimen,
    find_dose,
    fit_map,
    population,
    posterior_predict,
    risk,
    simulate,
    targets,
    time_grid,
)

APPLIED = [m.id for m in load().pk.models if m.applied]
anything = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64))
positive = st.floats(min_value=-5.0, max_value=1e4, allow_nan=False)


def _maybe(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), s)


def _mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a clinical value, sometimes anything at all (the whole space is covered, the valid part often)."""
    return st.one_of(valid, valid, valid, valid, st.none(), invalid)


doses = st.lists(st.tuples(_mostly(st.floats(0.0, 48.0), st.floats(-1.0, 400.0)),
                           _mostly(st.floats(0.0, 8.0), st.floats(-1.0, 400.0)),
                           _mostly(st.floats(0.0, 24.0), st.floats(-0.5, 50.0)),
                           st.booleans()).map(lambda d: (*(0.0 if x is None else x for x in d[:3]), d[3])),
                 min_size=1, max_size=5)
courses = _maybe(st.lists(st.tuples(st.floats(-48.0, 100.0), _mostly(st.floats(0.3, 5.0), st.floats(0.01, 60.0))
                                    .map(lambda x: 1.0 if x is None else x)), min_size=1, max_size=4))
dialyses = st.one_of(st.none(), st.none(), st.none(), st.builds(lambda s: Dialysis("hd", tuple(s)), st.lists(
    st.tuples(st.floats(0.0, 200.0), st.floats(0.1, 12.0)), max_size=3)),
    st.builds(lambda e: Dialysis("crrt", effluent_l_per_h=e), _maybe(st.floats(0.1, 10.0))))

patients = st.fixed_dictionaries({
    "model": st.sampled_from(APPLIED),
    "weight": _mostly(st.floats(35.0, 250.0), st.one_of(st.floats(-10.0, 700.0), anything)),
    "crcl": st.one_of(st.none(), st.none(), st.none(), st.floats(5.0, 200.0), st.just(0.0), anything),
    "creatinine": _mostly(st.floats(0.3, 4.5), st.one_of(st.floats(-1.0, 50.0), anything)),
    "age": _mostly(st.floats(18.0, 100.0), st.floats(-1.0, 140.0)),
    "pregnant": _maybe(st.booleans()),
    "aki": st.booleans(),
    "course": courses,
    "dialysis": dialyses,
    "retention": _mostly(st.floats(0.0, 0.9), st.floats(-0.5, 1.5)),
    "baseline": _mostly(st.floats(0.5, 6.0), st.one_of(st.floats(-1.0, 100.0), anything)),
})

# the clinical part of the space, where the numbers are computed (most draws are not refused)
clinical = st.fixed_dictionaries({
    "model": st.sampled_from(APPLIED),
    "weight": st.one_of(st.none(), st.floats(35.0, 250.0)),
    "crcl": st.one_of(st.none(), st.floats(5.0, 200.0)),
    "creatinine": st.one_of(st.none(), st.floats(0.3, 4.0)),
    "age": st.one_of(st.none(), st.floats(18.0, 100.0)),
    "pregnant": _maybe(st.booleans()),
    "aki": st.just(False),
    "course": _maybe(st.lists(st.tuples(st.floats(-48.0, 100.0), st.floats(0.3, 4.0)), min_size=1, max_size=4)),
    "dialysis": dialyses,
    "retention": st.one_of(st.none(), st.floats(0.0, 0.9)),
    "baseline": st.one_of(st.none(), st.floats(0.5, 6.0)),
}).filter(lambda p: p["model"] != "ucsf_2002_2cpt" or (p["dialysis"] is None and p["course"] is None
                                                         and (p["creatinine"] or 0) <= 1.2))
clinical_doses = st.lists(st.tuples(st.floats(0.0, 24.0), st.floats(0.1, 6.0), st.floats(0.0, 12.0), st.booleans()),
                          min_size=1, max_size=4)


def _pop(p: dict[str, Any]) -> Any:
    course = None
    if p["course"]:
        pts = sorted(p["course"])
        course = KidneyCourse(tuple(t for t, _ in pts), tuple(c for _, c in pts))
    cov = Covariates(weight_kg=p["weight"], crcl_ml_min=p["crcl"], creatinine_mg_dl=p["creatinine"],
                     age_years=p["age"], pregnant=p["pregnant"], aki=p["aki"], kidney_course=course,
                     dialysis=p["dialysis"], retained_fraction=p["retention"])
    return population(p["model"], cov, baseline_mg_dl=p["baseline"])


def _regimen(ds: list[tuple[float, float, float, bool]]) -> Regimen:
    reg = Regimen()
    for start, g, over, im in ds:
        reg = reg + Regimen.dose(g, "g", start, 0.0 if im else over, route="im" if im else "iv")
    return reg


def _finite(*arrays: Any) -> None:
    for a in arrays:
        if a is None:
            continue
        assert np.all(np.isfinite(np.asarray(a, dtype=float))), a


def _prob(p: float | None) -> None:
    assert p is None or (math.isfinite(p) and 0.0 <= p <= 1.0), p


def _simulate_check(p: dict[str, Any], ds: list[Any], horizon: float | None, context: str) -> bool:
    try:
        pop = _pop(p)
        reg = _regimen(ds)
        pred = simulate(pop, reg, time_grid(reg, horizon), n=40, seed=1)
    except InputError as exc:
        assert exc.where and exc.problem  # a clear error naming the item
        return False
    _finite(pred.typical_mg_dl, pred.lower_mg_dl, pred.upper_mg_dl, pred.peak_samples_mg_dl, pred.samples_mg_dl,
            pop.typical, pop.omega)
    assert np.all(pred.typical_mg_dl > 0)
    rk = risk(pred, targets(context), reg.end_h)
    _prob(rk.p_target)
    _prob(rk.p_harm)
    _prob(rk.p_harm_upper_95)
    assert rk.p_harm is not None and rk.p_harm_upper_95 is not None and rk.p_harm_upper_95 > 0  # never a bare 0
    assert pred.population and any("model built in" in n for n in pred.notes)
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(patients, doses, _maybe(st.floats(-5.0, 1000.0)), st.sampled_from(["repletion", "eclampsia"]))
def test_simulate_refuses_or_returns_finite_numbers(p: dict[str, Any], ds: list[Any], horizon: float | None,
                                                    context: str) -> None:
    _simulate_check(p, ds, horizon, context)


COMPUTED: list[bool] = []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(clinical, clinical_doses, _maybe(st.floats(1.0, 200.0)), st.sampled_from(["repletion", "eclampsia"]))
def test_clinical_inputs_give_finite_numbers(p: dict[str, Any], ds: list[Any], horizon: float | None,
                                             context: str) -> None:
    COMPUTED.append(_simulate_check(p, ds, horizon, context))


def test_the_clinical_property_test_computed_most_of_its_draws() -> None:
    # guards the property above against a strategy that only ever exercises refusals
    test_clinical_inputs_give_finite_numbers()
    assert len(COMPUTED) >= 100 and np.mean(COMPUTED) > 0.5, (len(COMPUTED), np.mean(COMPUTED))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(patients, clinical), st.one_of(doses, clinical_doses),
       st.lists(st.tuples(st.floats(-400.0, 400.0), st.one_of(st.floats(0.5, 12.0), st.floats(-1.0, 50.0), anything)),
                min_size=1, max_size=4))
def test_fit_refuses_or_returns_finite_numbers(p: dict[str, Any], ds: list[Any], levels: list[Any]) -> None:
    try:
        pop = _pop(p)
        reg = _regimen(ds)
        t = np.array([x for x, _ in levels], dtype=float)
        y = np.array([np.nan if v is None else v for _, v in levels], dtype=float)
        fit = fit_map(pop, reg, t, y)
        pred = posterior_predict(fit, reg, time_grid(reg, None), n=30, seed=2)
    except InputError as exc:
        assert exc.where and exc.problem
        return
    _finite(fit.eta, fit.cov, pred.typical_mg_dl, pred.lower_mg_dl, pred.upper_mg_dl)
    for e in fit.estimates().values():
        _finite(e["map"], e["lower"], e["upper"])
    for i in fit.inconsistent:
        _finite(i.z, i.fitted_mg_dl)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(patients, clinical), st.floats(-1.0, 12.0), st.floats(-1.0, 14.0), st.floats(-5.0, 400.0))
def test_find_dose_refuses_or_returns_finite_numbers(p: dict[str, Any], lo: float, hi: float, horizon: float) -> None:
    try:
        pop = _pop(p)
        d = find_dose(pop, lo, hi, horizon)
    except InputError as exc:
        assert exc.where and exc.problem
        return
    _finite(d.prediction.typical_mg_dl, d.prediction.peak_samples_mg_dl, d.time_in_range)
    _prob(d.p_peak_above_toxicity)
    _prob(d.p_target)
