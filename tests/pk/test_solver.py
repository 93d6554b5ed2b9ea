"""Closed-form solutions against a numerical ODE solution, and doses through the unit layer."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from mgaki.pk import Covariates, Regimen, concentrations, dose_mmol, loading_maintenance, population, repeated
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


@pytest.mark.parametrize("model", ["ucsf_2002_2cpt", "salinger_2013_1cpt"])
def test_analytic_matches_ode_for_load_maintenance_and_repeats(model: str) -> None:
    pop = population(model, Covariates(weight_kg=82, crcl_ml_min=45), baseline_mg_dl=1.5)
    reg = loading_maintenance(4, 1 / 3, 1, 12) + repeated(2, "g", 8, 3, over_h=1.0, start_h=14)
    times = np.linspace(0, 40, 321)
    analytic = concentrations(pop, reg, times, np.zeros(pop.n_eta))
    eta = np.zeros(pop.n_eta)
    p = {k: float(v) for k, v in pop.params(eta).items()}
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


def test_renal_and_weight_scaling_follow_pk_yaml() -> None:
    ref = population("salinger_2013_1cpt", Covariates(weight_kg=70, crcl_ml_min=100))
    half = population("salinger_2013_1cpt", Covariates(weight_kg=70, crcl_ml_min=50))
    capped = population("salinger_2013_1cpt", Covariates(weight_kg=70, crcl_ml_min=400))
    heavy = population("salinger_2013_1cpt", Covariates(weight_kg=110, crcl_ml_min=100))
    assert ref.typical[0] == pytest.approx(4.81)
    assert half.typical[0] == pytest.approx(4.81 / 2)
    assert capped.typical[0] == pytest.approx(4.81 * 1.5)  # CrCl capped at 150 mL/min
    # Salinger 2013 Table 2: V x (WT/55)^0.692, no weight effect on CL
    assert heavy.typical[1] == pytest.approx(15.6 * 2 ** 0.692)
    assert heavy.typical[0] == pytest.approx(4.81)
    assert population("salinger_2013_1cpt", Covariates(weight_kg=55)).typical[1] == pytest.approx(15.6)
    # the design allometry of the UCSF model (no published weight covariate): CL, Q ^0.75, volumes ^1
    ucsf = population("ucsf_2002_2cpt", Covariates(weight_kg=140, crcl_ml_min=100))
    np.testing.assert_allclose(ucsf.typical, [5.0 * 2 ** 0.75, 24.0 * 2, 5.6 * 2 ** 0.75, 25.0 * 2])
    assert "no CrCl" in " ".join(population("salinger_2013_1cpt").notes)
