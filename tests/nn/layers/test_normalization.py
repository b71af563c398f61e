"""BatchNormalization (cnnkit.nn.layers.normalization): gradients in training and inference,
its statistics by hand, Keras' defaults.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.errors import SpecError
from cnnkit.nn.layers.normalization import BatchNormalization
from cnnkit.spec.config import build_layers
from tests.nn.gradcheck import (
    check_layer_gradients,
    make_layer,
)

BN_CASES = [
    pytest.param({}, (2, 3, 4, 3), id="4d"),
    pytest.param({}, (5, 4), id="2d"),
    pytest.param({"scale": False}, (2, 3, 2, 2), id="4d-noscale"),
    pytest.param({"center": False}, (6, 3), id="2d-nocenter"),
    pytest.param({"center": False, "scale": False}, (2, 2, 3, 2), id="4d-neither"),
]


@pytest.mark.parametrize("options, shape", BN_CASES)
def test_batchnorm_training_gradients(options, shape):
    layer = make_layer(BatchNormalization, options, shape[1:])
    assert set(layer.params) == {
        k for k, on in (("gamma", layer.options["scale"]), ("beta", layer.options["center"])) if on
    }
    x = np.random.default_rng(8).standard_normal(shape) * 2 + 1
    y, _ = check_layer_gradients(layer, x, training=True)
    # per-channel output statistics: mean beta, std |gamma| sqrt(var / (var + eps))
    axes = tuple(range(len(shape) - 1))
    var = x.var(axis=axes)
    gamma = layer.params.get("gamma", np.ones(shape[-1]))
    beta = layer.params.get("beta", np.zeros(shape[-1]))
    np.testing.assert_allclose(y.mean(axis=axes), beta, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=axes), np.abs(gamma) * np.sqrt(var / (var + 1e-3)))


@pytest.mark.parametrize("shape", [(2, 3, 2, 3), (4, 3)])
def test_batchnorm_inference_gradients(shape):
    layer = make_layer(BatchNormalization, {}, shape[1:])
    layer.state["moving_mean"][...] = [0.5, -1.0, 2.0]
    layer.state["moving_variance"][...] = [0.5, 2.0, 4.0]
    x = np.random.default_rng(6).standard_normal(shape)
    check_layer_gradients(layer, x, training=False)


def test_batchnorm_inference_uses_moving_statistics_by_hand():
    layer = make_layer(BatchNormalization, {}, (1, 1, 2))
    layer.state["moving_mean"][...] = [1.0, -2.0]
    layer.state["moving_variance"][...] = [3.999, 0.249]  # + epsilon 0.001: sqrt 2 and 0.5
    layer.params["gamma"][...] = [2.0, 3.0]
    layer.params["beta"][...] = [0.5, -1.0]
    x = np.array([[[[5.0, -1.0]]], [[[1.0, -2.5]]]])
    y = layer.forward(x, training=False)
    # (5 - 1) / 2 * 2 + 0.5 = 4.5;  (-1 + 2) / 0.5 * 3 - 1 = 5
    # (1 - 1) / 2 * 2 + 0.5 = 0.5;  (-2.5 + 2) / 0.5 * 3 - 1 = -4
    np.testing.assert_allclose(y.reshape(2, 2), [[4.5, 5.0], [0.5, -4.0]], rtol=1e-12)
    # inference leaves the moving statistics alone
    np.testing.assert_array_equal(layer.state["moving_mean"], [1.0, -2.0])
    np.testing.assert_array_equal(layer.state["moving_variance"], [3.999, 0.249])


def test_batchnorm_moving_statistics_two_steps_by_hand():
    # default momentum 0.99, 4-D input, one channel: moving = moving * 0.99 + batch * 0.01
    layer = make_layer(BatchNormalization, {}, (2, 2, 1), randomize_params=False)
    np.testing.assert_array_equal(layer.state["moving_mean"], [0.0])
    np.testing.assert_array_equal(layer.state["moving_variance"], [1.0])
    layer.forward(np.array([1.0, 2.0, 3.0, 6.0]).reshape(1, 2, 2, 1), training=True)
    # batch mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5
    np.testing.assert_allclose(layer.state["moving_mean"], [0.03], rtol=1e-14)
    np.testing.assert_allclose(layer.state["moving_variance"], [0.99 + 0.035], rtol=1e-14)
    layer.forward(np.array([0.0, 0.0, 4.0, 4.0]).reshape(1, 2, 2, 1), training=True)
    # batch mean 2, variance 4
    np.testing.assert_allclose(layer.state["moving_mean"], [0.03 * 0.99 + 0.02], rtol=1e-14)
    np.testing.assert_allclose(layer.state["moving_variance"], [1.025 * 0.99 + 0.04], rtol=1e-14)

    # momentum 0.9, 2-D input, two channels
    layer = make_layer(BatchNormalization, {"momentum": 0.9}, (2,), randomize_params=False)
    layer.forward(np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 4.0], [6.0, 4.0]]), training=True)
    np.testing.assert_allclose(layer.state["moving_mean"], [0.3, 0.2], rtol=1e-14)
    np.testing.assert_allclose(layer.state["moving_variance"], [1.25, 1.3], rtol=1e-14)
    layer.forward(np.array([[0.0, 1.0], [0.0, 1.0], [4.0, 1.0], [4.0, 1.0]]), training=True)
    np.testing.assert_allclose(layer.state["moving_mean"], [0.47, 0.28], rtol=1e-14)
    np.testing.assert_allclose(layer.state["moving_variance"], [1.525, 1.17], rtol=1e-14)


def test_batchnorm_keras_defaults_and_axis():
    layer = make_layer(BatchNormalization, {}, (4, 4, 3), randomize_params=False)
    o = layer.options
    assert (o["axis"], o["momentum"], o["epsilon"], o["center"], o["scale"]) == (
        -1,
        0.99,
        0.001,
        True,
        True,
    )
    np.testing.assert_array_equal(layer.params["gamma"], np.ones(3))
    np.testing.assert_array_equal(layer.params["beta"], np.zeros(3))
    assert layer.param_shapes() == {"gamma": (3,), "beta": (3,)}
    assert layer.state_shapes() == {"moving_mean": (3,), "moving_variance": (3,)}
    with pytest.raises(SpecError, match="axis 1 is not supported"):
        build_layers([{"BatchNormalization": {"axis": 1}}], (4, 4, 3))
