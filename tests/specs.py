"""Spec texts that tests in several files build on."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnkit.errors import SpecError, SpecErrors
from cnnkit.spec.config import parse_spec

CONV_LAYERS = """
model:
  input_shape: [28, 28, 1]
  layers:
    - Conv2D: {filters: 4, kernel_size: 3, strides: 2, activation: relu}
    - Flatten: {}
    - Dense: {units: UNITS, activation: softmax}
"""


def conv_spec_text(data: str, units: int = 10, extra: str = "") -> str:
    """Seed 5, `data` as the data section, one strided Conv2D on 28x28x1 and a softmax head of
    `units`; `extra` appends sections."""
    return f"seed: 5\ndata: {data}\n{CONV_LAYERS.replace('UNITS', str(units))}{extra}"


def errors_of(text: str) -> list[SpecError]:
    """Every error of spec `text`, parsed as the file g.yaml."""
    with pytest.raises(SpecError) as info:
        parse_spec(text, Path("g.yaml"))
    error = info.value
    return error.errors if isinstance(error, SpecErrors) else [error]


def position(text: str, line_needle: str, needle: str) -> str:
    """g.yaml:line:column of `needle` on the first line of `text` holding `line_needle`."""
    for number, line in enumerate(text.splitlines(), 1):
        if line_needle in line:
            return f"g.yaml:{number}:{line.index(needle) + 1}"
    raise AssertionError(line_needle)
