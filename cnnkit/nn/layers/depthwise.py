"""DepthwiseConv2D and SeparableConv2D: each input channel convolved with its own
depth_multiplier filters (Keras' depthwise kernel (kh, kw, in_channels, depth_multiplier),
output channel c * depth_multiplier + m), and, for the separable one, a 1x1 convolution
mixing the channels after it.

Both run on the grouped-convolution kernels (cnnkit.kernels.grouped) with groups = in_channels:
the depthwise kernel viewed as (kh, kw, 1, in_channels * depth_multiplier) is a grouped kernel.
The pointwise 1x1 convolution runs on Conv2D's kernels.
"""

from __future__ import annotations

import numpy as np

from cnnkit.nn.activations import ACTIVATIONS
from cnnkit.nn.initializers import check_initializer
from cnnkit.nn.layers.base import Layer, SavedArray, Shape
from cnnkit.nn.layers.conv import (
    DILATION_OPTION,
    WINDOW_OPTIONS,
    ConvWindow,
    conv2d_backward_input,
    conv2d_backward_weights,
    conv2d_forward,
    grouped_conv2d_backward_input,
    grouped_conv2d_backward_weights,
    grouped_conv2d_forward,
)
from cnnkit.nn.regularizers import check_regularizer
from cnnkit.options import Option

DEPTH_MULTIPLIER = {
    "depth_multiplier": Option(
        "int", default=1, minimum=1, doc="filters per input channel (output channels = C × it)"
    )
}
ACTIVATION_OPTIONS = {
    "activation": Option("str", default="linear", choices=tuple(ACTIVATIONS)),
    "use_bias": Option("bool", default=True),
}
DEPTHWISE_WEIGHT_OPTIONS = {
    "depthwise_initializer": Option(check_initializer, default="glorot_uniform"),
    "bias_initializer": Option(check_initializer, default="zeros"),
    "depthwise_regularizer": Option(check_regularizer, default=None),
    "bias_regularizer": Option(check_regularizer, default=None),
}


class _Depthwise(ConvWindow, Layer):
    """The depthwise step both layers share: its kernel as a grouped one, and its kernels'
    calls (groups = input channels)."""

    def _depthwise_view(self, kernel: np.ndarray) -> np.ndarray:
        """(kh, kw, C, M) as the grouped kernels' (kh, kw, 1, C*M): the same memory."""
        kh, kw, c, m = kernel.shape
        return np.ascontiguousarray(kernel).reshape(kh, kw, 1, c * m)

    def _depthwise_forward(self, x, kernel, bias, out, relu) -> None:
        groups = self.input_shape[2]
        view = self._depthwise_view(kernel)
        grouped_conv2d_forward(x, view, bias, groups, *self._window(), out, relu)

    def _depthwise_backward(self, x, dz, kernel, name: str, db_out) -> np.ndarray | None:
        """grads[name] (the depthwise kernel's gradient) and db_out from dLoss/dz; returns
        dLoss/dx, or None when nobody needs it."""
        groups = self.input_shape[2]
        dk = self.workspace("d" + name, kernel.shape, kernel.dtype)
        view = self._depthwise_view(dk)
        grouped_conv2d_backward_weights(x, dz, groups, *self._window(), view, db_out)
        self.grads[name] = dk
        if not self.needs_input_grad:
            return None
        dx = self.workspace("dx", x.shape, x.dtype)
        grouped_conv2d_backward_input(dz, self._depthwise_view(kernel), groups, *self._window(), dx)
        return dx

    def _torch_depthwise(self, twin, kernel_name: str, bias: bool):
        """nn.Conv2d with groups = in_channels, its (C*M, 1, kh, kw) weight from the
        (kh, kw, C, M) kernel: output channel c*M + m, as Keras."""
        kh, kw, c, m = self.weights[kernel_name].shape
        (sh, sw), (dh, dw) = self.options["strides"], self.options["dilation_rate"]
        padding = self._torch_padding(twin)
        conv = twin.nn.Conv2d(c, c * m, (kh, kw), (sh, sw), padding, (dh, dw), groups=c, bias=bias)
        twin.add(conv)
        twin.copy(
            self,
            kernel_name,
            conv.weight,
            lambda a: a.reshape(kh, kw, 1, c * m).transpose(3, 2, 0, 1),
        )
        return conv


