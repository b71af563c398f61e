"""The layer contract every layer family implements.

A layer is created from its resolved spec options, infers its output shape from its input
shape (raising SpecError before any array exists if the input is too small), allocates its
parameters in `build`, and implements forward / backward on batches of NHWC arrays.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from cnnkit.errors import SpecError
from cnnkit.nn.activations import ACTIVATIONS
from cnnkit.nn.initializers import check_initializer, initialize
from cnnkit.nn.regularizers import check_regularizer, penalty, penalty_grad
from cnnkit.options import Option

Shape = tuple[int, ...]  # one sample's shape, without the batch axis


class Layer:
    type_name: ClassVar[str] = "layer"  # canonical snake_case name used in specs and summaries
    keras_name: ClassVar[str] = "Layer"  # Keras spelling, accepted in specs too
    aliases: ClassVar[tuple[str, ...]] = ()
    OPTIONS: ClassVar[dict[str, Option]] = {}
    # parameter name -> the option holding its regularizer (kernel -> kernel_regularizer)
    REGULARIZED: ClassVar[dict[str, str]] = {}

    def __init__(self, options: dict[str, Any], index: int, where: str = ""):
        self.options = options
        self.index = index  # position in the spec's layer list: names checkpoint keys
        self.where = where  # YAML path, for error messages
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        # non-trainable arrays a checkpoint must hold (BatchNormalization's moving statistics)
        self.state: dict[str, np.ndarray] = {}
        self.input_shape: Shape | None = None
        self.output_shape: Shape | None = None
        # False for the first layer: nobody needs dLoss/dImage, and for Conv2D skipping it
        # saves a whole backward convolution.
        self.needs_input_grad = True

    def release_cache(self) -> None:
        """Drop the arrays forward kept for backward (attributes named _x, _z, _argmax, ...).

        Inference calls it after each layer (Sequential.forward with training=False), so that
        evaluate and predict hold one layer's arrays at a time, not every layer's. Workspaces,
        parameters and state live in dicts and are kept."""
        for name, value in list(vars(self).items()):
            if name.startswith("_") and isinstance(value, np.ndarray):
                setattr(self, name, None)

    def workspace(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An array this layer reuses from training step to training step (no large
        allocation per step): allocated again only when a bigger batch, another sample shape
        or dtype asks for it; a smaller batch (an epoch's last) gets a view of its first rows.
        Its content is valid until the layer's next call that asks for the same name."""
        spaces = self.__dict__.setdefault("_workspaces", {})
        array = spaces.get(name)
        if (
            array is None
            or array.shape[1:] != tuple(shape[1:])
            or array.shape[0] < shape[0]
            or array.dtype != dtype
        ):
            array = spaces[name] = np.empty(shape, dtype)
        return array[: shape[0]]

    # -- shapes (no arrays) -------------------------------------------------------------
    def infer_shape(self, input_shape: Shape) -> Shape:
        """Remember and return the output shape; raise SpecError if the input does not fit."""
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(self.compute_output_shape(self.input_shape))
        return self.output_shape

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def param_shapes(self) -> dict[str, Shape]:
        """Trainable parameter shapes, known once infer_shape has run."""
        return {}

    def state_shapes(self) -> dict[str, Shape]:
        """Non-trainable array shapes (counted as Keras' non-trainable params)."""
        return {}

    def macs(self) -> int:
        """Multiply-accumulates per image in the forward pass."""
        return 0

    def shape_error(self, message: str, hint: str | None = None) -> SpecError:
        return SpecError(
            f"{self.keras_name} {message} (input shape {format_shape(self.input_shape)})",
            where=self.where,
            hint=hint,
        )

    # -- arrays -------------------------------------------------------------------------
    def build(self, rng: np.random.Generator, dtype: np.dtype) -> None:
        """Allocate parameters (after infer_shape). Layers without parameters do nothing."""

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Given dLoss/dOutput, store parameter gradients in self.grads, return dLoss/dInput
        (or None when needs_input_grad is False and the layer can skip computing it)."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return dict(self.options)

    # -- weight penalties ---------------------------------------------------------------
    def regularization_loss(self) -> float:
        """Sum of this layer's weight penalties (added to the loss by the training loop)."""
        return sum(
            penalty(self.options.get(option), self.params[name])
            for name, option in self.REGULARIZED.items()
            if name in self.params
        )

    def add_regularization_grads(self) -> None:
        """Add each penalty's gradient to self.grads; backward calls it last."""
        for name, option in self.REGULARIZED.items():
            if name in self.params and name in self.grads:
                grad = penalty_grad(self.options.get(option), self.params[name])
                if grad is not None:
                    self.grads[name] = self.grads[name] + grad


class ActivationMixin:
    """The `activation` option of Conv2D and Dense, with a switch for the fused output head.

    When the last layer ends in softmax and the loss is cross-entropy, the model sets
    `returns_logits` so the layer skips its activation and the loss works on logits
    (numerically stable); the model applies the activation itself when predicting.
    """

    returns_logits: bool = False

    def _activation_name(self) -> str:
        return self.options.get("activation") or "linear"

    def _activation_kwargs(self) -> dict[str, Any]:
        """Options of a parameterised activation (LeakyReLU's negative_slope)."""
        return {}

    def activate(self, z: np.ndarray) -> np.ndarray:
        self._z = z
        if self.returns_logits:
            self._a = z
            return z
        self._a = ACTIVATIONS[self._activation_name()][0](z, **self._activation_kwargs())
        return self._a

    def activate_backward(self, dy: np.ndarray) -> np.ndarray:
        if self.returns_logits:
            return dy
        backward = ACTIVATIONS[self._activation_name()][1]
        return backward(self._z, self._a, dy, **self._activation_kwargs())


class KernelBiasMixin:
    """Conv2D and Dense: an activation, a kernel and an optional bias, Keras' options for them,
    and `build` from `param_shapes()` (which the layer defines)."""

    WEIGHT_OPTIONS: ClassVar[dict[str, Option]] = {
        "activation": Option("str", default="linear", choices=tuple(ACTIVATIONS)),
        "use_bias": Option("bool", default=True),
        "kernel_initializer": Option(check_initializer, default="glorot_uniform"),
        "bias_initializer": Option(check_initializer, default="zeros"),
        "kernel_regularizer": Option(check_regularizer, default=None),
        "bias_regularizer": Option(check_regularizer, default=None),
    }
    REGULARIZED: ClassVar[dict[str, str]] = {
        "kernel": "kernel_regularizer",
        "bias": "bias_regularizer",
    }

    def build(self, rng: np.random.Generator, dtype: np.dtype) -> None:
        for name, shape in self.param_shapes().items():
            self.params[name] = initialize(self.options[f"{name}_initializer"], shape, rng, dtype)


def format_shape(shape: Shape | None) -> str:
    if shape is None:
        return "?"
    return "(None, " + ", ".join(str(s) for s in shape) + ")"
