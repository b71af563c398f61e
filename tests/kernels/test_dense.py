"""The Dense forward kernel (cnnkit.kernels.dense) against a float64 numpy reference: row
counts around the blocks of 12 and the thread ranges, reductions around the 256-wide chunks,
one and two vectors of filters, relu, no bias; bitwise the same at 1 and 2 threads; and the
BLAS fallback where the kernel does not apply. The backward products (dense_backward): the
float64 reference, and bitwise one BLAS call's at every thread count."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from cnnkit.kernels.dense import _SPLIT_MACS, dense, dense_backward, direct_dense


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


@pytest.mark.parametrize(
    "m, k, units, dtype",
    [
        (200, 5408, 128, np.float32),  # mnist_basic's layer: split over the threads
        (61, 700, 48, np.float32),  # blocks of uneven size
        (33, 1000, 40, np.float64),  # float64 splits too
        (8, 30, 10, np.float32),  # below _SPLIT_MACS: one BLAS call
    ],
)
def test_dense_backward_against_reference_and_one_blas_call(m, k, units, dtype):
    """dkernel = x.T @ dz and dx = dz @ w.T: close to float64, and at 1 and 2 threads the
    bytes of numpy's single matmul (splitting the output's rows changes no sum)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((m, k)).astype(dtype)
    dz = rng.standard_normal((m, units)).astype(dtype)
    w = rng.standard_normal((k, units)).astype(dtype)
    assert (m * k * units >= _SPLIT_MACS) == (m > 8)
    one_call = (np.matmul(x.T, dz), np.matmul(dz, w.T))
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            dkernel, dx = np.full((k, units), np.nan, dtype), np.full((m, k), np.nan, dtype)
            dense_backward(x, dz, w, dkernel, dx)
            assert dkernel.tobytes() == one_call[0].tobytes()
            assert dx.tobytes() == one_call[1].tobytes()
    finally:
        numba.set_num_threads(before)
    x64, dz64, w64 = (a.astype(np.float64) for a in (x, dz, w))
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dkernel, x64.T @ dz64, rtol=tol, atol=tol * np.sqrt(m))
    np.testing.assert_allclose(dx, dz64 @ w64.T, rtol=tol, atol=tol * np.sqrt(units))


def test_dense_backward_without_dx_and_on_mixed_or_strided_arrays():
    """dx None computes dkernel only; mixed dtypes and a non-contiguous dz take numpy."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 600)).astype(np.float32)
    dz = rng.standard_normal((64, 64)).astype(np.float32)
    w = rng.standard_normal((600, 64)).astype(np.float32)
    dkernel = np.empty((600, 64), np.float32)
    dense_backward(x, dz, w, dkernel, None)
    assert dkernel.tobytes() == np.matmul(x.T, dz).tobytes()
    strided = np.asfortranarray(dz)
    dense_backward(x, strided, w, dkernel, dx := np.empty((64, 600), np.float32))
    np.testing.assert_array_equal(dx, np.matmul(strided, w.T))
    w64 = w.astype(np.float64)
    dk64, dx64 = np.empty((600, 64)), np.empty((64, 600))
    dense_backward(x, dz, w64, dk64, dx64)
    np.testing.assert_array_equal(dx64, np.matmul(dz, w64.T))
