"""Activation kernels (cnnkit.kernels.activations) against tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.kernels.activations import relu_backward_into
from tests import reference as ref
from tests.reference import DTYPES


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward_into_against_reference(dtype):
    rng = np.random.default_rng(3)
    y = np.maximum(rng.standard_normal((3, 5, 4, 7)), 0).astype(dtype)  # a relu output
    y[0, 0, 0, :3] = 0.0  # exact zeros: the kink, where the gradient is 0 (as TF)
    dy = rng.standard_normal(y.shape).astype(dtype)
    out = np.full(y.shape, np.nan, dtype=dtype)
    relu_backward_into(dy.reshape(-1), y.reshape(-1), out.reshape(-1))
    np.testing.assert_array_equal(out, ref.relu_backward(dy, y))
