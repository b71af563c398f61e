"""Initializers (cnnkit.nn.initializers): fans, formulas, statistics, spec forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnkit.errors import SpecError
from cnnkit.nn.initializers import _TRUNC_STD, INITIALIZER_NAMES, INITIALIZERS, fans, initialize
from cnnkit.nn.layers.conv import Conv2D
from cnnkit.nn.layers.core import Dense
from cnnkit.options import resolve_options
from cnnkit.spec.config import build_layers


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
    conv.create_weights(rng, np.dtype(np.float32))
    limit = math.sqrt(6 / (9 * 16 + 9 * 32))
    assert conv.params["kernel"].dtype == np.float32
    assert np.abs(conv.params["kernel"]).max() <= limit
    assert np.abs(conv.params["kernel"]).max() > 0.95 * limit
    np.testing.assert_array_equal(conv.params["bias"], np.zeros(32, np.float32))

    dense = Dense(resolve_options({"units": 10, "use_bias": False}, Dense.OPTIONS, "t"), 1)
    dense.infer_shape((128,))
    dense.create_weights(rng, np.dtype(np.float64))
    assert set(dense.params) == {"kernel"}
    assert dense.params["kernel"].shape == (128, 10)
    assert np.abs(dense.params["kernel"]).max() <= math.sqrt(6 / 138)


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
        layer.create_weights(rng, np.dtype(np.float32))
    np.testing.assert_array_equal(layers[0].params["kernel"], np.full((3, 3, 1, 2), 0.5))
    np.testing.assert_array_equal(layers[2].params["bias"], np.full(3, -2.0))
    with pytest.raises(SpecError, match="unknown constant option 'valu'"):
        build_layers(
            [{"Dense": {"units": 3, "kernel_initializer": {"constant": {"valu": 1}}}}], (4,)
        )
    with pytest.raises(SpecError, match="not a valid value"):
        build_layers([{"Dense": {"units": 3, "kernel_initializer": "he_normall"}}], (4,))
