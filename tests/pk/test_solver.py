"""Closed-form solutions against a numerical ODE solution, and doses through the unit layer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from itertools import pairwise

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from mgaki.errors import OutsideModelError
from mgaki.pk import (
    Covariates,
    Dialysis,
    KidneyCourse,
    Regimen,
    Segment,
    concentrations,
    dose_mmol,
    loading_maintenance,
    population,
    repeated,
)
from mgaki.units import salt_amounts


def _ode(params: dict[str, float], regimen: Regimen, times: np.ndarray, baseline: float) -> np.ndarray:
    """Reference: integrate dA/dt with scipy (boluses as short 1e-4 h infusions are avoided: only infusions)."""
    s, a, d = regimen.arrays()

    def rate_in(t: float) -> float:
        return float(np.sum(np.where((t >= s) & (t < s + d), a / d, 0.0)))

    cl, v1 = params["cl"], params["v1"]
    q, v2 = params.get("q", 0.0), params.get("v2", 1.0)

    def rhs(t: float, y: np.ndarray) -> list[float]:
        a1, a2 = y
        return [rate_in(t) - cl / v1 * a1 - q / v1 * a1 + q / v2 * a2, q / v1 * a1 - q / v2 * a2]

    breaks = np.unique(np.concatenate([[0.0], s, s + d, [times.max()]]))
    y = np.zeros(2)
    out = np.zeros_like(times)
    for lo, hi in pairwise(breaks):
        sel = (times >= lo) & (times <= hi)
        sol = solve_ivp(rhs, (lo, hi), y, t_eval=times[sel], rtol=1e-10, atol=1e-12, method="LSODA")
        out[sel] = sol.y[0] / v1
        y = solve_ivp(rhs, (lo, hi), y, rtol=1e-10, atol=1e-12, method="LSODA").y[:, -1]
    return baseline + out


@pytest.mark.parametrize("model", ["ucsf_2002_2cpt", "salinger_2013_1cpt", "du_2019_2cpt"])
def test_analytic_matches_ode_for_load_maintenance_and_repeats(model: str) -> None:
    pop = population(model, Covariates(weight_kg=82), baseline_mg_dl=1.5)
    reg = loading_maintenance(4, 1 / 3, 1, 12) + repeated(2, "g", 8, 3, over_h=1.0, start_h=14)
    times = np.linspace(0, 40, 321)
    analytic = concentrations(pop, reg, times, np.zeros(pop.n_eta))
    eta = np.zeros(pop.n_eta)
    p = {k: float(v) for k, v in pop.params(eta).items() if k in ("cl", "v1", "q", "v2", "baseline")}
    ode = _ode(p, reg, times, p["baseline"])
    np.testing.assert_allclose(analytic, ode, rtol=1e-6, atol=1e-8)
    assert analytic.max() > p["baseline"] + 0.5  # the doses do something


def test_bolus_is_the_limit_of_a_short_infusion() -> None:
    pop = population("ucsf_2002_2cpt")
    t = np.array([1.0, 3.0, 10.0])
    push = concentrations(pop, Regimen.dose(2, "g", 0.5, 0.0), t, np.zeros(pop.n_eta))
    short = concentrations(pop, Regimen.dose(2, "g", 0.5, 1e-6), t, np.zeros(pop.n_eta))
    np.testing.assert_allclose(push, short, rtol=1e-5)


def test_vectorised_over_samples_equals_one_at_a_time() -> None:
    pop = population("ucsf_2002_2cpt")
    etas = np.random.default_rng(3).standard_normal((50, pop.n_eta)) * pop.omega
    reg = loading_maintenance(4, 0.25, 1, 24)
    t = np.linspace(0, 30, 61)
    many = concentrations(pop, reg, t, etas)
    assert many.shape == (50, 61)
    for i in (0, 17, 49):
        np.testing.assert_allclose(many[i], concentrations(pop, reg, t, etas[i]), rtol=1e-12)


def test_doses_in_g_mmol_meq_are_the_same_dose() -> None:
    g = dose_mmol(2.0, "g")
    assert g == pytest.approx(2000 / 246.47, rel=1e-9)  # 8.11 mmol in 2 g MgSO4.7H2O
    assert dose_mmol(16, "meq") == pytest.approx(8.0)
    assert dose_mmol(g, "mmol") == pytest.approx(g)
    assert salt_amounts(dose_mmol(16, "meq"), "mmol")["g_mgso4"] == pytest.approx(1.97, abs=0.005)
    pop = population("salinger_2013_1cpt")
    t = np.array([2.0])
    a = concentrations(pop, Regimen.dose(16, "meq", 0, 1), t, np.zeros(pop.n_eta))
    b = concentrations(pop, Regimen.dose(8, "mmol", 0, 1), t, np.zeros(pop.n_eta))
    np.testing.assert_allclose(a, b)


def test_each_model_applies_its_own_published_covariates() -> None:
    # Du 2019: CL x (SCr/0.8)^-0.731 x (WT/85)^0.75; Q x (WT/85)^0.75; Vc, Vp x WT/85
    du = population("du_2019_2cpt", Covariates(weight_kg=105, creatinine_mg_dl=1.2))
    np.testing.assert_allclose(du.typical[:4], [3.72 * 1.5 ** -0.731 * (105 / 85) ** 0.75, 15.4 * 105 / 85,
                                                3.66 * (105 / 85) ** 0.75, 17.0 * 105 / 85])
    # the case: CrCl/100 scaling gave 24% more clearance than Du at creatinine 1.2; Du's own covariate
    cl_12 = population("du_2019_2cpt", Covariates(creatinine_mg_dl=1.2)).typical[0]
    assert cl_12 == pytest.approx(3.72 * 1.5 ** -0.731)
    # Salinger 2013: V x (WT/55)^0.692, CL x (0.8/SCr)^1.48, no weight on CL
    sal = population("salinger_2013_1cpt", Covariates(weight_kg=90, creatinine_mg_dl=1.0))
    np.testing.assert_allclose(sal.typical[:2], [4.81 * (0.8 / 1.0) ** 1.48, 15.6 * (90 / 55) ** 0.692])
    # UCSF 2002: no covariate in its publication, so none is applied
    ucsf = population("ucsf_2002_2cpt", Covariates(weight_kg=140, creatinine_mg_dl=0.7))
    np.testing.assert_allclose(ucsf.typical[:4], [5.0, 24.0, 5.6, 25.0])
    # Easterling (creatinine in umol/L, linear) through the unit layer: 0.75 mg/dL = 66.3 umol/L
    est = population("easterling_2018_1cpt", Covariates(weight_kg=90.54, creatinine_mg_dl=66.3 / 88.4),
                     allow_unapplied=True)
    np.testing.assert_allclose(est.typical[:2], [3.378, 65.3], rtol=1e-3)


def test_du_variability_is_the_published_omega2_and_the_antepartum_term_only_in_pregnancy() -> None:
    preg = population("du_2019_2cpt", Covariates(weight_kg=85, creatinine_mg_dl=0.8, age_years=30, pregnant=True))
    other = population("du_2019_2cpt", Covariates(weight_kg=85, creatinine_mg_dl=0.8, age_years=30, pregnant=False))
    assert preg.omega[0] == pytest.approx(np.sqrt(0.0749 + 0.056))  # IIV + antepartum IOV
    assert other.omega[0] == pytest.approx(np.sqrt(0.0749))
    assert preg.omega[1] == pytest.approx(np.sqrt(0.241))
    assert preg.omega[preg.names.index("f")] == 0.0  # inside its population: nothing added
    assert other.omega[other.names.index("f")] > 0.0  # not pregnant: population transfer uncertainty
    assert preg.residual_scale == "change_from_baseline"
    assert preg.add_sd_mmol_l == pytest.approx(4.97 / 24.305, rel=1e-3)


def test_piecewise_solver_matches_the_closed_form_when_nothing_changes() -> None:
    pop = population("du_2019_2cpt", Covariates(weight_kg=70, creatinine_mg_dl=1.0, pregnant=True))
    reg = loading_maintenance(4, 1 / 3, 1, 24) + repeated(2, "g", 8, 3, over_h=1.0, start_h=14) + \
        Regimen.dose(1, "g", 30, 0.0)
    t = np.linspace(0, 40, 161)
    etas = np.random.default_rng(1).standard_normal((200, pop.n_eta)) * pop.omega
    closed = concentrations(pop, reg, t, etas)
    split = dataclasses.replace(pop, segments=(Segment(0.0, 1.0), Segment(7.3, 1.0)))
    assert split.time_varying
    np.testing.assert_allclose(concentrations(split, reg, t, etas), closed, rtol=1e-9, atol=1e-12)


def _ode_varying(p: dict[str, float], reg: Regimen, times: np.ndarray, factor: Callable[[float], float],
                 extra: Callable[[float], float]) -> np.ndarray:
    s, a, d = reg.arrays()

    def rhs(t: float, y: np.ndarray) -> list[float]:
        a1, a2 = y
        inflow = float(np.sum(np.where((t >= s) & (t < s + d), a / np.where(d > 0, d, 1), 0.0)))
        cl = p["cl"] * factor(t) + extra(t)
        return [inflow - cl / p["v1"] * a1 - p["q"] / p["v1"] * a1 + p["q"] / p["v2"] * a2,
                p["q"] / p["v1"] * a1 - p["q"] / p["v2"] * a2]

    breaks = sorted({0.0, *s.tolist(), *(s + d).tolist(), 6.0, 10.0, 14.0, 30.0, float(times.max())})
    y = np.zeros(2)
    out = np.zeros_like(times)
    for lo, hi in pairwise(breaks):
        sel = (times >= lo) & (times <= hi)
        sol = solve_ivp(rhs, (lo, hi), y, t_eval=times[sel], rtol=1e-10, atol=1e-12, method="LSODA")
        out[sel] = sol.y[0] / p["v1"]
        y = solve_ivp(rhs, (lo, hi), y, rtol=1e-10, atol=1e-12, method="LSODA").y[:, -1]
    return out


def test_time_varying_clearance_and_dialysis_match_an_ode() -> None:
    course = KidneyCourse((0.0, 6.0, 30.0), (1.0, 1.8, 1.2))
    pop = population("du_2019_2cpt", Covariates(weight_kg=80, kidney_course=course, pregnant=True))
    reg = loading_maintenance(4, 1 / 3, 1, 20)
    times = np.linspace(0, 40, 81)
    p = {k: float(v) for k, v in pop.params(np.zeros(pop.n_eta)).items()}

    def factor(t: float) -> float:
        x = 1.0 if t < 6 else 1.8 if t < 30 else 1.2
        return float((x / 1.0) ** -0.731)

    exo = concentrations(pop, reg, times, np.zeros(pop.n_eta)) - pop.baseline_mmol_l
    np.testing.assert_allclose(exo, _ode_varying(p, reg, times, factor, lambda t: 0.0), rtol=1e-6, atol=1e-8)
    hd = population("du_2019_2cpt", Covariates(weight_kg=80, dialysis=Dialysis("hd", ((10.0, 4.0),)), pregnant=True))
    ph = {k: float(v) for k, v in hd.params(np.zeros(hd.n_eta)).items()}
    exo = concentrations(hd, reg, times, np.zeros(hd.n_eta)) - hd.baseline_mmol_l
    ode = _ode_varying(ph, reg, times, lambda t: 0.0, lambda t: ph["cld"] if 10 <= t < 14 else 0.0)
    np.testing.assert_allclose(exo, ode, rtol=1e-6, atol=1e-8)


def test_haemodialysis_removes_the_published_share_of_an_equilibrated_excess() -> None:
    # Leenders 2018: +0.10 mmol/L before a session -> +0.03 after (share left 0.30)
    hd = population("du_2019_2cpt", Covariates(weight_kg=70, dialysis=Dialysis("hd", ((48.0, 4.0),)), pregnant=True),
                    baseline_mg_dl=1.8)
    reg = Regimen.dose(2, "g", 0, 1)
    eta = np.zeros(hd.n_eta)
    before, after = concentrations(hd, reg, np.array([48.0, 52.0]), eta) - hd.baseline_mmol_l
    assert after / before == pytest.approx(0.30, abs=0.03)  # distribution had equilibrated by 48 h
    crrt = population("du_2019_2cpt", Covariates(weight_kg=70, dialysis=Dialysis("crrt", effluent_l_per_h=3.0)))
    assert crrt.typical[crrt.names.index("cld")] == pytest.approx(3.0)  # effluent x sieving 1.0


def test_an_im_dose_matches_first_order_absorption() -> None:
    pop = population("salinger_2013_1cpt", Covariates(weight_kg=55, creatinine_mg_dl=0.8), baseline_mg_dl=2.0)
    reg = Regimen.dose(5, "g", 0.0, route="im")
    t = np.array([1.0, 4.0, 12.0])
    exo = concentrations(pop, reg, t, np.zeros(pop.n_eta)) - pop.baseline_mmol_l
    ka, f, k, v = 0.317, 0.862, 4.81 / 15.6, 15.6
    dose = 5000 / 246.47
    expected = f * dose * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))
    np.testing.assert_allclose(exo, expected, rtol=1e-9)
    with pytest.raises(OutsideModelError):
        concentrations(population("ucsf_2002_2cpt"), reg, t, np.zeros(population("ucsf_2002_2cpt").n_eta))
