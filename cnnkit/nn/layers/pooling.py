"""MaxPooling2D and AveragePooling2D over NHWC inputs (strides default to pool_size, as Keras)."""

from __future__ import annotations

import numpy as np

from cnnkit.kernels.nojit import conv_output_size, lazy, pool_tiles
from cnnkit.nn.layers.base import Layer, SavedArray, Shape
from cnnkit.options import Option, checker, nullable

# numba is imported on the first call, not when a spec is checked (cnnkit.kernels.nojit)
(
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_backward_tiles,
    maxpool2d_forward,
    maxpool2d_forward_tiles,
) = lazy(
    "cnnkit.kernels.pool",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "maxpool2d_backward",
    "maxpool2d_backward_tiles",
    "maxpool2d_forward",
    "maxpool2d_forward_tiles",
)


@checker(lambda: nullable(Option("int_or_pair", minimum=1).json_schema()))
def _strides_or_null(value, path):
    return None if value is None else Option("int_or_pair", minimum=1).check(value, path)


class _Pooling2D(Layer):
    OPTIONS = {
        "pool_size": Option("int_or_pair", default=[2, 2], minimum=1),
        "strides": Option(_strides_or_null, default=None),
        "padding": Option("str", default="valid", choices=("valid", "same")),
    }

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return self._geometry(input_shape)[0]

    def _geometry(self, input_shape: Shape) -> tuple[Shape, list[int], int, int]:
        """(output shape, strides, pad_top, pad_left) for this input shape."""
        if len(input_shape) != 3:
            raise self.shape_error(
                input_shape, "needs an image-shaped input (height, width, channels)"
            )
        h, w, c = input_shape
        ph, pw = self.options["pool_size"]
        strides = self.options["strides"] or [ph, pw]
        if self.options["padding"] == "valid" and (ph > h or pw > w):
            raise self.shape_error(
                input_shape,
                f"pool_size {ph}×{pw} is bigger than its {h}×{w} input",
                hint="Use a smaller pool_size, padding: same, or remove a pooling layer.",
            )
        oh, pad_top = conv_output_size(h, ph, strides[0], 1, self.options["padding"])
        ow, pad_left = conv_output_size(w, pw, strides[1], 1, self.options["padding"])
        return (oh, ow, c), strides, pad_top, pad_left

    def build(self, input_shape: Shape) -> None:
        _, self.strides, self.pad_top, self.pad_left = self._geometry(input_shape)

    def torch_twin(self, twin) -> None:
        if self.options["padding"] != "valid":
            raise twin.unsupported(f"{self.keras_name} with padding: same")
        pool = getattr(twin.nn, self.torch_name)
        twin.add(pool(tuple(self.options["pool_size"]), tuple(self.strides)))

    def get_config(self):
        config = super().get_config()  # with the spec's name and inputs
        config["strides"] = list(self.strides) if self.output_shape else config["strides"]
        return config


class MaxPooling2D(_Pooling2D):
    type_name = "max_pooling2d"
    keras_name = "MaxPooling2D"
    torch_name = "MaxPool2d"
    aliases = ("MaxPool2D", "max_pool2d")

    def _tiles(self) -> bool:
        """Windows that tile the input (stride = pool size, no padding): the kernels that
        keep each winner as an int8 position in its window (cnnkit.kernels.pool)."""
        return pool_tiles(
            self.options["pool_size"], self.strides, (self.pad_top, self.pad_left),
            self.input_shape[:2], self.output_shape[:2],
        )  # fmt: skip

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        shape = (x.shape[0], *self.output_shape)
        tiled = self._tiles()
        winners = np.int8 if tiled else np.int64
        if training:  # reused from step to step (see Layer.workspace)
            out = self.workspace("out", shape, x.dtype)
            self._argmax = self.workspace("argmax", shape, winners)
        else:
            out = np.empty(shape, dtype=x.dtype)
            self._argmax = np.empty(shape, dtype=winners)
        (ph, pw), (sh, sw) = self.options["pool_size"], self.strides
        if tiled:
            maxpool2d_forward_tiles(np.ascontiguousarray(x), ph, pw, out, self._argmax)
        else:
            maxpool2d_forward(x, ph, pw, sh, sw, self.pad_top, self.pad_left, out, self._argmax)
        self._x_shape = x.shape
        return out

    def unused_kernels(self) -> tuple[str, ...]:
        names = ("maxpool2d_forward", "maxpool2d_backward")
        unused = names if self._tiles() else tuple(f"{n}_tiles" for n in names)
        return tuple(f"cnnkit.kernels.pool.{n}" for n in unused)

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        winners = np.int8 if self._tiles() else np.int64
        return [SavedArray(self.output_shape), SavedArray(self.output_shape, winners)]

    def kept_gradients(self, last: bool = False) -> list[SavedArray]:
        return [SavedArray(self.input_shape)]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dx = self.workspace("dx", self._x_shape, dy.dtype)
        if self._argmax.dtype == np.int8:
            ph, pw = self.options["pool_size"]
            maxpool2d_backward_tiles(np.ascontiguousarray(dy), self._argmax, ph, pw, dx)
        else:
            maxpool2d_backward(np.ascontiguousarray(dy), self._argmax, dx)
        return dx


