"""The Keras-tutorial vocabulary beyond the basic layers, each piece proven correct.

Float64 finite-difference checks (helpers from test_gradients.py) of every new layer and every
activation; BatchNormalization's statistics by hand; regularizers through the model's loss;
initializer statistics against their formulas; Keras' parameter counts (AlexNet: 62,378,344);
and the checkpoint round trip of parameters plus non-trainable state.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from cnnkit.api import summarize  # noqa: E402
from cnnkit.errors import CheckpointError, SpecError  # noqa: E402
from cnnkit.nn.activations import ACTIVATIONS, SELU_ALPHA, SELU_SCALE  # noqa: E402
from cnnkit.nn.initializers import _TRUNC_STD, INITIALIZER_NAMES, initialize  # noqa: E402
from cnnkit.nn.layers import (  # noqa: E402
    Activation,
    BatchNormalization,
    Conv2D,
    Dense,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    LeakyReLU,
    SpatialDropout2D,
)
from cnnkit.nn.registry import LOSSES  # noqa: E402
from cnnkit.spec.build import build_model
from cnnkit.spec.config import build_layers, parse_spec  # noqa: E402
from tests.nn.test_gradients import (
    TOL,
    away_from_zero,
    check_layer_gradients,
    distinct_values,
    make_layer,
    numerical_gradient,
    rel_error,
)

ROOT = Path(__file__).resolve().parents[2]
ALL_ACTIVATIONS = sorted(ACTIVATIONS)


def spec_text(layers: str, input_shape=(6, 6, 2), classes=3, seed=3) -> str:
    return f"""
name: t
seed: {seed}
data: {{source: synthetic, num_classes: {classes}}}
model:
  input_shape: {list(input_shape)}
  layers:
{layers}
loss: sparse_categorical_crossentropy
"""


# ----------------------------------------------------------------------------- activations


@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
@pytest.mark.parametrize("shape", [(3, 6), (2, 3, 4, 2)])
def test_activation_layer_gradients(activation, shape):
    layer = make_layer(Activation, {"activation": activation}, shape[1:])
    # spread over (-5, 5): hard_sigmoid's flat parts too; |x| >= 0.1 keeps kinks out of FD reach
    x = away_from_zero(np.random.default_rng(9), shape) * 2.0
    if activation == "hard_sigmoid":
        assert (np.abs(x) > 3).any() and (np.abs(x) < 3).any()
        assert np.min(np.abs(np.abs(x) - 3)) > 1e-4
    check_layer_gradients(layer, x)


@pytest.mark.parametrize("activation", ["leaky_relu", "elu", "selu", "gelu", "swish"])
def test_dense_with_new_activations_gradients(activation):
    layer = make_layer(Dense, {"units": 4, "activation": activation}, (5,))
    x = np.random.default_rng(11).standard_normal((3, 5))
    layer.forward(x, False)
    assert np.min(np.abs(layer._z)) > 1e-4
    check_layer_gradients(layer, x)


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


# ----------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("cls", [GlobalAveragePooling2D, GlobalMaxPooling2D])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_gradients(cls, keepdims):
    shape = (2, 3, 4, 3)
    layer = make_layer(cls, {"keepdims": keepdims}, shape[1:])
    assert layer.output_shape == ((1, 1, 3) if keepdims else (3,))
    x = distinct_values(np.random.default_rng(5), shape)
    y, _ = check_layer_gradients(layer, x)
    reduce = np.mean if cls is GlobalAveragePooling2D else np.max
    np.testing.assert_allclose(y.reshape(2, 3), reduce(x, axis=(1, 2)), rtol=1e-14)


def test_global_max_pooling_gradient_goes_to_first_maximum():
    layer = make_layer(GlobalMaxPooling2D, {}, (2, 2, 1))
    x = np.array([[[[1.0], [5.0]], [[5.0], [2.0]]]])  # tie between (0, 1) and (1, 0)
    assert layer.forward(x, False).tolist() == [[5.0]]
    dx = layer.backward(np.array([[7.0]]))
    np.testing.assert_array_equal(dx[0, ..., 0], [[0.0, 7.0], [0.0, 0.0]])


def test_global_pooling_needs_an_image():
    with pytest.raises(SpecError, match="image-shaped"):
        build_layers([{"GlobalAveragePooling2D": {}}], (10,))


# ----------------------------------------------------------------------------- SpatialDropout2D


def reseed(layer):
    layer.rng = np.random.default_rng(0)


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


# ----------------------------------------------------------------------------- BatchNormalization

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


# ----------------------------------------------------------------------------- regularizers

REG_LAYERS = """    - Conv2D: {filters: 3, kernel_size: 3, activation: tanh,
               kernel_regularizer: {l1: 0.05}}
    - BatchNormalization: {gamma_regularizer: l2}
    - LeakyReLU: {negative_slope: 0.2}
    - SpatialDropout2D: {rate: 0.3}
    - GlobalAveragePooling2D: {}
    - Dense: {units: 4, activation: gelu, kernel_regularizer: {l2: 0.03},
              bias_regularizer: {l1_l2: {l1: 0.02, l2: 0.04}}}
    - Dense: {units: 3, activation: softmax, kernel_regularizer: l1_l2, bias_regularizer: l1}