class DepthwiseConv2D(_Depthwise):
    """Keras' DepthwiseConv2D: weights `kernel` (kh, kw, C, depth_multiplier) and `bias`
    (C * depth_multiplier)."""

    type_name = "depthwise_conv2d"
    keras_name = "DepthwiseConv2D"
    OPTIONS = {
        **WINDOW_OPTIONS,
        **DEPTH_MULTIPLIER,
        **DILATION_OPTION,
        **ACTIVATION_OPTIONS,
        **DEPTHWISE_WEIGHT_OPTIONS,
    }

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        channels = input_shape[-1] * self.options["depth_multiplier"]
        return self._geometry(input_shape, channels)[0]

    def build(self, input_shape: Shape) -> None:
        _, self.pad_top, self.pad_left = self._geometry(input_shape, 0)
        o, (kh, kw) = self.options, self.options["kernel_size"]
        shape = (kh, kw, input_shape[2], o["depth_multiplier"])
        self.add_weight("kernel", shape, o["depthwise_initializer"], o["depthwise_regularizer"])
        if o["use_bias"]:
            f = input_shape[2] * o["depth_multiplier"]
            self.add_weight("bias", (f,), o["bias_initializer"], o["bias_regularizer"])

    def macs(self) -> int:
        kh, kw = self.options["kernel_size"]
        oh, ow, f = self.output_shape
        return oh * ow * f * kh * kw

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        if self._activation_name() == "relu":  # fused into the kernel: one array for both
            return [SavedArray(self.output_shape)]
        return [SavedArray(self.output_shape), *self.activation_saved(last)]

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        x = np.ascontiguousarray(x)
        out = self._output(x, training)
        bias = self.params.get("bias")
        if bias is None:
            bias = np.zeros(self.output_shape[2], x.dtype)
        fused = self._fuses_relu()
        self._depthwise_forward(x, self.params["kernel"], bias, out, fused)
        self._x = x
        return self._activated(out, fused)

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        dz = self._activation_backward(dy)
        db = self.workspace("dbias", (self.output_shape[2],), dz.dtype)
        dx = self._depthwise_backward(self._x, dz, self.params["kernel"], "kernel", db)
        if "bias" in self.params:
            self.grads["bias"] = db
        return dx

    def torch_twin(self, twin) -> None:
        conv = self._torch_depthwise(twin, "kernel", self.options["use_bias"])
        if self.options["use_bias"]:
            twin.copy(self, "bias", conv.bias)
        twin.activation(self)


