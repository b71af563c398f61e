"""BatchNormalization over the last axis of a (rows, channels) view: statistics, normalise,
and the backward pass, each one or two sweeps over memory instead of numpy's many.

Per-channel sums use float64 accumulators and a fixed number of row chunks, reduced in chunk
order: race-free under prange and bitwise reproducible whatever the thread count.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

_CHUNKS = 16


@numba.njit(cache=True, parallel=True)
def _column_sums(a, b, use_b):
    """Per-column sums of a, and of a*b when use_b (fixed-order chunked reduction)."""
    m, c = a.shape
    chunks = max(1, min(_CHUNKS, m))
    part_a = np.zeros((chunks, c))
    part_ab = np.zeros((chunks, c))
    for k in prange(chunks):
        for r in range(k * m // chunks, (k + 1) * m // chunks):
            ra = a[r]
            pa = part_a[k]
            if use_b:
                rb = b[r]
                pab = part_ab[k]
                for j in range(c):
                    pa[j] += ra[j]
                    pab[j] += ra[j] * rb[j]
            else:
                for j in range(c):
                    pa[j] += ra[j]
    sa = part_a[0].copy()
    sab = part_ab[0].copy()
    for k in range(1, chunks):
        sa += part_a[k]
        sab += part_ab[k]
    return sa, sab


@numba.njit(cache=True, parallel=True)
def _centered_square_sums(x, mean):
    m, c = x.shape
    chunks = max(1, min(_CHUNKS, m))
    part = np.zeros((chunks, c))
    for k in prange(chunks):
        p = part[k]
        for r in range(k * m // chunks, (k + 1) * m // chunks):
            row = x[r]
            for j in range(c):
                d = row[j] - mean[j]
                p[j] += d * d
    s = part[0].copy()
    for k in range(1, chunks):
        s += part[k]
    return s


@numba.njit(cache=True)
def batch_moments(x):
    """Mean and biased variance of each column of x (rows, channels), in float64.

    Two passes (mean, then squared deviations) for accuracy, as numpy's var does."""
    m = x.shape[0]
    s, _ = _column_sums(x, x, False)
    mean = s / m
    var = _centered_square_sums(x, mean) / m
    return mean, var


@numba.njit(cache=True, parallel=True)
def normalize(x, mean, inv, gamma, beta, xhat, y):
    """xhat = (x - mean) * inv; y = xhat * gamma + beta (columns broadcast over rows)."""
    m, c = x.shape
    for r in prange(m):
        xr, hr, yr = x[r], xhat[r], y[r]
        for j in range(c):
            h = (xr[j] - mean[j]) * inv[j]
            hr[j] = h
            yr[j] = h * gamma[j] + beta[j]


@numba.njit(cache=True)
def backward_sums(dy, xhat):
    """Per-channel sum(dy) and sum(dy * xhat): beta's and gamma's gradients."""
    return _column_sums(dy, xhat, True)


@numba.njit(cache=True, parallel=True)
def backward_input(dy, xhat, scale, mean_dy, mean_dy_xhat, dx):
    """dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)), scale = gamma * inv per channel."""
    m, c = dy.shape
    for r in prange(m):
        dr, hr, out = dy[r], xhat[r], dx[r]
        for j in range(c):
            out[j] = scale[j] * (dr[j] - mean_dy[j] - hr[j] * mean_dy_xhat[j])