"""


def test_regularizer_spec_forms_resolve():
    spec = parse_spec(spec_text(REG_LAYERS))
    conv, bn, dense1, dense2 = (spec.model.layers[i].options for i in (0, 1, 5, 6))
    assert conv["kernel_regularizer"] == {"l1": 0.05, "l2": 0.0}
    assert conv["bias_regularizer"] is None
    assert bn["gamma_regularizer"] == {"l1": 0.0, "l2": 0.01}
    assert dense1["kernel_regularizer"] == {"l1": 0.0, "l2": 0.03}
    assert dense1["bias_regularizer"] == {"l1": 0.02, "l2": 0.04}
    assert dense2["kernel_regularizer"] == {"l1": 0.01, "l2": 0.01}
    assert dense2["bias_regularizer"] == {"l1": 0.01, "l2": 0.0}
    # the resolved config validates again to the same spec
    again = parse_spec(spec.to_yaml())
    assert again.to_dict() == spec.to_dict()
    with pytest.raises(SpecError, match="unknown regularizer 'l3'"):
        parse_spec(
            spec_text("    - Flatten: {}\n    - Dense: {units: 3, kernel_regularizer: {l3: 1}}")
        )


def test_regularization_loss_value_by_hand():
    spec = parse_spec(spec_text(REG_LAYERS))
    model = build_model(spec).build(1, dtype=np.float64)
    p = model.named_params()
    expected = (
        0.05 * np.abs(p["layers.0.kernel"]).sum()
        + 0.01 * np.square(p["layers.1.gamma"]).sum()
        + 0.03 * np.square(p["layers.5.kernel"]).sum()
        + 0.02 * np.abs(p["layers.5.bias"]).sum()
        + 0.04 * np.square(p["layers.5.bias"]).sum()
        + 0.01 * np.abs(p["layers.6.kernel"]).sum()
        + 0.01 * np.square(p["layers.6.kernel"]).sum()
        + 0.01 * np.abs(p["layers.6.bias"]).sum()
    )
    assert model.regularization_loss() == pytest.approx(expected, rel=1e-13)
    assert expected > 0
    # no regularizers: 0
    plain = parse_spec(spec_text("    - Flatten: {}\n    - Dense: {units: 3, activation: softmax}"))
    assert build_model(plain).build(1).regularization_loss() == 0.0


def test_model_gradients_with_regularizers_and_new_layers():
    """FD of loss + regularization_loss over every parameter (sampled), training mode:
    BatchNormalization's batch statistics, SpatialDropout2D masks, l1 away from 0, l2, l1_l2."""
    spec = parse_spec(spec_text(REG_LAYERS))
    model = build_model(spec).build(spec.seed, dtype=np.float64)
    loss_fn = LOSSES[spec.loss.name]()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 6, 2))
    labels = np.array([0, 2, 1])
    params = model.named_params()
    for array in params.values():
        array[...] = away_from_zero(rng, array.shape, margin=0.05) * 0.4  # l1 kink out of reach
    dropout = model.layers[3]

    def forward():
        dropout.rng = np.random.default_rng(1)
        return model.forward(x, training=True)

    logits = forward()
    assert (dropout._mask == 0).any() and (dropout._mask != 0).any()
    _, dlogits = loss_fn(logits, labels)
    model.backward(dlogits)
    grads = {k: g.copy() for k, g in model.named_grads().items()}
    assert sorted(grads) == sorted(params)

    def objective():
        return loss_fn(forward(), labels)[0] + model.regularization_loss()

    for key, param in params.items():
        n = min(12, param.size)
        idx = np.sort(rng.choice(param.size, size=n, replace=False))
        numeric = numerical_gradient(objective, param, idx).reshape(-1)[idx]
        err = rel_error(grads[key].reshape(-1)[idx], numeric)
        assert err < TOL, f"{key}: relative error {err:.3g}"


