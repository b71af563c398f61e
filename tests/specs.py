"""Spec texts that tests in several files build on."""

from __future__ import annotations

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
