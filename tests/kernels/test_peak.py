"""The FP32 peak microkernel (cnnkit.kernels.peak): FMAs on the machine's widest vector
registers, the arithmetic it claims to do (against numpy), and a rate in GFLOP/s that a core
can reach."""

from __future__ import annotations

import os
import re

import numba
import numpy as np
import pytest

from cnnkit.kernels import peak
from cnnkit.kernels.simd import width_tag
from tests.kernels import HAS_AVX512F, NEEDS_AVX2_FMA


def _chains_reference(iters: int, seed: float, lanes: int) -> float:
    """The 12 * lanes chains in float64 (FMA rounds once, float32 twice: close, not equal)."""
    acc = seed + np.arange(12 * lanes, dtype=np.float64) * np.float64(np.float32(0.001))
    a, b = np.float64(np.float32(0.9999999)), np.float64(np.float32(1e-7))
    for _ in range(iters):
        acc = acc * a + b
    return float(acc.sum())


def test_fma_chains_compute_what_they_count():
    out = np.empty(3, dtype=np.float32)
    peak.fma_peak_kernel(3, 50, out, width_tag(peak.LANES))
    for k in range(3):
        assert out[k] == np.float32(peak._fma_chains(50, np.float32(k), width_tag(peak.LANES)))
        assert abs(float(out[k]) - _chains_reference(50, k, peak.LANES)) < 2e-3
    assert peak.flops_per_chunk(50) == 2 * 12 * peak.LANES * 50


@pytest.mark.parametrize("lanes", [8, 16])
def test_fma_chains_at_either_width(lanes):
    """Both widths compute the same chains (16 lanes run as two halves without AVX-512)."""
    got = float(peak._fma_chains(40, np.float32(1), width_tag(lanes)))
    assert abs(got - _chains_reference(40, 1, lanes)) < 2e-3


@NEEDS_AVX2_FMA
def test_inner_loop_is_fma_on_the_widest_registers():
    """12 vfmadd on zmm registers where the CPU has AVX-512F (16 lanes each), else on ymm:
    the width the peak means, the one the direct convolutions use (compiled afresh: Numba
    does not disassemble code loaded from cache)."""
    fn = numba.njit(peak._fma_chains.py_func)
    fn(1, np.float32(0), width_tag(peak.LANES))
    asm = fn.inspect_asm(fn.signatures[0])
    register = "z" if peak.LANES == 16 else "y"
    fmas = re.findall(rf"vfmadd\d+ps\s+%{register}mm\d+, %{register}mm\d+, %{register}mm\d+", asm)
    assert len(fmas) >= 12, asm[:2000]
    if not os.environ.get("CNNKIT_SIMD_LANES"):
        assert (16 if HAS_AVX512F else 8) == peak.LANES


def test_measured_peak_is_a_rate():
    """A positive GFLOP/s, under what the threads' cores could do at 6 GHz (2 units x 16
    lanes x 2 FLOPs each): not a timer artefact. (Its size depends on the load of a shared
    machine.) measure_peak_gflops runs on the threads Numba has: the caller sets them."""
    gflops = peak.measure_peak_gflops(numba.get_num_threads(), seconds=0.05)
    assert 0 < gflops < numba.get_num_threads() * 2 * 16 * 2 * 6.0