@pytest.mark.parametrize(
    "reg",
    [{"l1": 0.1}, {"l2": 0.2}, {"l1_l2": {"l1": 0.1, "l2": 0.2}}],
    ids=["l1", "l2", "l1_l2"],
)
def test_dense_regularizer_gradient_alone(reg):
    layer = make_layer(
        Dense, {"units": 3, "kernel_regularizer": reg, "bias_regularizer": reg}, (4,)
    )
    for array in layer.params.values():
        array[...] = away_from_zero(np.random.default_rng(2), array.shape, margin=0.05)
    x = np.random.default_rng(3).standard_normal((2, 4))
    r = np.random.default_rng(4).standard_normal((2, 3))
    layer.forward(x, False)
    layer.backward(r)
    grads = {k: g.copy() for k, g in layer.grads.items()}

    def objective():
        return float(np.sum(layer.forward(x, False) * r)) + layer.regularization_loss()

    for name, param in layer.params.items():
        err = rel_error(grads[name], numerical_gradient(objective, param))
        assert err < TOL, f"{name}: {err:.3g}"


# ----------------------------------------------------------------------------- initializers

N_SHAPE = (3, 3, 64, 64)  # fan_in 576, fan_out 576
FAN = 576.0
INIT_STATS = [
    # (initializer, mean, variance)
    ("glorot_uniform", 0.0, 1 / FAN),
    ("glorot_normal", 0.0, 1 / FAN),
    ("he_uniform", 0.0, 2 / FAN),
    ("he_normal", 0.0, 2 / FAN),
    ("lecun_uniform", 0.0, 1 / FAN),
    ("lecun_normal", 0.0, 1 / FAN),
    ("random_normal", 0.0, 0.05**2),
    ("random_uniform", 0.0, 0.1**2 / 12),
    ("truncated_normal", 0.0, (0.05 * _TRUNC_STD) ** 2),
    ("zeros", 0.0, 0.0),
    ("ones", 1.0, 0.0),
    ("constant", 0.0, 0.0),
    ({"constant": {"value": 0.5}}, 0.5, 0.0),
    ({"random_normal": {"mean": 1.0, "stddev": 0.2}}, 1.0, 0.04),
    ({"random_uniform": {"minval": 0.0, "maxval": 1.0}}, 0.5, 1 / 12),
    ({"truncated_normal": {"mean": -1.0, "stddev": 0.1}}, -1.0, (0.1 * _TRUNC_STD) ** 2),
]


@pytest.mark.parametrize("init, mean, var", INIT_STATS, ids=[str(c[0]) for c in INIT_STATS])
def test_initializer_mean_and_variance(init, mean, var):
    w = initialize(init, N_SHAPE, np.random.default_rng(0), np.float64)
    assert w.shape == N_SHAPE
    if var == 0.0:
        np.testing.assert_array_equal(w, np.full(N_SHAPE, mean))
        return
    assert abs(w.mean() - mean) < 4 * math.sqrt(var / w.size)
    assert w.var() == pytest.approx(var, rel=0.03)


def test_every_initializer_name_is_covered():
    names = {c[0] for c in INIT_STATS if isinstance(c[0], str)}
    assert names == set(INITIALIZER_NAMES)


def test_initializer_spec_forms():
    layers = build_layers(
        [
            {"Conv2D": {"filters": 2, "kernel_size": 3, "kernel_initializer": {"constant": 0.5}}},
            {"Flatten": {}},
            {"Dense": {"units": 3, "bias_initializer": {"constant": {"value": -2}}}},
        ],
        (5, 5, 1),
    )
    assert layers[0].options["kernel_initializer"] == {"constant": {"value": 0.5}}
    assert layers[2].options["bias_initializer"] == {"constant": {"value": -2.0}}
    rng = np.random.default_rng(0)
    for layer in layers:
        layer.build(rng, np.dtype(np.float32))
    np.testing.assert_array_equal(layers[0].params["kernel"], np.full((3, 3, 1, 2), 0.5))
    np.testing.assert_array_equal(layers[2].params["bias"], np.full(3, -2.0))
    with pytest.raises(SpecError, match="unknown constant option 'valu'"):
        build_layers(
            [{"Dense": {"units": 3, "kernel_initializer": {"constant": {"valu": 1}}}}], (4,)
        )
    with pytest.raises(SpecError, match="not a valid value"):
        build_layers([{"Dense": {"units": 3, "kernel_initializer": "he_normall"}}], (4,))


