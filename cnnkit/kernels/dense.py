"""Dense layers' forward pass, out = x @ w + b (then relu), for float32 on the direct
convolutions' register-blocked microkernels (cnnkit.kernels.conv: 12 rows of x and 2 vectors
of filters a call, zmm registers on AVX-512), over the threads.

Why: BLAS runs on one thread in cnnkit (cnnkit.threads: its spinning workers next to Numba's
fought for the cores), and mnist_basic's 5408 -> 128 Dense took 2.0-2.4 ms of a 4.3 ms
inference batch of 200 on it. The reduction runs in chunks of K: a chunk's weight panel
(KC rows of 2 vectors of filters) stays in L1/L2 while every block of 12 rows of the
thread's range passes over it, and a block's 12 x KC inputs stay in L1 across the filter
blocks. Each output is its bias, then the products in increasing k, one FMA each: a fixed
order whatever the chunking, so results are bitwise the same at every thread count.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from cnnkit.kernels.conv import _mk1, _mk4, _mk6, _mk12, direct_lanes
from cnnkit.kernels.simd import vlanes, vzeros

_KC = 256  # reduction chunk: 256 x 32 filters x 4 bytes = 32 KB of weights, L1-sized
_MIN_UNITS = 16  # a multiple of 16 units: the microkernels' fewest filters a call


def direct_dense(x, w, out) -> bool:
    """Whether dense_forward takes these arrays (else BLAS): float32, C-contiguous, a multiple
    of 16 units."""
    return (
        x.dtype == np.float32
        and w.dtype == np.float32
        and out.dtype == np.float32
        and w.shape[1] % _MIN_UNITS == 0
        and x.flags.c_contiguous
        and w.flags.c_contiguous
        and out.flags.c_contiguous
    )


def dense(x, w, b, out, relu=False) -> None:
    """out = x @ w + b (b may be None), then max(out, 0) when relu: dense_forward where
    direct_dense allows, else numpy's matmul (BLAS)."""
    if direct_dense(x, w, out):
        bias = (
            np.zeros(w.shape[1], np.float32) if b is None else np.ascontiguousarray(b, np.float32)
        )
        threads = numba.get_num_threads()
        dense_forward(x, w, bias, out, relu, direct_lanes(w.shape[1]), threads)
        return
    np.matmul(x, w, out=out)
    if b is not None:
        out += b
    if relu:
        np.maximum(out, 0, out=out)


@numba.njit(cache=True)
def _rows(z, v, x1, k_n, k0, kc, w1, f_n, f0, o1, r, m):
    """The microkernel for m (12, 6, 4 or 1) rows r, r+1, ... over k in [k0, k0 + kc)."""
    a = r * k_n + k0
    b0 = k0 * f_n + f0
    c0 = r * f_n + f0
    if m == 12:
        _mk12(
            z, v, x1, a, a + k_n, a + 2 * k_n, a + 3 * k_n, a + 4 * k_n, a + 5 * k_n,
            a + 6 * k_n, a + 7 * k_n, a + 8 * k_n, a + 9 * k_n, a + 10 * k_n, a + 11 * k_n,
            1, 0, w1, b0, f_n, 0, kc, 1, o1, c0, f_n, False,
        )  # fmt: skip
    elif m == 6:
        _mk6(
            z, v, x1, a, a + k_n, a + 2 * k_n, a + 3 * k_n, a + 4 * k_n, a + 5 * k_n,
            1, 0, w1, b0, f_n, 0, kc, 1, o1, c0, f_n, False,
        )  # fmt: skip
    elif m == 4:
        _mk4(
            z, v, x1, a, a + k_n, a + 2 * k_n, a + 3 * k_n,
            1, 0, w1, b0, f_n, 0, kc, 1, o1, c0, f_n, False,
        )  # fmt: skip
    else:
        _mk1(z, v, x1, a, 1, 0, w1, b0, f_n, 0, kc, 1, o1, c0, f_n, False)


