"""The layer contract every layer family implements.

A layer is created from its resolved spec options. Its life, in the order the model calls it:

1. `compute_output_shape(input_shape)`: pure shape inference (no attribute set), raising
   SpecError before any array exists if the input does not fit;
2. `build(input_shape)`: what the layer derives from its input shape (paddings, strides) and
   the declaration of each weight with `add_weight` (name, shape, initializer, regularizer,
   trainable), as Keras' Layer.build; no array is allocated, so that `cnnkit summary` and the
   memory plan work from the spec alone;
3. `create_weights(rng, dtype)`: the arrays of the declared weights (Model.build);
4. `forward` / `backward` on batches of NHWC arrays. backward stores the data gradient of each
   trainable weight in `grads`; the model adds the declared regularizers' gradients once.

A layer also declares what its forward keeps for backward (`saved_arrays`, read by the memory
plan, cnnkit.nn.memory) and may define its PyTorch twin (`torch_twin`, for `bench --vs torch`).

Graphs: every layer may carry a `name` and the names of its `inputs` (GRAPH_OPTIONS; the model
wires them, cnnkit.nn.build). A merge layer (`merges = True`: Add, Concatenate, ...) takes a
list: `compute_output_shape` and `build` get the list of input shapes, `forward` the list of
arrays, and `backward` returns one gradient per input. backward must not write into `dy`:
in a graph the same gradient array may reach several layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from cnnkit.errors import SpecError
from cnnkit.kernels.nojit import lazy
from cnnkit.nn.activations import ACTIVATIONS
from cnnkit.nn.initializers import check_initializer, initialize
from cnnkit.nn.regularizers import check_regularizer
from cnnkit.options import Option, checker

# numba is imported on the first call (cnnkit.kernels.nojit)
relu_into, relu_backward_into = lazy(
    "cnnkit.kernels.activations", "relu_into", "relu_backward_into"
)

Shape = tuple[int, ...]  # one sample's shape, without the batch axis

# Keras' identifier rule, narrowed to what is also a Python identifier: a name works as a
# checkpoint's sidecar entry, a --set path part and a TensorFlow/PyTorch module name.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MODEL_INPUT = "input"  # the name that refers to the model's input in `inputs:`


@checker({"type": "string", "pattern": "^" + NAME_PATTERN.pattern + "$"})
def _layer_name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise SpecError(
            f"invalid layer name {value!r}",
            where=path,
            hint="A name starts with a letter or _ and has only letters, digits and _ "
            "(e.g. block1_conv, shortcut).",
        )
    if value == MODEL_INPUT:
        raise SpecError(
            f"'{MODEL_INPUT}' is reserved: in inputs: it means the model's input",
            where=path,
            hint="Choose another name, e.g. stem.",
        )
    return value


@checker(
    {
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
        ]
    }
)
def _input_names(value: Any, path: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise SpecError(
            f"expected a list of layer names, found {value!r}",
            where=path,
            hint="e.g. inputs: [main, shortcut] (names given with name:, or `input` for the "
            "model's input).",
        )
    return tuple(values)


# The options every layer takes besides its own (cnnkit.nn.build reads them off the entry).
GRAPH_OPTIONS: dict[str, Option] = {
    "name": Option(_layer_name, default=None, doc="a unique name, for inputs: and --set"),
    "inputs": Option(
        _input_names,
        default=None,
        doc="names of earlier layers this one takes (default: the previous layer)",
    ),
}


@dataclass(frozen=True)
class Weight:
    """One weight as its layer declares it (Layer.add_weight): what create_weights allocates,
    a checkpoint holds (key layers.{index}.{name}), the summary counts, the model regularizes
    and, when trainable, the optimizer updates."""

    name: str
    shape: Shape
    initializer: Any  # a resolved initializer option: "glorot_uniform", {constant: {value: 1}}
    regularizer: dict[str, float] | None = None  # a resolved regularizer option
    trainable: bool = True  # False: state such as BatchNormalization's moving statistics


class SavedArray(NamedTuple):
    """An array forward keeps for backward, per image (no batch axis)."""

    shape: Shape
    dtype: type = np.float32


class Layer:
    type_name: ClassVar[str] = "layer"  # canonical snake_case name used in specs and summaries
    keras_name: ClassVar[str] = "Layer"  # Keras spelling, accepted in specs too
    aliases: ClassVar[tuple[str, ...]] = ()
    OPTIONS: ClassVar[dict[str, Option]] = {}
    merges: ClassVar[bool] = False  # takes a list of inputs (Add, Concatenate, ...)
    # options added after the layer's first release: left out of its config at their default,
    # so that a spec's config.yaml and hash (which checkpoints carry) do not change
    ADDED_OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: dict[str, Any], index: int, where: str = ""):
        self.options = options
        self.index = index  # position in the spec's layer list: names checkpoint keys
        self.where = where  # YAML path, for error messages
        self.weights: dict[str, Weight] = {}  # declared by build, in declaration order
        self.params: dict[str, np.ndarray] = {}  # the trainable weights' arrays
        self.grads: dict[str, np.ndarray] = {}
        # non-trainable arrays a checkpoint must hold (BatchNormalization's moving statistics)
        self.state: dict[str, np.ndarray] = {}
        self.input_shape: Shape | None = None  # a merge layer's: its first input's
        self.input_shapes: list[Shape] = []  # one per input
        self.output_shape: Shape | None = None
        # the graph (cnnkit.nn.build): the spec's name and inputs, and the positions of the
        # layers this one reads (-1: the model's input); by default the previous layer
        self.name: str | None = None
        self.inputs: tuple[str, ...] | None = None
        self.sources: tuple[int, ...] = (index - 1,)
        # False for the first layer: nobody needs dLoss/dImage, and for Conv2D skipping it
        # saves a whole backward convolution.
        self.needs_input_grad = True

    def release_cache(self) -> None:
        """Drop the arrays forward kept for backward (attributes named _x, _z, _argmax, ...).

        Inference calls it after each layer (Model.forward with training=False), so that
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

    # -- shapes and weight declarations (no arrays) -------------------------------------
    def infer_shape(self, input_shape: Shape | list[Shape]) -> Shape:
        """Set the shapes and declare the weights (build); return the output shape. Raises
        SpecError if the input does not fit. A merge layer takes the list of its inputs'."""
        if self.merges:
            shapes = [tuple(s) for s in input_shape]
            output_shape = tuple(self.compute_output_shape(shapes))
            self.input_shape, self.input_shapes = shapes[0], shapes
            build_arg: Any = shapes
        else:
            build_arg = tuple(input_shape)
            output_shape = tuple(self.compute_output_shape(build_arg))
            self.input_shape, self.input_shapes = build_arg, [build_arg]
        self.output_shape = output_shape
        self.weights = {}
        self.build(build_arg)
        return output_shape

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        """The output shape for `input_shape`; sets nothing (SpecError if it does not fit)."""
        return input_shape

    def build(self, input_shape: Shape) -> None:
        """Declare the weights (add_weight) and keep what forward needs from the input shape.
        Layers without weights need not define it."""

    def add_weight(
        self,
        name: str,
        shape: Shape,
        initializer: Any,
        regularizer: dict[str, float] | None = None,
        trainable: bool = True,
    ) -> None:
        """Declare one weight (Keras' add_weight, without the array: create_weights makes it)."""
        if regularizer is not None and not trainable:
            raise ValueError(f"{self.keras_name}.{name}: only a trainable weight is regularized")
        self.weights[name] = Weight(name, tuple(shape), initializer, regularizer, trainable)

    def param_shapes(self) -> dict[str, Shape]:
        """Trainable weight shapes, known once infer_shape has run."""
        return {w.name: w.shape for w in self.weights.values() if w.trainable}

    def state_shapes(self) -> dict[str, Shape]:
        """Non-trainable weight shapes (counted as Keras' non-trainable params)."""
        return {w.name: w.shape for w in self.weights.values() if not w.trainable}

    def macs(self) -> int:
        """Multiply-accumulates per image in the forward pass."""
        return 0

    def unused_kernel_modules(self) -> tuple[str, ...]:
        """Kernel modules this layer's methods name but this instance never calls (Conv2D
        with groups 1 never runs the grouped kernels): left out of the compile estimate."""
        return ()

    def unused_kernels(self) -> tuple[str, ...]:
        """Kernels (qualified names) this layer's methods name but this instance never calls
        (max pooling whose windows tile the input never runs the general kernels): left out
        of the compile estimate and of the warm-up's cache check."""
        return ()

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        """The arrays forward allocates and keeps until the next batch (for backward), per
        image: what the memory plan counts. `last`: the model's output layer, which hands
        logits to the loss (Model.from_configs). By default: the layer's output."""
        return [SavedArray(self.output_shape)]

    def kept_gradients(self, last: bool = False) -> list[SavedArray]:
        """The gradients backward writes into workspaces, kept from step to step (see
        workspace), per image: what the memory plan adds to saved_arrays. By default none
        (a backward that returns a view, or a fresh array the next layer lets go)."""
        return []

    def shape_error(self, input_shape: Shape, message: str, hint: str | None = None) -> SpecError:
        """The error of an input shape that does not fit (compute_output_shape raises it)."""
        return SpecError(
            f"{self.keras_name} {message} (input shape {format_shape(input_shape)})",
            where=self.where,
            hint=hint,
        )

    # -- arrays -------------------------------------------------------------------------
    def create_weights(self, rng: np.random.Generator, dtype: np.dtype) -> None:
        """Allocate every declared weight from its initializer, in declaration order (the
        order of the draws from `rng`): trainable ones into params, the others into state."""
        for weight in self.weights.values():
            store = self.params if weight.trainable else self.state
            store[weight.name] = initialize(weight.initializer, weight.shape, rng, dtype)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Given dLoss/dOutput, store the trainable weights' gradients in self.grads (the
        model adds the regularizers' own), return dLoss/dInput (or None when
        needs_input_grad is False and the layer can skip computing it)."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The resolved options (ADDED_OPTIONS only when not at their default), then name and
        inputs when the spec gave them: a Sequential spec's config and hash are unchanged by
        the graph options and by options added later."""
        config = {
            key: value
            for key, value in self.options.items()
            if key not in self.ADDED_OPTIONS or value != self.OPTIONS[key].default
        }
        if self.name is not None:
            config["name"] = self.name
        if self.inputs is not None:
            config["inputs"] = list(self.inputs)
        return config

    # -- the PyTorch twin (cnnkit bench --vs torch) -------------------------------------
    def torch_twin(self, twin: Any) -> None:
        """Append this layer's PyTorch equivalent to `twin` (cnnkit.bench_torch.TwinBuilder:
        twin.nn is torch.nn; twin.add(module), twin.copy(layer, weight name, tensor,
        to_torch), twin.activation(layer)). PyTorch works in NCHW. A layer without a twin
        says so: the benchmark refuses the spec rather than compare different networks."""
        raise twin.unsupported(f"a {self.keras_name} layer")


class ActivationMixin:
    """The `activation` option of Conv2D and Dense, with a switch for the fused output head.

    When the last layer ends in softmax and the loss is cross-entropy, the model sets
    `returns_logits` so the layer skips its activation and the loss works on logits
    (numerically stable); the model applies the activation itself when predicting.
    """

    returns_logits: bool = False

    def fuses_head(self) -> bool:
        """Whether, as the model's last layer, it hands logits to the loss: only a layer
        whose `activation` option check_head saw (LeakyReLU has none)."""
        return "activation" in self.options

    def _activation_name(self) -> str:
        return self.options.get("activation") or "linear"

    def _activation_kwargs(self) -> dict[str, Any]:
        """Options of a parameterised activation (LeakyReLU's negative_slope)."""
        return {}

    def activate(self, z: np.ndarray, training: bool = False) -> np.ndarray:
        self._z = z
        if self.returns_logits:
            self._a = z
            return z
        if self._relu_kernels(z):
            # one parallel pass; in training into an array kept from step to step
            z = self._z = np.ascontiguousarray(z)
            out = self.workspace("activation", z.shape, z.dtype) if training else np.empty_like(z)
            relu_into(z.reshape(-1), out.reshape(-1))
            self._a = out
            return out
        self._a = ACTIVATIONS[self._activation_name()][0](z, **self._activation_kwargs())
        return self._a

    def _relu_kernels(self, z: np.ndarray) -> bool:
        """relu on floats: cnnkit.kernels.activations' kernels, bitwise numpy's maximum and
        its gradient (dy where the output is positive, 0 elsewhere)."""
        return self._activation_name() == "relu" and z.dtype in (np.float32, np.float64)

    def activate_backward(self, dy: np.ndarray) -> np.ndarray:
        if self.returns_logits:
            return dy
        if self._relu_kernels(self._a):
            dz = self.workspace("activation_grad", dy.shape, dy.dtype)
            relu_backward_into(
                np.ascontiguousarray(dy).reshape(-1), self._a.reshape(-1), dz.reshape(-1)
            )
            return dz
        backward = ACTIVATIONS[self._activation_name()][1]
        return backward(self._z, self._a, dy, **self._activation_kwargs())

    def activation_saved(self, last: bool) -> list[SavedArray]:
        """The activation's output, when it makes one (not linear, not a logits head)."""
        logits = self.returns_logits or (last and self.fuses_head())
        if self._activation_name() == "linear" or logits:
            return []
        return [SavedArray(self.output_shape)]

    def activation_grad_kept(self, last: bool) -> list[SavedArray]:
        """relu's gradient, a workspace of the output's size (none for a logits head)."""
        logits = self.returns_logits or (last and self.fuses_head())
        if self._activation_name() != "relu" or logits:
            return []
        return [SavedArray(self.output_shape)]

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        return self.activation_saved(last)  # its input is z: the previous layer's output

    def kept_gradients(self, last: bool = False) -> list[SavedArray]:
        return self.activation_grad_kept(last)


class KernelBiasMixin:
    """Conv2D and Dense: an activation, a kernel and an optional bias, and Keras' options for
    them. The layer's build calls `add_kernel_and_bias` with the kernel's shape."""

    WEIGHT_OPTIONS: ClassVar[dict[str, Option]] = {
        "activation": Option("str", default="linear", choices=tuple(ACTIVATIONS)),
        "use_bias": Option("bool", default=True),
        "kernel_initializer": Option(check_initializer, default="glorot_uniform"),
        "bias_initializer": Option(check_initializer, default="zeros"),
        "kernel_regularizer": Option(check_regularizer, default=None),
        "bias_regularizer": Option(check_regularizer, default=None),
    }

    def add_kernel_and_bias(self, kernel_shape: Shape) -> None:
        o = self.options
        self.add_weight("kernel", kernel_shape, o["kernel_initializer"], o["kernel_regularizer"])
        if o["use_bias"]:
            self.add_weight("bias", kernel_shape[-1:], o["bias_initializer"], o["bias_regularizer"])

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        # z, the kernel's output, is the layer's own array; then the activation's
        return [SavedArray(self.output_shape), *self.activation_saved(last)]


def format_shape(shape: Shape | None) -> str:
    if shape is None:
        return "?"
    return "(None, " + ", ".join(str(s) for s in shape) + ")"
