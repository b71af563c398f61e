"""2D max/average pooling kernels, channels-last (NHWC).

Window of output (oh, ow) covers ih = oh*sh - pt + i, iw = ow*sw - pl + j for i < ph, j < pw.
Positions outside the input are excluded: they never win a max and do not count in an
average (Keras/TF "same" semantics). Innermost loops run over the contiguous channel axis.

The general kernels are serial (no parallel=True): on the 2 shared cores prange was no faster
before the OpenMP threads were kept spinning (cnnkit.threads), and the parfor pipeline more
than doubled compile time. The usual case, windows that tile the input (stride = pool size,
no padding: MaxPooling2D(2) in "valid" mode), has kernels of its own below, parallel over
the batch: the general ones had taken 17-20% of an mnist_lenet training step. Fixed loop
order -> bitwise reproducible.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange


@numba.njit(cache=True)
def maxpool2d_forward(x, ph, pw, sh, sw, pt, pl, out, argmax):
    """Max over each window; argmax[n, oh, ow, c] = ih*W + iw of the winner within (n, :, :, c).

    Ties go to the first maximum in row-major window order (strict '>' below). A window with
    no in-range position (only possible with pads >= pool size, never with Keras padding)
    yields out = 0 and argmax = -1, which maxpool2d_backward skips.
    """
    n_b, h, wd, c_n = x.shape
    oh_n, ow_n = out.shape[1], out.shape[2]
    for n in range(n_b):
        for oh in range(oh_n):
            for ow in range(ow_n):
                o = out[n, oh, ow]
                a = argmax[n, oh, ow]
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
                        idx = ih * wd + iw
                        if first:
                            # Seed with the first in-range value rather than -inf, so every
                            # output has a valid argmax even if the inputs are -inf or NaN.
                            for c in range(c_n):
                                o[c] = xr[c]
                                a[c] = idx
                            first = False
                        else:
                            for c in range(c_n):
                                v = xr[c]
                                if v > o[c]:
                                    o[c] = v
                                    a[c] = idx
                if first:
                    for c in range(c_n):
                        o[c] = 0
                        a[c] = -1


@numba.njit(cache=True)
def maxpool2d_backward(dout, argmax, dx):
    """dx zero-filled, then each dout is added at its window's argmax (overlaps accumulate)."""
    n_b, h, wd, c_n = dx.shape
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    for n in range(n_b):
        dx[n, :, :, :] = 0
        for oh in range(oh_n):
            for ow in range(ow_n):
                g = dout[n, oh, ow]
                a = argmax[n, oh, ow]
                for c in range(c_n):
                    idx = a[c]
                    if idx >= 0:
                        ih = idx // wd
                        dx[n, ih, idx - ih * wd, c] += g[c]


@numba.njit(cache=True)
def avgpool2d_forward(x, ph, pw, sh, sw, pt, pl, out):
    """Mean over the in-range positions of each window (padding excluded from the count)."""
    n_b, h, wd, c_n = x.shape
    oh_n, ow_n = out.shape[1], out.shape[2]
    for n in range(n_b):
        for oh in range(oh_n):
            for ow in range(ow_n):
                o = out[n, oh, ow]
                for c in range(c_n):
                    o[c] = 0
                count = 0
                for i in range(ph):
                    ih = oh * sh - pt + i
                    if ih < 0 or ih >= h:
                        continue
                    for j in range(pw):
                        iw = ow * sw - pl + j
                        if iw < 0 or iw >= wd:
                            continue
                        xr = x[n, ih, iw]
                        count += 1
                        for c in range(c_n):
                            o[c] += xr[c]
                if count > 0:
                    for c in range(c_n):
                        o[c] /= count