# ----------------------------------------------------------------------------- parameter counts


def test_keras_parameter_counts_with_batchnorm():
    spec = parse_spec(
        spec_text(
            "    - Conv2D: {filters: 32, kernel_size: 3}\n"
            "    - BatchNormalization: {}\n"
            "    - Flatten: {}\n"
            "    - Dense: {units: 16}\n"
            "    - BatchNormalization: {center: false}\n"
            "    - Dense: {units: 10, activation: softmax}",
            input_shape=(28, 28, 1),
            classes=10,
        )
    )
    info = summarize(spec)
    conv = 3 * 3 * 1 * 32 + 32  # 320
    bn = 4 * 32  # gamma, beta (trainable) + moving_mean, moving_variance
    dense = 26 * 26 * 32 * 16 + 16
    bn2 = 3 * 16  # no beta
    head = 16 * 10 + 10
    assert [r.params for r in info.rows] == [conv, bn, 0, dense, bn2, head]
    assert [r.non_trainable for r in info.rows] == [0, 64, 0, 0, 32, 0]
    assert (
        info.rows[1].name == "batch_normalization" and info.rows[4].name == "batch_normalization_1"
    )
    total = conv + bn + dense + bn2 + head
    assert info.totals["total"] == total
    assert info.totals["non_trainable"] == 96
    assert info.totals["trainable"] == total - 96
    assert info.totals["bytes"] == 4 * total


ALEXNET_COUNTS = [
    11 * 11 * 3 * 96 + 96,  # 34,944
    0,
    5 * 5 * 96 * 256 + 256,  # 614,656
    0,
    3 * 3 * 256 * 384 + 384,  # 885,120
    3 * 3 * 384 * 384 + 384,  # 1,327,488
    3 * 3 * 384 * 256 + 256,  # 884,992
    0,
    0,
    6 * 6 * 256 * 4096 + 4096,  # 37,752,832
    0,
    4096 * 4096 + 4096,  # 16,781,312
    0,
    4096 * 1000 + 1000,  # 4,097,000
]


def test_alexnet_counts_keras_62_378_344_parameters():
    assert sum(ALEXNET_COUNTS) == 62_378_344
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "alexnet.yaml").read_text())
    layers = build_layers(raw["model"]["layers"], (227, 227, 3))
    counts = [sum(math.prod(s) for s in layer.param_shapes().values()) for layer in layers]
    assert counts == ALEXNET_COUNTS
    assert [layer.output_shape for layer in layers][:9] == [
        (55, 55, 96),
        (27, 27, 96),
        (27, 27, 256),
        (13, 13, 256),
        (13, 13, 384),
        (13, 13, 384),
        (13, 13, 256),
        (6, 6, 256),
        (9216,),
    ]


def test_alexnet_spec_summary():
    try:
        spec = parse_spec((ROOT / "configs" / "alexnet.yaml").read_text())
    except SpecError as exc:  # pragma: no cover - until data.source synthetic validates it
        pytest.skip(f"configs/alexnet.yaml does not validate yet: {exc}")
    info = summarize(spec)
    assert info.totals["total"] == info.totals["trainable"] == 62_378_344
    assert info.totals["non_trainable"] == 0


# ----------------------------------------------------------------------------- checkpoints

BN_MODEL = """    - Conv2D: {filters: 3, kernel_size: 3, activation: relu}
    - BatchNormalization: {}
    - GlobalMaxPooling2D: {}
    - Dense: {units: 5, activation: elu}
    - BatchNormalization: {scale: false}
    - Dense: {units: 3, activation: softmax}
"""


