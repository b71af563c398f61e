"""Element-wise activations: forward and the vector-Jacobian product for backward.

Numpy ufuncs are already vectorized and memory-bound here, so these stay plain numpy; the
heavy lifting (convolution, pooling) is in cnnkit/kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]
# backward(x, y, dy) -> dx, given the input x, the output y and the upstream gradient dy
Backward = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _relu_back(x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return dy * (x > 0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-|x|) never overflows: split by sign for numerical stability
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _sigmoid_back(x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return dy * y * (1 - y)


def _tanh_back(x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return dy * (1 - y * y)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _softmax_back(x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def _linear(x: np.ndarray) -> np.ndarray:
    return x


def _linear_back(x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return dy


ACTIVATIONS: dict[str, tuple[Forward, Backward]] = {
    "relu": (_relu, _relu_back),
    "sigmoid": (_sigmoid, _sigmoid_back),
    "tanh": (np.tanh, _tanh_back),
    "softmax": (softmax, _softmax_back),
    "linear": (_linear, _linear_back),
}
