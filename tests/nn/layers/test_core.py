"""Dense, Flatten, Activation, LeakyReLU, Dropout, SpatialDropout2D and Rescaling
(cnnkit.nn.layers.core): float64 finite-difference checks and their behaviour.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.api import summarize
from cnnkit.errors import SpecError
from cnnkit.nn.activations import ACTIVATIONS
from cnnkit.nn.layers.core import (
    Activation,
    Dense,
    Dropout,
    Flatten,
    LeakyReLU,
    Rescaling,
    SpatialDropout2D,
)
from cnnkit.spec.build import build_model
from cnnkit.spec.config import build_layers, parse_spec
from tests.nn.gradcheck import (
    KINK_MARGIN,
    away_from_zero,
    check_layer_gradients,
    make_layer,
    reseed,
    spec_text,
)

ALL_ACTIVATIONS = sorted(ACTIVATIONS)


@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_gradients(activation, use_bias):
    layer = make_layer(Dense, {"units": 4, "activation": activation, "use_bias": use_bias}, (5,))
    x = np.random.default_rng(11).standard_normal((3, 5))
    layer.forward(x, False)
    assert np.min(np.abs(layer._z)) > KINK_MARGIN, "pick another seed: a kink within FD reach"
    if activation == "relu":
        assert (layer._z > 0).any() and (layer._z < 0).any()
    check_layer_gradients(layer, x)


def test_flatten_gradients():
    layer = make_layer(Flatten, {}, (3, 4, 2))
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 2))
    y, _ = check_layer_gradients(layer, x)
    # channels-last order, as Keras: channels fastest
    np.testing.assert_array_equal(y, x.reshape(2, 24))
    assert y[0, 1] == x[0, 0, 0, 1]


@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
@pytest.mark.parametrize("shape", [(3, 6), (2, 3, 4, 2)])
@pytest.mark.parametrize("spread", [1.0, 2.0])
def test_activation_layer_gradients(activation, shape, spread):
    layer = make_layer(Activation, {"activation": activation}, shape[1:])
    # |x| >= 0.1 keeps kinks out of FD reach; spread 2, over (-5, 5): hard_sigmoid's flat parts
    x = away_from_zero(np.random.default_rng(9), shape) * spread
    if activation == "hard_sigmoid":
        assert np.min(np.abs(np.abs(x) - 3)) > 1e-4
        if spread == 2.0:
            assert (np.abs(x) > 3).any() and (np.abs(x) < 3).any()
    check_layer_gradients(layer, x)


def test_leaky_relu_layer_default_slope_and_gradients():
    layer = make_layer(LeakyReLU, {}, (4,))
    assert layer.options["negative_slope"] == 0.3  # Keras 3 LeakyReLU layer default
    np.testing.assert_allclose(
        layer.forward(np.array([[-1.0, 2.0, -3.0, 0.5]]), False), [[-0.3, 2, -0.9, 0.5]]
    )
    layer = make_layer(LeakyReLU, {"negative_slope": 0.1}, (2, 3, 2))
    x = away_from_zero(np.random.default_rng(3), (2, 2, 3, 2))
    y, dx = check_layer_gradients(layer, x)
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.1 * x), rtol=1e-15)


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_dropout_training_gradients(rate):
    shape = (4, 5, 6, 2)
    layer = make_layer(Dropout, {"rate": rate}, shape[1:])
    x = away_from_zero(np.random.default_rng(2), shape)
    y, _ = check_layer_gradients(layer, x, training=True, before_forward=reseed)
    dropped = y == 0
    # a rate fraction dropped (loosely), the rest scaled by 1/(1-rate)
    assert 0.5 * rate < dropped.mean() < 1.5 * rate
    np.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - rate), rtol=1e-15)


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_dropout_inference_is_identity(rate):
    shape = (3, 4, 5, 2)
    layer = make_layer(Dropout, {"rate": rate}, shape[1:])
    layer.rng = np.random.default_rng(0)
    x = np.random.default_rng(4).standard_normal(shape)
    y, dx = check_layer_gradients(layer, x, training=False)
    np.testing.assert_array_equal(y, x)
    r = np.random.default_rng(1234).standard_normal(shape)
    np.testing.assert_array_equal(dx, r)


def test_dropout_rate_zero_training_is_identity():
    layer = make_layer(Dropout, {"rate": 0.0}, (4,))
    layer.rng = np.random.default_rng(0)
    x = np.random.default_rng(4).standard_normal((3, 4))
    np.testing.assert_array_equal(layer.forward(x, True), x)


def test_spatial_dropout_drops_whole_channels():
    rate = 0.5
    shape = (40, 3, 4, 6)
    layer = make_layer(SpatialDropout2D, {"rate": rate}, shape[1:])
    reseed(layer)
    x = away_from_zero(np.random.default_rng(2), shape)
    y = layer.forward(x, True)
    dropped = (y == 0).all(axis=(1, 2))  # (N, C)
    kept = (y == x / (1 - rate)).all(axis=(1, 2))
    assert (dropped | kept).all(), "every channel of every sample is dropped or kept whole"
    assert 0.35 < dropped.mean() < 0.65
    # different samples drop different channels
    assert len({tuple(row) for row in dropped}) > 1
    np.testing.assert_array_equal(layer.forward(x, False), x)  # inference: identity


def test_spatial_dropout_training_gradients():
    shape = (3, 3, 4, 5)
    layer = make_layer(SpatialDropout2D, {"rate": 0.4}, shape[1:])
    x = away_from_zero(np.random.default_rng(4), shape)
    y, _ = check_layer_gradients(layer, x, training=True, before_forward=reseed)
    assert (y == 0).any()


def test_spatial_dropout_seeded_by_the_model():
    text = spec_text(
        "    - SpatialDropout2D: {rate: 0.5}\n    - Flatten: {}\n"
        "    - Dense: {units: 3, activation: softmax}"
    )
    spec = parse_spec(text)
    runs = []
    for _ in range(2):
        model = build_model(spec).build(spec.seed, dtype=np.float64)
        assert model.layers[0].rng is model.dropout_rng
        model.forward(np.ones((4, 6, 6, 2)), training=True)
        runs.append(model.layers[0]._mask.copy())
    np.testing.assert_array_equal(runs[0], runs[1])  # same seed -> same channels dropped


def test_spatial_dropout_needs_an_image():
    with pytest.raises(SpecError, match="image-shaped"):
        build_layers([{"SpatialDropout2D": {"rate": 0.2}}], (10,))


def test_rescaling_is_x_times_scale_plus_offset():
    layer = make_layer(Rescaling, {"scale": 1 / 127.5, "offset": -1}, (2, 2, 1))
    x = np.array([0.0, 127.5, 255.0, 51.0]).reshape(1, 2, 2, 1)
    np.testing.assert_allclose(layer.forward(x, False).reshape(-1), [-1, 0, 1, -0.6])
    assert make_layer(Rescaling, {"scale": 2}, (3,)).options["offset"] == 0.0  # Keras default
    y = layer.forward(x.astype(np.float32), True)
    assert y.dtype == np.float32  # float32 stays float32
    y, dx = check_layer_gradients(layer, away_from_zero(np.random.default_rng(0), (2, 2, 2, 1)))
    r = np.random.default_rng(1234).standard_normal(y.shape)
    np.testing.assert_allclose(dx, r / 127.5, rtol=1e-15)


def test_rescaling_in_a_spec_takes_a_fraction_and_needs_a_scale():
    spec = parse_spec(
        spec_text(
            "    - Rescaling: {scale: 1/255}\n    - Flatten: {}\n"
            "    - Dense: {units: 3, activation: softmax}"
        )
    )
    assert spec.model.layers[0].options == {"scale": 1 / 255, "offset": 0.0}
    rows = summarize(spec).rows
    assert (rows[0].name, rows[0].type, rows[0].params) == ("rescaling", "Rescaling", 0)
    assert rows[0].macs == 6 * 6 * 2  # one multiply-add a value
    with pytest.raises(SpecError, match="missing required Rescaling option 'scale'"):
        build_layers([{"Rescaling": {"offset": 1}}], (4,))


def test_the_first_layer_computes_no_input_gradient():
    layer = make_layer(Rescaling, {"scale": 3.0}, (4,))
    layer.needs_input_grad = False
    layer.forward(np.ones((2, 4)), True)
    assert layer.backward(np.ones((2, 4))) is None
