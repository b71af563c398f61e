"""Float64 central finite-difference checks of every layer's backward pass, the fused
softmax cross-entropy and a whole small model.

Each layer check uses the scalar objective L = sum(forward(x) * R) for a fixed random R, so
that dL/dy = R: backward(R) must match the finite differences of L with respect to the
input and to every parameter.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cnnkit.nn.layers import (
    Activation,
    AveragePooling2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPooling2D,
)
from cnnkit.nn.losses import CategoricalCrossentropy, SparseCategoricalCrossentropy
from cnnkit.nn.registry import LOSSES
from cnnkit.options import resolve_options
from cnnkit.spec.build import build_model
from cnnkit.spec.config import parse_spec
from tests import reference as ref

EPS = 1e-6
TOL = 1e-6
KINK_MARGIN = 1e-4  # relu pre-activations must be this far from 0 for FD to be well-defined


# ----------------------------------------------------------------------------- helpers


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1e-8, np.max(np.abs(a)) + np.max(np.abs(b))))


def numerical_gradient(f, array: np.ndarray, indices=None, eps: float = EPS) -> np.ndarray:
    """Central differences of the scalar f() with respect to `array`, perturbed in place.

    With `indices` (flat indices), only those entries are computed (the rest stay 0).
    """
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    assert np.shares_memory(flat, array)
    for i in range(flat.size) if indices is None else indices:
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def conv_preactivation(conv, x):
    """A Conv2D layer's output before its (fused) activation, from the reference."""
    (sh, sw), (dh, dw) = conv.options["strides"], conv.options["dilation_rate"]
    b = conv.params.get("bias", np.zeros(conv.options["filters"]))
    pad = (conv.pad_top, conv.pad_left)
    return ref.conv2d_forward(
        x, conv.params["kernel"], b, (sh, sw), (dh, dw), pad, conv.output_shape[:2]
    )


def make_layer(cls, user_options, input_shape, seed=0, randomize_params=True):
    """A standalone float64 layer: options resolved, shape inferred, parameters built.

    The parameters are redrawn from a normal distribution so that biases are not all zero.
    """
    options = resolve_options(user_options, cls.OPTIONS, "test")
    layer = cls(options, index=0)
    layer.infer_shape(tuple(input_shape))
    rng = np.random.default_rng(seed)
    layer.build(rng, np.dtype(np.float64))
    if randomize_params:
        for array in layer.params.values():
            array[...] = rng.standard_normal(array.shape) * 0.5
    return layer


def check_layer_gradients(layer, x, training=False, before_forward=None, tol=TOL):
    """FD-check dL/dx and dL/dparam for L = sum(layer.forward(x) * R); return (y, dx)."""
    x = np.array(x, dtype=np.float64)  # own copy: perturbed in place

    def forward():
        if before_forward is not None:
            before_forward(layer)
        return layer.forward(x, training)

    y = forward()
    assert y.dtype == np.float64
    assert y.shape == (x.shape[0], *layer.output_shape)
    r = np.random.default_rng(1234).standard_normal(y.shape)
    dx = layer.backward(r.copy())
    assert dx.shape == x.shape and dx.dtype == np.float64
    grads = {name: g.copy() for name, g in layer.grads.items()}
    assert set(grads) == set(layer.params), "every parameter needs a gradient, and only those"
    for name, g in grads.items():
        assert g.shape == layer.params[name].shape, name
        assert g.dtype == np.float64, name

    def objective():
        return float(np.sum(forward() * r))

    err = rel_error(dx, numerical_gradient(objective, x))
    assert err < tol, f"input gradient: relative error {err:.3g}"
    for name, param in layer.params.items():
        err = rel_error(grads[name], numerical_gradient(objective, param))
        assert err < tol, f"{name} gradient: relative error {err:.3g}"
    return y, dx


def away_from_zero(rng, shape, margin=0.1):
    """Random values with |v| >= margin (no relu kink within FD reach)."""
    v = rng.standard_normal(shape)
    return np.sign(v) * (margin + np.abs(v))


