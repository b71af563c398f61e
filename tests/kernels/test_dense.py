"""The Dense forward kernel (cnnkit.kernels.dense) against a float64 numpy reference: row
counts around the blocks of 12 and the thread ranges, reductions around the 256-wide chunks,
one and two vectors of filters, relu, no bias; bitwise the same at 1 and 2 threads; and the
BLAS fallback where the kernel does not apply."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from cnnkit.kernels.dense import dense, direct_dense


def _reference(x, w, b, relu):
    z = x.astype(np.float64) @ w.astype(np.float64)
    if b is not None:
        z += b
    return np.maximum(z, 0) if relu else z


@pytest.mark.parametrize(
    "n, k, f",
    [(1, 7, 16), (11, 300, 32), (12, 256, 48), (25, 257, 128), (200, 5408, 128), (37, 1152, 256)],
)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_against_reference(n, k, f, relu, bias):
    rng = np.random.default_rng(n + k + f)
    x = rng.standard_normal((n, k)).astype(np.float32)
    w = rng.standard_normal((k, f)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32) if bias else None
    out = np.full((n, f), np.nan, np.float32)  # garbage in: fully overwritten
    assert direct_dense(x, w, out)  # the path under test
    dense(x, w, b, out, relu)
    expected = _reference(x, w, b, relu)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6 * scale)


def test_dense_is_bitwise_the_same_at_every_thread_count():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((61, 700)).astype(np.float32)
    w = rng.standard_normal((700, 64)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            out = np.empty((61, 64), np.float32)
            dense(x, w, b, out, True)
            results.append(out.tobytes())
            dense(x, w, b, out, True)
            assert out.tobytes() == results[-1]  # and run to run
    finally:
        numba.set_num_threads(before)
    assert all(r == results[0] for r in results)


@pytest.mark.parametrize(
    "dtype, f",
    [(np.float64, 32), (np.float32, 10)],  # float64 (gradient checks), 10 units
)
def test_dense_falls_back_to_blas(dtype, f):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((9, 40)).astype(dtype)
    w = rng.standard_normal((40, f)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    out = np.empty((9, f), dtype)
    assert not direct_dense(x, w, out)
    dense(x, w, b, out, True)
    np.testing.assert_allclose(out, np.maximum(x @ w + b, 0), rtol=1e-6)
