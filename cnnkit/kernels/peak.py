"""The machine's FP32 peak, measured: an FMA-bound microkernel (what `cnnkit bench` divides each
layer's GFLOP/s by).

Each thread updates ACC independent accumulators of the machine's widest vectors
(cnnkit.kernels.simd.WIDE_LANES: 8 lanes in ymm registers on AVX2, 16 in zmm on AVX-512),
acc = acc * a + b, one fused multiply-add per lane (checked in tests/kernels/test_peak.py).
Independent chains hide the FMA latency (4-5 cycles, 2 units: 8-10 in flight are needed);
the operands never leave the registers, so nothing but the FMA units bounds it. The result
is discarded except for one sum, returned so that LLVM cannot drop the loop. On the AVX-512
Xeon this measured 440 GFLOP/s on 2 threads where the 8-lane kernel measured 250: a peak
taken on ymm registers there would overstate every layer's share.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import prange

from cnnkit.kernels.simd import WIDE_LANES, vbroadcast_like, vfma, vload_like, vstore, vzeros
from cnnkit.kernels.simd import width_tag as _width_tag

_ACC = 12
LANES = WIDE_LANES
_TAG = _width_tag(LANES)


@numba.njit(cache=True)
def _fma_chains(iters, seed, tag):
    """12 vector accumulators (12 * L floats, L = len(tag)), each updated `iters` times
    with one FMA; the sum of their lanes."""
    z = vzeros(tag)
    n = 12 * len(tag)
    acc = np.empty(n, dtype=np.float32)
    for i in range(n):
        acc[i] = seed + np.float32(i) * np.float32(0.001)
    # |a| < 1 and b small: the values stay finite and normal
    ab = np.array([0.9999999, 1e-7], dtype=np.float32)
    a, b = vbroadcast_like(z, ab, 0), vbroadcast_like(z, ab, 1)
    step = len(tag)
    c0, c1, c2 = vload_like(z, acc, 0), vload_like(z, acc, step), vload_like(z, acc, 2 * step)
    c3, c4 = vload_like(z, acc, 3 * step), vload_like(z, acc, 4 * step)
    c5, c6 = vload_like(z, acc, 5 * step), vload_like(z, acc, 6 * step)
    c7, c8 = vload_like(z, acc, 7 * step), vload_like(z, acc, 8 * step)
    c9, c10 = vload_like(z, acc, 9 * step), vload_like(z, acc, 10 * step)
    c11 = vload_like(z, acc, 11 * step)
    for _ in range(iters):
        c0, c1, c2, c3 = vfma(c0, a, b), vfma(c1, a, b), vfma(c2, a, b), vfma(c3, a, b)
        c4, c5, c6, c7 = vfma(c4, a, b), vfma(c5, a, b), vfma(c6, a, b), vfma(c7, a, b)
        c8, c9, c10, c11 = vfma(c8, a, b), vfma(c9, a, b), vfma(c10, a, b), vfma(c11, a, b)
    vstore(acc, 0, c0)
    vstore(acc, step, c1)
    vstore(acc, 2 * step, c2)
    vstore(acc, 3 * step, c3)
    vstore(acc, 4 * step, c4)
    vstore(acc, 5 * step, c5)
    vstore(acc, 6 * step, c6)
    vstore(acc, 7 * step, c7)
    vstore(acc, 8 * step, c8)
    vstore(acc, 9 * step, c9)
    vstore(acc, 10 * step, c10)
    vstore(acc, 11 * step, c11)
    return acc.sum()


@numba.njit(cache=True, parallel=True)
def fma_peak_kernel(chunks, iters, out, tag):
    """Runs _fma_chains(iters) `chunks` times over the threads (prange), on vectors of
    len(tag) lanes; out[k] = chunk k's sum."""
    for k in prange(chunks):
        out[k] = _fma_chains(iters, np.float32(k), tag)


def flops_per_chunk(iters: int) -> float:
    """FLOPs one chunk performs: 2 (multiply and add) per lane per FMA."""
    return 2.0 * _ACC * LANES * iters


def measure_peak_gflops(threads: int, seconds: float = 0.3, repeats: int = 3) -> float:
    """GFLOP/s of the FMA microkernel on `threads` Numba threads (the caller sets them).

    Runs of 4 chunks per thread, sized to about `seconds` / repeats each, for about `seconds`
    in all; the best run counts (the peak is what the cores can do: load from other processes
    only lowers it)."""
    chunks = 4 * threads
    out = np.empty(chunks, dtype=np.float32)
    fma_peak_kernel(chunks, 10, out, _TAG)  # compile (or load from the cache), wake the threads
    iters, best = 1_000, 0.0

    def run(iters: int) -> float:
        start = time.perf_counter()
        fma_peak_kernel(chunks, iters, out, _TAG)
        elapsed = time.perf_counter() - start
        nonlocal best
        best = max(best, chunks * flops_per_chunk(iters) / max(elapsed, 1e-9) / 1e9)
        return elapsed

    per_run, spent = seconds / repeats, 0.0
    while spent < seconds:  # runs grow (4x at most) to per_run at the best rate seen
        spent += run(iters)
        wanted = int(best * 1e9 * per_run / (chunks * flops_per_chunk(1)))
        iters = min(max(wanted, iters), 4 * iters)
    return best