class AveragePooling2D(_Pooling2D):
    type_name = "average_pooling2d"
    keras_name = "AveragePooling2D"
    torch_name = "AvgPool2d"
    aliases = ("AvgPool2D", "avg_pool2d")

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        out = np.empty((x.shape[0], *self.output_shape), dtype=x.dtype)
        (ph, pw), (sh, sw) = self.options["pool_size"], self.strides
        avgpool2d_forward(x, ph, pw, sh, sw, self.pad_top, self.pad_left, out)
        self._x_shape = x.shape
        return out

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dx = np.empty(self._x_shape, dtype=dy.dtype)
        (ph, pw), (sh, sw) = self.options["pool_size"], self.strides
        avgpool2d_backward(
            np.ascontiguousarray(dy), ph, pw, sh, sw, self.pad_top, self.pad_left, dx
        )
        return dx


class _GlobalPooling2D(Layer):
    """Pool each channel over the whole image: (H, W, C) -> (C,), or (1, 1, C) with keepdims."""

    OPTIONS = {"keepdims": Option("bool", default=False)}

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise self.shape_error(
                input_shape, "needs an image-shaped input (height, width, channels)"
            )
        c = input_shape[2]
        return (1, 1, c) if self.options["keepdims"] else (c,)


class GlobalAveragePooling2D(_GlobalPooling2D):
    type_name = "global_average_pooling2d"
    keras_name = "GlobalAveragePooling2D"
    aliases = ("GlobalAvgPool2D", "global_avg_pool2d")

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._x_shape = x.shape
        return x.mean(axis=(1, 2), keepdims=self.options["keepdims"])

    def backward(self, dy: np.ndarray) -> np.ndarray:
        n, h, w, c = self._x_shape
        share = dy.reshape(n, 1, 1, c) * dy.dtype.type(1.0 / (h * w))
        return np.ascontiguousarray(np.broadcast_to(share, self._x_shape))

    def torch_twin(self, twin) -> None:
        if self.options["keepdims"]:
            raise twin.unsupported(f"a {self.keras_name} layer with keepdims: true")
        twin.add(twin.nn.AdaptiveAvgPool2d(1), twin.nn.Flatten())


class GlobalMaxPooling2D(_GlobalPooling2D):
    """The gradient goes to the first maximum of each channel (row-major), as max pooling."""

    type_name = "global_max_pooling2d"
    keras_name = "GlobalMaxPooling2D"
    aliases = ("GlobalMaxPool2D", "global_max_pool2d")

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        n, h, w, c = x.shape
        self._x_shape = x.shape
        self._argmax = x.reshape(n, h * w, c).argmax(axis=1)  # (n, c): first maximum
        out = np.take_along_axis(x.reshape(n, h * w, c), self._argmax[:, None, :], axis=1)
        return out.reshape(n, 1, 1, c) if self.options["keepdims"] else out.reshape(n, c)

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        channels = (self.input_shape[-1],)  # the argmax: one index a channel
        return [SavedArray(self.output_shape), SavedArray(channels, np.int64)]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        n, h, w, c = self._x_shape
        dx = np.zeros((n, h * w, c), dtype=dy.dtype)
        np.put_along_axis(dx, self._argmax[:, None, :], dy.reshape(n, 1, c), axis=1)
        return dx.reshape(self._x_shape)
