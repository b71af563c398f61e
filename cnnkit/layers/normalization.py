"""BatchNormalization over the last (channels) axis, with Keras 3's formulas and defaults."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit.errors import SpecError
from cnnkit.initializers import check_initializer, initialize
from cnnkit.layers.base import Layer, Shape
from cnnkit.options import Option
from cnnkit.regularizers import check_regularizer


def _axis(value: Any, path: str) -> int:
    if value != -1 or isinstance(value, bool):
        raise SpecError(
            f"axis {value!r} is not supported",
            where=path,
            hint="Only axis: -1 (the channels of channels-last images, or the features).",
        )
    return -1


class BatchNormalization(Layer):
    """Normalise each channel by batch statistics in training, moving statistics in inference.

    Training: mean and (biased) variance over every axis but the last; y = gamma (x - mean) /
    sqrt(var + epsilon) + beta; then moving = moving * momentum + batch * (1 - momentum), with
    the same biased variance (Keras 3). gamma and beta are trainable (if scale / center);
    moving_mean and moving_variance are non-trainable state that checkpoints hold.
    """

    type_name = "batch_normalization"
    keras_name = "BatchNormalization"
    aliases = ("batch_norm", "BatchNorm")
    OPTIONS = {
        "axis": Option(_axis, default=-1),
        "momentum": Option("float", default=0.99, minimum=0.0, maximum=1.0),
        "epsilon": Option("float", default=0.001, minimum=0.0, exclusive_min=True),
        "center": Option("bool", default=True),
        "scale": Option("bool", default=True),
        "beta_initializer": Option(check_initializer, default="zeros"),
        "gamma_initializer": Option(check_initializer, default="ones"),
        "moving_mean_initializer": Option(check_initializer, default="zeros"),
        "moving_variance_initializer": Option(check_initializer, default="ones"),
        "beta_regularizer": Option(check_regularizer, default=None),
        "gamma_regularizer": Option(check_regularizer, default=None),
    }
    REGULARIZED = {"gamma": "gamma_regularizer", "beta": "beta_regularizer"}

    def param_shapes(self) -> dict[str, Shape]:
        c = self.input_shape[-1]
        shapes = {}
        if self.options["scale"]:
            shapes["gamma"] = (c,)
        if self.options["center"]:
            shapes["beta"] = (c,)
        return shapes

    def state_shapes(self) -> dict[str, Shape]:
        c = self.input_shape[-1]
        return {"moving_mean": (c,), "moving_variance": (c,)}

    def macs(self) -> int:
        return int(np.prod(self.input_shape))  # one multiply-add per value (inference)

    def build(self, rng: np.random.Generator, dtype: np.dtype) -> None:
        for name, shape in self.param_shapes().items():
            self.params[name] = initialize(self.options[f"{name}_initializer"], shape, rng, dtype)
        for name, shape in self.state_shapes().items():
            self.state[name] = initialize(self.options[f"{name}_initializer"], shape, rng, dtype)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        axes = tuple(range(x.ndim - 1))
        t = x.dtype.type
        eps = t(self.options["epsilon"])
        if training:
            mean = x.mean(axis=axes)
            centered = x - mean
            var = np.square(centered).mean(axis=axes)  # biased, as Keras' ops.moments
            m = t(self.options["momentum"])
            # in place: a dict captured from named_weights() sees the new values
            self.state["moving_mean"] *= m
            self.state["moving_mean"] += (t(1) - m) * mean
            self.state["moving_variance"] *= m
            self.state["moving_variance"] += (t(1) - m) * var
        else:
            centered = x - self.state["moving_mean"]
            var = self.state["moving_variance"]
        self._inv = t(1) / np.sqrt(var + eps)
        self._xhat = centered * self._inv
        self._training = training
        y = self._xhat * self.params["gamma"] if "gamma" in self.params else self._xhat.copy()
        if "beta" in self.params:
            y += self.params["beta"]
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        axes = tuple(range(dy.ndim - 1))
        xhat = self._xhat
        if "beta" in self.params:
            self.grads["beta"] = dy.sum(axis=axes)
        if "gamma" in self.params:
            self.grads["gamma"] = (dy * xhat).sum(axis=axes)
            g = dy * self.params["gamma"]
        else:
            g = dy
        self.add_regularization_grads()
        if not self.needs_input_grad:
            return None
        if not self._training:  # moving statistics are constants
            return g * self._inv
        # batch statistics depend on x: d xhat/dx projected out of mean and xhat directions
        return self._inv * (g - g.mean(axis=axes) - xhat * (g * xhat).mean(axis=axes))
