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
def conv2d_forward(x, w, b, sh, sw, dh, dw, pt, pl, out, relu=False):
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
    measured 2.3x slower): the convolution path needs H*W <= 1.25 * OH*OW.
    """
    kh, kw = w.shape[0], w.shape[1]
    h, wd = dx.shape[1], dx.shape[2]
    small_output = h * wd * 4 > dout.shape[1] * dout.shape[2] * 5
    if sh == 1 and sw == 1 and not small_output and (kh - 1) * dh >= pt and (kw - 1) * dw >= pl:
        wt = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))
        zero = np.zeros(wt.shape[3], dtype=dx.dtype)
        conv2d_forward(dout, wt, zero, 1, 1, dh, dw, (kh - 1) * dh - pt, (kw - 1) * dw - pl, dx)
    else:
        conv2d_backward_input_cols(dout, w, sh, sw, dh, dw, pt, pl, dx)


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
def conv2d_backward_weights(x, dout, sh, sw, dh, dw, pt, pl, dw_out, db_out):
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
    # Fixed-order reduction over chunks (serial: the buffers are small).
    # Indexed 4D (no reshape) so a non-contiguous dw_out also works.
    r = 0
    for i in range(kh):
        for j in range(kw):
            for c in range(c_in):
                for f in range(f_n):
                    s = part_w[0, r, f]
                    for k in range(1, n_chunks):
                        s += part_w[k, r, f]
                    dw_out[i, j, c, f] = s
                r += 1
    for f in range(f_n):
        s = part_b[0, f]
        for k in range(1, n_chunks):
            s += part_b[k, f]
        db_out[f] = s
