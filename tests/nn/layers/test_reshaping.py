"""ZeroPadding2D (cnnkit.nn.layers.reshaping): Keras' three padding forms, defaults and error
texts, the padded values, its gradient, and a spec that uses it."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.api import summarize
from cnnkit.errors import SpecError
from cnnkit.nn.layers.reshaping import ZeroPadding2D
from cnnkit.spec.config import build_layers, parse_spec
from tests.nn.gradcheck import check_layer_gradients, make_layer, spec_text


@pytest.mark.parametrize(
    "padding, resolved",
    [
        (2, [[2, 2], [2, 2]]),
        ([1, 3], [[1, 1], [3, 3]]),
        ([[0, 1], [2, 3]], [[0, 1], [2, 3]]),
        ([1, [0, 2]], [[1, 1], [0, 2]]),  # Keras: each entry an int or a pair
        (0, [[0, 0], [0, 0]]),
    ],
)
def test_padding_forms_resolve_as_keras(padding, resolved):
    (layer,) = build_layers([{"ZeroPadding2D": {"padding": padding}}], (4, 5, 2))
    assert layer.options["padding"] == resolved
    (top, bottom), (left, right) = resolved
    assert layer.output_shape == (4 + top + bottom, 5 + left + right, 2)


def test_default_is_one_on_every_side():
    (layer,) = build_layers([{"ZeroPadding2D": None}], (2, 3, 1))  # `- ZeroPadding2D:`
    assert layer.options["padding"] == [[1, 1], [1, 1]]  # Keras' padding=(1, 1)
    assert layer.output_shape == (4, 5, 1)


@pytest.mark.parametrize(
    "padding, message",
    [
        ([1, 2, 3], r"`padding` should have two elements. Received: padding=\[1, 2, 3\]"),
        ("same", r"`padding` should be either an int, a tuple of 2 ints"),
        ([[1, 2, 3], 1], r"The `1st entry of padding` argument must be a tuple of 2 integers"),
        ([1, [0, -2]], r"Received 2nd entry of padding=\[0, -2\] including values \[-2\]"),
        (-1, r"do not satisfy `value >= 0`"),
        ([1, True], r"The `2nd entry of padding` argument must be a tuple of 2 integers"),
    ],
)
def test_bad_padding_says_what_keras_says(padding, message):
    with pytest.raises(SpecError, match=message) as error:
        build_layers([{"ZeroPadding2D": {"padding": padding}}], (4, 4, 1))
    assert error.value.where == "model.layers[0].ZeroPadding2D.padding"


def test_needs_an_image():
    with pytest.raises(
        SpecError, match=r"ZeroPadding2D needs an image.* \(input shape \(None, 16\)\)"
    ):
        build_layers([{"Flatten": {}}, {"ZeroPadding2D": {}}], (4, 4, 1))


def test_zeros_around_the_image_and_the_gradient_of_its_middle():
    layer = make_layer(ZeroPadding2D, {"padding": [[1, 0], [2, 1]]}, (2, 3, 2))
    x = np.arange(12, dtype=np.float64).reshape(1, 2, 3, 2) + 1
    y = layer.forward(x, False)
    assert y.shape == (1, 3, 6, 2)
    np.testing.assert_array_equal(y[:, 1:, 2:5], x)
    assert y.sum() == x.sum()  # the rest is zeros
    _, dx = check_layer_gradients(layer, np.random.default_rng(0).standard_normal((2, 2, 3, 2)))
    r = np.random.default_rng(1234).standard_normal((2, 3, 6, 2))
    np.testing.assert_array_equal(dx, r[:, 1:, 2:5])


def test_a_spec_with_zero_padding_summarizes_and_round_trips():
    spec = parse_spec(
        spec_text(
            "    - ZeroPadding2D: {padding: [[1, 0], [0, 1]]}\n"
            "    - Conv2D: {filters: 2, kernel_size: 3}\n"
            "    - Flatten: {}\n"
            "    - Dense: {units: 3, activation: softmax}"
        )
    )
    rows = summarize(spec).rows
    assert (rows[0].name, rows[0].type, rows[0].output_shape) == (
        "zero_padding2d",
        "ZeroPadding2D",
        "(None, 7, 7, 2)",
    )
    assert (rows[0].params, rows[0].macs) == (0, 0)
    assert rows[1].output_shape == "(None, 5, 5, 2)"
    assert parse_spec(spec.to_yaml()).to_dict() == spec.to_dict()