def distinct_values(rng, shape, spacing=0.01):
    """A random permutation of distinct, well-separated values (no max-pooling ties)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) - n / 2).reshape(shape) * spacing


# ----------------------------------------------------------------------------- Conv2D

CONV_CASES = [
    # (options, input shape (N, H, W, C))
    pytest.param(
        {"filters": 2, "kernel_size": 3, "activation": "linear"},
        (1, 7, 6, 1),
        id="valid-s1-k3-c1-n1-linear",
    ),
    pytest.param(
        {"filters": 3, "kernel_size": [3, 2], "padding": "same", "activation": "relu"},
        (2, 7, 6, 3),
        id="same-s1-k3x2-c3-n2-relu",
    ),
    pytest.param(
        {"filters": 2, "kernel_size": 3, "strides": 2, "activation": "tanh"},
        (2, 7, 6, 3),
        id="valid-s2-k3-c3-n2-tanh",
    ),
    pytest.param(
        {"filters": 2, "kernel_size": [3, 2], "strides": 2, "padding": "same", "use_bias": False},
        (2, 7, 6, 1),
        id="same-s2-k3x2-c1-n2-nobias",
    ),
    pytest.param(
        {"filters": 2, "kernel_size": 3, "dilation_rate": 2, "activation": "tanh"},
        (1, 7, 6, 3),
        id="valid-d2-k3-c3-n1-tanh",
    ),
    pytest.param(
        {"filters": 2, "kernel_size": [3, 2], "dilation_rate": 2, "padding": "same"},
        (2, 6, 7, 1),
        id="same-d2-k3x2-c1-n2",
    ),
    pytest.param(
        {"filters": 2, "kernel_size": [2, 3], "strides": [2, 1], "padding": "same"},
        (2, 7, 6, 3),
        id="same-s2x1-k2x3-c3-n2",
    ),
    pytest.param(
        {"filters": 3, "kernel_size": [3, 2], "strides": [1, 2], "activation": "relu"},
        (1, 6, 7, 3),
        id="valid-s1x2-k3x2-c3-n1-relu",
    ),
    pytest.param(
        {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same", "activation": "tanh"},
        (2, 6, 7, 1),
        id="same-s2-k3-c1-n2-tanh-even",
    ),
]


@pytest.mark.parametrize("options, shape", CONV_CASES)
def test_conv2d_gradients(options, shape):
    layer = make_layer(Conv2D, options, shape[1:])
    x = np.random.default_rng(7).standard_normal(shape)
    if options.get("activation") == "relu":
        # relu is fused into the conv kernel (the layer keeps only its output): the
        # pre-activation comes from a linear twin with the same weights
        z = make_layer(Conv2D, {**options, "activation": "linear"}, shape[1:]).forward(x, False)
        assert np.min(np.abs(z)) > KINK_MARGIN, "pick another seed: relu kink"
        assert (z > 0).any() and (z < 0).any()
        assert np.array_equal(layer.forward(x, False), np.maximum(z, 0))  # the fused path
    check_layer_gradients(layer, x)


# ----------------------------------------------------------------------------- pooling

POOL_CASES = [
    pytest.param(
        pool, strides, padding, shape, id=f"p{pool}-s{strides}-{padding}-{shape[1]}x{shape[2]}"
    )
    for pool in (2, 3)
    for strides in (None, 1)
    for padding in ("valid", "same")
    for shape in ((2, 7, 5, 2), (1, 6, 7, 3))
] + [
    pytest.param([2, 3], [1, 2], "same", (2, 5, 7, 2), id="p2x3-s1x2-same-5x7"),
    pytest.param([3, 2], [2, 1], "valid", (2, 7, 6, 2), id="p3x2-s2x1-valid-7x6"),
    pytest.param(3, 2, "same", (2, 7, 6, 2), id="p3-s2-same-overlap-7x6"),
]


@pytest.mark.parametrize("cls", [MaxPooling2D, AveragePooling2D])
@pytest.mark.parametrize("pool, strides, padding, shape", POOL_CASES)
def test_pooling_gradients(cls, pool, strides, padding, shape):
    options = {"pool_size": pool, "padding": padding}
    if strides is not None:
        options["strides"] = strides
    layer = make_layer(cls, options, shape[1:])
    x = distinct_values(np.random.default_rng(3), shape)
    y, _ = check_layer_gradients(layer, x)
    if cls is MaxPooling2D:
        # every output is one of the inputs of its channel
        for c in range(shape[3]):
            assert np.isin(y[..., c], x[..., c]).all()


# ----------------------------------------------------------------------------- core layers

ACTIVATION_NAMES = ["relu", "sigmoid", "tanh", "softmax", "linear"]


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_gradients(activation, use_bias):
    layer = make_layer(Dense, {"units": 4, "activation": activation, "use_bias": use_bias}, (5,))
    x = np.random.default_rng(11).standard_normal((3, 5))
    if activation == "relu":
        layer.forward(x, False)
        assert np.min(np.abs(layer._z)) > KINK_MARGIN, "pick another seed: relu kink"
        assert (layer._z > 0).any() and (layer._z < 0).any()
    check_layer_gradients(layer, x)


def test_flatten_gradients():
    layer = make_layer(Flatten, {}, (3, 4, 2))
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 2))
    y, _ = check_layer_gradients(layer, x)
    # channels-last order, as Keras: channels fastest
    np.testing.assert_array_equal(y, x.reshape(2, 24))
    assert y[0, 1] == x[0, 0, 0, 1]


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("shape", [(3, 6), (2, 3, 4, 2)])
def test_activation_gradients(activation, shape):
    layer = make_layer(Activation, {"activation": activation}, shape[1:])
    x = away_from_zero(np.random.default_rng(9), shape)
    check_layer_gradients(layer, x)


def reseed_dropout(layer):
    layer.rng = np.random.default_rng(0)


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_dropout_training_gradients(rate):
    shape = (4, 5, 6, 2)
    layer = make_layer(Dropout, {"rate": rate}, shape[1:])
    x = away_from_zero(np.random.default_rng(2), shape)
    y, _ = check_layer_gradients(layer, x, training=True, before_forward=reseed_dropout)
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


# ----------------------------------------------------------------------------- losses


def log_softmax_reference(z):
    z = np.asarray(z, dtype=np.float64)
    return np.array([[v - np.log(np.sum(np.exp(row))) for v in row] for row in z])


LOSS_CASES = [
    pytest.param(CategoricalCrossentropy, {"label_smoothing": 0.0}, id="cce"),
    pytest.param(CategoricalCrossentropy, {"label_smoothing": 0.1}, id="cce-smooth0.1"),
    pytest.param(SparseCategoricalCrossentropy, {}, id="sparse-cce"),
]


@pytest.mark.parametrize("cls, options", LOSS_CASES)
def test_crossentropy_gradient(cls, options):
    rng = np.random.default_rng(21)
    logits = rng.standard_normal((5, 4)) * 2
    labels = np.array([0, 3, 1, 1, 2])
    loss_fn = cls(from_logits=False, **options)
    loss, dlogits = loss_fn(logits, labels)
    assert isinstance(loss, float)
    assert dlogits.shape == logits.shape and dlogits.dtype == np.float64
    numeric = numerical_gradient(lambda: loss_fn(logits, labels)[0], logits)
    err = rel_error(dlogits, numeric)
    assert err < TOL, f"relative error {err:.3g}"
    # rows of softmax - targets sum to zero
    np.testing.assert_allclose(dlogits.sum(axis=1), 0, atol=1e-15)


@pytest.mark.parametrize("cls", [CategoricalCrossentropy, SparseCategoricalCrossentropy])
def test_crossentropy_value_matches_numpy_formula(cls):
    rng = np.random.default_rng(22)
    logits = rng.standard_normal((6, 3))
    labels = np.array([2, 0, 1, 1, 0, 2])
    loss, _ = cls(from_logits=False)(logits, labels)
    expected = -np.mean(log_softmax_reference(logits)[np.arange(6), labels])
    assert loss == pytest.approx(expected, rel=1e-13)


def test_crossentropy_label_smoothing_value():
    rng = np.random.default_rng(23)
    logits = rng.standard_normal((4, 5))
    labels = np.array([4, 0, 2, 2])
    s, k = 0.1, 5
    loss, _ = CategoricalCrossentropy(label_smoothing=s, from_logits=False)(logits, labels)
    logp = log_softmax_reference(logits)
    # Keras: targets = onehot * (1 - s) + s / k
    per_sample = [
        -sum(((1 - s) * (j == labels[i]) + s / k) * logp[i, j] for j in range(k)) for i in range(4)
    ]
    assert loss == pytest.approx(np.mean(per_sample), rel=1e-13)


def test_crossentropy_known_value():
    # logits all equal: softmax uniform over 4 classes, loss = log(4) per sample
    loss, dlogits = CategoricalCrossentropy(label_smoothing=0.0, from_logits=False)(
        np.zeros((2, 4)), np.array([1, 3])
    )
    assert loss == pytest.approx(np.log(4.0), rel=1e-15)
    # (softmax - onehot) / batch = (0.25 - [0,1,0,0]) / 2
    np.testing.assert_allclose(dlogits[0], [0.125, -0.375, 0.125, 0.125], rtol=1e-15)


@pytest.mark.parametrize(
    "cls, options",
    [
        (CategoricalCrossentropy, {"label_smoothing": 0.0}),
        (CategoricalCrossentropy, {"label_smoothing": 0.1}),
        (SparseCategoricalCrossentropy, {}),
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_crossentropy_stable_for_huge_logits(cls, options, dtype):
    logits = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]], dtype=dtype)
    labels = np.array([0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # underflow of exp(-2000) to 0 is harmless; overflow, 0/0 or log(0) is not
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            loss, dlogits = cls(from_logits=False, **options)(logits, labels)
    assert np.isfinite(loss)
    assert np.isfinite(dlogits).all()
    assert dlogits.dtype == np.dtype(dtype)
    if options.get("label_smoothing", 0.0) == 0.0:
        # sample 0 is right with certainty (loss 0), sample 1 is off by 2000
        assert loss == pytest.approx(1000.0, rel=1e-6)
        expected = np.array([[0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]]) / 2
        np.testing.assert_allclose(dlogits, expected, atol=1e-7)


# ----------------------------------------------------------------------------- whole model

MODEL_SPEC = """
name: gradcheck
seed: 5
data: {source: mnist}
model:
  input_shape: [28, 28, 1]
  layers:
    - Conv2D: {filters: 2, kernel_size: 3, strides: 2, activation: relu}
    - MaxPooling2D: {pool_size: 2}
    - Flatten: {}
    - Dense: {units: 10, activation: softmax}
