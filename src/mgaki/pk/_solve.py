"""Closed-form linear compartment models: serum Mg from any mix of boluses and zero-order infusions.

The central-compartment impulse response of a linear 1- or 2-compartment model is a sum of
exponentials, c(t) = sum_j A_j exp(-l_j t); a zero-order infusion of rate R and duration d
contributes R sum_j A_j/l_j (1 - exp(-l_j min(tau, d))) exp(-l_j max(tau - d, 0)) and
doses superpose. Exact at any time (no step size), vectorised over parameter samples.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["dose_response", "exponentials"]

Array = npt.NDArray[np.float64]


def exponentials(params: dict[str, Array]) -> tuple[Array, Array]:
    """(coefficients 1/L, rates 1/h), each of shape (..., m), of the unit-amount impulse response."""
    cl, v1 = np.asarray(params["cl"], dtype=np.float64), np.asarray(params["v1"], dtype=np.float64)
    if "q" not in params:
        return (1.0 / v1)[..., None], (cl / v1)[..., None]
    q, v2 = np.asarray(params["q"], dtype=np.float64), np.asarray(params["v2"], dtype=np.float64)
    k10, k12, k21 = cl / v1, q / v1, q / v2
    s = k10 + k12 + k21
    disc = np.sqrt(s * s - 4.0 * k10 * k21)
    alpha, beta = (s + disc) / 2.0, (s - disc) / 2.0
    a = (alpha - k21) / (v1 * (alpha - beta))
    b = (k21 - beta) / (v1 * (alpha - beta))
    return np.stack([a, b], axis=-1), np.stack([alpha, beta], axis=-1)


def dose_response(coef: Array, rate: Array, times_h: Array, start_h: Array, amount: Array,
                  duration_h: Array) -> Array:
    """Exogenous concentration (mmol/L) at ``times_h`` for the doses given, shape (..., T).

    ``coef``/``rate``: (..., m); doses: 1-d arrays of start (h), amount (mmol), duration (h; 0 = bolus).
    Loops over doses (a regimen has a handful), vectorised over samples and times.
    """
    t = np.asarray(times_h, dtype=np.float64)
    c = coef[..., None]  # (..., m, 1)
    k = rate[..., None]
    out = np.zeros(coef.shape[:-1] + t.shape)
    for s, a, d in zip(np.atleast_1d(start_h), np.atleast_1d(amount), np.atleast_1d(duration_h), strict=True):
        tau = t - s
        if d <= 0.0:
            after = np.where(tau >= 0.0, np.exp(-k * np.maximum(tau, 0.0)), 0.0)
            out += a * np.sum(c * after, axis=-2)
            continue
        during = np.clip(tau, 0.0, d)
        post = np.maximum(tau - d, 0.0)
        resp = c / k * (-np.expm1(-k * during)) * np.exp(-k * post)
        out += (a / d) * np.sum(resp, axis=-2)
    return out
