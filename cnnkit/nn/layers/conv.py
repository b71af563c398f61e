"""Conv2D: 2-D convolution over NHWC inputs with (kh, kw, in_channels // groups, filters)
kernels; the geometry, fused relu and PyTorch padding its depthwise relatives share
(cnnkit.nn.layers.depthwise)."""

from __future__ import annotations

import numpy as np

from cnnkit.errors import SpecError
from cnnkit.kernels.nojit import conv_output_size, lazy
from cnnkit.nn.layers.base import (
    ActivationMixin,
    KernelBiasMixin,
    Layer,
    SavedArray,
    Shape,
    format_shape,
)
from cnnkit.options import Option, join_path

# numba is imported on the first call, not when a spec is checked (cnnkit.kernels.nojit)
conv2d_backward_input, conv2d_backward_weights, conv2d_forward = lazy(
    "cnnkit.kernels.conv", "conv2d_backward_input", "conv2d_backward_weights", "conv2d_forward"
)
grouped_conv2d_backward_input, grouped_conv2d_backward_weights, grouped_conv2d_forward = lazy(
    "cnnkit.kernels.grouped",
    "grouped_conv2d_backward_input",
    "grouped_conv2d_backward_weights",
    "grouped_conv2d_forward",
)
(relu_backward_into,) = lazy("cnnkit.kernels.activations", "relu_backward_into")

# Keras' options of every convolution's window, in Keras' order
WINDOW_OPTIONS = {
    "kernel_size": Option("int_or_pair", minimum=1, doc="e.g. 3 or [3, 3]"),
    "strides": Option("int_or_pair", default=[1, 1], minimum=1),
    "padding": Option("str", default="valid", choices=("valid", "same")),
}
DILATION_OPTION = {"dilation_rate": Option("int_or_pair", default=[1, 1], minimum=1)}


class ConvWindow(ActivationMixin):
    """What Conv2D, DepthwiseConv2D and SeparableConv2D share: the output size and paddings of
    their window (Keras' "valid"/"same"), the relu fused into the kernel, and the padding of
    their PyTorch twins."""

    def _geometry(self, input_shape: Shape, channels: int) -> tuple[Shape, int, int]:
        """(output shape with `channels` channels, pad_top, pad_left) for this input shape."""
        if len(input_shape) != 3:
            raise self.shape_error(
                input_shape,
                "needs an image-shaped input (height, width, channels)",
                hint=f"Put {self.keras_name} before Flatten/Dense, and give model.input_shape "
                "as [H, W, C].",
            )
        h, w, _ = input_shape
        (kh, kw), (sh, sw) = self.options["kernel_size"], self.options["strides"]
        dh, dw = self.options["dilation_rate"]
        eff = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
        if self.options["padding"] == "valid" and (eff[0] > h or eff[1] > w):
            raise self.shape_error(
                input_shape,
                f"kernel {eff[0]}×{eff[1]} (kernel_size {kh}×{kw}, dilation {dh}×{dw}) is "
                f"bigger than its {h}×{w} input",
                hint="Use a smaller kernel_size, padding: same, or fewer pooling layers before it.",
            )
        oh, pad_top = conv_output_size(h, kh, sh, dh, self.options["padding"])
        ow, pad_left = conv_output_size(w, kw, sw, dw, self.options["padding"])
        return (oh, ow, channels), pad_top, pad_left

    def _window(self) -> tuple[int, int, int, int, int, int]:
        """(sh, sw, dh, dw, pad_top, pad_left): the kernels' geometry arguments."""
        (sh, sw), (dh, dw) = self.options["strides"], self.options["dilation_rate"]
        return sh, sw, dh, dw, self.pad_top, self.pad_left

    def _output(self, x: np.ndarray, training: bool) -> np.ndarray:
        """training reuses the layer's output array from step to step (the training loop
        makes no large allocation per step); inference returns a fresh array the caller may
        keep."""
        shape = (x.shape[0], *self.output_shape)
        return self.workspace("out", shape, x.dtype) if training else np.empty(shape, x.dtype)

    def kept_gradients(self, last: bool = False) -> list[SavedArray]:
        """relu's gradient (fused or not) and the input gradient, where one is needed."""
        dx = [SavedArray(self.input_shape)] if self.needs_input_grad else []
        return [*self.activation_grad_kept(last), *dx]

    def _fuses_relu(self) -> bool:
        """relu fused into the kernel (one pass less over the output); relu's backward needs
        only where the output is positive, which the fused output tells as well as z."""
        return self._activation_name() == "relu" and not self.returns_logits

    def _activated(self, out: np.ndarray, fused: bool) -> np.ndarray:
        self._fused = fused
        if fused:
            self._z = self._a = out
            return out
        return self.activate(out)

    def _activation_backward(self, dy: np.ndarray) -> np.ndarray:
        """dLoss/dz, C-contiguous (what the kernels read)."""
        if self._fused:
            dz = self.workspace("dz", dy.shape, dy.dtype)
            relu_backward_into(
                np.ascontiguousarray(dy).reshape(-1), self._a.reshape(-1), dz.reshape(-1)
            )
            return dz
        return np.ascontiguousarray(self.activate_backward(dy))

    def _torch_padding(self, twin) -> tuple[int, int]:
        """nn.Conv2d's padding; an asymmetric `same` padding (extra row or column at the
        bottom or right, as Keras and TensorFlow) becomes an explicit nn.ZeroPad2d first,
        which Conv2d's own padding cannot express."""
        (kh, kw), (sh, sw) = self.options["kernel_size"], self.options["strides"]
        dh, dw = self.options["dilation_rate"]
        h, w, _ = self.input_shape
        oh, ow, _ = self.output_shape
        pad_b = max((oh - 1) * sh + (kh - 1) * dh + 1 - h, 0) - self.pad_top
        pad_r = max((ow - 1) * sw + (kw - 1) * dw + 1 - w, 0) - self.pad_left
        if self.options["padding"] == "valid":
            pad_b = pad_r = 0
        padding = (self.pad_top, self.pad_left)
        if (pad_b, pad_r) != padding:
            twin.add(twin.nn.ZeroPad2d((self.pad_left, pad_r, self.pad_top, pad_b)))
            padding = (0, 0)
        return padding


