"""The FP32 peak microkernel (cnnkit.kernels.peak): FMAs on ymm registers, the arithmetic it
claims to do (against numpy), and a rate in GFLOP/s that a core can reach."""

from __future__ import annotations

import re

import numba
import numpy as np

from cnnkit.kernels import peak
from tests.kernels import NEEDS_AVX2_FMA


def _chains_reference(iters: int, seed: float) -> float:
    """The 96 chains in float64 (FMA rounds once, float32 twice: close, not equal)."""
    acc = seed + np.arange(96, dtype=np.float64) * np.float64(np.float32(0.001))
    a, b = np.float64(np.float32(0.9999999)), np.float64(np.float32(1e-7))
    for _ in range(iters):
        acc = acc * a + b
    return float(acc.sum())


def test_fma_chains_compute_what_they_count():
    out = np.empty(3, dtype=np.float32)
    peak.fma_peak_kernel(3, 50, out)
    for k in range(3):
        assert out[k] == np.float32(peak._fma_chains(50, np.float32(k)))
        assert abs(float(out[k]) - _chains_reference(50, k)) < 1e-3
    assert peak.flops_per_chunk(50) == 2 * 96 * 50


@NEEDS_AVX2_FMA
def test_inner_loop_is_ymm_fma():
    """12 vfmadd on ymm registers: 8 lanes each, the AVX2 microkernel the peak means. (An
    AVX-512 machine gets zmm, which counts too; both are fused multiply-adds.)"""
    # compiled afresh with the same flags (Numba does not disassemble code loaded from cache)
    fn = numba.njit(fastmath={"contract"})(peak._fma_chains.py_func)
    fn(1, np.float32(0))
    asm = fn.inspect_asm(fn.signatures[0])
    fmas = re.findall(r"vfmadd\d+ps\s+%([yz])mm\d+, %[yz]mm\d+, %[yz]mm\d+", asm)
    assert len(fmas) >= 12, asm[:2000]


def test_measured_peak_is_a_rate():
    """A positive GFLOP/s, under what one core's vector units could do at 6 GHz (2 units x 16
    lanes x 2 FLOPs): not a timer artefact. (Its size depends on the load of a shared machine.)"""
    gflops = peak.measure_peak_gflops(1, seconds=0.05)
    assert 0 < gflops < 2 * 16 * 2 * 6.0
