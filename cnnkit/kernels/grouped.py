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

How each case runs (float32 depthwise convolutions with a multiple of 8 output channels take
the vector kernels of cnnkit.kernels.depthwise instead; the rest, the same products, arranged
so the innermost loop is long and contiguous; measured on the 2-core AVX2 machine,
benchmarks/results/2026-12-02-epyc-avx2-depthwise):
- groups of >= _GEMM_MIN_CHANNELS channels: each group as an ordinary convolution on a
  contiguous copy of its channels (cnnkit.kernels.conv, im2col + BLAS): ~5x the direct
  loops' backward on a 4-group 3x3 conv of 128 channels;
- depthwise, M = 1 (Cg = 1, F = C): one loop over the C channels of each pixel and tap;
- depthwise, M > 1: the input's channels repeated M times (_repeat_channels), then the M = 1
  loops with F groups: ~3x the loops over each channel's M filters, which do not vectorize;
- other groups (1 < Cg < 8): groups, each group's input channels, its F // G filters.
The weight gradient runs taps outer within each image, so each tap's partial sums stay in L1.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from cnnkit.kernels.conv import (
    conv2d_backward_input,
    conv2d_backward_weights,
    conv2d_forward,
    sum_chunk_partials,
)
from cnnkit.kernels.depthwise import (
    depthwise_backward_input,
    depthwise_backward_weights,
    depthwise_forward,
    simd_depthwise,
)

# Batch chunks of the weight-gradient reduction: fixed (not the thread count), so the float
# summation order, and the result, does not depend on the machine (as kernels.conv).
_WGRAD_CHUNKS = 16

# From this many input channels per group on, each group runs as an ordinary convolution
# (cnnkit.kernels.conv: im2col + BLAS GEMM) on a contiguous copy of its channels; below it, the
# direct loops here (depthwise: one channel per group). The same threshold as kernels.conv's
# direct/GEMM switch, for the same reason.
_GEMM_MIN_CHANNELS = 8

# Batch chunks of the forward and input-gradient loops (prange runs them over the threads);
# each chunk allocates its scratch once. A constant, as in kernels.conv.
_PAR_CHUNKS = 16


def _groups_of(c_n, f_n, groups):
    """(input channel slice, filter slice) of each group."""
    cg, fg = c_n // groups, f_n // groups
    return [(slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)) for g in range(groups)]


def grouped_conv2d_forward(x, w, b, groups, sh, sw, dh, dw, pt, pl, out, relu=False):
    """out[n, oh, ow, f] = b[f] + sum_{i, j, c in f's group} x[n, ih, iw, c] * w[i, j, c', f]
    (c' = c - g*Cg), then max(out, 0) when relu (the fused activation). out is overwritten;
    x must be C-contiguous. Groups of >= _GEMM_MIN_CHANNELS channels run one by one on
    conv2d_forward; fewer, on the direct loops."""
    if simd_depthwise(x, w, groups, out):
        b32 = np.ascontiguousarray(b, dtype=np.float32)
        depthwise_forward(x, w, b32, sh, sw, dh, dw, pt, pl, out, relu)
        return
    if w.shape[2] < _GEMM_MIN_CHANNELS:
        grouped_conv2d_forward_direct(x, w, b, groups, sh, sw, dh, dw, pt, pl, out, relu)
        return
    for cs, fs in _groups_of(x.shape[3], w.shape[3], groups):
        part = np.empty((*out.shape[:3], fs.stop - fs.start), out.dtype)
        wg, bg = np.ascontiguousarray(w[..., fs]), np.ascontiguousarray(b[fs])
        conv2d_forward(np.ascontiguousarray(x[..., cs]), wg, bg, sh, sw, dh, dw, pt, pl, part, relu)
        out[..., fs] = part


