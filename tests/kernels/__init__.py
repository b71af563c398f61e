"""Tests of cnnkit.kernels. NEEDS_AVX2_FMA marks the tests that read the compiled assembly for
ymm fused multiply-adds: on a CPU without AVX2 and FMA (ARM, an old x86) LLVM lowers the same
vector code to other instructions, which stay correct (the reference tests) but are not these."""

import llvmlite.binding
import pytest

_FEATURES = llvmlite.binding.get_host_cpu_features()
NEEDS_AVX2_FMA = pytest.mark.skipif(
    not (_FEATURES.get("avx2") and _FEATURES.get("fma")),
    reason="reads x86 AVX2/FMA assembly; this CPU has no AVX2 and FMA",
)

# the direct convolutions and the peak take 16-lane vectors (zmm) here, unless
# CNNKIT_SIMD_LANES=8 says otherwise (cnnkit.kernels.simd.WIDE_LANES)
HAS_AVX512F = bool(_FEATURES.get("avx512f"))
