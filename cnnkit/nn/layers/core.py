"""Dense, Flatten, Dropout, Activation and Rescaling: the layers that are not convolutions,
pooling, normalization or padding."""

from __future__ import annotations

import numpy as np

from cnnkit.distributed import batch_part
from cnnkit.kernels.nojit import lazy
from cnnkit.nn.activations import ACTIVATIONS
from cnnkit.nn.layers.base import ActivationMixin, KernelBiasMixin, Layer, SavedArray, Shape
from cnnkit.options import Option

dense, dense_backward = lazy(
    "cnnkit.kernels.dense", "dense", "dense_backward"
)  # numba: on first call


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
                input_shape,
                "needs a flat input",
                hint="Add `- Flatten: {}` before this Dense layer.",
            )
        return (self.options["units"],)

    def build(self, input_shape: Shape) -> None:
        self.add_kernel_and_bias((input_shape[0], self.options["units"]))

    def macs(self) -> int:
        return self.input_shape[0] * self.options["units"]

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._x = x = np.ascontiguousarray(x)
        kernel = self.params["kernel"]
        shape, dtype = (x.shape[0], kernel.shape[1]), np.result_type(x, kernel)
        # training: into an array kept from step to step (see Layer.workspace)
        z = self.workspace("z", shape, dtype) if training else np.empty(shape, dtype)
        dense(x, kernel, self.params.get("bias"), z)  # float32: over the threads, not BLAS
        return self.activate(z, training)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dz = self.activate_backward(dy)
        kernel = self.params["kernel"]
        # into arrays reused from step to step (see Layer.workspace)
        dkernel = self.workspace("dkernel", kernel.shape, np.result_type(self._x, dz))
        dx = self.workspace("dx", (dz.shape[0], kernel.shape[0]), np.result_type(dz, kernel))
        dense_backward(self._x, dz, kernel, dkernel, dx)  # BLAS, over the threads where big
        self.grads["kernel"] = dkernel
        if "bias" in self.params:
            self.grads["bias"] = dz.sum(axis=0)
        return dx

    def kept_gradients(self, last: bool = False) -> list[SavedArray]:
        return [*self.activation_grad_kept(last), SavedArray(self.input_shape)]

    def torch_twin(self, twin) -> None:
        """nn.Linear holds (out, in): the kernel transposed; after a Flatten of an image its
        rows are also permuted from cnnkit's (H, W, C) order to PyTorch's (C, H, W)."""
        n_in, units = self.weights["kernel"].shape
        linear = twin.nn.Linear(n_in, units, bias=self.options["use_bias"])
        twin.add(linear)
        if twin.flat_from is not None:
            fh, fw, fc = twin.flat_from
            twin.flat_from = None

            def to_torch(a):
                return a.reshape(fh, fw, fc, -1).transpose(2, 0, 1, 3).reshape(a.shape).T

        else:

            def to_torch(a):
                return a.T

        twin.copy(self, "kernel", linear.weight, to_torch)
        if self.options["use_bias"]:
            twin.copy(self, "bias", linear.bias)
        twin.activation(self)


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

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        return []  # its output is a view of its input

    def torch_twin(self, twin) -> None:
        if len(self.input_shape) == 3:  # the next Dense's rows: (H, W, C) -> (C, H, W)
            twin.flat_from = tuple(self.input_shape)
        twin.add(twin.nn.Flatten())


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
        keep = _draw(self.rng, x.shape) >= rate
        self._mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - rate))
        return x * self._mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy if self._mask is None else dy * self._mask

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        if not training or self.options["rate"] == 0.0:
            return []  # returns its input
        return [SavedArray(self.output_shape), SavedArray(self._mask_shape())]

    def _mask_shape(self) -> Shape:
        return self.output_shape

    def torch_twin(self, twin) -> None:
        twin.has_dropout = True  # random masks: the guard compares outputs, not gradients
        twin.add(twin.nn.Dropout(self.options["rate"]))


class SpatialDropout2D(Dropout):
    """Dropout of whole channels: one keep/drop draw per (sample, channel), as Keras'
    noise_shape (N, 1, 1, C); kept channels are scaled by 1/(1-rate). Training only."""

    type_name = "spatial_dropout2d"
    keras_name = "SpatialDropout2D"

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise self.shape_error(
                input_shape,
                "needs an image-shaped input (height, width, channels)",
                hint="Use Dropout after Flatten; SpatialDropout2D drops channels of images.",
            )
        return input_shape

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        rate = self.options["rate"]
        if not training or rate == 0.0:
            self._mask = None
            return x
        keep = _draw(self.rng, (x.shape[0], 1, 1, x.shape[3])) >= rate
        self._mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - rate))
        return x * self._mask

    def _mask_shape(self) -> Shape:
        return (1, 1, self.input_shape[-1])

    torch_twin = Layer.torch_twin  # not Dropout's: none yet


class Activation(ActivationMixin, Layer):
    type_name = "activation"
    keras_name = "Activation"
    OPTIONS = {
        "activation": Option("str", choices=tuple(ACTIVATIONS), doc="e.g. relu"),
    }

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        return self.activate(x, training)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return self.activate_backward(dy)

    def torch_twin(self, twin) -> None:
        twin.activation(self)


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


class Rescaling(Layer):
    """Keras' Rescaling: y = x * scale + offset, elementwise, any input shape; no weights.
    E.g. {scale: 1/255} maps pixels to [0, 1], {scale: 1/127.5, offset: -1} to [-1, 1]."""

    type_name = "rescaling"
    keras_name = "Rescaling"
    OPTIONS = {
        "scale": Option("float", doc="multiplies the input, e.g. 1/255"),
        "offset": Option("float", default=0.0, doc="added after scaling, e.g. -1"),
    }

    def macs(self) -> int:
        return int(np.prod(self.input_shape))  # one multiply-add per value

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        t = x.dtype.type  # float32 stays float32
        return x * t(self.options["scale"]) + t(self.options["offset"])

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        if not self.needs_input_grad:  # the first layer, as it usually is
            return None
        return dy * dy.dtype.type(self.options["scale"])

    def torch_twin(self, twin) -> None:
        scale, offset = self.options["scale"], self.options["offset"]
        twin.add(twin.function(lambda x: x * scale + offset))


def _draw(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform draws for a mask of `shape`. In data-parallel training (a batch part is set)
    the whole global batch's are drawn and this rank's rows kept: every rank's stream, and
    every mask, is then a single process's."""
    part = batch_part()
    if part is None:
        return rng.random(shape, dtype=np.float32)
    lo, hi, n = part
    return rng.random((n, *shape[1:]), dtype=np.float32)[lo:hi]
