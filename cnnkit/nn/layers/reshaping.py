"""ZeroPadding2D: rows and columns of zeros around NHWC images, as Keras' reshaping layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit.errors import SpecError
from cnnkit.nn.layers.base import Layer, Shape
from cnnkit.options import Option, checker

_FORMS = (
    "Valid: an int (the same on every side), [height, width] (symmetric), or "
    "[[top, bottom], [left, right]]."
)
_SIDE = {"type": "integer", "minimum": 0}
_PAIR = {"type": "array", "items": _SIDE, "minItems": 2, "maxItems": 2}
# what _padding accepts: n, [h, w], [[top, bottom], [left, right]] (or [h, [left, right]])
PADDING_SCHEMA = {
    "anyOf": [
        _SIDE,
        {"type": "array", "items": {"anyOf": [_SIDE, _PAIR]}, "minItems": 2, "maxItems": 2},
    ]
}


def _pad_pair(value: Any, name: str, path: str) -> list[int]:
    """One entry of padding: an int n (n on both sides) or a pair, integers >= 0."""
    pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (list, tuple))
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in pair)
    ):
        raise SpecError(
            f"The `{name}` argument must be a tuple of 2 integers. Received: {name}={value!r}",
            where=path,
            hint=_FORMS,
        )
    negative = sorted({v for v in pair if v < 0})
    if negative:
        raise SpecError(
            f"The `{name}` argument must be a tuple of 2 integers. Received {name}={value!r} "
            f"including values {negative} that do not satisfy `value >= 0`",
            where=path,
            hint=_FORMS,
        )
    return [int(pair[0]), int(pair[1])]


@checker(PADDING_SCHEMA)
def _padding(value: Any, path: str) -> list[list[int]]:
    """Keras' three forms of padding, resolved to [[top, bottom], [left, right]]."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [_pad_pair(value, "padding", path)] * 2
    if not isinstance(value, (list, tuple)):
        raise SpecError(
            "`padding` should be either an int, a tuple of 2 ints (symmetric_height_pad, "
            "symmetric_width_pad), or a tuple of 2 tuples of 2 ints ((top_pad, bottom_pad), "
            f"(left_pad, right_pad)). Received: padding={value!r}",
            where=path,
            hint=_FORMS,
        )
    if len(value) != 2:
        raise SpecError(
            f"`padding` should have two elements. Received: padding={value!r}",
            where=path,
            hint=_FORMS,
        )
    return [
        _pad_pair(value[0], "1st entry of padding", path),
        _pad_pair(value[1], "2nd entry of padding", path),
    ]


class ZeroPadding2D(Layer):
    """Zeros added at the top, bottom, left and right of each channels-last image. Keras'
    default padding is 1 on every side; no weights."""

    type_name = "zero_padding2d"
    keras_name = "ZeroPadding2D"
    OPTIONS = {
        "padding": Option(
            _padding,
            default=[[1, 1], [1, 1]],
            doc="1, [1, 2] (height, width) or [[top, bottom], [left, right]]",
        ),
    }

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise self.shape_error(
                input_shape,
                "needs an image-shaped input (height, width, channels)",
                hint="Put ZeroPadding2D before Flatten/Dense.",
            )
        (top, bottom), (left, right) = self.options["padding"]
        h, w, c = input_shape
        return (h + top + bottom, w + left + right, c)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        (top, _), (left, _) = self.options["padding"]
        h, w = x.shape[1:3]
        out = np.zeros((x.shape[0], *self.output_shape), x.dtype)
        out[:, top : top + h, left : left + w] = x
        return out

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        if not self.needs_input_grad:
            return None
        (top, _), (left, _) = self.options["padding"]
        h, w = self.input_shape[:2]
        return dy[:, top : top + h, left : left + w]  # a view; the kernels copy if they must

    def torch_twin(self, twin) -> None:
        (top, bottom), (left, right) = self.options["padding"]
        twin.add(twin.nn.ZeroPad2d((left, right, top, bottom)))
