"""Element-wise special functions numpy lacks (erf, for the exact GELU)."""

from __future__ import annotations

import math

import numba


@numba.njit(cache=True)
def erf_into(x, out):
    """out[i] = erf(x[i]) over flat contiguous arrays (float32 or float64)."""
    for i in range(x.size):
        out[i] = math.erf(x[i])
