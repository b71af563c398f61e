"""2D max/average pooling kernels, channels-last (NHWC).

Window of output (oh, ow) covers ih = oh*sh - pt + i, iw = ow*sw - pl + j for i < ph, j < pw.
Positions outside the input are excluded: they never win a max and do not count in an
average (Keras/TF "same" semantics). Innermost loops run over the contiguous channel axis.

Serial on purpose (no parallel=True): pooling is memory-bound and ~1% of a conv step; on the
2 shared cores prange was no faster (slower when the other core is busy), and the parfor
pipeline more than doubled compile time. Fixed loop order -> bitwise reproducible.
"""

from __future__ import annotations

import numba


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
