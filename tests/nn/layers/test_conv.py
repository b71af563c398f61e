"""Conv2D (cnnkit.nn.layers.conv): float64 finite-difference checks over odd shapes
(stride > 1, padding same, dilation, non-square, batch 1, channels 1 and 3) and the fused relu.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.nn.layers.conv import Conv2D
from tests.nn.gradcheck import (
    KINK_MARGIN,
    check_layer_gradients,
    make_layer,
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
