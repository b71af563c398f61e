"""Grouped 2D convolution kernels, channels-last; depthwise convolution is one of them.

Layouts: x (N, H, W, C) activations, w (KH, KW, C // G, F) kernels, G groups, F filters.
Output filter f belongs to group g = f // (F // G) and reads the input channels
g*Cg .. g*Cg + Cg - 1 (Cg = C // G), as Keras' Conv2D(groups=G). A depthwise convolution
with depth_multiplier M is the case G = C, F = C*M: its (KH, KW, C, M) kernel, viewed as
(KH, KW, 1, C*M), puts channel c's m-th filter at output channel c*M + m, as Keras does.

The conventions of cnnkit.kernels.conv hold here too: explicit paddings (pad_top, pad_left),
output sizes from the preallocated output, input position ih = oh*sh - pt + i*dh (and iw
likewise) with out-of-range taps contributing zero, loops over the contiguous channel axis
innermost (vectorized by LLVM), and no fastmath: the summation order of each output is fixed
(taps i, j, then channels increasing), so every result is bitwise reproducible.

Three loop shapes, picked per call from the shapes (the same arithmetic, arranged so that the
innermost loop is long and contiguous):
- depthwise, M = 1 (Cg = 1, F = C): one loop over the C channels of a pixel;
- depthwise, M > 1 (Cg = 1): channels outer, the M filters of each channel inner;
- general groups (Cg > 1): groups, then each group's input channels, then its F // G filters.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

# Batch chunks of the weight-gradient reduction: fixed (not the thread count), so the float
# summation order, and the result, does not depend on the machine (as kernels.conv).
_WGRAD_CHUNKS = 16


@numba.njit(cache=True)
def _pixel_forward(xr, wr, groups, orow):
    """orow[f] += sum over the input channels c of f's group of xr[c] * wr[c - g*Cg, f]
    for one tap: xr (C,) one input pixel, wr (Cg, F) the tap's kernel."""
    cg_n, f_n = wr.shape
    fg_n = f_n // groups
    if cg_n == 1 and fg_n == 1:
        w0 = wr[0]
        for f in range(f_n):
            orow[f] += xr[f] * w0[f]
    elif cg_n == 1:
        w0 = wr[0]
        for c in range(groups):
            xv = xr[c]
            base = c * fg_n
            for m in range(fg_n):
                orow[base + m] += xv * w0[base + m]
    else:
        for g in range(groups):
            base = g * fg_n
            for cg in range(cg_n):
                xv = xr[g * cg_n + cg]
                wc = wr[cg]
                for m in range(fg_n):
                    orow[base + m] += xv * wc[base + m]


@numba.njit(cache=True)
def _pixel_backward_input(drow, wr, groups, dxr):
    """dxr[c] += sum over the filters f of c's group of drow[f] * wr[c - g*Cg, f] for one
    tap (the adjoint of _pixel_forward in its input)."""
    cg_n, f_n = wr.shape
    fg_n = f_n // groups
    if cg_n == 1 and fg_n == 1:
        w0 = wr[0]
        for c in range(f_n):
            dxr[c] += drow[c] * w0[c]
    elif cg_n == 1:
        w0 = wr[0]
        for c in range(groups):
            base = c * fg_n
            s = drow[base] * w0[base]
            for m in range(1, fg_n):
                s += drow[base + m] * w0[base + m]
            dxr[c] += s
    else:
        for g in range(groups):
            base = g * fg_n
            for cg in range(cg_n):
                wc = wr[cg]
                s = drow[base] * wc[base]
                for m in range(1, fg_n):
                    s += drow[base + m] * wc[base + m]
                dxr[g * cg_n + cg] += s


@numba.njit(cache=True)
def _pixel_backward_weights(xr, drow, groups, pw):
    """pw[c - g*Cg, f] += xr[c] * drow[f] for every (c, f) of a group, for one tap (the
    adjoint of _pixel_forward in its kernel): pw (Cg, F) the tap's partial sums."""
    cg_n, f_n = pw.shape
    fg_n = f_n // groups
    if cg_n == 1 and fg_n == 1:
        p0 = pw[0]
        for f in range(f_n):
            p0[f] += xr[f] * drow[f]
    elif cg_n == 1:
        p0 = pw[0]
        for c in range(groups):
            xv = xr[c]
            base = c * fg_n
            for m in range(fg_n):
                p0[base + m] += xv * drow[base + m]
    else:
        for g in range(groups):
            base = g * fg_n
            for cg in range(cg_n):
                xv = xr[g * cg_n + cg]
                pc = pw[cg]
                for m in range(fg_n):
                    pc[base + m] += xv * drow[base + m]