class SeparableConv2D(_Depthwise):
    """Keras' SeparableConv2D: a depthwise convolution (`depthwise_kernel`, (kh, kw, C, M),
    strides, padding and dilation), then a 1x1 convolution (`pointwise_kernel`, (1, 1, C*M,
    filters)), then `bias` (filters) and the activation."""

    type_name = "separable_conv2d"
    keras_name = "SeparableConv2D"
    OPTIONS = {
        "filters": Option("int", minimum=1, doc="number of output channels, e.g. 32"),
        **WINDOW_OPTIONS,
        **DILATION_OPTION,
        **DEPTH_MULTIPLIER,
        **ACTIVATION_OPTIONS,
        "depthwise_initializer": DEPTHWISE_WEIGHT_OPTIONS["depthwise_initializer"],
        "pointwise_initializer": Option(check_initializer, default="glorot_uniform"),
        "bias_initializer": DEPTHWISE_WEIGHT_OPTIONS["bias_initializer"],
        "depthwise_regularizer": DEPTHWISE_WEIGHT_OPTIONS["depthwise_regularizer"],
        "pointwise_regularizer": Option(check_regularizer, default=None),
        "bias_regularizer": DEPTHWISE_WEIGHT_OPTIONS["bias_regularizer"],
    }

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return self._geometry(input_shape, self.options["filters"])[0]

    def build(self, input_shape: Shape) -> None:
        _, self.pad_top, self.pad_left = self._geometry(input_shape, 0)
        o, (kh, kw) = self.options, self.options["kernel_size"]
        c, m, f = input_shape[2], o["depth_multiplier"], o["filters"]
        init, reg = o["depthwise_initializer"], o["depthwise_regularizer"]
        self.add_weight("depthwise_kernel", (kh, kw, c, m), init, reg)
        init, reg = o["pointwise_initializer"], o["pointwise_regularizer"]
        self.add_weight("pointwise_kernel", (1, 1, c * m, f), init, reg)
        if o["use_bias"]:
            self.add_weight("bias", (f,), o["bias_initializer"], o["bias_regularizer"])

    def _middle_shape(self) -> Shape:
        """The depthwise step's output, per image: (OH, OW, C * depth_multiplier)."""
        oh, ow, _ = self.output_shape
        return (oh, ow, self.input_shape[2] * self.options["depth_multiplier"])

    def macs(self) -> int:
        kh, kw = self.options["kernel_size"]
        oh, ow, cm = self._middle_shape()
        return oh * ow * cm * (kh * kw + self.options["filters"])

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        middle = SavedArray(self._middle_shape())  # the pointwise step's input
        if self._activation_name() == "relu":  # fused into the kernel: one array for both
            return [middle, SavedArray(self.output_shape)]
        return [middle, SavedArray(self.output_shape), *self.activation_saved(last)]

    def kept_gradients(self, last: bool = False) -> list[SavedArray]:
        return [*super().kept_gradients(last), SavedArray(self._middle_shape())]  # dmiddle

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        x = np.ascontiguousarray(x)
        shape = (x.shape[0], *self._middle_shape())
        mid = self.workspace("middle", shape, x.dtype) if training else np.empty(shape, x.dtype)
        zero = np.zeros(shape[3], x.dtype)
        self._depthwise_forward(x, self.params["depthwise_kernel"], zero, mid, False)
        out = self._output(x, training)
        bias = self.params.get("bias")
        if bias is None:
            bias = np.zeros(self.options["filters"], x.dtype)
        fused = self._fuses_relu()
        conv2d_forward(mid, self.params["pointwise_kernel"], bias, 1, 1, 1, 1, 0, 0, out, fused)
        self._x, self._middle = x, mid
        return self._activated(out, fused)

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        dz = self._activation_backward(dy)
        pw, mid = self.params["pointwise_kernel"], self._middle
        dpw = self.workspace("dpointwise_kernel", pw.shape, pw.dtype)
        db = self.workspace("dbias", (pw.shape[3],), dz.dtype)
        conv2d_backward_weights(mid, dz, 1, 1, 1, 1, 0, 0, dpw, db)
        self.grads["pointwise_kernel"] = dpw
        if "bias" in self.params:
            self.grads["bias"] = db
        dmid = self.workspace("dmiddle", mid.shape, mid.dtype)
        conv2d_backward_input(dz, pw, 1, 1, 1, 1, 0, 0, dmid)
        dk_bias = self.workspace("ddepthwise_bias", (mid.shape[3],), mid.dtype)  # unused
        kernel = self.params["depthwise_kernel"]
        return self._depthwise_backward(self._x, dmid, kernel, "depthwise_kernel", dk_bias)

    def torch_twin(self, twin) -> None:
        """The depthwise nn.Conv2d (groups = in_channels, no bias), then a 1x1 nn.Conv2d."""
        self._torch_depthwise(twin, "depthwise_kernel", bias=False)
        _, _, cm, f = self.weights["pointwise_kernel"].shape
        use_bias = self.options["use_bias"]
        point = twin.nn.Conv2d(cm, f, 1, bias=use_bias)
        twin.add(point)
        twin.copy(self, "pointwise_kernel", point.weight, lambda a: a.transpose(3, 2, 0, 1))
        if use_bias:
            twin.copy(self, "bias", point.bias)
        twin.activation(self)