def grouped_conv2d_backward_input(dout, w, groups, sh, sw, dh, dw, pt, pl, dx):
    """dx[n, ih, iw, c] = sum of dout[n, oh, ow, f] * w[i, j, c', f] over every (oh, ow, i,
    j) whose tap reads (ih, iw) and every f of c's group. dx is fully overwritten."""
    # the vector kernel is for multiplier 1 only (with M > 1 its scatter into the M times wider
    # gradient ran from L2: mobilenet_tiny's 16x16x64, M = 2, stride 2, 2.37 ms, loops 2.15)
    if simd_depthwise(dx, w, groups, dout) and w.shape[3] == dx.shape[3]:
        depthwise_backward_input(dout, w, sh, sw, dh, dw, pt, pl, dx)
        return
    if w.shape[2] < _GEMM_MIN_CHANNELS:
        grouped_conv2d_backward_input_direct(dout, w, groups, sh, sw, dh, dw, pt, pl, dx)
        return
    for cs, fs in _groups_of(dx.shape[3], w.shape[3], groups):
        part = np.empty((*dx.shape[:3], cs.stop - cs.start), dx.dtype)
        dg, wg = np.ascontiguousarray(dout[..., fs]), np.ascontiguousarray(w[..., fs])
        conv2d_backward_input(dg, wg, sh, sw, dh, dw, pt, pl, part)
        dx[..., cs] = part


def grouped_conv2d_backward_weights(x, dout, groups, sh, sw, dh, dw, pt, pl, dw_out, db_out):
    """dw_out[i, j, c', f] = sum_{n, oh, ow} x[n, ih, iw, c] * dout[n, oh, ow, f] for each c
    of f's group; db_out[f] = sum_{n, oh, ow} dout[n, oh, ow, f]. Both are overwritten."""
    if simd_depthwise(x, dw_out, groups, dout) and db_out.dtype == np.float32:
        depthwise_backward_weights(x, dout, sh, sw, dh, dw, pt, pl, dw_out, db_out)
        return
    if dw_out.shape[2] < _GEMM_MIN_CHANNELS:
        grouped_conv2d_backward_weights_direct(
            x, dout, groups, sh, sw, dh, dw, pt, pl, dw_out, db_out
        )
        return
    for cs, fs in _groups_of(x.shape[3], dw_out.shape[3], groups):
        dwg = np.empty((*dw_out.shape[:3], fs.stop - fs.start), dw_out.dtype)
        dbg = np.empty(fs.stop - fs.start, db_out.dtype)
        xg, dg = np.ascontiguousarray(x[..., cs]), np.ascontiguousarray(dout[..., fs])
        conv2d_backward_weights(xg, dg, sh, sw, dh, dw, pt, pl, dwg, dbg)
        dw_out[..., fs] = dwg
        db_out[fs] = dbg


@numba.njit(cache=True)
def _tap_forward(xr, w2, t0, groups, orow):
    """orow[f] += sum over the input channels c of f's group of xr[c] * w2[t0 + c - g*Cg, f]
    for one tap: xr (C,) one input pixel, w2 rows t0.. the tap's (Cg, F) kernel. Every
    operand is a 1-D row, so that LLVM vectorizes the innermost loop."""
    f_n = w2.shape[1]
    cg_n, fg_n = xr.shape[0] // groups, f_n // groups
    if cg_n == 1 and fg_n == 1:
        wr = w2[t0]
        for f in range(f_n):
            orow[f] += xr[f] * wr[f]
        return
    for g in range(groups):
        base = g * fg_n
        for cg in range(cg_n):
            xv = xr[g * cg_n + cg]
            wr = w2[t0 + cg]
            for m in range(fg_n):
                orow[base + m] += xv * wr[base + m]


@numba.njit(cache=True)
def _tap_backward_input(drow, w2, t0, groups, dxr):
    """dxr[c] += sum over the filters f of c's group of drow[f] * w2[t0 + c - g*Cg, f] for one
    tap (the adjoint of _tap_forward in its input)."""
    f_n = w2.shape[1]
    cg_n, fg_n = dxr.shape[0] // groups, f_n // groups
    if cg_n == 1 and fg_n == 1:
        wr = w2[t0]
        for c in range(f_n):
            dxr[c] += drow[c] * wr[c]
        return
    for g in range(groups):
        base = g * fg_n
        for cg in range(cg_n):
            wr = w2[t0 + cg]
            s = drow[base] * wr[base]
            for m in range(1, fg_n):
                s += drow[base + m] * wr[base + m]
            dxr[g * cg_n + cg] += s


