"""Linear compartment models: serum Mg from any mix of pushes, zero-order infusions and IM injections.

Two exact solvers share one convention (amounts in mmol, volumes in L, rates in 1/h):

* ``dose_response``: the time-invariant IV case in closed form. The central-compartment impulse
  response of a linear 1- or 2-compartment model is a sum of exponentials, c(t) = sum_j A_j exp(-l_j t);
  a zero-order infusion of rate R and duration d contributes R sum_j A_j d_eff exprel-weighted terms and
  doses superpose. Written with ``exprel`` so that a zero elimination rate (no clearance) stays finite.
* ``piecewise_response``: parameters that change over time (clearance following a creatinine course,
  dialysis sessions) and IM injections (first-order absorption from a depot). Between consecutive
  events (dose starts and ends, parameter changes, output times) the system x' = A x + u is constant
  and is advanced exactly with the eigen-decomposition of A: x(t+h) = V (e^{lh} V^-1 x + h exprel(lh)
  V^-1 u). The eigenvalues of a mammillary compartment matrix are real and non-positive.

Both are vectorised over parameter samples and exact at any time (no step size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import exprel

__all__ = ["Segment", "dose_response", "exponentials", "piecewise_response"]

Array = npt.NDArray[np.float64]


def exponentials(params: dict[str, Array]) -> tuple[Array, Array]:
    """(coefficients 1/L, rates 1/h), each of shape (..., m), of the unit-amount impulse response."""
    cl, v1 = np.asarray(params["cl"], dtype=np.float64), np.asarray(params["v1"], dtype=np.float64)
    if "q" not in params:
        return (1.0 / v1)[..., None], (cl / v1)[..., None]
    q, v2 = np.asarray(params["q"], dtype=np.float64), np.asarray(params["v2"], dtype=np.float64)
    k10, k12, k21 = cl / v1, q / v1, q / v2
    s = k10 + k12 + k21
    disc = np.sqrt(np.maximum(s * s - 4.0 * k10 * k21, 0.0))
    alpha, beta = (s + disc) / 2.0, (s - disc) / 2.0
    a = (alpha - k21) / (v1 * (alpha - beta))
    b = (k21 - beta) / (v1 * (alpha - beta))
    return np.stack([a, b], axis=-1), np.stack([alpha, beta], axis=-1)


def dose_response(coef: Array, rate: Array, times_h: Array, start_h: Array, amount: Array,
                  duration_h: Array) -> Array:
    """Exogenous concentration (mmol/L) at ``times_h`` for the IV doses given, shape (..., T).

    ``coef``/``rate``: (..., m); doses: 1-d arrays of start (h), amount (mmol), duration (h; 0 = push).
    ``amount`` may also be (..., k) to scale doses per sample. Loops over doses (a regimen has a handful),
    vectorised over samples and times.
    """
    t = np.asarray(times_h, dtype=np.float64)
    c = coef[..., None]  # (..., m, 1)
    k = rate[..., None]
    amt = np.asarray(amount, dtype=np.float64)
    out = np.zeros(coef.shape[:-1] + t.shape)
    starts, durs = np.atleast_1d(start_h), np.atleast_1d(duration_h)
    for i, (s, d) in enumerate(zip(starts, durs, strict=True)):
        a = amt[..., i][..., None] if amt.ndim > 1 else amt.reshape(-1)[i]
        tau = t - s
        if d <= 0.0:
            after = np.where(tau >= 0.0, np.exp(-k * np.maximum(tau, 0.0)), 0.0)
            out += a * np.sum(c * after, axis=-2)
            continue
        during = np.clip(tau, 0.0, d)
        post = np.maximum(tau - d, 0.0)
        # c/k (1 - e^{-k u}) written as c u exprel(-k u): finite when k = 0 (no elimination)
        resp = c * during * exprel(-k * during) * np.exp(-k * post)
        out += (a / d) * np.sum(resp, axis=-2)
    return out


@dataclass(frozen=True)
class Segment:
    """From ``start_h`` on (until the next segment): renal clearance x ``cl_factor``, plus dialysis if on."""

    start_h: float
    cl_factor: float = 1.0
    dialysis: bool = False


def _matrix(cl: Array, v1: Array, q: Array | None, v2: Array | None, ka: Array | None) -> Array:
    """Rate matrix (n, s, s) over states [depot?, central, peripheral?] (amounts)."""
    n = cl.shape[0]
    s = 1 + (q is not None) + (ka is not None)
    a = np.zeros((n, s, s))
    c = 1 if ka is not None else 0
    a[:, c, c] = -cl / v1
    if q is not None and v2 is not None:
        p = c + 1
        a[:, c, c] -= q / v1
        a[:, c, p] = q / v2
        a[:, p, c] = q / v1
        a[:, p, p] = -q / v2
    if ka is not None:
        a[:, 0, 0] = -ka
        a[:, c, 0] = ka
    return a


def _eig(a: Array) -> tuple[Array, Array, Array]:
    """Real eigen-decomposition of compartment matrices: (eigenvalues (n, s), V (n, s, s), V^-1)."""
    lam, vec = np.linalg.eig(a)
    lam, vec = np.real(lam), np.real(vec)
    return lam, vec, np.linalg.inv(vec)


def piecewise_response(params: dict[str, Array], segments: tuple[Segment, ...], times_h: Array,
                       start_h: Array, amount: Array, duration_h: Array, im: npt.NDArray[np.bool_]) -> Array:
    """Exogenous central concentration (mmol/L), shape (n, T), with time-varying clearance and IM doses.

    ``params``: arrays of shape (n,): cl (renal, before the segment factor), v1, optional q, v2, ka
    (IM absorption), f_im (IM bioavailability), cld (dialysis clearance while a segment has dialysis on).
    ``amount``: (k,) or (n, k) mmol per dose; ``im``: (k,) bool (IM doses are injections into the depot).
    """
    cl = np.atleast_1d(np.asarray(params["cl"], dtype=np.float64))
    n = cl.shape[0]
    v1 = np.broadcast_to(np.asarray(params["v1"], dtype=np.float64), (n,))
    q = np.broadcast_to(np.asarray(params["q"], dtype=np.float64), (n,)) if "q" in params else None
    v2 = np.broadcast_to(np.asarray(params["v2"], dtype=np.float64), (n,)) if "v2" in params else None
    im = np.asarray(im, dtype=bool)
    has_im = bool(im.any())
    ka = None
    if has_im:
        ka = np.broadcast_to(np.asarray(params["ka"], dtype=np.float64), (n,))
    cld = np.broadcast_to(np.asarray(params.get("cld", 0.0), dtype=np.float64), (n,))
    f_im = np.broadcast_to(np.asarray(params.get("f_im", 1.0), dtype=np.float64), (n,))
    amt = np.broadcast_to(np.asarray(amount, dtype=np.float64), (n, len(start_h))) if len(start_h) else \
        np.zeros((n, 0))
    t_out = np.asarray(times_h, dtype=np.float64)
    starts, durs = np.asarray(start_h, dtype=np.float64), np.asarray(duration_h, dtype=np.float64)
    segs = sorted(segments, key=lambda s: s.start_h) or [Segment(0.0)]
    c_idx = 1 if has_im else 0
    s_dim = 1 + (q is not None) + has_im

    decomp: dict[tuple[float, bool], tuple[Array, Array, Array]] = {}

    def system(seg: Segment) -> tuple[Array, Array, Array]:
        key = (seg.cl_factor, seg.dialysis)
        if key not in decomp:
            total = cl * seg.cl_factor + (cld if seg.dialysis else 0.0)
            k_abs = ka
            if k_abs is not None:  # a repeated eigenvalue makes V singular: nudge ka off the disposition rates
                disp = np.linalg.eigvals(_matrix(total, v1, q, v2, None)).real
                close = np.any(np.abs(disp + k_abs[:, None]) <= 1e-6 * np.maximum(k_abs[:, None], 1e-3), axis=1)
                k_abs = np.where(close, k_abs * (1.0 + 1e-4), k_abs)
            decomp[key] = _eig(_matrix(total, v1, q, v2, k_abs))
        return decomp[key]

    # breakpoints: where the input or the system changes; output times are evaluated in between, at once
    breaks = np.unique(np.concatenate([[min(0.0, float(t_out.min(initial=0.0)))], starts, starts + durs,
                                       [s.start_h for s in segs]]))
    x = np.zeros((n, s_dim))
    out = np.zeros((n, t_out.size))
    seg_starts = np.array([s.start_h for s in segs])
    for i, t0 in enumerate(breaks):
        # instantaneous doses at t0: pushes into central, IM injections into the depot
        for j in np.flatnonzero((starts == t0) & (durs <= 0.0)):
            if im[j]:
                x[:, 0] += amt[:, j] * f_im
            else:
                x[:, c_idx] += amt[:, j]
        t1 = float(breaks[i + 1]) if i + 1 < len(breaks) else np.inf
        seg = segs[max(int(np.searchsorted(seg_starts, t0, side="right")) - 1, 0)]
        lam, vec, inv = system(seg)
        u = np.zeros((n, s_dim))
        for j in np.flatnonzero((starts <= t0) & (starts + durs > t0) & (durs > 0.0)):
            u[:, c_idx] += amt[:, j] / durs[j]
        w0 = np.einsum("nij,nj->ni", inv, x)
        wu = np.einsum("nij,nj->ni", inv, u)
        sel = np.flatnonzero((t_out >= t0) & (t_out < t1)) if i + 1 < len(breaks) else np.flatnonzero(t_out >= t0)
        if sel.size:
            h = (t_out[sel] - t0)[None, :, None]  # (1, k, 1)
            w = np.exp(lam[:, None, :] * h) * w0[:, None, :] + h * exprel(lam[:, None, :] * h) * wu[:, None, :]
            out[:, sel] = np.einsum("nj,nkj->nk", vec[:, c_idx, :], w) / v1[:, None]
        if i + 1 == len(breaks):
            break
        h1 = t1 - float(t0)
        w = np.exp(lam * h1) * w0 + h1 * exprel(lam * h1) * wu
        x = np.einsum("nij,nj->ni", vec, w)
    return out
