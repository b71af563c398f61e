"""Activation values and derivatives at known points; initializer formulas and statistics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cnnkit.nn.activations import ACTIVATIONS, softmax
from cnnkit.nn.initializers import _TRUNC_STD, INITIALIZERS, fans, initialize
from cnnkit.nn.layers import Conv2D, Dense
from cnnkit.options import resolve_options

LN2, LN3 = math.log(2.0), math.log(3.0)


def forward(name, x):
    return ACTIVATIONS[name][0](np.asarray(x))


def backward(name, x, dy):
    x = np.asarray(x)
    return ACTIVATIONS[name][1](x, ACTIVATIONS[name][0](x), np.asarray(dy))


# ----------------------------------------------------------------------------- activations


def test_relu_values_and_derivative():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    np.testing.assert_array_equal(forward("relu", x), [0.0, 0.0, 0.0, 0.5, 3.0])
    # Keras/TF: the derivative at 0 is 0
    np.testing.assert_array_equal(backward("relu", x, np.full(5, 2.0)), [0, 0, 0, 2.0, 2.0])


def test_sigmoid_values_and_derivative():
    # sigmoid(0) = 1/2; sigmoid(ln 3) = 1 / (1 + 1/3) = 3/4; sigmoid(-ln 3) = 1/4
    x = np.array([0.0, LN3, -LN3])
    np.testing.assert_allclose(forward("sigmoid", x), [0.5, 0.75, 0.25], rtol=1e-15)
    # sigmoid' = s (1 - s): 1/4, 3/16, 3/16
    np.testing.assert_allclose(
        backward("sigmoid", x, np.ones(3)), [0.25, 0.1875, 0.1875], rtol=1e-15
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sigmoid_saturates_without_warnings(dtype):
    x = np.array([-1000.0, -50.0, 50.0, 1000.0], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            y = forward("sigmoid", x)
    assert y.dtype == np.dtype(dtype)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, [0.0, 0.0, 1.0, 1.0], atol=1e-20)
    assert 0 < y[1] < 1e-21  # exp(-50) = 1.93e-22, not flushed to 0


def test_tanh_values_and_derivative():
    # tanh(ln 2) = (2 - 1/2) / (2 + 1/2) = 0.6; tanh' = 1 - 0.36 = 0.64
    x = np.array([0.0, LN2, -LN2])
    np.testing.assert_allclose(forward("tanh", x), [0.0, 0.6, -0.6], rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(backward("tanh", x, np.ones(3)), [1.0, 0.64, 0.64], rtol=1e-15)


def test_linear_is_identity():
    x = np.array([[-1.5, 0.0, 2.0]])
    np.testing.assert_array_equal(forward("linear", x), x)
    np.testing.assert_array_equal(backward("linear", x, np.array([[1.0, 2.0, 3.0]])), [[1, 2, 3]])


def test_softmax_values():
    # softmax([0, ln 2, ln 3]) = [1, 2, 3] / 6
    y = forward("softmax", np.array([[0.0, LN2, LN3], [5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(y, [[1 / 6, 2 / 6, 3 / 6], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-15)


def test_softmax_is_shift_invariant_and_stable():
    x = np.array([[1000.0, 1000.0 + LN3], [-1000.0, -1000.0 + LN3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            y = forward("softmax", x)
    # [1, 3] / 4 in both rows (the 1000 offsets lose ~1e-13 of ln 3)
    np.testing.assert_allclose(y, [[0.25, 0.75], [0.25, 0.75]], rtol=1e-12)


def test_softmax_over_last_axis_of_4d_input():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    y = softmax(x)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-15)
    e = np.exp(x[1, 2, 3])
    np.testing.assert_allclose(y[1, 2, 3], e / e.sum(), rtol=1e-14)


def test_softmax_derivative_is_jacobian_product():
    # J = diag(y) - y y^T; for y = [1, 2, 3] / 6 and dy = [1, 0, 0]:
    # dx = y0 * (dy - y0) = [1/6 * 5/6, -2/6 * 1/6, -3/6 * 1/6] = [5, -2, -3] / 36
    x = np.array([[0.0, LN2, LN3]])
    dx = backward("softmax", x, np.array([[1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(dx, [[5 / 36, -2 / 36, -3 / 36]], rtol=1e-14)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_keep_float32(name):
    x = np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)
    assert forward(name, x).dtype == np.float32
    assert backward(name, x, np.ones_like(x)).dtype == np.float32


# ----------------------------------------------------------------------------- initializers


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((5,), (5, 5)),
        ((4, 3), (4, 3)),
        ((3, 3, 2, 8), (18, 72)),  # (kh*kw*cin, kh*kw*f)
        ((5, 1, 4, 6), (20, 30)),
    ],
)
def test_fans(shape, expected):
    assert fans(shape) == expected


def test_truncated_normal_constant():
    # std of a unit normal truncated to [-2, 2]: sqrt(1 - 2 * 2 phi(2) / (2 Phi(2) - 1))
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    assert math.sqrt(1 - 4 * phi2 / mass) == pytest.approx(_TRUNC_STD, rel=1e-12)


def draw(name, shape, seed=0, dtype=np.float64):
    return initialize(name, shape, np.random.default_rng(seed), dtype)


@pytest.mark.parametrize(
    "name, shape, limit",
    [
        ("glorot_uniform", (200, 300), math.sqrt(6 / (200 + 300))),
        ("glorot_uniform", (3, 3, 16, 32), math.sqrt(6 / (144 + 288))),
        ("he_uniform", (3, 3, 16, 32), math.sqrt(6 / 144)),
        ("lecun_uniform", (200, 300), math.sqrt(3 / 200)),
        ("random_uniform", (200, 300), 0.05),
    ],
)
def test_uniform_initializers(name, shape, limit):
    w = draw(name, shape)
    assert w.shape == shape
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.99 * limit
    assert abs(w.mean()) < 0.02 * limit
    assert w.std() == pytest.approx(limit / math.sqrt(3), rel=0.02)


@pytest.mark.parametrize(
    "name, shape, std, truncated",
    [
        ("he_normal", (3, 3, 64, 64), math.sqrt(2 / 576), True),
        ("glorot_normal", (200, 300), math.sqrt(2 / 500), True),
        ("lecun_normal", (3, 3, 64, 64), math.sqrt(1 / 576), True),
        ("random_normal", (200, 300), 0.05, False),
    ],
)
def test_normal_initializers(name, shape, std, truncated):
    w = draw(name, shape)
    assert w.shape == shape
    assert w.std() == pytest.approx(std, rel=0.02)
    assert abs(w.mean()) < 0.02 * std
    if truncated:
        # Keras truncates at two standard deviations of the (scaled-up) underlying normal
        assert np.abs(w).max() <= 2 * std / _TRUNC_STD
        assert np.abs(w).max() > 0.99 * 2 * std / _TRUNC_STD
    else:
        assert np.abs(w).max() > 3 * std


def test_zeros_and_ones():
    np.testing.assert_array_equal(draw("zeros", (3, 4)), np.zeros((3, 4)))
    np.testing.assert_array_equal(draw("ones", (5,)), np.ones(5))


@pytest.mark.parametrize("name", INITIALIZERS)
def test_initializers_deterministic_and_typed(name):
    shape = (3, 3, 2, 4)
    a = draw(name, shape, seed=7, dtype=np.float32)
    b = draw(name, shape, seed=7, dtype=np.float32)
    assert a.dtype == np.float32 and a.shape == shape
    np.testing.assert_array_equal(a, b)
    if name not in ("zeros", "ones"):
        assert not np.array_equal(a, draw(name, shape, seed=8, dtype=np.float32))


def test_layers_build_with_keras_default_initializers():
    rng = np.random.default_rng(0)
    conv = Conv2D(resolve_options({"filters": 32, "kernel_size": 3}, Conv2D.OPTIONS, "t"), 0)
    conv.infer_shape((28, 28, 16))
    conv.build(rng, np.dtype(np.float32))
    limit = math.sqrt(6 / (9 * 16 + 9 * 32))
    assert conv.params["kernel"].dtype == np.float32
    assert np.abs(conv.params["kernel"]).max() <= limit
    assert np.abs(conv.params["kernel"]).max() > 0.95 * limit
    np.testing.assert_array_equal(conv.params["bias"], np.zeros(32, np.float32))

    dense = Dense(resolve_options({"units": 10, "use_bias": False}, Dense.OPTIONS, "t"), 1)
    dense.infer_shape((128,))
    dense.build(rng, np.dtype(np.float64))
    assert set(dense.params) == {"kernel"}
    assert dense.params["kernel"].shape == (128, 10)
    assert np.abs(dense.params["kernel"]).max() <= math.sqrt(6 / 138)