loss: sparse_categorical_crossentropy
"""

# same padding, average pooling, a Dropout (training mode) and a smoothed categorical loss
MODEL_SPEC_DROPOUT = """
name: gradcheck_dropout
seed: 6
data: {source: mnist}
model:
  input_shape: [28, 28, 1]
  layers:
    - Conv2D: {filters: 2, kernel_size: [3, 2], strides: 2, padding: same, activation: tanh}
    - AveragePooling2D: {pool_size: 3, padding: same}
    - Flatten: {}
    - Dropout: {rate: 0.3}
    - Dense: {units: 10, activation: softmax}
loss: {name: categorical_crossentropy, label_smoothing: 0.1}
"""


@pytest.mark.parametrize(
    "text, keys",
    [
        pytest.param(MODEL_SPEC, ["layers.0", "layers.3"], id="conv-maxpool-dense"),
        pytest.param(MODEL_SPEC_DROPOUT, ["layers.0", "layers.4"], id="conv-avgpool-dropout"),
    ],
)
def test_model_end_to_end_gradients(text, keys):
    spec = parse_spec(text)
    model = build_model(spec).build(spec.seed, dtype=np.float64)
    loss_fn = LOSSES[spec.loss.name](**spec.loss.options)
    dropouts = [layer for layer in model.layers if isinstance(layer, Dropout)]
    rng = np.random.default_rng(0)
    x = rng.random((2, 28, 28, 1))
    labels = np.array([3, 7])
    params = model.named_params()
    assert sorted(params) == sorted(f"{k}.{name}" for k in keys for name in ("bias", "kernel"))
    for array in params.values():
        assert array.dtype == np.float64
        array[...] = rng.standard_normal(array.shape) * 0.3  # non-zero biases too

    def forward():
        for layer in dropouts:  # the same dropout mask for every evaluation
            layer.rng = np.random.default_rng(0)
        return model.forward(x, training=True)

    logits = forward()
    assert logits.shape == (2, 10)
    conv = model.layers[0]
    if conv.options["activation"] == "relu":
        z = conv_preactivation(conv, x)  # relu is fused: the layer keeps only its output
        assert np.min(np.abs(z)) > KINK_MARGIN, "pick another seed: relu kink"
    for layer in dropouts:
        assert (layer._mask == 0).any()
    _, dlogits = loss_fn(logits, labels)
    model.backward(dlogits)
    grads = {k: g.copy() for k, g in model.named_grads().items()}
    assert sorted(grads) == sorted(params)

    def objective():
        return loss_fn(forward(), labels)[0]

    for key, param in params.items():
        assert grads[key].shape == param.shape
        n = min(20, param.size)
        indices = np.sort(rng.choice(param.size, size=n, replace=False))
        numeric = numerical_gradient(objective, param, indices)
        analytic = grads[key].reshape(-1)[indices]
        err = rel_error(analytic, numeric.reshape(-1)[indices])
        assert err < TOL, f"{key}: relative error {err:.3g}"
        assert np.abs(analytic).max() > 0, f"{key}: all sampled gradients are zero"
