"""The machine's FP32 peak, measured: an FMA-bound microkernel (what `cnnkit bench` divides each
layer's GFLOP/s by).

Each thread updates ACC independent 8-wide accumulators (acc = acc * a + b, one fused
multiply-add per lane, a*b+c contracted by fastmath={'contract'} into vfmadd231ps on ymm
registers: checked in tests/kernels/test_peak.py). Independent chains hide the FMA latency
(4-5 cycles, 2 units: 8-10 in flight are needed); the operands never leave the registers, so
nothing but the FMA units bounds it. The result is discarded except for one sum, returned so
that LLVM cannot drop the loop.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import prange

# 12 chains of 8 lanes: 96 floats, which LLVM keeps in 12 ymm registers for the whole loop
_ACC = 12
_LANES = 8


@numba.njit(cache=True, fastmath={"contract"})
def _fma_chains(iters, seed):
    """96 accumulators (12 x 8 lanes), each updated `iters` times with one FMA; their sum.

    One flat loop of constant length: LLVM unrolls and vectorizes it into 12 vfmadd213ps on
    ymm registers and keeps the array in registers across the outer loop (a 2-D array or
    96 scalars compiled to scalar code instead)."""
    n = _ACC * _LANES
    acc = np.empty(n, dtype=np.float32)
    for i in range(n):
        acc[i] = seed + np.float32(i) * np.float32(0.001)
    a = np.float32(0.9999999)  # |a| < 1 and b small: the values stay finite and normal
    b = np.float32(1e-7)
    for _ in range(iters):
        for i in range(n):
            acc[i] = acc[i] * a + b
    return acc.sum()


@numba.njit(cache=True, parallel=True)
def fma_peak_kernel(chunks, iters, out):
    """Runs _fma_chains(iters) `chunks` times over the threads (prange); out[k] = chunk k's sum."""
    for k in prange(chunks):
        out[k] = _fma_chains(iters, np.float32(k))


def flops_per_chunk(iters: int) -> float:
    """FLOPs one chunk performs: 2 (multiply and add) per lane per FMA."""
    return 2.0 * _ACC * _LANES * iters


def measure_peak_gflops(threads: int, seconds: float = 0.3, repeats: int = 3) -> float:
    """GFLOP/s of the FMA microkernel on `threads` Numba threads (the caller sets them).

    Runs of 4 chunks per thread, sized to about `seconds` / repeats each, for about `seconds`
    in all; the best run counts (the peak is what the cores can do: load from other processes
    only lowers it)."""
    chunks = 4 * threads
    out = np.empty(chunks, dtype=np.float32)
    fma_peak_kernel(chunks, 10, out)  # compile (or load from the cache), wake the threads
    iters, best = 1_000, 0.0

    def run(iters: int) -> float:
        start = time.perf_counter()
        fma_peak_kernel(chunks, iters, out)
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
