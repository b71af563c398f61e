"""Depthwise convolution for float32 on 8-lane vectors (cnnkit.kernels.simd): the case of
cnnkit.kernels.grouped that MobileNet-style networks run most, one input channel per group.

Layouts as in cnnkit.kernels.grouped: x (N, H, W, C), the kernel as (KH*KW, F) rows (tap
t = i*KW + j), out (N, OH, OW, F), F = C*M. A multiplier M > 1 is first turned into M = 1 by
repeating each input channel M times (into the padded copy), so that output channel f
always reads input channel f. Every loop runs over 8 channels at once, the lanes of one vector:

- forward: 4 output pixels a pass, their 4 accumulators in registers across all taps (one
  kernel vector load serves 4 FMAs);
- input gradient (multiplier 1): the scatter of each output pixel's gradient over the taps it
  read, into a zero-bordered copy of the image's gradient (so that no tap needs a bounds check);
- kernel gradient: per tap and 8 channels, one accumulator over all of an image's pixels.

Why: the grouped loops run a call per pixel and tap over C contiguous floats, with runtime
alias checks LLVM cannot hoist; they reached 3-4% of the FP32 peak on mobilenet_tiny's
layers. Padding is a zero-bordered copy of each image (as the direct convolution in
cnnkit.kernels.conv), so the inner loops have no branches. Summation order is fixed (taps i,
then j, increasing; the kernel gradient per image, then images in order within fixed batch
chunks, then chunks in order), so results are bitwise reproducible whatever the thread count.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from cnnkit.kernels.conv import _chunk, sum_chunk_partials
from cnnkit.kernels.simd import LANES, vadd, vfma, vload, vstore, vzero

# Fixed batch chunks (not the thread count): see cnnkit.kernels.grouped.
_PAR_CHUNKS = 16
_WGRAD_CHUNKS = 16


def simd_depthwise(x, w, groups, out) -> bool:
    """Whether these arrays take the kernels here: float32, a depthwise kernel (KH, KW, 1, F)
    with groups = input channels, F a multiple of 8, C-contiguous operands."""
    return (
        x.dtype == np.float32
        and w.dtype == np.float32
        and out.dtype == np.float32
        and w.shape[2] == 1
        and groups == x.shape[3]
        and w.shape[3] % LANES == 0
        and x.flags.c_contiguous
        and out.flags.c_contiguous
    )


@numba.njit(cache=True)
def _extent(o_n, k_n, s, d):
    """Input rows (or columns) the outputs read, padding included."""
    return (o_n - 1) * s + (k_n - 1) * d + 1


@numba.njit(cache=True)
def _pad_into(x1, n, h, wd, c_n, m_n, pt, pl, xp):
    """xp[pt + ih, pl + iw, c*M + m] = x[n, ih, iw, c] where it fits, for every m < M (each
    input channel repeated M times: F = C*M channels); xp's border stays as it is, zero.

    Each row through a slice of its own, indexed by the loop counter alone: an index like
    dst + q, whose sign LLVM cannot prove, keeps Numba's negative-index check in the loop
    and the copy scalar (11 us an image of 16x16x32, against 1 us)."""
    hp, wp, f_n = xp.shape
    p1 = xp.reshape(-1)
    rows, cols = min(h, hp - pt), min(wd, wp - pl)
    span = cols * c_n
    for ih in range(rows):
        src = x1[(n * h + ih) * wd * c_n :][:span]
        dst = p1[((pt + ih) * wp + pl) * f_n :][: span * m_n]
        if m_n == 1:
            for q in range(span):
                dst[q] = src[q]
        elif m_n == 2:  # a constant stride, which LLVM vectorizes (MobileNet's usual M)
            for q in range(span):
                dst[2 * q] = src[q]
                dst[2 * q + 1] = src[q]
        else:
            for q in range(span):
                v = src[q]
                for m in range(m_n):
                    dst[q * m_n + m] = v


@numba.njit(cache=True)
def _forward_row(s1, rs, w1, b, f_n, kh, kw, sh, sw, dh, dw, oh, o1, ob, ow_n):
    """Output row oh of one image: o1[ob + (ow*F + f)] for every ow and f, from the padded
    image s1 (flat, row stride rs)."""
    ow4 = ow_n - ow_n % 4
    cs = sw * f_n  # the next output pixel's input, sw pixels further
    for c0 in range(0, f_n, LANES):
        bias = vload(b, c0)
        for ow in range(0, ow4, 4):
            a0 = a1 = a2 = a3 = bias
            for i in range(kh):
                r = (oh * sh + i * dh) * rs + ow * cs + c0
                for j in range(kw):
                    wv = vload(w1, (i * kw + j) * f_n + c0)
                    p = r + j * dw * f_n
                    a0 = vfma(vload(s1, p), wv, a0)
                    a1 = vfma(vload(s1, p + cs), wv, a1)
                    a2 = vfma(vload(s1, p + 2 * cs), wv, a2)
                    a3 = vfma(vload(s1, p + 3 * cs), wv, a3)
            q = ob + ow * f_n + c0
            vstore(o1, q, a0)
            vstore(o1, q + f_n, a1)
            vstore(o1, q + 2 * f_n, a2)
            vstore(o1, q + 3 * f_n, a3)
        for ow in range(ow4, ow_n):
            a0 = bias
            for i in range(kh):
                r = (oh * sh + i * dh) * rs + ow * cs + c0
                for j in range(kw):
                    a0 = vfma(vload(s1, r + j * dw * f_n), vload(w1, (i * kw + j) * f_n + c0), a0)
            vstore(o1, ob + ow * f_n + c0, a0)


@numba.njit(cache=True, parallel=True)
def depthwise_forward(x, w, b, sh, sw, dh, dw, pt, pl, out, relu=False):
    """out[n, oh, ow, f] = b[f] + sum_{i, j} x[n, ih, iw, f // M] * w[i, j, 0, f], then
    max(out, 0) when relu: grouped_conv2d_forward for simd_depthwise's arrays."""
    n_b, h, wd, c_n = x.shape
    kh, kw, _, f_n = w.shape
    m_n = f_n // c_n
    oh_n, ow_n = out.shape[1], out.shape[2]
    hp, wp = _extent(oh_n, kh, sh, dh), _extent(ow_n, kw, sw, dw)
    x1 = x.reshape(-1)
    w1 = np.ascontiguousarray(w).reshape(-1)
    b1 = np.ascontiguousarray(b)
    o1 = out.reshape(-1)
    n_chunks = max(min(n_b, _PAR_CHUNKS), 1)
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        xp = np.zeros((hp, wp, f_n), np.float32)
        s1 = xp.reshape(-1)
        for n in range(n0, n1):
            _pad_into(x1, n, h, wd, c_n, m_n, pt, pl, xp)
            ob = n * oh_n * ow_n * f_n
            for oh in range(oh_n):
                _forward_row(
                    s1, wp * f_n, w1, b1, f_n, kh, kw, sh, sw, dh, dw, oh, o1,
                    ob + oh * ow_n * f_n, ow_n,
                )  # fmt: skip
            if relu:
                image = o1[ob:][: oh_n * ow_n * f_n]  # (a slice: see _pad_into)
                for q in range(image.shape[0]):
                    image[q] = max(image[q], 0)


@numba.njit(cache=True, parallel=True)
def depthwise_backward_input(dout, w, sh, sw, dh, dw, pt, pl, dx):
    """dx[n, ih, iw, c] = sum of dout[n, oh, ow, c] * w[i, j, 0, c] over the (oh, ow, i, j)
    whose tap reads (ih, iw), for multiplier 1 (F = C; with M > 1 the scatter into the M times
    wider gradient ran from L2, slower than grouped's loops); dx is overwritten. Output
    pixels in raster order, taps (i, j) increasing."""
    n_b, h, wd, f_n = dx.shape
    kh, kw = w.shape[0], w.shape[1]
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    hp, wp = max(_extent(oh_n, kh, sh, dh), h + pt), max(_extent(ow_n, kw, sw, dw), wd + pl)
    w1 = np.ascontiguousarray(w).reshape(-1)
    d1 = dout.reshape(-1)
    dx1 = dx.reshape(-1)
    rs = wp * f_n
    cs = sw * f_n
    n_chunks = max(min(n_b, _PAR_CHUNKS), 1)
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        g1 = np.empty(hp * wp * f_n, np.float32)
        for n in range(n0, n1):
            g1[:] = 0
            for oh in range(oh_n):
                for ow in range(ow_n):
                    src = ((n * oh_n + oh) * ow_n + ow) * f_n
                    for c0 in range(0, f_n, LANES):
                        g = vload(d1, src + c0)
                        for i in range(kh):
                            r = (oh * sh + i * dh) * rs + ow * cs + c0
                            for j in range(kw):
                                p = r + j * dw * f_n
                                wv = vload(w1, (i * kw + j) * f_n + c0)
                                vstore(g1, p, vfma(g, wv, vload(g1, p)))
            for ih in range(h):  # the interior (slices: see _pad_into)
                row = g1[((pt + ih) * wp + pl) * f_n :][: wd * f_n]
                dst = dx1[(n * h + ih) * wd * f_n :][: wd * f_n]
                for q in range(wd * f_n):
                    dst[q] = row[q]


@numba.njit(cache=True)
def _kernel_grad_image(s1, rs, d1, db0, f_n, kh, kw, sh, sw, dh, dw, oh_n, ow_n, pw):
    """pw[t*F + f] += sum over one image's output pixels of xpad[tap t of the pixel, f] *
    dout[pixel, f]: per tap and 8 channels one register sum over the image, then added."""
    cs = sw * f_n
    for i in range(kh):
        for j in range(kw):
            t = (i * kw + j) * f_n
            for c0 in range(0, f_n, LANES):
                acc = vzero()
                for oh in range(oh_n):
                    r = (oh * sh + i * dh) * rs + j * dw * f_n + c0
                    q = db0 + oh * ow_n * f_n + c0
                    for ow in range(ow_n):
                        acc = vfma(vload(s1, r + ow * cs), vload(d1, q + ow * f_n), acc)
                vstore(pw, t + c0, vadd(vload(pw, t + c0), acc))


@numba.njit(cache=True, parallel=True)
def depthwise_backward_weights(x, dout, sh, sw, dh, dw, pt, pl, dw_out, db_out):
    """dw_out[i, j, 0, f] = sum_{n, oh, ow} x[n, ih, iw, f // M] * dout[n, oh, ow, f];
    db_out[f] = sum_{n, oh, ow} dout[n, oh, ow, f]. Both are overwritten. Fixed batch chunks,
    each with its own partial sums, added in chunk order: bitwise reproducible."""
    n_b, h, wd, c_n = x.shape
    kh, kw, _, f_n = dw_out.shape
    m_n = f_n // c_n
    oh_n, ow_n = dout.shape[1], dout.shape[2]
    hp, wp = _extent(oh_n, kh, sh, dh), _extent(ow_n, kw, sw, dw)
    x1 = x.reshape(-1)
    d1 = dout.reshape(-1)
    n_chunks = max(min(n_b, _WGRAD_CHUNKS), 1)  # >= 1 so an empty batch yields zeros
    part_w = np.zeros((n_chunks, kh * kw * f_n), np.float32)
    part_b = np.zeros((n_chunks, f_n), np.float32)
    for k in prange(n_chunks):
        n0, n1 = _chunk(k, n_b, n_chunks)
        pw, pb = part_w[k], part_b[k]
        xp = np.zeros((hp, wp, f_n), np.float32)
        s1 = xp.reshape(-1)
        for n in range(n0, n1):
            _pad_into(x1, n, h, wd, c_n, m_n, pt, pl, xp)
            db0 = n * oh_n * ow_n * f_n
            _kernel_grad_image(s1, wp * f_n, d1, db0, f_n, kh, kw, sh, sw, dh, dw, oh_n, ow_n, pw)
            image = d1[db0:][: oh_n * ow_n * f_n]  # (a slice: see _pad_into)
            for q in range(oh_n * ow_n):
                for f in range(f_n):
                    pb[f] += image[q * f_n + f]
    sum_chunk_partials(part_w, part_b, dw_out, db_out)
