"""The numba-free part of the kernels' interface: output sizes, mode codes, lazy binding.

Checking a spec (`cnnkit check`, `cnnkit summary`) builds every layer to infer shapes but runs
no kernel. Importing numba alone costs about 0.3 s (half of `cnnkit check`), so layers bind
their kernels with `lazy()`: numba is imported, and a kernel loaded from the cache or compiled,
on the first call. Everything here is plain Python.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# data augmentation's fill modes; the affine kernel's mode code is the index
FILL_MODES = ("nearest", "constant", "reflect", "wrap")


def conv_output_size(
    size: int, kernel: int, stride: int, dilation: int, padding: str
) -> tuple[int, int]:
    """Keras/TensorFlow output size and leading pad for one spatial axis.

    Returns (out, pad_before). For "same", extra odd padding goes after (bottom/right), as in TF.
    """
    eff_k = (kernel - 1) * dilation + 1
    if padding == "valid":
        out = (size - eff_k) // stride + 1
        if out < 1:
            raise ValueError(f"input size {size} is smaller than the effective kernel size {eff_k}")
        return out, 0
    if padding == "same":
        out = -(-size // stride)  # ceil(size / stride) in integers
        total = max((out - 1) * stride + eff_k - size, 0)
        return out, total // 2
    raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")


def pool_tiles(
    pool: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int],
    input_hw: tuple[int, int],
    output_hw: tuple[int, int],
) -> bool:
    """Whether pooling windows tile the input, the condition of cnnkit.kernels.pool's *_tiles
    kernels: stride = pool size, no padding before, every window inside the input ("same"
    padding on an odd size pads after: no), at most 127 positions a window (an int8)."""
    (ph, pw), (oh, ow), (h, w) = pool, output_hw, input_hw
    return (
        tuple(strides) == (ph, pw)
        and tuple(pads) == (0, 0)
        and oh * ph <= h
        and ow * pw <= w
        and ph * pw <= 127
    )


def lazy(module: str, *names: str) -> tuple[Callable[..., Any], ...]:
    """Stand-ins for `from module import names` that import the module on their first call.

    The stand-in costs one extra Python call (~0.1 µs) per kernel call: kernels run once per
    batch, so it does not show in a training step."""

    def bind(name: str) -> Callable[..., Any]:
        target: Callable[..., Any] | None = None

        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal target
            if target is None:
                target = getattr(importlib.import_module(module), name)
            return target(*args, **kwargs)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = f"{module}.{name}, imported on first call (cnnkit.kernels.nojit.lazy)."
        call.kernel = f"{module}.{name}"  # type: ignore[attr-defined]  (cnnkit.train.warmup)
        return call

    return tuple(bind(name) for name in names)
