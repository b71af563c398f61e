"""Fused inference kernels (cnnkit.kernels.fused) against the slow references: max pooling
without argmax (the same values as tests/reference.py's max pooling, odd windows, strides and
`same` padding, -inf and NaN seeds), scale-shift with and without relu, add with relu."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.kernels.fused import add_relu, maxpool2d_infer, scale_shift
from tests import reference as ref
from tests.kernels.test_pool import POOL_SHAPES, pool_geometry
from tests.reference import DTYPES


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (2, 1)])
def test_maxpool2d_infer_matches_reference(dtype, shape, padding, stride):
    n, h, w, c, ph, pw = shape
    if padding == "valid" and (ph > h or pw > w):
        pytest.skip("window bigger than the input")
    out_hw, pad = pool_geometry(h, w, ph, pw, stride, padding)
    x = np.random.default_rng(n * h + w).standard_normal((n, h, w, c)).astype(dtype)
    x[0, 0, 0, 0] = -np.inf  # a -inf never wins; a seed of -inf still gives the window's max
    expected, _ = ref.maxpool2d_forward(x, (ph, pw), stride, pad, out_hw)
    out = np.full((n, *out_hw, c), np.nan, dtype=dtype)
    maxpool2d_infer(x, ph, pw, *stride, *pad, out)
    np.testing.assert_array_equal(out, expected)  # a max is exact


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
def test_scale_shift_matches_numpy(dtype, relu):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((37, 5)).astype(dtype)  # odd rows and channels
    scale, shift = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    out = np.empty_like(x)
    scale_shift(x, scale, shift, relu, out)
    expected = x * scale + shift
    np.testing.assert_allclose(out, np.maximum(expected, 0) if relu else expected, rtol=1e-6)
    scale_shift(x, scale, shift, relu, x)  # in place
    np.testing.assert_array_equal(x, out)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("size", [1, 4097 * 3])
def test_add_relu_matches_numpy(relu, size):
    rng = np.random.default_rng(size)
    a, b = (rng.standard_normal(size).astype(np.float32) for _ in range(2))
    out = np.empty_like(a)
    add_relu(a, b, relu, out)
    expected = a + b
    np.testing.assert_array_equal(out, np.maximum(expected, 0) if relu else expected)
