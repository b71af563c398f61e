"""Element-wise functions numpy lacks (erf, for the exact GELU), does in several passes, or
runs on one thread (a sum of two arrays)."""

from __future__ import annotations

import math

import numba
from numba import prange


@numba.njit(cache=True)
def erf_into(x, out):
    """out[i] = erf(x[i]) over flat contiguous arrays (float32 or float64)."""
    for i in range(x.size):
        out[i] = math.erf(x[i])


@numba.njit(cache=True, parallel=True)
def relu_into(x, out):
    """out[i] = max(x[i], 0) over flat contiguous arrays, over the threads: bitwise
    np.maximum(x, 0) (-0.0 gives +0.0, NaN stays NaN), in one pass into an array the caller
    keeps (numpy allocates its result: 8 MB a layer on resnet20, page faults each step)."""
    for i in prange(x.size):
        v = x[i]
        out[i] = v if v > 0 or v != v else 0


@numba.njit(cache=True, parallel=True)
def relu_backward_into(dy, y, out):
    """out[i] = dy[i] where y[i] > 0, else 0, over flat contiguous arrays: relu's backward from
    its output y (y > 0 exactly where its input is), in one pass and no temporary."""
    for i in prange(dy.size):
        out[i] = dy[i] if y[i] > 0 else 0


@numba.njit(cache=True, parallel=True)
def add_into(a, b, out):
    """out[i] = a[i] + b[i] over flat contiguous arrays of one dtype, over the threads (numpy's
    add runs on one: 1.1 ms for resnet20's 8 MB sums); out may be a (in place)."""
    for i in prange(a.size):
        out[i] = a[i] + b[i]
