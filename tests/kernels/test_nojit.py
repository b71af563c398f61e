"""The numba-free interface of the kernels (cnnkit.kernels.nojit): Keras output sizes."""

from __future__ import annotations

import pytest

from cnnkit.kernels.nojit import conv_output_size


@pytest.mark.parametrize(
    "size, kernel, stride, dilation, padding, expected",
    [
        (28, 3, 1, 1, "valid", (26, 0)),
        (28, 5, 1, 1, "valid", (24, 0)),
        (12, 5, 1, 1, "valid", (8, 0)),
        (7, 3, 2, 1, "valid", (3, 0)),
        (8, 3, 1, 2, "valid", (4, 0)),  # effective kernel 5
        (28, 3, 1, 1, "same", (28, 1)),
        (28, 3, 2, 1, "same", (14, 0)),  # total pad 1 -> all of it bottom/right
        (5, 2, 2, 1, "same", (3, 0)),  # total pad 1
        (7, 3, 2, 1, "same", (4, 1)),  # total pad 2
        (6, 3, 2, 1, "same", (3, 0)),  # total pad 1
        (7, 3, 1, 2, "same", (7, 2)),  # effective kernel 5, total pad 4
        (4, 1, 3, 1, "same", (2, 0)),  # kernel smaller than stride: total pad max(.., 0) = 0
        (26, 2, 2, 1, "valid", (13, 0)),
        (27, 2, 2, 1, "valid", (13, 0)),
    ],
)
def test_conv_output_size(size, kernel, stride, dilation, padding, expected):
    assert conv_output_size(size, kernel, stride, dilation, padding) == expected


def test_conv_output_size_errors():
    with pytest.raises(ValueError):
        conv_output_size(2, 3, 1, 1, "valid")
    with pytest.raises(ValueError):
        conv_output_size(5, 3, 1, 1, "full")


def test_pool_output_size_is_conv_output_size_with_dilation_1():
    assert conv_output_size(26, 2, 2, 1, "valid") == (13, 0)
    assert conv_output_size(5, 2, 2, 1, "same") == (3, 0)
    assert conv_output_size(7, 3, 2, 1, "same") == (4, 1)