@numba.njit(cache=True)
def _tap_backward_weights(xr, drow, pw, t0, groups):
    """pw[t0 + c - g*Cg, f] += xr[c] * drow[f] for every (c, f) of a group, for one tap (the
    adjoint of _tap_forward in its kernel): pw the (KH*KW*Cg, F) partial sums."""
    f_n = pw.shape[1]
    cg_n, fg_n = xr.shape[0] // groups, f_n // groups
    if cg_n == 1 and fg_n == 1:
        acc = pw[t0]
        for f in range(f_n):
            acc[f] += xr[f] * drow[f]
        return
    for g in range(groups):
        base = g * fg_n
        for cg in range(cg_n):
            xv = xr[g * cg_n + cg]
            acc = pw[t0 + cg]
            for m in range(fg_n):
                acc[base + m] += xv * drow[base + m]


@numba.njit(cache=True)
def _repeat_channels(xi, m_n, xe):
    """xe[ih, iw, c*M + m] = xi[ih, iw, c]: a depthwise input with multiplier M > 1 turned
    into one with multiplier 1 (one group per output channel), whose loops vectorize; the
    products and their order are unchanged."""
    for ih in range(xi.shape[0]):
        for iw in range(xi.shape[1]):
            xr, er = xi[ih, iw], xe[ih, iw]
            for c in range(xr.shape[0]):
                for m in range(m_n):
                    er[c * m_n + m] = xr[c]


@numba.njit(cache=True)
def _forward_image(xi, w2, b, groups, kh, kw, sh, sw, dh, dw, pt, pl, oi, relu):
    """One image: oi (OH, OW, F) from xi (H, W, C)."""
    h, wd = xi.shape[0], xi.shape[1]
    f_n, cg_n = oi.shape[2], xi.shape[2] // groups
    for oh in range(oi.shape[0]):
        for ow in range(oi.shape[1]):
            orow = oi[oh, ow]
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
                    _tap_forward(xi[ih, iw], w2, (i * kw + j) * cg_n, groups, orow)
            if relu:
                for f in range(f_n):
                    orow[f] = max(orow[f], 0)


@numba.njit(cache=True)
def _backward_input_image(di, w2, groups, kh, kw, sh, sw, dh, dw, pt, pl, dxi):
    """One image: dxi (H, W, C) += the scatter of di (OH, OW, F), output pixel by output
    pixel in a fixed order."""
    h, wd = dxi.shape[0], dxi.shape[1]
    cg_n = dxi.shape[2] // groups
    for oh in range(di.shape[0]):
        for ow in range(di.shape[1]):
            drow = di[oh, ow]
            for i in range(kh):
                ih = oh * sh - pt + i * dh
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    iw = ow * sw - pl + j * dw
                    if iw < 0 or iw >= wd:
                        continue
                    _tap_backward_input(drow, w2, (i * kw + j) * cg_n, groups, dxi[ih, iw])


@numba.njit(cache=True)
def _backward_weights_image(xi, di, groups, kh, kw, sh, sw, dh, dw, pt, pl, pw):
    """One image's terms added into pw (KH*KW*Cg, F), taps outer: each tap's partial sums
    (a few rows) stay in L1 over the image."""
    h, wd = xi.shape[0], xi.shape[1]
    cg_n = xi.shape[2] // groups
    for i in range(kh):
        for j in range(kw):
            t0 = (i * kw + j) * cg_n
            for oh in range(di.shape[0]):
                ih = oh * sh - pt + i * dh
                if ih < 0 or ih >= h:
                    continue
                for ow in range(di.shape[1]):
                    iw = ow * sw - pl + j * dw
                    if iw < 0 or iw >= wd:
                        continue
                    _tap_backward_weights(xi[ih, iw], di[oh, ow], pw, t0, groups)


@numba.njit(cache=True)
def _chunk(k, n_b, n_chunks):
    """Contiguous, near-equal batch range k of n_chunks: a pure function of its arguments."""
    return (k * n_b) // n_chunks, ((k + 1) * n_b) // n_chunks


@numba.njit(cache=True)
def _multiplier(x, w, groups):
    """M when this is a depthwise convolution with multiplier M > 1 (its input is then
    expanded, _repeat_channels), else 0."""
    cg_n, f_n = w.shape[2], w.shape[3]
    return f_n // groups if cg_n == 1 and f_n > groups else 0


