"""Dense, Flatten, Dropout and Activation: the layers that are not convolutions or pooling."""

from __future__ import annotations

import numpy as np

from cnnkit.nn.activations import ACTIVATIONS
from cnnkit.nn.layers.base import ActivationMixin, KernelBiasMixin, Layer, Shape
from cnnkit.options import Option


class Dense(KernelBiasMixin, ActivationMixin, Layer):
    type_name = "dense"
    keras_name = "Dense"
    OPTIONS = {
        "units": Option("int", minimum=1, doc="number of outputs, e.g. 128"),
        **KernelBiasMixin.WEIGHT_OPTIONS,
    }

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise self.shape_error(
                "needs a flat input", hint="Add `- Flatten: {}` before this Dense layer."
            )
        return (self.options["units"],)

    def param_shapes(self) -> dict[str, Shape]:
        shapes = {"kernel": (self.input_shape[0], self.options["units"])}
        if self.options["use_bias"]:
            shapes["bias"] = (self.options["units"],)
        return shapes

    def macs(self) -> int:
        return self.input_shape[0] * self.options["units"]

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._x = x
        z = x @ self.params["kernel"]
        if "bias" in self.params:
            z += self.params["bias"]
        return self.activate(z)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dz = self.activate_backward(dy)
        kernel = self.params["kernel"]
        # into arrays reused from step to step (see Layer.workspace)
        dkernel = self.workspace("dkernel", kernel.shape, np.result_type(self._x, dz))
        self.grads["kernel"] = np.matmul(self._x.T, dz, out=dkernel)
        if "bias" in self.params:
            self.grads["bias"] = dz.sum(axis=0)
        self.add_regularization_grads()
        dx = self.workspace("dx", (dz.shape[0], kernel.shape[0]), np.result_type(dz, kernel))
        return np.matmul(dz, kernel.T, out=dx)


class Flatten(Layer):
    """Flattens (H, W, C) in that order (channels fastest), as Keras does for channels-last."""

    type_name = "flatten"
    keras_name = "Flatten"

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (int(np.prod(input_shape)),)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy.reshape(self._x_shape)


class Dropout(Layer):
    """Inverted dropout: zero a `rate` fraction in training, scale the rest by 1/(1-rate)."""

    type_name = "dropout"
    keras_name = "Dropout"
    OPTIONS = {
        "rate": Option("float", minimum=0.0, maximum=1.0, exclusive_max=True, doc="e.g. 0.2"),
    }
    rng: np.random.Generator | None = None  # set by the model from the spec's seed

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        rate = self.options["rate"]
        if not training or rate == 0.0:
            self._mask = None
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= rate
        self._mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - rate))
        return x * self._mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy if self._mask is None else dy * self._mask


class SpatialDropout2D(Dropout):
    """Dropout of whole channels: one keep/drop draw per (sample, channel), as Keras'
    noise_shape (N, 1, 1, C); kept channels are scaled by 1/(1-rate). Training only."""

    type_name = "spatial_dropout2d"
    keras_name = "SpatialDropout2D"

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise self.shape_error(
                "needs an image-shaped input (height, width, channels)",
                hint="Use Dropout after Flatten; SpatialDropout2D drops channels of images.",
            )
        return input_shape

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        rate = self.options["rate"]
        if not training or rate == 0.0:
            self._mask = None
            return x
        keep = self.rng.random((x.shape[0], 1, 1, x.shape[3]), dtype=np.float32) >= rate
        self._mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - rate))
        return x * self._mask


class Activation(ActivationMixin, Layer):
    type_name = "activation"
    keras_name = "Activation"
    OPTIONS = {
        "activation": Option("str", choices=tuple(ACTIVATIONS), doc="e.g. relu"),
    }

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        return self.activate(x)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return self.activate_backward(dy)


class LeakyReLU(ActivationMixin, Layer):
    """Keras 3 LeakyReLU layer: x for x > 0, negative_slope * x otherwise. Its default slope
    is 0.3 (the `activation: leaky_relu` function's is 0.2, as in Keras)."""

    type_name = "leaky_re_lu"  # Keras' automatic layer name
    keras_name = "LeakyReLU"
    aliases = ("leaky_relu",)
    OPTIONS = {"negative_slope": Option("float", default=0.3, minimum=0.0)}

    def _activation_name(self) -> str:
        return "leaky_relu"

    def _activation_kwargs(self) -> dict:
        return {"negative_slope": self.options["negative_slope"]}

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        return self.activate(x)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return self.activate_backward(dy)
