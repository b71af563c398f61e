"""Weight initializers with Keras' names and formulas (fan_in/fan_out as Keras computes them)."""

from __future__ import annotations

import numpy as np


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) as Keras computes them.

    bias (n,) -> (n, n); Dense (in, out) -> (in, out);
    Conv (kh, kw, cin, f) -> (kh*kw*cin, kh*kw*f).
    """
    if len(shape) == 1:  # biases
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    # Keras' truncated normal: redraw values beyond two standard deviations
    out = rng.normal(0.0, std, size=shape)
    bad = np.abs(out) > 2 * std
    while bad.any():
        out[bad] = rng.normal(0.0, std, size=int(bad.sum()))
        bad = np.abs(out) > 2 * std
    return out


# Keras scales the truncated normal's std by this so that the variance matches the target.
_TRUNC_STD = 0.87962566103423978


def initialize(name: str, shape: tuple[int, ...], rng: np.random.Generator, dtype) -> np.ndarray:
    fan_in, fan_out = fans(shape)
    if name == "zeros":
        return np.zeros(shape, dtype)
    if name == "ones":
        return np.ones(shape, dtype)
    if name == "random_normal":  # Keras default: mean 0, stddev 0.05
        return rng.normal(0.0, 0.05, size=shape).astype(dtype)
    if name == "random_uniform":  # Keras default: [-0.05, 0.05]
        return rng.uniform(-0.05, 0.05, size=shape).astype(dtype)
    scale_fan = {
        "glorot": (fan_in + fan_out) / 2.0,
        "he": fan_in / 2.0,
        "lecun": float(fan_in),
    }
    family, dist = name.split("_")
    variance = 1.0 / max(1.0, scale_fan[family])
    if dist == "uniform":
        limit = np.sqrt(3.0 * variance)
        return rng.uniform(-limit, limit, size=shape).astype(dtype)
    return _truncated_normal(rng, shape, np.sqrt(variance) / _TRUNC_STD).astype(dtype)


INITIALIZERS = (
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "random_normal",
    "random_uniform",
    "zeros",
    "ones",
)