@numba.njit(cache=True, parallel=True)
def grouped_conv2d_forward(x, w, b, groups, sh, sw, dh, dw, pt, pl, out, relu=False):
    """out[n, oh, ow, f] = b[f] + sum_{i, j, c in f's group} x[n, ih, iw, c] * w[i, j, c', f]
    (c' = c - g*Cg), then max(out, 0) when relu (the fused activation). out is overwritten;
    x must be C-contiguous."""
    n_b, h, wd = x.shape[0], x.shape[1], x.shape[2]
    kh, kw, f_n = w.shape[0], w.shape[1], w.shape[3]
    oh_n, ow_n = out.shape[1], out.shape[2]
    for n in prange(n_b):
        for oh in range(oh_n):
            for ow in range(ow_n):
                orow = out[n, oh, ow]
                for f in range(f_n):
                    orow[f] = b[f]
                for i in range(kh):
                    ih = oh * sh - pt + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pl + j * dw
                        if iw < 0 or iw >= wd:
                            continue
                        _pixel_forward(x[n, ih, iw], w[i, j], groups, orow)
                if relu:
                    for f in range(f_n):
                        orow[f] = max(orow[f], 0)


@numba.njit(cache=True, parallel=True)
def grouped_conv2d_backward_input(dout, w, groups, sh, sw, dh, dw, pt, pl, dx):
    """dx[n, ih, iw, c] = sum of dout[n, oh, ow, f] * w[i, j, c', f] over every (oh, ow, i,
    j) whose tap reads (ih, iw) and every f of c's group. dx is fully overwritten.

    Scattered output pixel by output pixel, in a fixed order; each image writes only dx[n],
    so the images run in parallel without races."""
    n_b, h, wd = dx.shape[0], dx.shape[1], dx.shape[2]
    kh, kw = w.shape[0], w.shape[1]
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    for n in prange(n_b):
        dx[n, :, :, :] = 0
        for oh in range(oh_n):
            for ow in range(ow_n):
                drow = dout[n, oh, ow]
                for i in range(kh):
                    ih = oh * sh - pt + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pl + j * dw
                        if iw < 0 or iw >= wd:
                            continue
                        _pixel_backward_input(drow, w[i, j], groups, dx[n, ih, iw])


@numba.njit(cache=True)
def _chunk(k, n_b, n_chunks):
    """Contiguous, near-equal batch range k of n_chunks: a pure function of its arguments."""
    return (k * n_b) // n_chunks, ((k + 1) * n_b) // n_chunks


@numba.njit(cache=True, parallel=True)
def grouped_conv2d_backward_weights(x, dout, groups, sh, sw, dh, dw, pt, pl, dw_out, db_out):
    """dw_out[i, j, c', f] = sum_{n, oh, ow} x[n, ih, iw, c] * dout[n, oh, ow, f] for each c
    of f's group; db_out[f] = sum_{n, oh, ow} dout[n, oh, ow, f]. Both are overwritten.

    The batch is split into a fixed number of chunks, each summing into its own partial
    buffers (race-free); the partials are then added in chunk order, so the result does not
    depend on the thread count or the scheduling."""
    n_b, h, wd = x.shape[0], x.shape[1], x.shape[2]
    kh, kw, cg_n, f_n = dw_out.shape
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    n_chunks = max(min(n_b, _WGRAD_CHUNKS), 1)  # >= 1 so an empty batch yields zeros
    part_w = np.zeros((n_chunks, kh, kw, cg_n, f_n), dtype=dw_out.dtype)
    part_b = np.zeros((n_chunks, f_n), dtype=db_out.dtype)
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        pb = part_b[k]
        for n in range(n0, n1):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    drow = dout[n, oh, ow]
                    for f in range(f_n):
                        pb[f] += drow[f]
                    for i in range(kh):
                        ih = oh * sh - pt + i * dh
                        if ih < 0 or ih >= h:
                            continue
                        for j in range(kw):
                            iw = ow * sw - pl + j * dw
                            if iw < 0 or iw >= wd:
                                continue
                            _pixel_backward_weights(x[n, ih, iw], drow, groups, part_w[k, i, j])
    for i in range(kh):
        for j in range(kw):
            for c in range(cg_n):
                for f in range(f_n):
                    s = part_w[0, i, j, c, f]
                    for k in range(1, n_chunks):
                        s += part_w[k, i, j, c, f]
                    dw_out[i, j, c, f] = s
    for f in range(f_n):
        s = part_b[0, f]
        for k in range(1, n_chunks):
            s += part_b[k, f]
        db_out[f] = s