@numba.njit(cache=True)
def avgpool2d_backward(dout, ph, pw, sh, sw, pt, pl, dx):
    """dx zero-filled, then each dout / count is added to every in-range position of its window."""
    n_b, h, wd, c_n = dx.shape
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    for n in range(n_b):
        dx[n, :, :, :] = 0
        for oh in range(oh_n):
            # Rows/cols in range for this window; count is their product.
            i0 = max(0, pt - oh * sh)
            i1 = min(ph, h + pt - oh * sh)
            for ow in range(ow_n):
                j0 = max(0, pl - ow * sw)
                j1 = min(pw, wd + pl - ow * sw)
                count = (i1 - i0) * (j1 - j0)
                if i1 <= i0 or j1 <= j0:
                    continue
                g = dout[n, oh, ow]
                for i in range(i0, i1):
                    ih = oh * sh - pt + i
                    for j in range(j0, j1):
                        d = dx[n, ih, ow * sw - pl + j]
                        for c in range(c_n):
                            d[c] += g[c] / count


# --------------------------------------------------------------------------- tiling windows
# Windows that tile the input: stride = pool size, no padding (an input row or column past
# the last whole window is read by none). The winner of each window is kept as its position
# in the window, i*PW + j, in an int8 (an eighth of the general kernels' int64 argmax), and
# the backward pass writes each input gradient once (g or 0) instead of zero-filling dx and
# scattering into it: per channel a select, which LLVM vectorizes.

_CHUNKS = 16  # fixed prange chunks over the batch (the result does not depend on them)


@numba.njit(cache=True)
def _chunk_range(k, n, chunks):
    return (k * n) // chunks, ((k + 1) * n) // chunks


@numba.njit(cache=True, parallel=True)
def maxpool2d_forward_tiles(x, ph, pw, out, win):
    """maxpool2d_forward for windows that tile x (cnnkit.kernels.nojit.pool_tiles): the same
    values and the same winner (the first maximum in row-major window order), stored as
    win[n, oh, ow, c] = i*PW + j, its position in the window (int8)."""
    n_b, c_n = x.shape[0], x.shape[3]
    oh_n, ow_n = out.shape[1], out.shape[2]
    chunks = max(1, min(_CHUNKS, n_b))
    for k in prange(chunks):
        n0, n1 = _chunk_range(k, n_b, chunks)
        for n in range(n0, n1):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    o = out[n, oh, ow]
                    a = win[n, oh, ow]
                    first = x[n, oh * ph, ow * pw]
                    for c in range(c_n):
                        o[c] = first[c]
                        a[c] = 0
                    for t in range(1, ph * pw):
                        i = t // pw
                        xr = x[n, oh * ph + i, ow * pw + t - i * pw]
                        pos = np.int8(t)
                        for c in range(c_n):  # selects, not branches: vectorized
                            v, cur = xr[c], o[c]
                            better = v > cur
                            o[c] = v if better else cur
                            a[c] = pos if better else a[c]


@numba.njit(cache=True, parallel=True)
def maxpool2d_backward_tiles(dout, win, ph, pw, dx):
    """maxpool2d_backward for windows that tile dx: dx = dout at each window's winner, 0
    elsewhere (rows and columns past the last whole window included). Bitwise what the
    general kernel gives: 0 + g (so a gradient of -0.0 lands as +0.0, as there)."""
    n_b, h, wd, c_n = dx.shape
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    zero = dx.dtype.type(0)
    chunks = max(1, min(_CHUNKS, n_b))
    for k in prange(chunks):
        n0, n1 = _chunk_range(k, n_b, chunks)
        for n in range(n0, n1):
            if oh_n * ph < h or ow_n * pw < wd:
                dx[n, :, :, :] = 0
            for oh in range(oh_n):
                for ow in range(ow_n):
                    g = dout[n, oh, ow]
                    a = win[n, oh, ow]
                    for t in range(ph * pw):
                        i = t // pw
                        d = dx[n, oh * ph + i, ow * pw + t - i * pw]
                        pos = np.int8(t)
                        for c in range(c_n):
                            d[c] = zero + g[c] if a[c] == pos else zero
