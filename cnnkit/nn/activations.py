"""Element-wise activations: forward and the vector-Jacobian product for backward.

Numpy ufuncs are already vectorized and memory-bound here, so these stay plain numpy; the
heavy lifting (convolution, pooling) is in cnnkit/kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cnnkit.kernels.nojit import lazy

(erf_into,) = lazy("cnnkit.kernels.activations", "erf_into")  # numba on first use only

# forward(x, **options) -> y; options only for parameterised ones (leaky_relu: negative_slope)
Forward = Callable[..., np.ndarray]
# backward(x, y, dy, **options) -> dx, given the input x, the output y and the upstream gradient
Backward = Callable[..., np.ndarray]


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


def _leaky_relu(x: np.ndarray, negative_slope: float = 0.2) -> np.ndarray:
    # Keras 3 keras.activations.leaky_relu default slope 0.2 (the LeakyReLU layer's is 0.3)
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


def _leaky_relu_back(x, y, dy, negative_slope: float = 0.2):
    # slope at 0 is negative_slope, as TF's LeakyReluGrad (x > 0 ? 1 : slope)
    return dy * np.where(x > 0, x.dtype.type(1), x.dtype.type(negative_slope))


def _elu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


def _elu_back(x, y, dy, alpha: float = 1.0):
    # for x <= 0: d/dx alpha (e^x - 1) = alpha e^x = y + alpha
    return dy * np.where(x > 0, x.dtype.type(1), y + x.dtype.type(alpha))


# Keras' (and Klambauer et al.'s) SELU constants
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _selu(x: np.ndarray) -> np.ndarray:
    return x.dtype.type(SELU_SCALE) * _elu(x, SELU_ALPHA)


def _selu_back(x, y, dy):
    scale, sa = x.dtype.type(SELU_SCALE), x.dtype.type(SELU_SCALE * SELU_ALPHA)
    # for x <= 0: d/dx scale alpha (e^x - 1) = y + scale alpha
    return dy * np.where(x > 0, scale, y + sa)


def _erf(x: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    erf_into(flat, out)
    return out.reshape(x.shape)


_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu(x: np.ndarray) -> np.ndarray:
    # Keras 3 default approximate=False: x Phi(x) = x/2 (1 + erf(x / sqrt 2))
    t = x.dtype.type
    return t(0.5) * x * (t(1) + _erf(x * t(_INV_SQRT2)))


def _gelu_back(x, y, dy):
    # d/dx x Phi(x) = Phi(x) + x phi(x)
    t = x.dtype.type
    cdf = t(0.5) * (t(1) + _erf(x * t(_INV_SQRT2)))
    pdf = t(_INV_SQRT_2PI) * np.exp(t(-0.5) * x * x)
    return dy * (cdf + x * pdf)


def _swish(x: np.ndarray) -> np.ndarray:
    return x * _sigmoid(x)


def _swish_back(x, y, dy):
    s = _sigmoid(x)
    return dy * (s + x * s * (1 - s))


def _hard_sigmoid(x: np.ndarray) -> np.ndarray:
    # Keras 3: relu6(x + 3) / 6 = clip(x / 6 + 1/2, 0, 1)
    t = x.dtype.type
    return np.clip(x * t(1 / 6) + t(0.5), t(0), t(1))


def _hard_sigmoid_back(x, y, dy):
    t = x.dtype.type
    return dy * np.where((x > -3) & (x < 3), t(1 / 6), t(0))


def _softplus(x: np.ndarray) -> np.ndarray:
    # log(1 + e^x) = log1p(e^-|x|) + max(x, 0): never overflows
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def _softplus_back(x, y, dy):
    return dy * _sigmoid(x)


ACTIVATIONS: dict[str, tuple[Forward, Backward]] = {
    "relu": (_relu, _relu_back),
    "sigmoid": (_sigmoid, _sigmoid_back),
    "tanh": (np.tanh, _tanh_back),
    "softmax": (softmax, _softmax_back),
    "linear": (_linear, _linear_back),
    "leaky_relu": (_leaky_relu, _leaky_relu_back),
    "elu": (_elu, _elu_back),
    "selu": (_selu, _selu_back),
    "gelu": (_gelu, _gelu_back),
    "swish": (_swish, _swish_back),
    "silu": (_swish, _swish_back),  # Keras 3 name for swish
    "hard_sigmoid": (_hard_sigmoid, _hard_sigmoid_back),
    "softplus": (_softplus, _softplus_back),
}
