"""Conv2D (cnnkit.nn.layers.conv): float64 finite-difference checks over odd shapes
(stride > 1, padding same, dilation, non-square, batch 1, channels 1 and 3) and the fused relu;
`groups`: Keras' kernel shape, errors and channel order, and groups=1 unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.api import summarize
from cnnkit.errors import SpecError
from cnnkit.kernels.conv import conv2d_forward
from cnnkit.nn.layers.conv import Conv2D
from cnnkit.spec.config import build_layers, parse_spec
from tests.nn.gradcheck import (
    KINK_MARGIN,
    check_layer_gradients,
    make_layer,
    spec_text,
)

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


GROUPED_CASES = [
    # (options, input shape (N, H, W, C))
    pytest.param({"filters": 4, "kernel_size": 3, "groups": 2}, (2, 6, 5, 2), id="g2-c2-valid"),
    pytest.param(
        {"filters": 6, "kernel_size": [3, 2], "groups": 3, "strides": 2, "padding": "same"},
        (2, 7, 6, 3),
        id="g3-c3-same-s2-k3x2-odd",
    ),
    pytest.param(
        {"filters": 3, "kernel_size": 2, "groups": 3, "strides": [1, 2], "padding": "same"},
        (1, 6, 6, 6),
        id="g3-c6-same-s1x2-even-n1",
    ),
    pytest.param(
        {"filters": 4, "kernel_size": 3, "groups": 2, "dilation_rate": 2, "activation": "tanh"},
        (2, 7, 6, 4),
        id="g2-c4-d2-tanh",
    ),
    pytest.param(
        {"filters": 4, "kernel_size": [2, 3], "groups": 4, "padding": "same", "use_bias": False},
        (2, 5, 6, 4),
        id="g4-depthwise-like-nobias",
    ),
]


@pytest.mark.parametrize("options, shape", GROUPED_CASES)
def test_grouped_conv2d_gradients(options, shape):
    layer = make_layer(Conv2D, options, shape[1:])
    groups = options["groups"]
    kh, kw, c_per_group, filters = layer.params["kernel"].shape
    assert (c_per_group, filters) == (shape[3] // groups, options["filters"])  # Keras' shape
    check_layer_gradients(layer, np.random.default_rng(7).standard_normal(shape))


def test_grouped_relu_is_fused_and_its_gradient_right():
    options = {"filters": 6, "kernel_size": 3, "groups": 3, "padding": "same", "activation": "relu"}
    layer = make_layer(Conv2D, options, (5, 6, 3))
    x = np.random.default_rng(11).standard_normal((2, 5, 6, 3))
    z = make_layer(Conv2D, {**options, "activation": "linear"}, (5, 6, 3)).forward(x, False)
    assert np.min(np.abs(z)) > KINK_MARGIN and (z > 0).any() and (z < 0).any()
    assert np.array_equal(layer.forward(x, False), np.maximum(z, 0))
    check_layer_gradients(layer, x)


def test_each_group_is_a_convolution_of_its_own_channels():
    """Output filter f belongs to group f // (filters // groups) and sees only that group's
    input channels: the grouped layer equals one Conv2D per group, concatenated."""
    options = {"filters": 6, "kernel_size": 3, "padding": "same", "strides": 2}
    grouped = make_layer(Conv2D, {**options, "groups": 3}, (7, 5, 9))
    x = np.random.default_rng(2).standard_normal((2, 7, 5, 9))
    parts = []
    for g in range(3):
        single = make_layer(Conv2D, {**options, "filters": 2}, (7, 5, 3))
        single.params["kernel"][...] = grouped.params["kernel"][..., 2 * g : 2 * g + 2]
        single.params["bias"][...] = grouped.params["bias"][2 * g : 2 * g + 2]
        parts.append(single.forward(x[..., 3 * g : 3 * g + 3], False))
    np.testing.assert_allclose(grouped.forward(x, False), np.concatenate(parts, -1), rtol=1e-12)


def test_groups_1_is_the_plain_convolution_bitwise():
    """groups=1 (the default) runs the ordinary convolution kernels: the same bytes."""
    layer = make_layer(Conv2D, {"filters": 5, "kernel_size": 3, "padding": "same"}, (6, 7, 9))
    assert layer.options["groups"] == 1 and layer.params["kernel"].shape == (3, 3, 9, 5)
    x = np.random.default_rng(4).standard_normal((3, 6, 7, 9)).astype(np.float32)
    w = layer.params["kernel"].astype(np.float32)
    layer.params = {"kernel": w, "bias": layer.params["bias"].astype(np.float32)}
    expected = np.empty((3, 6, 7, 5), np.float32)
    conv2d_forward(x, w, layer.params["bias"], 1, 1, 1, 1, 1, 1, expected)
    assert layer.forward(x, False).tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    "options, shape, message",
    [
        (
            {"filters": 8, "kernel_size": 3, "groups": 3},
            (6, 6, 3),
            r"The number of filters must be evenly divisible by the number of groups\. "
            r"Received: groups=3, filters=8\.",
        ),
        (
            {"filters": 4, "kernel_size": 3, "groups": 2},
            (6, 6, 3),
            r"The number of input channels must be evenly divisible by the number of groups\. "
            r"Received groups=2, but the input has 3 channels \(full input shape is "
            r"\(None, 6, 6, 3\)\)\.",
        ),
    ],
)
def test_groups_that_do_not_divide_say_what_keras_says(options, shape, message):
    with pytest.raises(SpecError, match=message) as error:
        build_layers([{"Conv2D": options}], shape)
    assert error.value.where == "model.layers[0].Conv2D.groups"


def test_groups_must_be_positive():
    with pytest.raises(SpecError) as error:
        build_layers([{"Conv2D": {"filters": 2, "kernel_size": 3, "groups": 0}}], (6, 6, 2))
    assert error.value.where == "model.layers[0].Conv2D.groups"


def test_a_grouped_spec_summarizes_with_keras_counts():
    spec = parse_spec(
        spec_text(
            "    - Conv2D: {filters: 4, kernel_size: 3, groups: 2}\n"
            "    - Flatten: {}\n"
            "    - Dense: {units: 3, activation: softmax}",
            input_shape=(6, 6, 2),
        )
    )
    row = summarize(spec).rows[0]
    assert (row.output_shape, row.params) == ("(None, 4, 4, 4)", 3 * 3 * 1 * 4 + 4)
    assert row.macs == 4 * 4 * 4 * 3 * 3 * 1