class Conv2D(KernelBiasMixin, ConvWindow, Layer):
    type_name = "conv2d"
    keras_name = "Conv2D"
    aliases = ("convolution2d", "Convolution2D")
    ADDED_OPTIONS = ("groups",)  # new in 0.2: older specs' configs have none
    OPTIONS = {
        "filters": Option("int", minimum=1, doc="number of output channels, e.g. 32"),
        **WINDOW_OPTIONS,
        **DILATION_OPTION,
        "groups": Option(
            "int",
            default=1,
            minimum=1,
            doc="input channels and filters split into this many groups, each convolved "
            "separately; both must be divisible by it",
        ),
        **KernelBiasMixin.WEIGHT_OPTIONS,
    }

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        shape = self._geometry(input_shape, self.options["filters"])[0]
        self._check_groups(input_shape)
        return shape

    def _check_groups(self, input_shape: Shape) -> None:
        """Keras' two conditions on groups, and its words."""
        groups, filters = self.options["groups"], self.options["filters"]
        where = join_path(self.where, "groups")
        if filters % groups:
            raise SpecError(
                "The number of filters must be evenly divisible by the number of groups. "
                f"Received: groups={groups}, filters={filters}.",
                where=where,
                hint="Use a groups that divides filters (1 is an ordinary convolution).",
            )
        if input_shape[2] % groups:
            raise SpecError(
                "The number of input channels must be evenly divisible by the number of "
                f"groups. Received groups={groups}, but the input has {input_shape[2]} "
                f"channels (full input shape is {format_shape(input_shape)}).",
                where=where,
                hint="Use a groups that divides both the input channels and filters.",
            )

    def build(self, input_shape: Shape) -> None:
        _, self.pad_top, self.pad_left = self._geometry(input_shape, self.options["filters"])
        kh, kw = self.options["kernel_size"]
        channels = input_shape[2] // self.options["groups"]
        self.add_kernel_and_bias((kh, kw, channels, self.options["filters"]))

    def macs(self) -> int:
        kh, kw = self.options["kernel_size"]
        oh, ow, f = self.output_shape
        return oh * ow * f * kh * kw * (self.input_shape[2] // self.options["groups"])

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        if self._activation_name() == "relu":  # fused into the kernel: one array for both
            return [SavedArray(self.output_shape)]
        return super().saved_arrays(training, last)

    def _bias(self, dtype) -> np.ndarray:
        bias = self.params.get("bias")
        return bias if bias is not None else np.zeros(self.options["filters"], dtype)

    def unused_kernel_modules(self) -> tuple[str, ...]:
        return ("cnnkit.kernels.grouped",) if self.options["groups"] == 1 else ()

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        w, groups = self.params["kernel"], self.options["groups"]
        x = np.ascontiguousarray(x)  # what the kernels read (a no-op for the usual input)
        out = self._output(x, training)
        fused = self._fuses_relu()
        if groups == 1:
            conv2d_forward(x, w, self._bias(x.dtype), *self._window(), out, fused)
        else:
            grouped_conv2d_forward(x, w, self._bias(x.dtype), groups, *self._window(), out, fused)
        self._x = x
        return self._activated(out, fused)

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        dz = self._activation_backward(dy)
        w, x, groups = self.params["kernel"], self._x, self.options["groups"]
        dw_out = self.workspace("dkernel", w.shape, w.dtype)
        db_out = self.workspace("dbias", (w.shape[3],), x.dtype)
        if groups == 1:
            conv2d_backward_weights(x, dz, *self._window(), dw_out, db_out)
        else:
            grouped_conv2d_backward_weights(x, dz, groups, *self._window(), dw_out, db_out)
        self.grads["kernel"] = dw_out
        if "bias" in self.params:
            self.grads["bias"] = db_out
        if not self.needs_input_grad:
            return None
        dx = self.workspace("dx", x.shape, x.dtype)
        if groups == 1:
            conv2d_backward_input(dz, w, *self._window(), dx)
        else:
            grouped_conv2d_backward_input(dz, w, groups, *self._window(), dx)
        return dx

    def torch_twin(self, twin) -> None:
        """nn.Conv2d (groups included) with the kernel transposed to (filters, channels //
        groups, kh, kw), after a ZeroPad2d for an asymmetric `same` padding."""
        kh, kw, _, f = self.weights["kernel"].shape
        (sh, sw), (dh, dw) = self.options["strides"], self.options["dilation_rate"]
        padding = self._torch_padding(twin)
        use_bias = self.options["use_bias"]
        conv = twin.nn.Conv2d(
            self.input_shape[2],
            f,
            (kh, kw),
            (sh, sw),
            padding,
            (dh, dw),
            groups=self.options["groups"],
            bias=use_bias,
        )
        twin.add(conv)
        twin.copy(self, "kernel", conv.weight, lambda a: a.transpose(3, 2, 0, 1))
        if use_bias:
            twin.copy(self, "bias", conv.bias)
        twin.activation(self)
