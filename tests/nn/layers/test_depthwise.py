"""DepthwiseConv2D and SeparableConv2D (cnnkit.nn.layers.depthwise): Keras' weight names,
shapes and defaults, the channel order c * depth_multiplier + m, float64 finite-difference
checks of the input and every weight over strides, paddings, dilations and multipliers, the
fused relu, and a spec that uses both."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.api import summarize
from cnnkit.nn.layers.conv import Conv2D
from cnnkit.nn.layers.depthwise import DepthwiseConv2D, SeparableConv2D
from cnnkit.spec.config import build_layers, parse_spec
from tests import reference as ref
from tests.nn.gradcheck import KINK_MARGIN, check_layer_gradients, make_layer, spec_text

WINDOWS = [
    # (window options, input shape (N, H, W, C))
    pytest.param({"kernel_size": 3}, (1, 6, 5, 1), id="valid-k3-c1-n1"),
    pytest.param({"kernel_size": [3, 2], "padding": "same"}, (2, 7, 6, 3), id="same-k3x2-odd"),
    pytest.param(
        {"kernel_size": 3, "strides": 2, "padding": "same"}, (2, 6, 7, 3), id="same-s2-even"
    ),
    pytest.param({"kernel_size": [2, 3], "strides": [2, 1]}, (2, 7, 6, 2), id="valid-s2x1"),
    pytest.param({"kernel_size": 3, "dilation_rate": 2}, (1, 7, 6, 3), id="valid-d2"),
    pytest.param(
        {"kernel_size": [3, 2], "dilation_rate": [1, 2], "padding": "same"},
        (2, 6, 7, 2),
        id="same-d1x2",
    ),
]


def test_keras_defaults_and_weights():
    layers = [{"DepthwiseConv2D": {"kernel_size": 3}}]
    layers.append({"SeparableConv2D": {"filters": 5, "kernel_size": 2}})
    dw, sep = build_layers(layers, (8, 8, 4))
    window = ("strides", "padding", "depth_multiplier", "dilation_rate")
    assert [dw.options[k] for k in window] == [[1, 1], "valid", 1, [1, 1]]
    assert (dw.options["activation"], dw.options["use_bias"]) == ("linear", True)
    assert dw.options["depthwise_initializer"] == "glorot_uniform"
    assert dw.options["bias_initializer"] == "zeros" and dw.options["depthwise_regularizer"] is None
    assert {n: w.shape for n, w in dw.weights.items()} == {"kernel": (3, 3, 4, 1), "bias": (4,)}
    assert dw.output_shape == (6, 6, 4)
    assert sep.options["pointwise_initializer"] == "glorot_uniform"
    assert sep.options["pointwise_regularizer"] is None
    assert {n: w.shape for n, w in sep.weights.items()} == {
        "depthwise_kernel": (2, 2, 4, 1),
        "pointwise_kernel": (1, 1, 4, 5),
        "bias": (5,),
    }
    assert sep.output_shape == (5, 5, 5)


def test_depthwise_channel_order_is_channel_times_multiplier_plus_m():
    layer = make_layer(DepthwiseConv2D, {"kernel_size": 3, "depth_multiplier": 2}, (6, 5, 3))
    assert layer.output_shape == (4, 3, 6)
    x = np.random.default_rng(3).standard_normal((2, 6, 5, 3))
    expected = ref.depthwise_conv2d_forward(
        x, layer.params["kernel"], layer.params["bias"], (1, 1), (1, 1), (0, 0), (4, 3)
    )
    np.testing.assert_allclose(layer.forward(x, False), expected, rtol=1e-12)
    # channel 1's second filter alone, through an ordinary convolution
    single = make_layer(Conv2D, {"filters": 1, "kernel_size": 3}, (6, 5, 1))
    single.params["kernel"][...] = layer.params["kernel"][:, :, 1:2, 1:2]
    single.params["bias"][...] = layer.params["bias"][1 * 2 + 1]
    np.testing.assert_allclose(
        layer.forward(x, False)[..., 3:4], single.forward(x[..., 1:2], False), rtol=1e-12
    )


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("window, shape", WINDOWS)
def test_depthwise_gradients(window, shape, multiplier):
    options = {**window, "depth_multiplier": multiplier, "activation": "tanh"}
    layer = make_layer(DepthwiseConv2D, options, shape[1:])
    check_layer_gradients(layer, np.random.default_rng(7).standard_normal(shape))


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("window, shape", WINDOWS)
def test_separable_gradients(window, shape, multiplier):
    options = {**window, "filters": 3, "depth_multiplier": multiplier, "activation": "tanh"}
    layer = make_layer(SeparableConv2D, options, shape[1:])
    check_layer_gradients(layer, np.random.default_rng(7).standard_normal(shape))


@pytest.mark.parametrize("cls", [DepthwiseConv2D, SeparableConv2D])
def test_fused_relu_and_no_bias(cls):
    options = {"kernel_size": 3, "padding": "same", "depth_multiplier": 2, "use_bias": False}
    if cls is SeparableConv2D:
        options["filters"] = 4
    shape = (2, 5, 6, 3)
    layer = make_layer(cls, {**options, "activation": "relu"}, shape[1:])
    assert "bias" not in layer.params
    x = np.random.default_rng(5).standard_normal(shape)
    z = make_layer(cls, options, shape[1:]).forward(x, False)
    assert np.min(np.abs(z)) > KINK_MARGIN and (z > 0).any() and (z < 0).any()
    assert np.array_equal(layer.forward(x, False), np.maximum(z, 0))  # the fused path
    check_layer_gradients(layer, x)


def test_separable_is_depthwise_then_pointwise():
    options = {"kernel_size": 3, "strides": 2, "padding": "same", "depth_multiplier": 2}
    sep = make_layer(SeparableConv2D, {**options, "filters": 4}, (7, 6, 3))
    dw = make_layer(DepthwiseConv2D, {**options, "use_bias": False}, (7, 6, 3))
    dw.params["kernel"][...] = sep.params["depthwise_kernel"]
    point = make_layer(Conv2D, {"filters": 4, "kernel_size": 1}, (4, 3, 6))
    point.params["kernel"][...] = sep.params["pointwise_kernel"]
    point.params["bias"][...] = sep.params["bias"]
    x = np.random.default_rng(9).standard_normal((2, 7, 6, 3))
    expected = point.forward(dw.forward(x, False), False)
    np.testing.assert_allclose(sep.forward(x, False), expected, rtol=1e-12)


def test_a_mobilenet_style_spec_summarizes_with_keras_counts():
    spec = parse_spec(
        spec_text(
            "    - DepthwiseConv2D: {kernel_size: 3, depth_multiplier: 2, padding: same}\n"
            "    - SeparableConv2D: {filters: 8, kernel_size: 3, strides: 2}\n"
            "    - GlobalAveragePooling2D: {}\n"
            "    - Dense: {units: 3, activation: softmax}",
            input_shape=(8, 8, 4),
        )
    )
    rows = summarize(spec).rows
    assert [(r.name, r.type) for r in rows[:2]] == [
        ("depthwise_conv2d", "DepthwiseConv2D"),
        ("separable_conv2d", "SeparableConv2D"),
    ]
    assert rows[0].output_shape == "(None, 8, 8, 8)"
    assert rows[0].params == 3 * 3 * 4 * 2 + 8
    assert rows[1].output_shape == "(None, 3, 3, 8)"
    assert rows[1].params == 3 * 3 * 8 * 1 + 8 * 8 + 8
    assert rows[1].macs == 3 * 3 * 8 * (3 * 3 + 8)
    assert parse_spec(spec.to_yaml()).to_dict() == spec.to_dict()