def test_named_weights_hold_params_and_state():
    spec = parse_spec(spec_text(BN_MODEL))
    model = build_model(spec).build(0)
    assert sorted(model.named_state()) == [
        "layers.1.moving_mean",
        "layers.1.moving_variance",
        "layers.4.moving_mean",
        "layers.4.moving_variance",
    ]
    assert "layers.4.gamma" not in model.named_params()
    assert "layers.4.beta" in model.named_params()
    weights = model.named_weights()
    assert set(weights) == set(model.named_params()) | set(model.named_state())
    # the same arrays: a dict taken before training sees the moving statistics move
    before = weights["layers.1.moving_mean"].copy()
    model.forward(np.random.default_rng(0).random((4, 6, 6, 2), dtype=np.float32), True)
    assert not np.array_equal(weights["layers.1.moving_mean"], before)
    assert weights["layers.1.moving_mean"] is model.layers[1].state["moving_mean"]


def test_checkpoint_round_trip_of_named_weights(tmp_path):
    spec = parse_spec(spec_text(BN_MODEL))
    model = build_model(spec).build(0)
    rng = np.random.default_rng(1)
    for _ in range(3):  # move the moving statistics away from their initial values
        model.forward(rng.random((4, 6, 6, 2), dtype=np.float32), training=True)
    path = tmp_path / "ckpt.npz"
    np.savez(path, **model.named_weights())
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}

    other = build_model(spec).build(99)  # different weights until loaded
    x = rng.random((5, 6, 6, 2), dtype=np.float32)
    assert not np.allclose(other.forward(x), model.forward(x))
    other.load_params(arrays, str(path))
    for key, array in model.named_weights().items():
        np.testing.assert_array_equal(other.named_weights()[key], array)
        assert other.named_weights()[key].dtype == np.float32
    np.testing.assert_array_equal(other.forward(x), model.forward(x))

    bad = dict(arrays, **{"layers.1.moving_variance": np.ones(4, np.float32)})
    with pytest.raises(CheckpointError) as err:
        other.load_params(bad, "bad.npz")
    message = str(err.value)
    assert "layers.1.moving_variance" in message and "BatchNormalization" in message
    assert "(4,)" in message and "(3,)" in message
    missing = {k: v for k, v in arrays.items() if k != "layers.4.moving_mean"}
    with pytest.raises(CheckpointError, match="missing layers.4.moving_mean"):
        other.load_params(missing, "old.npz")


def test_last_layer_leaky_relu_is_not_skipped_as_a_logits_head():
    spec = parse_spec(
        spec_text("    - Flatten: {}\n    - Dense: {units: 3}\n    - LeakyReLU: {}").replace(
            "loss: sparse_categorical_crossentropy",
            "loss: {name: sparse_categorical_crossentropy, from_logits: true}",
        )
    )
    model = build_model(spec).build(0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((8, 6, 6, 2))
    logits = model.forward(x, training=True)  # (no dropout here) so that _z is kept to read
    z = model.layers[1]._z
    np.testing.assert_allclose(logits, np.where(z > 0, z, 0.3 * z))
    np.testing.assert_array_equal(model.forward(x), logits)  # inference: the same logits


@pytest.mark.parametrize(
    "cls, name",
    [
        (GlobalAveragePooling2D, "GlobalAvgPool2D"),
        (GlobalMaxPooling2D, "global_max_pooling2d"),
        (BatchNormalization, "batch_normalization"),
        (SpatialDropout2D, "spatial_dropout2d"),
        (LeakyReLU, "leaky_relu"),
        (Conv2D, "Conv2D"),
    ],
)
def test_layer_names_keras_and_snake_case(cls, name):
    from cnnkit.nn.registry import canonical_layer

    assert canonical_layer(name) is cls
    assert canonical_layer(cls.keras_name) is cls


def test_inference_lets_go_of_backward_arrays_and_gives_the_same_outputs():
    """Sequential.forward in inference releases each layer's backward arrays right after it
    runs (evaluate's peak memory: one layer's arrays, not all of them); outputs unchanged."""
    spec = parse_spec((ROOT / "configs" / "mnist.yaml").read_text())
    model = build_model(spec).build(0)
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    kept = x
    for layer in model.layers:  # layer by layer, nothing released
        kept = layer.forward(kept, False)
    held = [n for layer in model.layers for n, v in vars(layer).items() if n.startswith("_")]
    assert any(isinstance(getattr(model.layers[0], n, None), np.ndarray) for n in held)
    np.testing.assert_array_equal(model.forward(x), kept)
    for layer in model.layers:
        cached = [
            n for n, v in vars(layer).items() if n.startswith("_") and isinstance(v, np.ndarray)
        ]
        assert not cached, (layer.name, cached)