@numba.njit(cache=True, parallel=True)
def grouped_conv2d_forward_direct(x, w, b, groups, sh, sw, dh, dw, pt, pl, out, relu=False):
    """grouped_conv2d_forward by direct loops over the taps (any group size)."""
    n_b, h, wd = x.shape[0], x.shape[1], x.shape[2]
    kh, kw, cg_n, f_n = w.shape
    w2 = np.ascontiguousarray(w).reshape(kh * kw * cg_n, f_n)  # row (i*KW + j)*Cg + c'
    m_n = _multiplier(x, w, groups)
    n_chunks = max(min(n_b, _PAR_CHUNKS), 1)
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        xe = np.empty((h, wd, f_n if m_n else 0), x.dtype)
        for n in range(n0, n1):
            if m_n:
                _repeat_channels(x[n], m_n, xe)
                _forward_image(xe, w2, b, f_n, kh, kw, sh, sw, dh, dw, pt, pl, out[n], relu)
            else:
                _forward_image(x[n], w2, b, groups, kh, kw, sh, sw, dh, dw, pt, pl, out[n], relu)


@numba.njit(cache=True, parallel=True)
def grouped_conv2d_backward_input_direct(dout, w, groups, sh, sw, dh, dw, pt, pl, dx):
    """grouped_conv2d_backward_input by direct loops (any group size). Each image writes
    only dx[n], so the images run in parallel without races."""
    n_b, h, wd, c_n = dx.shape
    kh, kw, cg_n, f_n = w.shape
    w2 = np.ascontiguousarray(w).reshape(kh * kw * cg_n, f_n)
    m_n = _multiplier(dx, w, groups)
    n_chunks = max(min(n_b, _PAR_CHUNKS), 1)
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        dxe = np.empty((h, wd, f_n if m_n else 0), dx.dtype)
        for n in range(n0, n1):
            if not m_n:
                dx[n, :, :, :] = 0
                _backward_input_image(dout[n], w2, groups, kh, kw, sh, sw, dh, dw, pt, pl, dx[n])
                continue
            dxe[:, :, :] = 0
            _backward_input_image(dout[n], w2, f_n, kh, kw, sh, sw, dh, dw, pt, pl, dxe)
            for ih in range(h):  # the adjoint of _repeat_channels: sum over the M copies
                for iw in range(wd):
                    er, dr = dxe[ih, iw], dx[n, ih, iw]
                    for c in range(c_n):
                        s = er[c * m_n]
                        for m in range(1, m_n):
                            s += er[c * m_n + m]
                        dr[c] = s


@numba.njit(cache=True, parallel=True)
def grouped_conv2d_backward_weights_direct(x, dout, groups, sh, sw, dh, dw, pt, pl, dw_out, db_out):
    """grouped_conv2d_backward_weights by direct loops (any group size). The batch is
    split into a fixed number of chunks, each summing into its own partial buffers
    (race-free); the partials are then added in chunk order, so the result does not depend
    on the thread count or the scheduling."""
    n_b, h, wd = x.shape[0], x.shape[1], x.shape[2]
    kh, kw, cg_n, f_n = dw_out.shape
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    m_n = _multiplier(x, dw_out, groups)
    n_chunks = max(min(n_b, _WGRAD_CHUNKS), 1)  # >= 1 so an empty batch yields zeros
    part_w = np.zeros((n_chunks, kh * kw * cg_n, f_n), dtype=dw_out.dtype)
    part_b = np.zeros((n_chunks, f_n), dtype=db_out.dtype)
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        pw, pb = part_w[k], part_b[k]
        xe = np.empty((h, wd, f_n if m_n else 0), x.dtype)
        for n in range(n0, n1):
            if m_n:
                _repeat_channels(x[n], m_n, xe)
                _backward_weights_image(xe, dout[n], f_n, kh, kw, sh, sw, dh, dw, pt, pl, pw)
            else:
                _backward_weights_image(x[n], dout[n], groups, kh, kw, sh, sw, dh, dw, pt, pl, pw)
            for oh in range(oh_n):
                for ow in range(ow_n):
                    drow = dout[n, oh, ow]
                    for f in range(f_n):
                        pb[f] += drow[f]
    sum_chunk_partials(part_w.reshape(n_chunks, kh * kw * cg_n * f_n), part_b, dw_out, db_out)
