"""The weighted Aalen-Johansen estimator and the E-value against independent references.

Reference: lifelines' AalenJohansenFitter (unweighted, untied times: lifelines jitters ties); weights
are checked by replicating rows (a weight of 3 = three copies), time-varying weights by splitting the
same data at the break.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from lifelines import AalenJohansenFitter

from mgaki.research.survival import cumulative_incidence, e_value, risk_at


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.exponential(10.0, n)
    cause = rng.choice([0, 1, 2], size=n, p=[0.3, 0.45, 0.25])
    return t, cause


@pytest.mark.parametrize("seed", [1, 2])
def test_unweighted_cif_equals_lifelines(seed: int) -> None:
    t, c = _data(300, seed)
    times, cif = cumulative_incidence(t, c)
    for k in (1, 2):
        ajf = AalenJohansenFitter(calculate_variance=False).fit(t, c, event_of_interest=k)
        ref = ajf.cumulative_density_.iloc[:, 0]
        for q in (2.0, 5.0, 10.0, 20.0):
            assert risk_at(times, cif[k], q) == pytest.approx(float(ref[ref.index <= q].iloc[-1]), abs=1e-12)


def test_integer_weights_equal_replicated_rows_and_ties_are_handled() -> None:
    t, c = _data(200, 3)
    t = np.round(t)  # ties on purpose: events and censorings at the same time
    w = np.random.default_rng(4).integers(1, 4, t.size).astype(float)
    times, cif = cumulative_incidence(t, c, weights=w)
    rt, rc = np.repeat(t, w.astype(int)), np.repeat(c, w.astype(int))
    times2, cif2 = cumulative_incidence(rt, rc)
    assert np.array_equal(times, times2)
    for k in (1, 2):
        assert np.allclose(cif[k], cif2[k], atol=1e-13)
    # the causes add up to 1 - Kaplan-Meier survival from any event, at every time
    km_t, km = cumulative_incidence(t, np.where(c > 0, 1, 0), (1,), weights=w)
    assert np.array_equal(km_t, times) and np.allclose(cif[1] + cif[2], km[1], atol=1e-13)


def test_time_varying_weights_switch_at_the_break() -> None:
    t, c = _data(250, 5)
    w0, w1 = np.ones(t.size), np.random.default_rng(6).uniform(0.5, 3.0, t.size)
    times, cif = cumulative_incidence(t, c, weights=np.column_stack([w0, w1]), breaks=(8.0,))
    # before the break only w0 counts: the estimate equals the unweighted one there
    _u_times, u_cif = cumulative_incidence(t, c)
    early = times <= 8.0
    assert np.allclose(cif[1][early], u_cif[1][early], atol=1e-13)
    # a constant pair of columns is the single-weight estimator
    _times2, cif2 = cumulative_incidence(t, c, weights=np.column_stack([w1, w1]), breaks=(8.0,))
    _times3, cif3 = cumulative_incidence(t, c, weights=w1)
    assert np.allclose(cif2[1], cif3[1], atol=1e-13)
    with pytest.raises(ValueError, match="breaks"):
        cumulative_incidence(t, c, weights=np.column_stack([w0, w1]))


def test_e_value_matches_vanderweele_ding() -> None:
    # VanderWeele & Ding, Ann Intern Med 2017: RR 3.9 -> E-value 7.26; protective RRs are inverted
    assert e_value(3.9) == pytest.approx(3.9 + math.sqrt(3.9 * 2.9))
    assert e_value(3.9) == pytest.approx(7.26, abs=0.005)
    assert e_value(1 / 3.9) == pytest.approx(e_value(3.9))
    assert e_value(1.0) == 1.0 and math.isnan(e_value(0.0))
