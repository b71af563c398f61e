"""Activations (cnnkit.nn.activations): values and derivatives at known points, stability."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cnnkit.nn.activations import ACTIVATIONS, SELU_ALPHA, SELU_SCALE, softmax

LN2, LN3 = math.log(2.0), math.log(3.0)


def forward(name, x):
    return ACTIVATIONS[name][0](np.asarray(x))


def backward(name, x, dy):
    x = np.asarray(x)
    return ACTIVATIONS[name][1](x, ACTIVATIONS[name][0](x), np.asarray(dy))


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


def act(name, x, **kw):
    x = np.asarray(x, dtype=np.float64)
    return ACTIVATIONS[name][0](x, **kw)


def dact(name, x, **kw):
    x = np.asarray(x, dtype=np.float64)
    return ACTIVATIONS[name][1](x, ACTIVATIONS[name][0](x, **kw), np.ones_like(x), **kw)


def test_new_activation_values_at_known_points():
    x = np.array([-2.0, -0.5, 0.5, 3.0])
    # leaky_relu: Keras 3 activation default slope 0.2
    np.testing.assert_allclose(act("leaky_relu", x), [-0.4, -0.1, 0.5, 3.0], rtol=1e-15)
    np.testing.assert_allclose(act("leaky_relu", x, negative_slope=0.5), [-1, -0.25, 0.5, 3])
    np.testing.assert_allclose(dact("leaky_relu", x), [0.2, 0.2, 1, 1], rtol=1e-15)
    # elu: e^x - 1 below 0; derivative e^x
    np.testing.assert_allclose(act("elu", [-math.log(2), 2.0]), [-0.5, 2.0], rtol=1e-15)
    np.testing.assert_allclose(dact("elu", [-math.log(2), 2.0]), [0.5, 1.0], rtol=1e-15)
    # selu: Keras' constants
    assert abs(SELU_ALPHA - 1.67326324) < 1e-8
    assert abs(SELU_SCALE - 1.05070098) < 1e-8
    np.testing.assert_allclose(
        act("selu", [-math.log(2), 2.0]), [-0.5 * SELU_ALPHA * SELU_SCALE, 2 * SELU_SCALE]
    )
    # gelu, exact (Keras 3 approximate=False): x Phi(x) against math.erf
    xs = np.linspace(-6, 6, 49)
    ref = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in xs]
    np.testing.assert_allclose(act("gelu", xs), ref, rtol=1e-14, atol=1e-300)
    assert act("gelu", [1.0])[0] == pytest.approx(0.8413447460685429, rel=1e-14)
    # swish = silu = x sigmoid(x): at ln 3, sigmoid = 3/4
    ln3 = math.log(3.0)
    np.testing.assert_allclose(act("swish", [ln3]), [0.75 * ln3], rtol=1e-15)
    np.testing.assert_array_equal(act("silu", xs), act("swish", xs))
    # hard_sigmoid, Keras 3: relu6(x + 3) / 6
    np.testing.assert_allclose(
        act("hard_sigmoid", [-4, -3, -1.5, 0, 1.5, 3, 4]), [0, 0, 0.25, 0.5, 0.75, 1, 1]
    )
    np.testing.assert_allclose(dact("hard_sigmoid", [-4, -1.5, 1.5, 4]), [0, 1 / 6, 1 / 6, 0])
    # softplus = log(1 + e^x): log 2 at 0, log 4 at ln 3; derivative sigmoid
    np.testing.assert_allclose(act("softplus", [0.0, ln3]), [math.log(2), math.log(4)])
    np.testing.assert_allclose(dact("softplus", [0.0, ln3]), [0.5, 0.75], rtol=1e-15)


@pytest.mark.parametrize("name", ["softplus", "swish", "elu", "selu", "gelu", "hard_sigmoid"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_new_activations_stable_at_extremes(name, dtype):
    x = np.array([-1000.0, -50.0, 50.0, 1000.0], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            y = ACTIVATIONS[name][0](x)
            dx = ACTIVATIONS[name][1](x, y, np.ones_like(x))
    assert y.dtype == dtype and dx.dtype == dtype
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    if name in ("softplus", "swish", "gelu"):
        np.testing.assert_allclose(y[2:], [50.0, 1000.0], rtol=1e-6)
        np.testing.assert_allclose(y[:2], 0.0, atol=1e-15)