@numba.njit(cache=True, parallel=True)
def dense_forward(x, w, b, out, relu, lanes, threads):
    """out[n, f] = b[f] + sum_k x[n, k] * w[k, f] (k increasing), then max(out, 0) when relu.
    x (N, K), w (K, F), out (N, F): float32, C-contiguous, F a multiple of the filters a
    microkernel call takes (lanes: cnnkit.kernels.conv.direct_lanes(F)). The rows are split
    in `threads` ranges of whole blocks of 12: one weight panel serves a thread's blocks from
    its cache (16 fixed chunks streamed it once per block: 1.07 -> 1.70 ms on mnist_basic's
    layer); the split does not change any element's sum, so neither does the thread count."""
    z, v = vzeros(lanes[0]), lanes[1]
    n_b, k_n = x.shape
    f_n = w.shape[1]
    step = len(v) * vlanes(z)
    x1, w1, o1 = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    blocks = (n_b + 11) // 12
    chunks = max(1, min(threads, blocks))  # of whole blocks of 12 rows, the last one short
    for t in prange(chunks):
        r0 = (t * blocks) // chunks * 12
        r1 = min(((t + 1) * blocks) // chunks * 12, n_b)
        for r in range(r0, r1):
            row = o1[r * f_n :][:f_n]  # (a slice indexed by the loop counter: vectorized)
            for f in range(f_n):
                row[f] = b[f]
        for k0 in range(0, k_n, _KC):
            kc = min(_KC, k_n - k0)
            r = r0
            while r + 12 <= r1:
                for f0 in range(0, f_n, step):
                    _rows(z, v, x1, k_n, k0, kc, w1, f_n, f0, o1, r, 12)
                r += 12
            while r < r1:
                m = 6 if r + 6 <= r1 else (4 if r + 4 <= r1 else 1)
                for f0 in range(0, f_n, step):
                    _rows(z, v, x1, k_n, k0, kc, w1, f_n, f0, o1, r, m)
                r += m
        if relu:
            for r in range(r0, r1):
                row = o1[r * f_n :][:f_n]
                for f in range(f_n):
                    row[f] = max(row[f], 0)


# Below this many multiply-adds a product stays one BLAS call: a parallel region's start
# (tens of microseconds) would outweigh the split.
_SPLIT_MACS = 1 << 20


def dense_backward(x, dz, w, dkernel, dx) -> None:
    """dkernel = x.T @ dz and, unless dx is None, dx = dz @ w.T. Over the threads where a
    product has at least _SPLIT_MACS multiply-adds and the arrays are C-contiguous and of one
    float dtype: each thread's block of the output's rows is one BLAS call (BLAS itself on one
    thread, see cnnkit.threads); else numpy's matmul. Splitting the output's rows changes no
    sum: each element is the same dot product in the same order, bitwise one call's (tested).
    mnist_basic's 200 x 5408 -> 128 layer at 2 threads: dkernel 1.83 -> 1.26 ms (a block's
    columns of x are copied to be contiguous), dx 1.93 -> 1.03 ms."""
    arrays = (x, dz, w, dkernel) + (() if dx is None else (dx,))
    split = (
        all(a.dtype == x.dtype and a.flags.c_contiguous for a in arrays)
        and x.dtype.kind == "f"
        and x.shape[0] * w.shape[0] * w.shape[1] >= _SPLIT_MACS
    )
    threads = numba.get_num_threads()
    if split and threads > 1:
        _xt_dz_blocks(x, dz, dkernel, threads)
        if dx is not None:
            _rows_dot(dz, w.T, dx, threads)
        return
    np.matmul(x.T, dz, out=dkernel)
    if dx is not None:
        np.matmul(dz, w.T, out=dx)


@numba.njit(cache=True, parallel=True)
def _xt_dz_blocks(x, dz, out, blocks):
    """out[k0:k1] = x[:, k0:k1].T @ dz for each of `blocks` blocks of k, over the threads."""
    k_n = x.shape[1]
    for c in prange(blocks):
        k0, k1 = c * k_n // blocks, (c + 1) * k_n // blocks
        if k1 > k0:
            np.dot(np.ascontiguousarray(x[:, k0:k1]).T, dz, out[k0:k1])


@numba.njit(cache=True, parallel=True)
def _rows_dot(a, b, out, blocks):
    """out[r0:r1] = a[r0:r1] @ b for each of `blocks` blocks of rows, over the threads."""
    m = a.shape[0]
    for c in prange(blocks):
        r0, r1 = c * m // blocks, (c + 1) * m // blocks
        if r1 > r0:
            np.dot(a[r0:r1], b, out[r0:r1])
