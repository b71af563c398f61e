"""2D convolution kernels, channels-last (NHWC activations, (KH, KW, C_in, F) weights).

Conventions shared by every kernel here:
- padding is explicit (pad_top, pad_left); output sizes come from the shape of the
  preallocated output, so the caller decides "valid"/"same" (see conv_output_size);
- input row/col read by output (oh, ow) at tap (i, j): ih = oh*sh - pt + i*dh,
  iw = ow*sw - pl + j*dw; positions outside the input contribute zero;
- innermost loops run over the contiguous channel axis (F or C) so LLVM vectorizes them;
- no fastmath: summation order is fixed, so results are bitwise reproducible run to run.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from cnnkit.kernels.simd import (
    WIDE_LANES,
    vadd,
    vbroadcast_like,
    vfma,
    vlanes,
    vload_like,
    vstore,
    vzeros,
    width_tag,
)

# Number of batch chunks for the weight-gradient reduction. Fixed (not the thread count), so
# the float summation order, and hence the result, does not depend on the machine.
_WGRAD_CHUNKS = 16

# Below this many input channels (e.g. the first layer on grayscale images) im2col + GEMM does
# not pay off (K = KH*KW*C is tiny); forward and weight-gradient use direct loops instead.
# Measured on the MNIST shapes: direct wins ~2x at C=1, GEMM wins ~1.3-2.5x at C>=32.
_GEMM_MIN_CHANNELS = 8


# --------------------------------------------------------------------------- building blocks


@numba.njit(cache=True)
def _im2col_row(x, n, oh, kh, kw, sh, sw, dh, dw, pt, pl, cols):
    """cols[ow, (i*KW + j)*C + c] = x[n, ih, iw, c] for output row oh; zero where out of range.

    x must be C-contiguous: with dilation 1 along the width, the KW taps of kernel row i
    read KW*C consecutive floats of x[n, ih], copied as one slice (1.5x the copy tap by tap).
    """
    h, wd, c_in = x.shape[1], x.shape[2], x.shape[3]
    span = kw * c_in
    for ow in range(cols.shape[0]):
        row = cols[ow]
        iw0 = ow * sw - pl
        whole = dw == 1 and iw0 >= 0 and iw0 + kw <= wd
        k = 0
        for i in range(kh):
            ih = oh * sh - pt + i * dh
            if ih < 0 or ih >= h:
                row[k : k + span] = 0
                k += span
                continue
            if whole:
                xr = x[n, ih].reshape(wd * c_in)
                row[k : k + span] = xr[iw0 * c_in : iw0 * c_in + span]
                k += span
                continue
            for j in range(kw):
                iw = iw0 + j * dw
                if iw < 0 or iw >= wd:
                    for c in range(c_in):
                        row[k + c] = 0
                else:
                    xr = x[n, ih, iw]
                    for c in range(c_in):
                        row[k + c] = xr[c]
                k += c_in


@numba.njit(cache=True)
def _col2im_row(gcols, n, oh, kh, kw, sh, sw, dh, dw, pt, pl, dx):
    """dx[n, ih, iw, c] += gcols[ow, (i*KW + j)*C + c] for output row oh (the adjoint of
    _im2col_row; out-of-range taps dropped). dx must be C-contiguous: with dilation 1 along
    the width, the KW taps of kernel row i add into KW*C consecutive floats of dx[n, ih]."""
    h, wd, c_in = dx.shape[1], dx.shape[2], dx.shape[3]
    span = kw * c_in
    for ow in range(gcols.shape[0]):
        row = gcols[ow]
        iw0 = ow * sw - pl
        whole = dw == 1 and iw0 >= 0 and iw0 + kw <= wd
        k = 0
        for i in range(kh):
            ih = oh * sh - pt + i * dh
            if ih < 0 or ih >= h:
                k += span
                continue
            if whole:
                d = dx[n, ih].reshape(wd * c_in)
                base = iw0 * c_in
                for e in range(span):
                    d[base + e] += row[k + e]
                k += span
                continue
            for j in range(kw):
                iw = iw0 + j * dw
                if iw >= 0 and iw < wd:
                    d = dx[n, ih, iw]
                    for c in range(c_in):
                        d[c] += row[k + c]
                k += c_in


@numba.njit(cache=True)
def _conv_row_direct(x, w, n, oh, sh, sw, dh, dw, pt, pl, o):
    """o[ow, f] += sum_{i, j, c} x[n, ih, iw, c] * w[i, j, c, f] for output row oh, skipping
    out-of-range taps; same term order as im2col + GEMM (i, j, c increasing)."""
    h, wd, c_in = x.shape[1], x.shape[2], x.shape[3]
    kh, kw, f_n = w.shape[0], w.shape[1], w.shape[3]
    for ow in range(o.shape[0]):
        orow = o[ow]
        for i in range(kh):
            ih = oh * sh - pt + i * dh
            if ih < 0 or ih >= h:
                continue
            for j in range(kw):
                iw = ow * sw - pl + j * dw
                if iw < 0 or iw >= wd:
                    continue
                xr = x[n, ih, iw]
                for c in range(c_in):
                    xv = xr[c]
                    wr = w[i, j, c]
                    for f in range(f_n):
                        orow[f] += xv * wr[f]


@numba.njit(cache=True)
def _tap(x, n, oh, ow, t, kw, sh, sw, dh, dw, pt, pl):
    """x[n, ih, iw, 0] read by output (oh, ow) at tap t = i*KW + j; 0 outside the input."""
    i = t // kw
    ih = oh * sh - pt + i * dh
    iw = ow * sw - pl + (t - i * kw) * dw
    if ih < 0 or ih >= x.shape[1] or iw < 0 or iw >= x.shape[2]:
        return x.dtype.type(0)
    return x[n, ih, iw, 0]


@numba.njit(cache=True)
def _conv_row_one_channel(x, w2, b, n, oh, kw, sh, sw, dh, dw, pt, pl, relu, o):
    """o[ow, f] = b[f] + sum_t x_t * w2[t, f] for one input channel (the first layer on
    grayscale images), 8 taps per pass over o[ow]: the taps are read straight from x into
    scalars and each store of o carries 8 of them. ~4x the im2col or tap-by-tap loops, whose
    per-tap channel loop of length 1 (and its vectorizer checks) cost more than the math."""
    kk, f_n = w2.shape
    k8 = kk - kk % 8
    for ow in range(o.shape[0]):
        orow = o[ow]
        for f in range(f_n):
            orow[f] = b[f]
        for k in range(0, k8, 8):
            x0 = _tap(x, n, oh, ow, k, kw, sh, sw, dh, dw, pt, pl)
            x1 = _tap(x, n, oh, ow, k + 1, kw, sh, sw, dh, dw, pt, pl)
            x2 = _tap(x, n, oh, ow, k + 2, kw, sh, sw, dh, dw, pt, pl)
            x3 = _tap(x, n, oh, ow, k + 3, kw, sh, sw, dh, dw, pt, pl)
            x4 = _tap(x, n, oh, ow, k + 4, kw, sh, sw, dh, dw, pt, pl)
            x5 = _tap(x, n, oh, ow, k + 5, kw, sh, sw, dh, dw, pt, pl)
            x6 = _tap(x, n, oh, ow, k + 6, kw, sh, sw, dh, dw, pt, pl)
            x7 = _tap(x, n, oh, ow, k + 7, kw, sh, sw, dh, dw, pt, pl)
            for f in range(f_n):
                orow[f] = (
                    orow[f]
                    + x0 * w2[k, f]
                    + x1 * w2[k + 1, f]
                    + x2 * w2[k + 2, f]
                    + x3 * w2[k + 3, f]
                    + x4 * w2[k + 4, f]
                    + x5 * w2[k + 5, f]
                    + x6 * w2[k + 6, f]
                    + x7 * w2[k + 7, f]
                )
        for k in range(k8, kk):
            x0 = _tap(x, n, oh, ow, k, kw, sh, sw, dh, dw, pt, pl)
            for f in range(f_n):
                orow[f] = orow[f] + x0 * w2[k, f]
        if relu:
            for f in range(f_n):
                orow[f] = max(orow[f], 0)


@numba.njit(cache=True)
def _wgrad_row_one_channel(x, g, n, oh, kw, sh, sw, dh, dw, pt, pl, pw):
    """pw[t, f] += sum_ow x_t(ow) * g[ow, f] for one input channel, 4 output pixels per pass
    over pw[t] (each load/store of the partial sums carries 4 products, not 1)."""
    kk, f_n = pw.shape
    ow_n = g.shape[0]
    ow4 = ow_n - ow_n % 4
    for ow in range(0, ow4, 4):
        for t in range(kk):
            x0 = _tap(x, n, oh, ow, t, kw, sh, sw, dh, dw, pt, pl)
            x1 = _tap(x, n, oh, ow + 1, t, kw, sh, sw, dh, dw, pt, pl)
            x2 = _tap(x, n, oh, ow + 2, t, kw, sh, sw, dh, dw, pt, pl)
            x3 = _tap(x, n, oh, ow + 3, t, kw, sh, sw, dh, dw, pt, pl)
            for f in range(f_n):
                pw[t, f] = (
                    pw[t, f]
                    + x0 * g[ow, f]
                    + x1 * g[ow + 1, f]
                    + x2 * g[ow + 2, f]
                    + x3 * g[ow + 3, f]
                )
    for ow in range(ow4, ow_n):
        for t in range(kk):
            x0 = _tap(x, n, oh, ow, t, kw, sh, sw, dh, dw, pt, pl)
            for f in range(f_n):
                pw[t, f] = pw[t, f] + x0 * g[ow, f]


@numba.njit(cache=True)
def _wgrad_row_direct(x, g, n, oh, kh, kw, sh, sw, dh, dw, pt, pl, pw):
    """pw[(i*KW + j)*C + c, f] += sum_ow x[n, ih, iw, c] * g[ow, f] for output row oh."""
    h, wd, c_in = x.shape[1], x.shape[2], x.shape[3]
    f_n = g.shape[1]
    for ow in range(g.shape[0]):
        gr = g[ow]
        for i in range(kh):
            ih = oh * sh - pt + i * dh
            if ih < 0 or ih >= h:
                continue
            for j in range(kw):
                iw = ow * sw - pl + j * dw
                if iw < 0 or iw >= wd:
                    continue
                xr = x[n, ih, iw]
                r0 = (i * kw + j) * c_in
                for c in range(c_in):
                    xv = xr[c]
                    p = pw[r0 + c]
                    for f in range(f_n):
                        p[f] += xv * gr[f]


# --------------------------------------------------------------------------- kernels
# The GEMMs go to BLAS (np.dot inside Numba calls the sgemm/dgemm of scipy's OpenBLAS, which
# cnnkit.threads limits to one thread): each Numba thread takes a contiguous range of the batch
# and multiplies im2col blocks of a few output rows (a block's columns stay in L2) by the
# kernel. Measured on the two_conv/lenet layers (2 cores): 1.2-1.4x a register-blocked Numba
# GEMM (layers with few input channels take the direct loops instead). BLAS results are
# deterministic for given shapes, and every image's result is independent of the chunking.

# Bytes of im2col columns per GEMM block (forward and input gradient; the weight gradient
# uses blocks 4x larger, since each block's product is added into the partial sums).
_BLOCK_BYTES = 1 << 18

# Batch chunks of the forward and input-gradient kernels (prange runs them over the threads).
# A constant, not numba.get_num_threads(): calling that from a kernel stops Numba from caching it.
_PAR_CHUNKS = 16


@numba.njit(cache=True)
def _block_rows(ow_n, kk, itemsize, scale):
    return max(1, (_BLOCK_BYTES * scale) // max(ow_n * kk * itemsize, 1))


@numba.njit(cache=True)
def _chunk(k, n_b, n_chunks):
    """Contiguous, near-equal batch range k of n_chunks: a pure function of its arguments."""
    return (k * n_b) // n_chunks, ((k + 1) * n_b) // n_chunks


@numba.njit(cache=True, parallel=True)
def conv2d_forward_gemm(x, w, b, sh, sw, dh, dw, pt, pl, out, relu=False):
    """out[n, oh, ow, f] = b[f] + sum_{i, j, c} x[n, ih, iw, c] * w[i, j, c, f], then
    max(out, 0) when relu (the fused activation). x and out must be C-contiguous."""
    n_b = x.shape[0]
    kh, kw, c_in, f_n = w.shape
    oh_n, ow_n = out.shape[1], out.shape[2]
    kk = kh * kw * c_in
    p_n = oh_n * ow_n
    w2 = np.ascontiguousarray(w).reshape(kk, f_n)  # (i, j, c) flattened = im2col order
    rows = min(_block_rows(ow_n, kk, x.itemsize, 1), oh_n)
    n_chunks = max(min(n_b, _PAR_CHUNKS), 1)
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        cols = np.empty((rows * ow_n, kk), dtype=x.dtype)
        for n in range(n0, n1):
            o2 = out[n].reshape(p_n, f_n)
            if c_in == 1:
                for oh in range(oh_n):
                    _conv_row_one_channel(
                        x, w2, b, n, oh, kw, sh, sw, dh, dw, pt, pl, relu, out[n, oh]
                    )
            elif c_in < _GEMM_MIN_CHANNELS:
                o2[:, :] = 0
                for oh in range(oh_n):
                    _conv_row_direct(x, w, n, oh, sh, sw, dh, dw, pt, pl, out[n, oh])
            else:
                for oh0 in range(0, oh_n, rows):
                    oh1 = min(oh0 + rows, oh_n)
                    for oh in range(oh0, oh1):
                        r = (oh - oh0) * ow_n
                        _im2col_row(x, n, oh, kh, kw, sh, sw, dh, dw, pt, pl, cols[r : r + ow_n])
                    np.dot(cols[: (oh1 - oh0) * ow_n], w2, o2[oh0 * ow_n : oh1 * ow_n])
            if c_in == 1:
                continue  # the one-channel path adds the bias and the relu itself
            for p in range(p_n):
                orow = o2[p]
                for f in range(f_n):
                    v = orow[f] + b[f]
                    if relu and v < 0:
                        v = 0
                    orow[f] = v


def conv2d_backward_input(dout, w, sh, sw, dh, dw, pt, pl, dx):
    """dx[n, ih, iw, c] = sum of dout[n, oh, ow, f] * w[i, j, c, f] over all (oh, ow, i, j, f)
    whose tap reads (ih, iw). dx is fully overwritten; dout and dx must be C-contiguous.

    Stride 1: the input gradient is itself a convolution (of dout with the kernel rotated by
    180 degrees, its channel axes swapped, padded by (K-1)*dilation - pad), so it runs on the
    forward kernel: a deep GEMM (reduction KH*KW*F) and a gather, instead of a shallow GEMM
    (reduction F) and a scatter. Measured 1.5-2x on the two_conv/lenet layers. Other strides
    take the column-gradient path below, and so do small valid convolutions whose padded
    gradient would be mostly zeros (12x12 -> 8x8 with 5x5 kernels: 2.25x the multiplications,
    measured 2.3x slower): the convolution path needs H*W <= 1.25 * OH*OW. Strides > 1 with
    dilation 1 split into one stride-1 convolution per phase (_backward_input_by_phases).
    """
    kh, kw = w.shape[0], w.shape[1]
    h, wd = dx.shape[1], dx.shape[2]
    small_output = h * wd * 4 > dout.shape[1] * dout.shape[2] * 5
    # the direct kernel skips the kernel rows that read padding only: 1.4x the column path
    # on mnist_lenet's 12x12 -> 8x8 layer, whose padded gradient is mostly zeros
    if _direct(dout, w, dx.shape[3], dx.shape[2], dh, dw) and dx.flags.c_contiguous:
        small_output = False
    if sh == 1 and sw == 1 and not small_output and (kh - 1) * dh >= pt and (kw - 1) * dw >= pl:
        wt = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))
        zero = np.zeros(wt.shape[3], dtype=dx.dtype)
        conv2d_forward(dout, wt, zero, 1, 1, dh, dw, (kh - 1) * dh - pt, (kw - 1) * dw - pl, dx)
    elif not _backward_input_by_phases(dout, w, sh, sw, dh, dw, pt, pl, dx):
        conv2d_backward_input_cols(dout, w, sh, sw, dh, dw, pt, pl, dx)


def _phase(k_n, s, p, r, n_in):
    """Kernel taps, first row and count of the input rows (ih + p = q*s + r) of phase r, and
    the forward padding that puts that phase's first row at output 0 (negative: it starts
    that many rows into dout)."""
    taps = max(0, -(-(k_n - r) // s))  # i = r, r + s, ... < k_n
    q_lo = -(-(p - r) // s)  # the first q with ih = q*s + r - p >= 0
    q_hi = (n_in + p - 1 - r) // s
    first = q_lo * s + r - p
    return taps, first, max(0, q_hi - q_lo + 1), taps - 1 - q_lo


def _backward_input_by_phases(dout, w, sh, sw, dh, dw, pt, pl, dx) -> bool:
    """The input gradient of a strided convolution (dilation 1) as sh*sw stride-1 ones: the
    input rows ih with (ih + pt) % sh == r (and columns alike) read only the taps i = r, r + sh,
    ..., so each phase is the forward convolution of dout with that sub-kernel, rotated by 180
    degrees and its channel axes swapped, written into every sh-th row and sw-th column of dx.
    The same multiplications as the column-gradient path, without col2im's scatter: on the
    forward kernels. Where the direct kernels apply, all phases of an image run in one pass
    (conv2d_backward_input_phases_direct): resnet20's 16x16x32 -> 64 layer 1.65 -> 1.05 ms
    at batch 128, 32x32x16 -> 32 2.39 -> 1.90 ms, the same bytes; else one forward call per
    phase and a scatter. False (nothing written) where it does not apply: stride 1, dilation."""
    if (sh == 1 and sw == 1) or dh != 1 or dw != 1:
        return False
    kh, kw = w.shape[0], w.shape[1]
    n_b, h, wd, c_n = dx.shape
    rows = [_phase(kh, sh, pt, r, h) for r in range(sh)]
    cols = [_phase(kw, sw, pl, r, wd) for r in range(sw)]
    if _direct(dout, w, c_n, wd, 1, 1) and dx.flags.c_contiguous:
        plan, wsub = _phase_plan(w, sh, sw, rows, cols)
        conv2d_backward_input_phases_direct(dout, wsub, plan, sh, sw, dx, direct_lanes(c_n))
        return True
    zero = np.zeros(c_n, dtype=dx.dtype)
    # one buffer for every phase's output (a view of its first rows and columns each time):
    # a fresh array per phase page-faulted on every call
    buffer = np.empty((n_b, max(r[2] for r in rows), max(c[2] for c in cols), c_n), dx.dtype)
    for ry, (ty, iy, ny, py) in enumerate(rows):
        for rx, (tx, ix, nx, px) in enumerate(cols):
            if ny == 0 or nx == 0:
                continue
            if ty == 0 or tx == 0:  # no tap reads these positions (a 1x1 kernel, stride 2)
                _fill_phase(dx, iy, ix, sh, sw, ny, nx)
                continue
            sub = w[ry::sh, rx::sw][::-1, ::-1].transpose(0, 1, 3, 2)
            src = dout  # a negative padding: the phase's first rows read from further down
            if py < 0 or px < 0:
                src = np.ascontiguousarray(dout[:, max(-py, 0) :, max(-px, 0) :])
            if src.shape[1] == 0 or src.shape[2] == 0:
                _fill_phase(dx, iy, ix, sh, sw, ny, nx)
                continue
            part = buffer.reshape(-1)[: n_b * ny * nx * c_n].reshape(n_b, ny, nx, c_n)
            sub = np.ascontiguousarray(sub)
            conv2d_forward(src, sub, zero, 1, 1, 1, 1, max(py, 0), max(px, 0), part)
            _scatter_phase(part, dx, iy, ix, sh, sw)
    return True


def _phase_plan(w, sh, sw, rows, cols):
    """The plan of conv2d_backward_input_phases_direct: a row (ty, tx, iy, ix, ny, nx, py,
    px, offset) per phase that has dx positions, and its sub-kernels (rotated by 180 degrees,
    channel axes swapped) one after another in one flat array."""
    plan, subs, offset = [], [], 0
    for ry, (ty, iy, ny, py) in enumerate(rows):
        for rx, (tx, ix, nx, px) in enumerate(cols):
            if ny == 0 or nx == 0:
                continue
            if ty == 0 or tx == 0:  # no tap reads these positions (a 1x1 kernel, stride 2)
                plan.append((0, 0, iy, ix, ny, nx, 0, 0, 0))
                continue
            sub = w[ry::sh, rx::sw][::-1, ::-1].transpose(0, 1, 3, 2)
            subs.append(np.ascontiguousarray(sub).reshape(-1))
            plan.append((ty, tx, iy, ix, ny, nx, py, px, offset))
            offset += subs[-1].size
    wsub = np.concatenate(subs) if subs else np.zeros(1, dtype=w.dtype)
    return np.array(plan, dtype=np.int64).reshape(-1, 9), wsub


@numba.njit(cache=True, parallel=True)
def _scatter_phase(part, dx, iy, ix, sh, sw):
    """dx[:, iy::sh, ix::sw] = part (its rows and columns), over the threads: numpy's
    strided copy ran on one (0.26 ms of resnet20's 2 MB phases, four per strided layer)."""
    n_b, ny, nx = part.shape[0], part.shape[1], part.shape[2]
    for n in prange(n_b):
        for y in range(ny):
            for x in range(nx):
                dx[n, iy + y * sh, ix + x * sw, :] = part[n, y, x]


@numba.njit(cache=True, parallel=True)
def _fill_phase(dx, iy, ix, sh, sw, ny, nx):
    """dx[:, iy::sh, ix::sw] = 0 (ny rows and nx columns of them), over the threads."""
    for n in prange(dx.shape[0]):
        for y in range(ny):
            for x in range(nx):
                dx[n, iy + y * sh, ix + x * sw, :] = 0


@numba.njit(cache=True, parallel=True)
def conv2d_backward_input_cols(dout, w, sh, sw, dh, dw, pt, pl, dx):
    """dx[n, ih, iw, c] = sum of dout[n, oh, ow, f] * w[i, j, c, f] over all (oh, ow, i, j, f)
    whose tap reads (ih, iw). dx is fully overwritten; dout and dx must be C-contiguous.

    Per block of output rows: column gradients gcols = dout_rows @ w2.T (BLAS), then col2im
    scatter-adds them into dx. Each image writes only dx[n]: chunks of the batch are race-free.
    """
    n_b, h, wd, c_in = dx.shape
    kh, kw, _, f_n = w.shape
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    kk = kh * kw * c_in
    p_n = oh_n * ow_n
    # (F, K) copy so the GEMM's operands are contiguous.
    wt2 = np.ascontiguousarray(np.ascontiguousarray(w).reshape(kk, f_n).T)
    rows = min(_block_rows(ow_n, kk, dx.itemsize, 1), oh_n)
    n_chunks = max(min(n_b, _PAR_CHUNKS), 1)
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        gcols = np.empty((rows * ow_n, kk), dtype=dx.dtype)
        for n in range(n0, n1):
            dx[n, :, :, :] = 0
            d2 = dout[n].reshape(p_n, f_n)
            for oh0 in range(0, oh_n, rows):
                oh1 = min(oh0 + rows, oh_n)
                np.dot(d2[oh0 * ow_n : oh1 * ow_n], wt2, gcols[: (oh1 - oh0) * ow_n])
                for oh in range(oh0, oh1):
                    _col2im_row(
                        gcols[(oh - oh0) * ow_n : (oh - oh0 + 1) * ow_n],
                        n,
                        oh,
                        kh,
                        kw,
                        sh,
                        sw,
                        dh,
                        dw,
                        pt,
                        pl,
                        dx,
                    )


@numba.njit(cache=True, parallel=True)
def sum_chunk_partials(part_w, part_b, dw_out, db_out):
    """dw_out[i, j, c, f] = sum over k in order of part_w[k, ((i*KW + j)*C + c)*F + f], and
    db_out from part_b alike: each element's sum in chunk order (bitwise reproducible), the
    kernel rows spread over the threads (the partials of a 64 -> 128 3x3 kernel are 16 x
    295 KB, a serial pass the other threads would wait for). Indexed 4D (no reshape) so a
    non-contiguous dw_out also works."""
    n_chunks = part_w.shape[0]
    kh, kw, c_n, f_n = dw_out.shape
    for r in prange(kh * kw * c_n):
        i, jc = r // (kw * c_n), r % (kw * c_n)
        j, c = jc // c_n, jc % c_n
        row = part_w[0, r * f_n :][:f_n]
        for f in range(f_n):
            s = row[f]
            for k in range(1, n_chunks):
                s += part_w[k, r * f_n + f]
            dw_out[i, j, c, f] = s
    for f in range(f_n):
        s = part_b[0, f]
        for k in range(1, n_chunks):
            s += part_b[k, f]
        db_out[f] = s


@numba.njit(cache=True, parallel=True)
def conv2d_backward_weights_gemm(x, dout, sh, sw, dh, dw, pt, pl, dw_out, db_out):
    """dw_out[i, j, c, f] = sum_{n, oh, ow} x[n, ih, iw, c] * dout[n, oh, ow, f];
    db_out[f] = sum_{n, oh, ow} dout[n, oh, ow, f]. x and dout must be C-contiguous.

    Both outputs are overwritten. The batch is split into a fixed number of chunks, each
    accumulating into its own partial buffer (race-free); partials are then summed in chunk
    order, so the result is bitwise reproducible whatever the thread count or scheduling.
    """
    n_b = x.shape[0]
    kh, kw, c_in, f_n = dw_out.shape
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    kk = kh * kw * c_in
    p_n = oh_n * ow_n
    n_chunks = max(min(n_b, _WGRAD_CHUNKS), 1)  # >= 1 so an empty batch yields zeros
    part_w = np.zeros((n_chunks, kk, f_n), dtype=dw_out.dtype)
    part_b = np.zeros((n_chunks, f_n), dtype=db_out.dtype)
    d_flat = dout.reshape(n_b * p_n, f_n)  # row (n*OH + oh)*OW + ow
    # Output rows per GEMM block, counted across the chunk's images (a block may span several
    # images): a deep reduction per BLAS call, and one pass adding its product to the partials.
    rows = _block_rows(ow_n, kk, x.itemsize, 4)
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        pw = part_w[k]
        pb = part_b[k]
        if c_in == 1:
            for n in range(n0, n1):
                for oh in range(oh_n):
                    _wgrad_row_one_channel(x, dout[n, oh], n, oh, kw, sh, sw, dh, dw, pt, pl, pw)
        elif c_in < _GEMM_MIN_CHANNELS:
            for n in range(n0, n1):
                for oh in range(oh_n):
                    _wgrad_row_direct(x, dout[n, oh], n, oh, kh, kw, sh, sw, dh, dw, pt, pl, pw)
        else:
            q_end = n1 * oh_n
            rows_k = max(min(rows, q_end - n0 * oh_n), 1)  # no bigger than the chunk needs
            cols = np.empty((rows_k * ow_n, kk), dtype=x.dtype)
            tmp = np.empty((kk, f_n), dtype=dw_out.dtype)
            for q0 in range(n0 * oh_n, q_end, rows_k):
                q1 = min(q0 + rows_k, q_end)
                for q in range(q0, q1):
                    n = q // oh_n
                    r = (q - q0) * ow_n
                    _im2col_row(
                        x, n, q - n * oh_n, kh, kw, sh, sw, dh, dw, pt, pl, cols[r : r + ow_n]
                    )
                np.dot(cols[: (q1 - q0) * ow_n].T, d_flat[q0 * ow_n : q1 * ow_n], tmp)
                for c in range(kk):
                    pc = pw[c]
                    tc = tmp[c]
                    for f in range(f_n):
                        pc[f] += tc[f]
        for p in range(n0 * p_n, n1 * p_n):
            g = d_flat[p]
            for f in range(f_n):
                pb[f] += g[f]
    sum_chunk_partials(part_w.reshape(n_chunks, kk * f_n), part_b, dw_out, db_out)


# --------------------------------------------------------------------------- direct, float32
# A register-blocked direct convolution for float32 (the training and inference dtype): the
# GEMM of each kernel row i, out[6 pixels, 16 filters] += x[6 pixels, KW*C] @ w[i][KW*C, 16],
# runs as one microkernel whose 12 accumulators (6 pixels x 2 vectors of 8 filters) stay in
# ymm registers (32 filters in zmm on AVX-512: direct_lanes) for the whole reduction
# (cnnkit.kernels.simd): per step 2 loads of w, 6
# broadcasts of x, 12 FMAs. No im2col copy: with dilation 1, the KW taps of kernel row i read
# KW*C consecutive floats of an input row, and the next pixel's start sw*C floats further. A
# padded input is copied once per image into a zero-bordered buffer. With 16-lane vectors
# (AVX-512: 32 zmm registers) pixels go 12 at a time as well (_micro12, 24 accumulators), so
# that each weight vector loaded serves 12 FMAs: mnist_lenet's 32 -> 64 5x5 forward went from
# 2.85 to 2.33 ms, its kernel gradient from 2.69 to 2.46 ms. Measured against the
# im2col + OpenBLAS path above (benchmarks/results/2026-12-02-epyc-avx2-kernels).

_MICRO_FILTERS = 16  # the fewest filters a call takes: 2 vectors of 8
# the direct path's conditions (else the im2col + BLAS path above): every channel count,
# the first layer's one channel included (measured 1.5-4x the one-channel and C < 8 loops
# above on the MNIST first layers and resnet20's 3-channel input)
_DIRECT_MIN_CHANNELS = 1


@numba.njit(cache=True)
def _micro6(z, a, a0, a1, a2, a3, a4, a5, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh):
    """c[c0 + p*cp + f] += sum_{k2 < kn2, k < kn} a[a_p + k2*ak2 + k*ak] *
    b[b0 + k2*bk2 + k*bk + f] for the 6 rows p (starting at a0 ... a5 in a) and f < 2L,
    L the lanes of z (a zero vector: 8 or 16), one FMA a step in increasing (k2, k). a, b,
    c: flat float32 arrays; the 12 accumulators stay in registers throughout. fresh: the
    sum starts at zero and is added to c at the end (a partial sum of its own: the weight
    gradient's long reductions are summed in two levels, not as one running sum)."""
    L = vlanes(z)
    c00 = z if fresh else vload_like(z, c, c0)
    c01 = z if fresh else vload_like(z, c, c0 + L)
    c10 = z if fresh else vload_like(z, c, c0 + cp)
    c11 = z if fresh else vload_like(z, c, c0 + cp + L)
    c20 = z if fresh else vload_like(z, c, c0 + 2 * cp)
    c21 = z if fresh else vload_like(z, c, c0 + 2 * cp + L)
    c30 = z if fresh else vload_like(z, c, c0 + 3 * cp)
    c31 = z if fresh else vload_like(z, c, c0 + 3 * cp + L)
    c40 = z if fresh else vload_like(z, c, c0 + 4 * cp)
    c41 = z if fresh else vload_like(z, c, c0 + 4 * cp + L)
    c50 = z if fresh else vload_like(z, c, c0 + 5 * cp)
    c51 = z if fresh else vload_like(z, c, c0 + 5 * cp + L)
    for k2 in range(kn2):
        for k in range(kn):
            bi = b0 + k2 * bk2 + k * bk
            w0 = vload_like(z, b, bi)
            w1 = vload_like(z, b, bi + L)
            ai = k2 * ak2 + k * ak
            u = vbroadcast_like(z, a, a0 + ai)
            c00 = vfma(u, w0, c00)
            c01 = vfma(u, w1, c01)
            u = vbroadcast_like(z, a, a1 + ai)
            c10 = vfma(u, w0, c10)
            c11 = vfma(u, w1, c11)
            u = vbroadcast_like(z, a, a2 + ai)
            c20 = vfma(u, w0, c20)
            c21 = vfma(u, w1, c21)
            u = vbroadcast_like(z, a, a3 + ai)
            c30 = vfma(u, w0, c30)
            c31 = vfma(u, w1, c31)
            u = vbroadcast_like(z, a, a4 + ai)
            c40 = vfma(u, w0, c40)
            c41 = vfma(u, w1, c41)
            u = vbroadcast_like(z, a, a5 + ai)
            c50 = vfma(u, w0, c50)
            c51 = vfma(u, w1, c51)
    if fresh:
        c00 = vadd(vload_like(z, c, c0), c00)
        c01 = vadd(vload_like(z, c, c0 + L), c01)
        c10 = vadd(vload_like(z, c, c0 + cp), c10)
        c11 = vadd(vload_like(z, c, c0 + cp + L), c11)
        c20 = vadd(vload_like(z, c, c0 + 2 * cp), c20)
        c21 = vadd(vload_like(z, c, c0 + 2 * cp + L), c21)
        c30 = vadd(vload_like(z, c, c0 + 3 * cp), c30)
        c31 = vadd(vload_like(z, c, c0 + 3 * cp + L), c31)
        c40 = vadd(vload_like(z, c, c0 + 4 * cp), c40)
        c41 = vadd(vload_like(z, c, c0 + 4 * cp + L), c41)
        c50 = vadd(vload_like(z, c, c0 + 5 * cp), c50)
        c51 = vadd(vload_like(z, c, c0 + 5 * cp + L), c51)
    vstore(c, c0, c00)
    vstore(c, c0 + L, c01)
    vstore(c, c0 + cp, c10)
    vstore(c, c0 + cp + L, c11)
    vstore(c, c0 + 2 * cp, c20)
    vstore(c, c0 + 2 * cp + L, c21)
    vstore(c, c0 + 3 * cp, c30)
    vstore(c, c0 + 3 * cp + L, c31)
    vstore(c, c0 + 4 * cp, c40)
    vstore(c, c0 + 4 * cp + L, c41)
    vstore(c, c0 + 5 * cp, c50)
    vstore(c, c0 + 5 * cp + L, c51)


@numba.njit(cache=True)
def _micro12(
    z,
    a,
    a0,
    a1,
    a2,
    a3,
    a4,
    a5,
    a6,
    a7,
    a8,
    a9,
    a10,
    a11,
    ak,
    ak2,
    b,
    b0,
    bk,
    bk2,
    kn,
    kn2,
    c,
    c0,
    cp,
    fresh,
):
    """_micro6 for 12 rows p: 24 accumulators, for 16-lane vectors (AVX-512 has 32 zmm
    registers; with AVX2's 16 ymm they would spill). Each weight load serves 12 FMAs,
    not 6: half the weight traffic from L2 per FMA."""
    L = vlanes(z)
    c000 = z if fresh else vload_like(z, c, c0)
    c001 = z if fresh else vload_like(z, c, c0 + L)
    c010 = z if fresh else vload_like(z, c, c0 + cp)
    c011 = z if fresh else vload_like(z, c, c0 + cp + L)
    c020 = z if fresh else vload_like(z, c, c0 + 2 * cp)
    c021 = z if fresh else vload_like(z, c, c0 + 2 * cp + L)
    c030 = z if fresh else vload_like(z, c, c0 + 3 * cp)
    c031 = z if fresh else vload_like(z, c, c0 + 3 * cp + L)
    c040 = z if fresh else vload_like(z, c, c0 + 4 * cp)
    c041 = z if fresh else vload_like(z, c, c0 + 4 * cp + L)
    c050 = z if fresh else vload_like(z, c, c0 + 5 * cp)
    c051 = z if fresh else vload_like(z, c, c0 + 5 * cp + L)
    c060 = z if fresh else vload_like(z, c, c0 + 6 * cp)
    c061 = z if fresh else vload_like(z, c, c0 + 6 * cp + L)
    c070 = z if fresh else vload_like(z, c, c0 + 7 * cp)
    c071 = z if fresh else vload_like(z, c, c0 + 7 * cp + L)
    c080 = z if fresh else vload_like(z, c, c0 + 8 * cp)
    c081 = z if fresh else vload_like(z, c, c0 + 8 * cp + L)
    c090 = z if fresh else vload_like(z, c, c0 + 9 * cp)
    c091 = z if fresh else vload_like(z, c, c0 + 9 * cp + L)
    c100 = z if fresh else vload_like(z, c, c0 + 10 * cp)
    c101 = z if fresh else vload_like(z, c, c0 + 10 * cp + L)
    c110 = z if fresh else vload_like(z, c, c0 + 11 * cp)
    c111 = z if fresh else vload_like(z, c, c0 + 11 * cp + L)
    for k2 in range(kn2):
        for k in range(kn):
            bi = b0 + k2 * bk2 + k * bk
            w0 = vload_like(z, b, bi)
            w1 = vload_like(z, b, bi + L)
            ai = k2 * ak2 + k * ak
            u = vbroadcast_like(z, a, a0 + ai)
            c000 = vfma(u, w0, c000)
            c001 = vfma(u, w1, c001)
            u = vbroadcast_like(z, a, a1 + ai)
            c010 = vfma(u, w0, c010)
            c011 = vfma(u, w1, c011)
            u = vbroadcast_like(z, a, a2 + ai)
            c020 = vfma(u, w0, c020)
            c021 = vfma(u, w1, c021)
            u = vbroadcast_like(z, a, a3 + ai)
            c030 = vfma(u, w0, c030)
            c031 = vfma(u, w1, c031)
            u = vbroadcast_like(z, a, a4 + ai)
            c040 = vfma(u, w0, c040)
            c041 = vfma(u, w1, c041)
            u = vbroadcast_like(z, a, a5 + ai)
            c050 = vfma(u, w0, c050)
            c051 = vfma(u, w1, c051)
            u = vbroadcast_like(z, a, a6 + ai)
            c060 = vfma(u, w0, c060)
            c061 = vfma(u, w1, c061)
            u = vbroadcast_like(z, a, a7 + ai)
            c070 = vfma(u, w0, c070)
            c071 = vfma(u, w1, c071)
            u = vbroadcast_like(z, a, a8 + ai)
            c080 = vfma(u, w0, c080)
            c081 = vfma(u, w1, c081)
            u = vbroadcast_like(z, a, a9 + ai)
            c090 = vfma(u, w0, c090)
            c091 = vfma(u, w1, c091)
            u = vbroadcast_like(z, a, a10 + ai)
            c100 = vfma(u, w0, c100)
            c101 = vfma(u, w1, c101)
            u = vbroadcast_like(z, a, a11 + ai)
            c110 = vfma(u, w0, c110)
            c111 = vfma(u, w1, c111)
    if fresh:
        c000 = vadd(vload_like(z, c, c0), c000)
        c001 = vadd(vload_like(z, c, c0 + L), c001)
        c010 = vadd(vload_like(z, c, c0 + cp), c010)
        c011 = vadd(vload_like(z, c, c0 + cp + L), c011)
        c020 = vadd(vload_like(z, c, c0 + 2 * cp), c020)
        c021 = vadd(vload_like(z, c, c0 + 2 * cp + L), c021)
        c030 = vadd(vload_like(z, c, c0 + 3 * cp), c030)
        c031 = vadd(vload_like(z, c, c0 + 3 * cp + L), c031)
        c040 = vadd(vload_like(z, c, c0 + 4 * cp), c040)
        c041 = vadd(vload_like(z, c, c0 + 4 * cp + L), c041)
        c050 = vadd(vload_like(z, c, c0 + 5 * cp), c050)
        c051 = vadd(vload_like(z, c, c0 + 5 * cp + L), c051)
        c060 = vadd(vload_like(z, c, c0 + 6 * cp), c060)
        c061 = vadd(vload_like(z, c, c0 + 6 * cp + L), c061)
        c070 = vadd(vload_like(z, c, c0 + 7 * cp), c070)
        c071 = vadd(vload_like(z, c, c0 + 7 * cp + L), c071)
        c080 = vadd(vload_like(z, c, c0 + 8 * cp), c080)
        c081 = vadd(vload_like(z, c, c0 + 8 * cp + L), c081)
        c090 = vadd(vload_like(z, c, c0 + 9 * cp), c090)
        c091 = vadd(vload_like(z, c, c0 + 9 * cp + L), c091)
        c100 = vadd(vload_like(z, c, c0 + 10 * cp), c100)
        c101 = vadd(vload_like(z, c, c0 + 10 * cp + L), c101)
        c110 = vadd(vload_like(z, c, c0 + 11 * cp), c110)
        c111 = vadd(vload_like(z, c, c0 + 11 * cp + L), c111)
    vstore(c, c0, c000)
    vstore(c, c0 + L, c001)
    vstore(c, c0 + cp, c010)
    vstore(c, c0 + cp + L, c011)
    vstore(c, c0 + 2 * cp, c020)
    vstore(c, c0 + 2 * cp + L, c021)
    vstore(c, c0 + 3 * cp, c030)
    vstore(c, c0 + 3 * cp + L, c031)
    vstore(c, c0 + 4 * cp, c040)
    vstore(c, c0 + 4 * cp + L, c041)
    vstore(c, c0 + 5 * cp, c050)
    vstore(c, c0 + 5 * cp + L, c051)
    vstore(c, c0 + 6 * cp, c060)
    vstore(c, c0 + 6 * cp + L, c061)
    vstore(c, c0 + 7 * cp, c070)
    vstore(c, c0 + 7 * cp + L, c071)
    vstore(c, c0 + 8 * cp, c080)
    vstore(c, c0 + 8 * cp + L, c081)
    vstore(c, c0 + 9 * cp, c090)
    vstore(c, c0 + 9 * cp + L, c091)
    vstore(c, c0 + 10 * cp, c100)
    vstore(c, c0 + 10 * cp + L, c101)
    vstore(c, c0 + 11 * cp, c110)
    vstore(c, c0 + 11 * cp + L, c111)


@numba.njit(cache=True)
def _micro4(z, a, a0, a1, a2, a3, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh):
    """_micro6 for 4 rows p."""
    L = vlanes(z)
    c00 = z if fresh else vload_like(z, c, c0)
    c01 = z if fresh else vload_like(z, c, c0 + L)
    c10 = z if fresh else vload_like(z, c, c0 + cp)
    c11 = z if fresh else vload_like(z, c, c0 + cp + L)
    c20 = z if fresh else vload_like(z, c, c0 + 2 * cp)
    c21 = z if fresh else vload_like(z, c, c0 + 2 * cp + L)
    c30 = z if fresh else vload_like(z, c, c0 + 3 * cp)
    c31 = z if fresh else vload_like(z, c, c0 + 3 * cp + L)
    for k2 in range(kn2):
        for k in range(kn):
            bi = b0 + k2 * bk2 + k * bk
            w0 = vload_like(z, b, bi)
            w1 = vload_like(z, b, bi + L)
            ai = k2 * ak2 + k * ak
            u = vbroadcast_like(z, a, a0 + ai)
            c00 = vfma(u, w0, c00)
            c01 = vfma(u, w1, c01)
            u = vbroadcast_like(z, a, a1 + ai)
            c10 = vfma(u, w0, c10)
            c11 = vfma(u, w1, c11)
            u = vbroadcast_like(z, a, a2 + ai)
            c20 = vfma(u, w0, c20)
            c21 = vfma(u, w1, c21)
            u = vbroadcast_like(z, a, a3 + ai)
            c30 = vfma(u, w0, c30)
            c31 = vfma(u, w1, c31)
    if fresh:
        c00 = vadd(vload_like(z, c, c0), c00)
        c01 = vadd(vload_like(z, c, c0 + L), c01)
        c10 = vadd(vload_like(z, c, c0 + cp), c10)
        c11 = vadd(vload_like(z, c, c0 + cp + L), c11)
        c20 = vadd(vload_like(z, c, c0 + 2 * cp), c20)
        c21 = vadd(vload_like(z, c, c0 + 2 * cp + L), c21)
        c30 = vadd(vload_like(z, c, c0 + 3 * cp), c30)
        c31 = vadd(vload_like(z, c, c0 + 3 * cp + L), c31)
    vstore(c, c0, c00)
    vstore(c, c0 + L, c01)
    vstore(c, c0 + cp, c10)
    vstore(c, c0 + cp + L, c11)
    vstore(c, c0 + 2 * cp, c20)
    vstore(c, c0 + 2 * cp + L, c21)
    vstore(c, c0 + 3 * cp, c30)
    vstore(c, c0 + 3 * cp + L, c31)


@numba.njit(cache=True)
def _micro1(z, a, a0, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh):
    """_micro6 for 1 row p."""
    L = vlanes(z)
    c00 = z if fresh else vload_like(z, c, c0)
    c01 = z if fresh else vload_like(z, c, c0 + L)
    for k2 in range(kn2):
        for k in range(kn):
            bi = b0 + k2 * bk2 + k * bk
            w0 = vload_like(z, b, bi)
            w1 = vload_like(z, b, bi + L)
            ai = k2 * ak2 + k * ak
            u = vbroadcast_like(z, a, a0 + ai)
            c00 = vfma(u, w0, c00)
            c01 = vfma(u, w1, c01)
    if fresh:
        c00 = vadd(vload_like(z, c, c0), c00)
        c01 = vadd(vload_like(z, c, c0 + L), c01)
    vstore(c, c0, c00)
    vstore(c, c0 + L, c01)


@numba.njit(cache=True)
def _micro12v1(
    z,
    a,
    a0,
    a1,
    a2,
    a3,
    a4,
    a5,
    a6,
    a7,
    a8,
    a9,
    a10,
    a11,
    ak,
    ak2,
    b,
    b0,
    bk,
    bk2,
    kn,
    kn2,
    c,
    c0,
    cp,
    fresh,
):
    """_micro6 with one vector of filters a pixel (16 filters on 16 lanes: F = 16 on
    AVX-512), for 12 pixels: 12 accumulators, each weight vector loaded serving 12
    FMAs."""
    c00 = z if fresh else vload_like(z, c, c0)
    c01 = z if fresh else vload_like(z, c, c0 + cp)
    c02 = z if fresh else vload_like(z, c, c0 + 2 * cp)
    c03 = z if fresh else vload_like(z, c, c0 + 3 * cp)
    c04 = z if fresh else vload_like(z, c, c0 + 4 * cp)
    c05 = z if fresh else vload_like(z, c, c0 + 5 * cp)
    c06 = z if fresh else vload_like(z, c, c0 + 6 * cp)
    c07 = z if fresh else vload_like(z, c, c0 + 7 * cp)
    c08 = z if fresh else vload_like(z, c, c0 + 8 * cp)
    c09 = z if fresh else vload_like(z, c, c0 + 9 * cp)
    c10 = z if fresh else vload_like(z, c, c0 + 10 * cp)
    c11 = z if fresh else vload_like(z, c, c0 + 11 * cp)
    for k2 in range(kn2):
        for k in range(kn):
            w0 = vload_like(z, b, b0 + k2 * bk2 + k * bk)
            ai = k2 * ak2 + k * ak
            c00 = vfma(vbroadcast_like(z, a, a0 + ai), w0, c00)
            c01 = vfma(vbroadcast_like(z, a, a1 + ai), w0, c01)
            c02 = vfma(vbroadcast_like(z, a, a2 + ai), w0, c02)
            c03 = vfma(vbroadcast_like(z, a, a3 + ai), w0, c03)
            c04 = vfma(vbroadcast_like(z, a, a4 + ai), w0, c04)
            c05 = vfma(vbroadcast_like(z, a, a5 + ai), w0, c05)
            c06 = vfma(vbroadcast_like(z, a, a6 + ai), w0, c06)
            c07 = vfma(vbroadcast_like(z, a, a7 + ai), w0, c07)
            c08 = vfma(vbroadcast_like(z, a, a8 + ai), w0, c08)
            c09 = vfma(vbroadcast_like(z, a, a9 + ai), w0, c09)
            c10 = vfma(vbroadcast_like(z, a, a10 + ai), w0, c10)
            c11 = vfma(vbroadcast_like(z, a, a11 + ai), w0, c11)
    if fresh:
        c00 = vadd(vload_like(z, c, c0), c00)
        c01 = vadd(vload_like(z, c, c0 + cp), c01)
        c02 = vadd(vload_like(z, c, c0 + 2 * cp), c02)
        c03 = vadd(vload_like(z, c, c0 + 3 * cp), c03)
        c04 = vadd(vload_like(z, c, c0 + 4 * cp), c04)
        c05 = vadd(vload_like(z, c, c0 + 5 * cp), c05)
        c06 = vadd(vload_like(z, c, c0 + 6 * cp), c06)
        c07 = vadd(vload_like(z, c, c0 + 7 * cp), c07)
        c08 = vadd(vload_like(z, c, c0 + 8 * cp), c08)
        c09 = vadd(vload_like(z, c, c0 + 9 * cp), c09)
        c10 = vadd(vload_like(z, c, c0 + 10 * cp), c10)
        c11 = vadd(vload_like(z, c, c0 + 11 * cp), c11)
    vstore(c, c0, c00)
    vstore(c, c0 + cp, c01)
    vstore(c, c0 + 2 * cp, c02)
    vstore(c, c0 + 3 * cp, c03)
    vstore(c, c0 + 4 * cp, c04)
    vstore(c, c0 + 5 * cp, c05)
    vstore(c, c0 + 6 * cp, c06)
    vstore(c, c0 + 7 * cp, c07)
    vstore(c, c0 + 8 * cp, c08)
    vstore(c, c0 + 9 * cp, c09)
    vstore(c, c0 + 10 * cp, c10)
    vstore(c, c0 + 11 * cp, c11)


@numba.njit(cache=True)
def _micro6v1(z, a, a0, a1, a2, a3, a4, a5, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh):
    """_micro12v1 for 6 rows p."""
    c00 = z if fresh else vload_like(z, c, c0)
    c01 = z if fresh else vload_like(z, c, c0 + cp)
    c02 = z if fresh else vload_like(z, c, c0 + 2 * cp)
    c03 = z if fresh else vload_like(z, c, c0 + 3 * cp)
    c04 = z if fresh else vload_like(z, c, c0 + 4 * cp)
    c05 = z if fresh else vload_like(z, c, c0 + 5 * cp)
    for k2 in range(kn2):
        for k in range(kn):
            w0 = vload_like(z, b, b0 + k2 * bk2 + k * bk)
            ai = k2 * ak2 + k * ak
            c00 = vfma(vbroadcast_like(z, a, a0 + ai), w0, c00)
            c01 = vfma(vbroadcast_like(z, a, a1 + ai), w0, c01)
            c02 = vfma(vbroadcast_like(z, a, a2 + ai), w0, c02)
            c03 = vfma(vbroadcast_like(z, a, a3 + ai), w0, c03)
            c04 = vfma(vbroadcast_like(z, a, a4 + ai), w0, c04)
            c05 = vfma(vbroadcast_like(z, a, a5 + ai), w0, c05)
    if fresh:
        c00 = vadd(vload_like(z, c, c0), c00)
        c01 = vadd(vload_like(z, c, c0 + cp), c01)
        c02 = vadd(vload_like(z, c, c0 + 2 * cp), c02)
        c03 = vadd(vload_like(z, c, c0 + 3 * cp), c03)
        c04 = vadd(vload_like(z, c, c0 + 4 * cp), c04)
        c05 = vadd(vload_like(z, c, c0 + 5 * cp), c05)
    vstore(c, c0, c00)
    vstore(c, c0 + cp, c01)
    vstore(c, c0 + 2 * cp, c02)
    vstore(c, c0 + 3 * cp, c03)
    vstore(c, c0 + 4 * cp, c04)
    vstore(c, c0 + 5 * cp, c05)


@numba.njit(cache=True)
def _micro4v1(z, a, a0, a1, a2, a3, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh):
    """_micro12v1 for 4 rows p."""
    c00 = z if fresh else vload_like(z, c, c0)
    c01 = z if fresh else vload_like(z, c, c0 + cp)
    c02 = z if fresh else vload_like(z, c, c0 + 2 * cp)
    c03 = z if fresh else vload_like(z, c, c0 + 3 * cp)
    for k2 in range(kn2):
        for k in range(kn):
            w0 = vload_like(z, b, b0 + k2 * bk2 + k * bk)
            ai = k2 * ak2 + k * ak
            c00 = vfma(vbroadcast_like(z, a, a0 + ai), w0, c00)
            c01 = vfma(vbroadcast_like(z, a, a1 + ai), w0, c01)
            c02 = vfma(vbroadcast_like(z, a, a2 + ai), w0, c02)
            c03 = vfma(vbroadcast_like(z, a, a3 + ai), w0, c03)
    if fresh:
        c00 = vadd(vload_like(z, c, c0), c00)
        c01 = vadd(vload_like(z, c, c0 + cp), c01)
        c02 = vadd(vload_like(z, c, c0 + 2 * cp), c02)
        c03 = vadd(vload_like(z, c, c0 + 3 * cp), c03)
    vstore(c, c0, c00)
    vstore(c, c0 + cp, c01)
    vstore(c, c0 + 2 * cp, c02)
    vstore(c, c0 + 3 * cp, c03)


@numba.njit(cache=True)
def _micro1v1(z, a, a0, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh):
    """_micro12v1 for 1 row p."""
    c00 = z if fresh else vload_like(z, c, c0)
    for k2 in range(kn2):
        for k in range(kn):
            w0 = vload_like(z, b, b0 + k2 * bk2 + k * bk)
            ai = k2 * ak2 + k * ak
            c00 = vfma(vbroadcast_like(z, a, a0 + ai), w0, c00)
    if fresh:
        c00 = vadd(vload_like(z, c, c0), c00)
    vstore(c, c0, c00)


@numba.njit(cache=True)
def _padded_extent(oh_n, ow_n, kh, kw, sh, sw):
    """Rows and columns of input the outputs read (dilation 1), padding included."""
    return (oh_n - 1) * sh + kh, (ow_n - 1) * sw + kw


@numba.njit(cache=True)
def _image_source(x1, xp, n, h, wd, c_n, hp, wp, pt, pl, padded):
    """(flat array, offset of row 0, row stride) to read image n from: x itself, or xp, a
    zero-bordered (hp, wp, C) copy of it shifted by the padding (borders stay zero)."""
    if not padded:
        return x1, n * h * wd * c_n, wd * c_n
    rs = wp * c_n
    span = min(wd, wp - pl) * c_n
    for ih in range(min(h, hp - pt)):
        # each row through slices indexed by the loop counter alone: with an index like
        # dst + q, whose sign LLVM cannot prove, Numba's negative-index check stays in the
        # loop and the copy is scalar (1.39 -> 0.2 ms for 128 images of 14x14x64)
        src = x1[(n * h + ih) * wd * c_n :][:span]
        dst = xp[(ih + pt) * rs + pl * c_n :][:span]
        for q in range(span):
            dst[q] = src[q]
    return xp, 0, rs


@numba.njit(cache=True)
def _blocks(m):
    """(blocks of 6, blocks of 4) covering most of m items, the rest taken one by one: the
    even m exactly (8 = 4 + 4, 26 = 3*6 + 2*4), odd m but one."""
    even = m - m % 2
    rest = even % 6
    n4 = 0 if rest == 0 else (1 if rest == 4 else 2)  # 2 -> 8 = 4 + 4
    if 4 * n4 > even:
        n4 = 0
    return (even - 4 * n4) // 6, n4


# One vector of filters a pixel or two: `v`, a tuple of that length (its length is a constant
# of its type, so each specialisation keeps one branch). F = 16 on 16 lanes takes one.
@numba.njit(cache=True)
def _mk12(z, v, a, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, ak, ak2,
          b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh):  # fmt: skip
    if len(v) == 2:
        _micro12(
            z, a, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, ak, ak2,
            b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh,
        )  # fmt: skip
    else:
        _micro12v1(
            z, a, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, ak, ak2,
            b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh,
        )  # fmt: skip


@numba.njit(cache=True)
def _mk6(z, v, a, a0, a1, a2, a3, a4, a5, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh):
    if len(v) == 2:
        _micro6(z, a, a0, a1, a2, a3, a4, a5, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh)
    else:
        _micro6v1(z, a, a0, a1, a2, a3, a4, a5, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh)


@numba.njit(cache=True)
def _mk4(z, v, a, a0, a1, a2, a3, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh):
    if len(v) == 2:
        _micro4(z, a, a0, a1, a2, a3, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh)
    else:
        _micro4v1(z, a, a0, a1, a2, a3, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh)


@numba.njit(cache=True)
def _mk1(z, v, a, a0, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh):
    if len(v) == 2:
        _micro1(z, a, a0, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh)
    else:
        _micro1v1(z, a, a0, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, fresh)


@numba.njit(cache=True)
def _micro_blocks(z, v, a, a0, ap, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0, cp, m, cstep):
    """The microkernels over m rows p of c (row p at c0 + p*cstep, reading a0 + p*ap):
    blocks of 12 (16-lane vectors only), then of 6, then of 4, then single rows; each call's
    sum added to c as a whole."""
    p = 0
    if vlanes(z) == 16:  # a constant: the 8-lane specialisation drops this loop
        for _ in range(m // 12):
            q = a0 + p * ap
            _mk12(
                z, v, a, q, q + ap, q + 2 * ap, q + 3 * ap, q + 4 * ap, q + 5 * ap, q + 6 * ap,
                q + 7 * ap, q + 8 * ap, q + 9 * ap, q + 10 * ap, q + 11 * ap, ak, ak2,
                b, b0, bk, bk2, kn, kn2, c, c0 + p * cstep, cp, True,
            )  # fmt: skip
            p += 12
    n6, n4 = _blocks(m - p)
    for _ in range(n6):
        q = a0 + p * ap
        _mk6(
            z, v, a, q, q + ap, q + 2 * ap, q + 3 * ap, q + 4 * ap, q + 5 * ap, ak, ak2,
            b, b0, bk, bk2, kn, kn2, c, c0 + p * cstep, cp, True,
        )  # fmt: skip
        p += 6
    for _ in range(n4):
        q = a0 + p * ap
        _mk4(
            z, v, a, q, q + ap, q + 2 * ap, q + 3 * ap, ak, ak2,
            b, b0, bk, bk2, kn, kn2, c, c0 + p * cstep, cp, True,
        )  # fmt: skip
        p += 4
    for r in range(p, m):
        _mk1(z, v, a, a0 + r * ap, ak, ak2, b, b0, bk, bk2, kn, kn2, c, c0 + r * cstep, cp, True)


@numba.njit(cache=True)
def _pixel_offset(q, ow_n, sh, sw, c_n, rs, base, i0):
    """Offset in the image source of output pixel q's (raster order) first tap, kernel row i0."""
    oh = q // ow_n
    return base + (oh * sh + i0) * rs + (q - oh * ow_n) * sw * c_n


@numba.njit(cache=True)
def _pixel_offsets12(q, ow_n, sh, sw, c_n, rs, base, i0):
    """_pixel_offset of pixels q+1 ... q+11."""
    return (
        _pixel_offset(q + 1, ow_n, sh, sw, c_n, rs, base, i0),
        _pixel_offset(q + 2, ow_n, sh, sw, c_n, rs, base, i0),
        _pixel_offset(q + 3, ow_n, sh, sw, c_n, rs, base, i0),
        _pixel_offset(q + 4, ow_n, sh, sw, c_n, rs, base, i0),
        _pixel_offset(q + 5, ow_n, sh, sw, c_n, rs, base, i0),
        _pixel_offset(q + 6, ow_n, sh, sw, c_n, rs, base, i0),
        _pixel_offset(q + 7, ow_n, sh, sw, c_n, rs, base, i0),
        _pixel_offset(q + 8, ow_n, sh, sw, c_n, rs, base, i0),
        _pixel_offset(q + 9, ow_n, sh, sw, c_n, rs, base, i0),
        _pixel_offset(q + 10, ow_n, sh, sw, c_n, rs, base, i0),
        _pixel_offset(q + 11, ow_n, sh, sw, c_n, rs, base, i0),
    )


@numba.njit(cache=True)
def _tap_rows(oh, sh, pt, h, kh):
    """Kernel rows [i0, i1) of output row oh that read input rows, not padding."""
    i0 = min(max(pt - oh * sh, 0), kh)
    return i0, max(min(h + pt - oh * sh, kh), i0)


@numba.njit(cache=True)
def _forward_pixels(z, v, src, base, rs, w1, f_n, span, kh, h, sh, sw, pt, c_n, ow_n, o1, ob, q, m):
    """Adds the convolution to m (12, 6, 4 or 1) output pixels q, q+1, ... (raster order: a
    block may span two output rows) for every block of len(v) vectors of filters: kernel rows
    that read padding only are skipped when all the block's pixels skip the same (their values
    are zeros)."""
    i0, i1 = _tap_rows(q // ow_n, sh, pt, h, kh)
    j0, j1 = _tap_rows((q + m - 1) // ow_n, sh, pt, h, kh)
    if i0 != j0 or i1 != j1:
        i0, i1 = 0, kh  # the padded copy holds the zeros
    a0 = _pixel_offset(q, ow_n, sh, sw, c_n, rs, base, i0)
    c0 = ob + q * f_n
    b0 = i0 * span * f_n
    kn2 = i1 - i0
    for f0 in range(0, f_n, len(v) * vlanes(z)):
        if m == 12:
            p = _pixel_offsets12(q, ow_n, sh, sw, c_n, rs, base, i0)
            _mk12(
                z, v, src, a0, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10],
                1, rs, w1, b0 + f0, f_n, span * f_n, span, kn2, o1, c0 + f0, f_n, False,
            )  # fmt: skip
        elif m == 6:
            _mk6(
                z, v, src, a0, _pixel_offset(q + 1, ow_n, sh, sw, c_n, rs, base, i0),
                _pixel_offset(q + 2, ow_n, sh, sw, c_n, rs, base, i0),
                _pixel_offset(q + 3, ow_n, sh, sw, c_n, rs, base, i0),
                _pixel_offset(q + 4, ow_n, sh, sw, c_n, rs, base, i0),
                _pixel_offset(q + 5, ow_n, sh, sw, c_n, rs, base, i0),
                1, rs, w1, b0 + f0, f_n, span * f_n, span, kn2, o1, c0 + f0, f_n, False,
            )  # fmt: skip
        elif m == 4:
            _mk4(
                z, v, src, a0, _pixel_offset(q + 1, ow_n, sh, sw, c_n, rs, base, i0),
                _pixel_offset(q + 2, ow_n, sh, sw, c_n, rs, base, i0),
                _pixel_offset(q + 3, ow_n, sh, sw, c_n, rs, base, i0),
                1, rs, w1, b0 + f0, f_n, span * f_n, span, kn2, o1, c0 + f0, f_n, False,
            )  # fmt: skip
        else:
            _mk1(
                z,
                v,
                src,
                a0,
                1,
                rs,
                w1,
                b0 + f0,
                f_n,
                span * f_n,
                span,
                kn2,
                o1,
                c0 + f0,
                f_n,
                False,
            )


@numba.njit(cache=True)
def _image_pixels(z, v, src, base, rs, w1, f_n, span, kh, h, sh, sw, pt, c_n, oh_n, ow_n, o1, ob):
    """Adds one image's convolution to its oh_n * ow_n output pixels at o1[ob:]: blocks of 12
    pixels in raster order (16 lanes only), then of 6, of 4, and single pixels (a block may
    span two output rows: 8x8 outputs take ten blocks of 6 and one of 4 on 8 lanes, not eight
    blocks of 4 with 8 accumulators, too few to hide the FMA latency)."""
    q0 = 0
    if vlanes(z) == 16:  # a constant (see _micro_blocks)
        for t in range(oh_n * ow_n // 12):
            _forward_pixels(
                z, v, src, base, rs, w1, f_n, span, kh, h, sh, sw, pt, c_n, ow_n, o1, ob,
                12 * t, 12,
            )  # fmt: skip
        q0 = oh_n * ow_n // 12 * 12
    n6, n4 = _blocks(oh_n * ow_n - q0)
    for t in range(n6):
        _forward_pixels(
            z, v, src, base, rs, w1, f_n, span, kh, h, sh, sw, pt, c_n, ow_n, o1, ob,
            q0 + 6 * t, 6,
        )  # fmt: skip
    for t in range(n4):
        _forward_pixels(
            z, v, src, base, rs, w1, f_n, span, kh, h, sh, sw, pt, c_n, ow_n, o1, ob,
            q0 + 6 * n6 + 4 * t, 4,
        )  # fmt: skip
    for q in range(q0 + 6 * n6 + 4 * n4, oh_n * ow_n):
        _forward_pixels(
            z, v, src, base, rs, w1, f_n, span, kh, h, sh, sw, pt, c_n, ow_n, o1, ob, q, 1
        )


@numba.njit(cache=True, parallel=True)
def conv2d_forward_direct(x, w, b, sh, sw, pt, pl, out, relu, lanes):
    """conv2d_forward for float32, dilation 1, F a multiple of V * L (see above): lanes is a
    direct_tag, L lanes (8 or 16) and V vectors of filters a pixel (1 or 2); direct_lanes
    chooses it.

    Per image: the outputs start at the bias, then each block of 12 (16 lanes only), 6, 4
    or 1 pixels in raster order (a block may span two output rows: 8x8 outputs take ten
    blocks of 6 and one of 4 on 8 lanes, not eight blocks of 4 with 8 accumulators, too few
    to hide the FMA latency) and each block of V * L filters adds all kernel rows (i, then
    (j, c) increasing) in one microkernel call."""
    z, v = vzeros(lanes[0]), lanes[1]
    n_b, h, wd, c_n = x.shape
    kh, kw, _, f_n = w.shape
    oh_n, ow_n = out.shape[1], out.shape[2]
    hp, wp = _padded_extent(oh_n, ow_n, kh, kw, sh, sw)
    padded = pt > 0 or pl > 0 or hp > h or wp > wd
    span = kw * c_n
    x1 = x.reshape(-1)
    w1 = np.ascontiguousarray(w).reshape(-1)
    o1 = out.reshape(-1)
    n_chunks = max(min(n_b, _PAR_CHUNKS), 1)
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        xp = np.zeros(hp * wp * c_n if padded else 0, dtype=x.dtype)
        for n in range(n0, n1):
            src, base, rs = _image_source(x1, xp, n, h, wd, c_n, hp, wp, pt, pl, padded)
            ob = n * oh_n * ow_n * f_n
            image = o1[ob:][: oh_n * ow_n * f_n]  # (a slice: see _image_source)
            for q in range(oh_n * ow_n):
                for f in range(f_n):
                    image[q * f_n + f] = b[f]
            _image_pixels(
                z, v, src, base, rs, w1, f_n, span, kh, h, sh, sw, pt, c_n, oh_n, ow_n, o1, ob
            )
            if relu:
                for q in range(image.shape[0]):
                    image[q] = max(image[q], 0)


@numba.njit(cache=True)
def _phase_source(d1, n, oh_n, ow_n, f_n, py, px, hp, wp, xp):
    """xp[yy, xx] = dout[n, yy - py, xx - px] (zero outside dout), hp x wp x F: one phase's
    padded source (a negative py or px starts that far into dout)."""
    xp[: hp * wp * f_n] = 0
    x0, x1 = max(px, 0), min(wp, ow_n + px)
    span = max(x1 - x0, 0) * f_n
    for yy in range(max(py, 0), min(hp, oh_n + py)):
        src = d1[((n * oh_n + yy - py) * ow_n + x0 - px) * f_n :][:span]  # (see _image_source)
        dst = xp[(yy * wp + x0) * f_n :][:span]
        for q in range(span):
            dst[q] = src[q]


@numba.njit(cache=True, parallel=True)
def conv2d_backward_input_phases_direct(dout, wsub, plan, sh, sw, dx, lanes):
    """_backward_input_by_phases on the direct kernels, all phases of an image in one pass
    over the threads: per image and phase (a row of plan: taps ty, tx, first dx row and
    column iy, ix, their counts ny, nx, padding py, px and the sub-kernel's offset in wsub),
    a zero-bordered copy of dout[n], the stride-1 convolution into a small buffer that stays
    in cache, and its copy into every sh-th row and sw-th column of dx[n]. Phases without
    taps (ty == 0) write zeros. Each phase's sums as conv2d_forward_direct's: bitwise the
    per-phase path (exact zeros aside, whose sign may differ)."""
    z, v = vzeros(lanes[0]), lanes[1]
    n_b, oh_n, ow_n, f_n = dout.shape
    h, wd, c_n = dx.shape[1], dx.shape[2], dx.shape[3]
    src_n, out_n = 1, 1
    for p in range(plan.shape[0]):
        src_n = max(src_n, (plan[p, 4] - 1 + plan[p, 0]) * (plan[p, 5] - 1 + plan[p, 1]) * f_n)
        out_n = max(out_n, plan[p, 4] * plan[p, 5] * c_n)
    d1 = dout.reshape(-1)
    x1 = dx.reshape(-1)
    n_chunks = max(min(n_b, _PAR_CHUNKS), 1)
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        xp = np.empty(src_n, dtype=dx.dtype)
        part = np.empty(out_n, dtype=dx.dtype)
        for n in range(n0, n1):
            for p in range(plan.shape[0]):
                ty, tx, iy, ix, ny, nx, py, px, w0 = plan[p]
                part[: ny * nx * c_n] = 0
                if ty > 0:
                    hp, wp = ny - 1 + ty, nx - 1 + tx
                    if py <= 0 and px <= 0 and hp - py <= oh_n and wp - px <= ow_n:
                        # the phase reads dout[n] only, no border: in place
                        src, base, rs = d1, ((n * oh_n - py) * ow_n - px) * f_n, ow_n * f_n
                    else:
                        _phase_source(d1, n, oh_n, ow_n, f_n, py, px, hp, wp, xp)
                        src, base, rs = xp, 0, wp * f_n
                    _image_pixels(
                        z, v, src, base, rs, wsub[w0:], c_n, tx * f_n, ty, hp, 1, 1, 0, f_n,
                        ny, nx, part, 0,
                    )  # fmt: skip
                for y in range(ny):
                    for x in range(nx):
                        dst = x1[((n * h + iy + y * sh) * wd + ix + x * sw) * c_n :][:c_n]
                        src = part[(y * nx + x) * c_n :][:c_n]
                        for c in range(c_n):
                            dst[c] = src[c]


# Output rows per weight-gradient microkernel call: about this many pixels, so that the x and
# dout values one call reads stay in L1.
_WGRAD_PIXELS = 96


@numba.njit(cache=True, parallel=True)
def conv2d_backward_weights_direct(x, dout, sh, sw, pt, pl, dw_out, db_out, lanes):
    """conv2d_backward_weights for float32, dilation 1, F a multiple of V * L (V, L and
    lanes as in conv2d_forward_direct): per image, group of output rows, kernel row i and
    block of V * L filters, the microkernels add 12 (16 lanes only), 6, 4 or 1 consecutive
    (j, c) rows of the kernel gradient, dW[i, (j, c), f] += sum over the
    group's pixels of x[ih, ow*sw + ..] * dout[oh, ow, f]. Fixed batch chunks, each with its
    own partial sums, summed in chunk order (as the GEMM path): bitwise reproducible."""
    z, v = vzeros(lanes[0]), lanes[1]
    n_b, h, wd, c_n = x.shape
    kh, kw, _, f_n = dw_out.shape
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    hp, wp = _padded_extent(oh_n, ow_n, kh, kw, sh, sw)
    padded = pt > 0 or pl > 0 or hp > h or wp > wd
    span = kw * c_n
    kk = kh * span
    x1 = x.reshape(-1)
    d1 = dout.reshape(-1)
    n_chunks = max(min(n_b, _WGRAD_CHUNKS), 1)
    part_w = np.zeros((n_chunks, kk * f_n), dtype=dw_out.dtype)
    part_b = np.zeros((n_chunks, f_n), dtype=db_out.dtype)
    rows = max(1, min(oh_n, _WGRAD_PIXELS // max(ow_n, 1)))
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        pw = part_w[k]
        pb = part_b[k]
        xp = np.zeros(hp * wp * c_n if padded else 0, dtype=x.dtype)
        for n in range(n0, n1):
            src, base, rs = _image_source(x1, xp, n, h, wd, c_n, hp, wp, pt, pl, padded)
            for oh0 in range(0, oh_n, rows):
                r_n = min(rows, oh_n - oh0)
                db0 = (n * oh_n + oh0) * ow_n * f_n
                for i in range(kh):
                    a0 = base + (oh0 * sh + i) * rs
                    for f0 in range(0, f_n, len(v) * vlanes(z)):
                        _micro_blocks(
                            z, v, src, a0, 1, sw * c_n, sh * rs, d1, db0 + f0, f_n, ow_n * f_n,
                            ow_n, r_n, pw, i * span * f_n + f0, f_n, span, f_n,
                        )  # fmt: skip
            d0 = n * oh_n * ow_n * f_n
            image = d1[d0:][: oh_n * ow_n * f_n]  # (a slice: see _image_source)
            for q in range(oh_n * ow_n):
                for f in range(f_n):
                    pb[f] += image[q * f_n + f]
    sum_chunk_partials(part_w, part_b, dw_out, db_out)


def _direct(x, w, f_n, ow_n, dh, dw):
    """Whether the direct float32 kernels take this convolution."""
    return (
        x.dtype == np.float32
        and w.dtype == np.float32
        and dh == 1
        and dw == 1
        and f_n % _MICRO_FILTERS == 0
        and x.shape[3] >= _DIRECT_MIN_CHANNELS
        and x.flags.c_contiguous
    )


def direct_tag(lanes: int, vectors: int) -> tuple:
    """What the direct kernels take as `lanes`: (width_tag(lanes), a tuple of `vectors`), the
    vector width and the vectors of filters a pixel, each a constant of the tuple's type."""
    return (width_tag(lanes), (0,) * vectors)


def direct_lanes(f_n: int) -> tuple:
    """The direct kernels' direct_tag for F filters: two vectors of the machine's widest
    (cnnkit.kernels.simd.WIDE_LANES: 16 on AVX-512) where they divide F, else one of them
    where that divides F (F = 16 on AVX-512), else two of 8. Every choice gives bitwise the
    same results (the same sums in the same order per lane)."""
    if f_n % (2 * WIDE_LANES) == 0:
        return _TAGS[WIDE_LANES, 2]
    return _TAGS[WIDE_LANES, 1] if f_n % WIDE_LANES == 0 else _TAGS[8, 2]


_TAGS = {(lanes, vectors): direct_tag(lanes, vectors) for lanes in (8, 16) for vectors in (1, 2)}


def conv2d_forward(x, w, b, sh, sw, dh, dw, pt, pl, out, relu=False):
    """out[n, oh, ow, f] = b[f] + sum_{i, j, c} x[n, ih, iw, c] * w[i, j, c, f], then
    max(out, 0) when relu (the fused activation). x and out must be C-contiguous.

    float32 with dilation 1 and F % 16 == 0: the register-blocked direct kernel
    (conv2d_forward_direct, on zmm registers where AVX-512 and F % 32 == 0 allow); otherwise
    im2col + BLAS, or direct loops for few input channels (conv2d_forward_gemm)."""
    if _direct(x, w, w.shape[3], out.shape[2], dh, dw) and out.flags.c_contiguous:
        b32 = np.ascontiguousarray(b, dtype=np.float32)
        conv2d_forward_direct(x, w, b32, sh, sw, pt, pl, out, relu, direct_lanes(w.shape[3]))
    else:
        conv2d_forward_gemm(x, w, b, sh, sw, dh, dw, pt, pl, out, relu)


def conv2d_backward_weights(x, dout, sh, sw, dh, dw, pt, pl, dw_out, db_out):
    """dw_out[i, j, c, f] = sum_{n, oh, ow} x[n, ih, iw, c] * dout[n, oh, ow, f];
    db_out[f] = sum_{n, oh, ow} dout[n, oh, ow, f]. x and dout must be C-contiguous; both
    outputs are overwritten. The direct float32 kernel under conv2d_forward's conditions,
    else the im2col + BLAS path (conv2d_backward_weights_gemm); both bitwise reproducible."""
    if (
        _direct(x, dw_out, dw_out.shape[3], dout.shape[2], dh, dw)
        and dout.dtype == np.float32
        and dout.flags.c_contiguous
    ):
        lanes = direct_lanes(dw_out.shape[3])
        conv2d_backward_weights_direct(x, dout, sh, sw, pt, pl, dw_out, db_out, lanes)
    else:
        conv2d_backward_weights_gemm(x, dout, sh, sw, dh, dw, pt, pl, dw_out, db_out)
