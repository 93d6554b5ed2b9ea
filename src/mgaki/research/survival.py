"""Cumulative incidence with competing risks (weighted Aalen-Johansen) and the E-value, in numpy.

Used by the competing-risk analysis of the study (AKI with death competing) and by the target-trial
emulation (weighted risks of the cloned arms). Weights may change over time, piecewise constant between
``breaks`` (the hours of a grace period, over which clone-censor-weighting censors).
tests/research/test_survival.py checks the unweighted estimator against lifelines' AalenJohansenFitter
and the weighted one against replicated rows.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

__all__ = ["cumulative_incidence", "e_value", "risk_at"]

F = NDArray[np.float64]
I = NDArray[np.int64]  # noqa: E741


def cumulative_incidence(time: F, cause: I, causes: tuple[int, ...] = (1, 2), weights: F | None = None,
                         breaks: F | tuple[float, ...] = ()) -> tuple[F, dict[int, F]]:
    """(distinct times, {cause: cumulative incidence at each time}) by the Aalen-Johansen estimator.

    ``cause`` 0 = censored; a subject is at risk at t when its time >= t (censored at t still at risk).
    ``weights``: one per subject, or one column per period when they change over time: column j holds
    at times in (breaks[j-1], breaks[j]] (column 0 up to breaks[0], the last one after the last break).
    """
    time = np.asarray(time, float)
    cause = np.asarray(cause, np.int64)
    w = np.ones((time.size, 1)) if weights is None else np.asarray(weights, float).reshape(time.size, -1)
    br = np.asarray(breaks, float)
    if w.shape[1] != br.size + 1:
        raise ValueError(f"{w.shape[1]} weight columns need {w.shape[1] - 1} breaks, got {br.size}")
    if time.size == 0:
        return np.zeros(0), {k: np.zeros(0) for k in causes}
    u, inv = np.unique(time, return_inverse=True)
    col = np.searchsorted(br, u, side="left")  # the weight column in force at each distinct time
    n = np.zeros(u.size)
    d = {k: np.zeros(u.size) for k in causes}
    for j in np.unique(col):
        m = col == j
        per = np.bincount(inv, w[:, j], u.size)
        n[m] = np.cumsum(per[::-1])[::-1][m]
        for k in causes:
            e = cause == k
            d[k][m] = np.bincount(inv[e], w[e, j], u.size)[m]
    with np.errstate(divide="ignore", invalid="ignore"):
        haz = {k: np.where(n > 0, d[k] / n, 0.0) for k in causes}
    total = sum(haz.values()) if haz else np.zeros(u.size)
    surv = np.cumprod(1.0 - np.asarray(total))
    before = np.r_[1.0, surv[:-1]]
    return u, {k: np.cumsum(before * haz[k]) for k in causes}


def risk_at(times: F, cif: F, t: float) -> float:
    """The cumulative incidence at time t (a step function: the last value at or before t, 0 before any)."""
    i = int(np.searchsorted(times, t, side="right"))
    return float(cif[i - 1]) if i > 0 else 0.0


def e_value(rr: float) -> float:
    """VanderWeele & Ding's E-value of a risk ratio (1 for RR = 1; a protective RR is inverted first)."""
    if not np.isfinite(rr) or rr <= 0:
        return float("nan")
    r = rr if rr >= 1 else 1.0 / rr
    return float(r + math.sqrt(r * (r - 1.0)))
