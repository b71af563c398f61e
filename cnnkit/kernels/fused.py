"""Kernels of the fused inference path (cnnkit.nn.inference): what inference can do in one
pass because nothing will call backward.

- max pooling without the argmax that training keeps for backward (an int64 array as large as
  the output, written and then thrown away);
- a per-channel scale and shift, optionally with relu: BatchNormalization with its moving
  statistics folded into two vectors, when it cannot be folded into the convolution before it;
- the sum of two arrays, optionally with relu: a residual block's Add and Activation.

prange over the batch (or the rows) in a fixed partition: every output value is computed by
the same operations in the same order whatever the thread count, so results are bitwise
reproducible. No fastmath.
"""

from __future__ import annotations

import numba
from numba import prange

_CHUNKS = 16  # fixed number of prange chunks (numba.get_num_threads() would defeat the cache)


@numba.njit(cache=True)
def _range(k, n, chunks):
    return (k * n) // chunks, ((k + 1) * n) // chunks


@numba.njit(cache=True)
def _maxpool_image(x, n, ph, pw, sh, sw, pt, pl, out):
    """out[n] = the max of each window of x[n] (cnnkit.kernels.pool.maxpool2d_forward's
    values: seeded with the first in-range position, strict '>', 0 for an empty window)."""
    h, wd, c_n = x.shape[1], x.shape[2], x.shape[3]
    oh_n, ow_n = out.shape[1], out.shape[2]
    for oh in range(oh_n):
        for ow in range(ow_n):
            o = out[n, oh, ow]
            first = True
            for i in range(ph):
                ih = oh * sh - pt + i
                if ih < 0 or ih >= h:
                    continue
                for j in range(pw):
                    iw = ow * sw - pl + j
                    if iw < 0 or iw >= wd:
                        continue
                    xr = x[n, ih, iw]
                    if first:
                        for c in range(c_n):
                            o[c] = xr[c]
                        first = False
                    else:
                        for c in range(c_n):  # a select, not a branch: vectorized
                            v, cur = xr[c], o[c]
                            o[c] = v if v > cur else cur
            if first:
                for c in range(c_n):
                    o[c] = 0


@numba.njit(cache=True, parallel=True)
def maxpool2d_infer(x, ph, pw, sh, sw, pt, pl, out):
    """Max pooling in inference: out only (no argmax), the batch split over the threads."""
    n_b = x.shape[0]
    chunks = max(1, min(_CHUNKS, n_b))
    for k in prange(chunks):
        n0, n1 = _range(k, n_b, chunks)
        for n in range(n0, n1):
            _maxpool_image(x, n, ph, pw, sh, sw, pt, pl, out)


@numba.njit(cache=True, parallel=True)
def scale_shift(x, scale, shift, relu, out):
    """out[r, c] = x[r, c] * scale[c] + shift[c] over (rows, channels) views, then max(out, 0)
    when relu. out may be x (in place)."""
    m, c_n = x.shape
    chunks = max(1, min(_CHUNKS, m))
    for k in prange(chunks):
        r0, r1 = _range(k, m, chunks)
        for r in range(r0, r1):
            xr, o = x[r], out[r]
            for c in range(c_n):
                v = xr[c] * scale[c] + shift[c]
                if relu and v < 0:
                    v = 0
                o[c] = v


@numba.njit(cache=True, parallel=True)
def add_relu(a, b, relu, out):
    """out = a + b over flat arrays of one size, then max(out, 0) when relu. out may be a or b."""
    n = a.size
    chunks = max(1, min(_CHUNKS, n // 4096))
    for k in prange(chunks):
        i0, i1 = _range(k, n, chunks)
        for i in range(i0, i1):
            v = a[i] + b[i]
            if relu and v < 0:
                v = 0
            out[i] = v
