"""Conv2D: 2-D convolution over NHWC inputs with (kh, kw, in_channels, filters) kernels."""

from __future__ import annotations

import numpy as np

from cnnkit.kernels.nojit import conv_output_size, lazy
from cnnkit.nn.layers.base import ActivationMixin, KernelBiasMixin, Layer, SavedArray, Shape
from cnnkit.options import Option

# numba is imported on the first call, not when a spec is checked (cnnkit.kernels.nojit)
conv2d_backward_input, conv2d_backward_weights, conv2d_forward = lazy(
    "cnnkit.kernels.conv", "conv2d_backward_input", "conv2d_backward_weights", "conv2d_forward"
)
(relu_backward_into,) = lazy("cnnkit.kernels.activations", "relu_backward_into")


class Conv2D(KernelBiasMixin, ActivationMixin, Layer):
    type_name = "conv2d"
    keras_name = "Conv2D"
    aliases = ("convolution2d", "Convolution2D")
    OPTIONS = {
        "filters": Option("int", minimum=1, doc="number of output channels, e.g. 32"),
        "kernel_size": Option("int_or_pair", minimum=1, doc="e.g. 3 or [3, 3]"),
        "strides": Option("int_or_pair", default=[1, 1], minimum=1),
        "padding": Option("str", default="valid", choices=("valid", "same")),
        "dilation_rate": Option("int_or_pair", default=[1, 1], minimum=1),
        **KernelBiasMixin.WEIGHT_OPTIONS,
    }

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return self._geometry(input_shape)[0]

    def _geometry(self, input_shape: Shape) -> tuple[Shape, int, int]:
        """(output shape, pad_top, pad_left) for this input shape."""
        if len(input_shape) != 3:
            raise self.shape_error(
                input_shape,
                "needs an image-shaped input (height, width, channels)",
                hint="Put Conv2D before Flatten/Dense, and give model.input_shape as [H, W, C].",
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
        return (oh, ow, self.options["filters"]), pad_top, pad_left

    def build(self, input_shape: Shape) -> None:
        _, self.pad_top, self.pad_left = self._geometry(input_shape)
        kh, kw = self.options["kernel_size"]
        self.add_kernel_and_bias((kh, kw, input_shape[2], self.options["filters"]))

    def macs(self) -> int:
        kh, kw = self.options["kernel_size"]
        oh, ow, f = self.output_shape
        return oh * ow * f * kh * kw * self.input_shape[2]

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        if self._activation_name() == "relu":  # fused into the kernel: one array for both
            return [SavedArray(self.output_shape)]
        return super().saved_arrays(training, last)

    def _bias(self, dtype) -> np.ndarray:
        bias = self.params.get("bias")
        return bias if bias is not None else np.zeros(self.options["filters"], dtype)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        (sh, sw), (dh, dw) = self.options["strides"], self.options["dilation_rate"]
        w = self.params["kernel"]
        x = np.ascontiguousarray(x)  # what the kernels read (a no-op for the usual input)
        shape = (x.shape[0], *self.output_shape)
        # training reuses the layer's output array from step to step (the training loop makes
        # no large allocation per step); inference returns a fresh array the caller may keep
        out = self.workspace("out", shape, x.dtype) if training else np.empty(shape, x.dtype)
        # relu fused into the kernel (one pass less over the output); relu's backward needs
        # only where the output is positive, which the fused output tells as well as z.
        fused = self._activation_name() == "relu" and not self.returns_logits
        conv2d_forward(
            x, w, self._bias(x.dtype), sh, sw, dh, dw, self.pad_top, self.pad_left, out, fused
        )
        self._x = x
        self._fused = fused
        if fused:
            self._z = self._a = out
            return out
        return self.activate(out)

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        if self._fused:
            dz = self.workspace("dz", dy.shape, dy.dtype)
            relu_backward_into(
                np.ascontiguousarray(dy).reshape(-1), self._a.reshape(-1), dz.reshape(-1)
            )
        else:
            dz = np.ascontiguousarray(self.activate_backward(dy))
        (sh, sw), (dh, dw) = self.options["strides"], self.options["dilation_rate"]
        w, x = self.params["kernel"], self._x
        dw_out = self.workspace("dkernel", w.shape, w.dtype)
        db_out = self.workspace("dbias", (w.shape[3],), x.dtype)
        conv2d_backward_weights(x, dz, sh, sw, dh, dw, self.pad_top, self.pad_left, dw_out, db_out)
        self.grads["kernel"] = dw_out
        if "bias" in self.params:
            self.grads["bias"] = db_out
        if not self.needs_input_grad:
            return None
        dx = self.workspace("dx", x.shape, x.dtype)
        conv2d_backward_input(dz, w, sh, sw, dh, dw, self.pad_top, self.pad_left, dx)
        return dx

    def torch_twin(self, twin) -> None:
        """nn.Conv2d with the kernel transposed to (filters, channels, kh, kw); an asymmetric
        `same` padding (extra row or column at the bottom or right, as Keras and TensorFlow)
        becomes an explicit nn.ZeroPad2d, which Conv2d's own padding cannot express."""
        kh, kw, c, f = self.weights["kernel"].shape
        h, w, _ = self.input_shape
        oh, ow, _ = self.output_shape
        (sh, sw), (dh, dw) = self.options["strides"], self.options["dilation_rate"]
        pad_b = max((oh - 1) * sh + (kh - 1) * dh + 1 - h, 0) - self.pad_top
        pad_r = max((ow - 1) * sw + (kw - 1) * dw + 1 - w, 0) - self.pad_left
        if self.options["padding"] == "valid":
            pad_b = pad_r = 0
        padding = (self.pad_top, self.pad_left)
        if (pad_b, pad_r) != padding:
            twin.add(twin.nn.ZeroPad2d((self.pad_left, pad_r, self.pad_top, pad_b)))
            padding = (0, 0)
        use_bias = self.options["use_bias"]
        conv = twin.nn.Conv2d(c, f, (kh, kw), (sh, sw), padding, (dh, dw), bias=use_bias)
        twin.add(conv)
        twin.copy(self, "kernel", conv.weight, lambda a: a.transpose(3, 2, 0, 1))
        if use_bias:
            twin.copy(self, "bias", conv.bias)
        twin.activation(self)
