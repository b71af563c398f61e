"""Each cnnkit layer as ONNX nodes, and each activation as cnnkit.nn.activations computes it.

Layout: an image tensor is NCHW inside the graph (ONNX's convolutions and pools), cnnkit's
(H, W, C) sample axes being ONNX axes (2, 3, 1); a flat tensor is (N, features) in both.
The channels are therefore ONNX axis 1 whatever the rank: softmax, BatchNormalization and a
Concatenate on the last axis use it. Flatten transposes back to NHWC first, so that its
features come in cnnkit's (H, W, C) order and a Dense kernel is used as it is stored.

Weights: a Conv2D kernel (kh, kw, C/groups, F) becomes ONNX's (F, C/groups, kh, kw); a
depthwise kernel (kh, kw, C, M) a grouped one with group = C, output channel c*M + m as in
Keras. `same` padding is explicit (pads), the odd extra row and column at the bottom and
right as Keras and TensorFlow; average pooling excludes the padding from its count as they do.
Dropout and SpatialDropout2D are identities in inference. Each layer's activation is its own
(the last layer's is skipped when it hands logits to the loss: the head is added after it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cnnkit.errors import SpecError
from cnnkit.export.graph import Graph
from cnnkit.nn.activations import SELU_ALPHA, SELU_SCALE
from cnnkit.nn.layers.base import Layer
from cnnkit.nn.layers.conv import Conv2D
from cnnkit.nn.layers.core import (
    Activation,
    Dense,
    Dropout,
    Flatten,
    LeakyReLU,
    Rescaling,
    SpatialDropout2D,
)
from cnnkit.nn.layers.depthwise import DepthwiseConv2D, SeparableConv2D
from cnnkit.nn.layers.merging import (
    Add,
    Average,
    Concatenate,
    Maximum,
    Minimum,
    Multiply,
    Subtract,
)
from cnnkit.nn.layers.normalization import BatchNormalization
from cnnkit.nn.layers.pooling import (
    AveragePooling2D,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
)
from cnnkit.nn.layers.reshaping import ZeroPadding2D

NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]
SQRT_HALF = float(np.float32(1.0 / np.sqrt(2.0)))


# -- activations -------------------------------------------------------------------------


def activation(g: Graph, name: str, x: str, base: str, negative_slope: float = 0.2) -> str:
    """cnnkit's activation `name` on x (cnnkit.nn.activations: its formulas and constants);
    the channels are axis 1 (softmax)."""
    single = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus"}
    if name == "linear":
        return x
    if name in single:
        return g.op(single[name], [x], base)
    if name == "softmax":
        return g.op("Softmax", [x], base, axis=1)
    if name == "leaky_relu":
        return g.op("LeakyRelu", [x], base, alpha=float(negative_slope))
    if name == "elu":
        return g.op("Elu", [x], base, alpha=1.0)
    if name == "selu":
        return g.op("Selu", [x], base, alpha=SELU_ALPHA, gamma=SELU_SCALE)
    if name == "hard_sigmoid":  # Keras 3: clip(x / 6 + 1/2, 0, 1)
        return g.op("HardSigmoid", [x], base, alpha=1.0 / 6.0, beta=0.5)
    if name in ("swish", "silu"):  # x * sigmoid(x)
        return g.op("Mul", [x, g.op("Sigmoid", [x], base)], base)
    if name == "gelu":  # exact (Keras 3's default): x/2 (1 + erf(x / sqrt 2)); Gelu is opset 20
        erf = g.op("Erf", [g.op("Mul", [x, g.const(f"{base}/sqrt_half", SQRT_HALF)], base)], base)
        one_plus = g.op("Add", [erf, g.const(f"{base}/one", 1.0)], base)
        return g.op("Mul", [g.op("Mul", [x, g.const(f"{base}/half", 0.5)], base), one_plus], base)
    raise SpecError(f"the activation {name!r} has no ONNX form in this cnnkit", where=base)


def _activated(g: Graph, layer: Layer, x: str, base: str) -> str:
    """The layer's own activation, unless it hands logits to the loss (the model's head)."""
    if getattr(layer, "returns_logits", False):
        return x
    return activation(g, layer._activation_name(), x, base, **layer._activation_kwargs())


# -- convolutions ------------------------------------------------------------------------


def _pads(layer: Layer, kernel, strides, dilation=(1, 1)) -> list[int]:
    """ONNX pads [top, left, bottom, right] of a window layer: its own top and left, the rest
    of Keras' `same` total at the bottom and right (none for `valid`)."""
    if layer.options["padding"] == "valid":
        return [0, 0, 0, 0]
    (h, w), (oh, ow) = layer.input_shape[:2], layer.output_shape[:2]
    sh, sw = strides
    total_h = max((oh - 1) * sh + (kernel[0] - 1) * dilation[0] + 1 - h, 0)
    total_w = max((ow - 1) * sw + (kernel[1] - 1) * dilation[1] + 1 - w, 0)
    return [layer.pad_top, layer.pad_left, total_h - layer.pad_top, total_w - layer.pad_left]


def _conv(g: Graph, layer: Layer, x: str, kernel: np.ndarray, bias, group: int, base: str):
    """One ONNX Conv with the layer's window; kernel already (F, C/group, kh, kw)."""
    kernel_size = [int(kernel.shape[2]), int(kernel.shape[3])]
    strides = [int(s) for s in layer.options["strides"]]
    dilation = [int(d) for d in layer.options["dilation_rate"]]
    inputs = [x, g.const(f"{base}/kernel", kernel)]
    if bias is not None:
        inputs.append(g.const(f"{base}/bias", bias))
    return g.op(
        "Conv",
        inputs,
        base,
        kernel_shape=kernel_size,
        strides=strides,
        dilations=dilation,
        pads=_pads(layer, kernel_size, strides, dilation),
        group=group,
    )


def _depthwise_kernel(kernel: np.ndarray) -> np.ndarray:
    """(kh, kw, C, M) -> ONNX (C*M, 1, kh, kw): output channel c*M + m."""
    kh, kw, c, m = kernel.shape
    return kernel.reshape(kh, kw, 1, c * m).transpose(3, 2, 0, 1)


def conv2d(g: Graph, layer: Conv2D, xs: list[str], base: str) -> str:
    kernel = layer.params["kernel"].transpose(3, 2, 0, 1)
    z = _conv(g, layer, xs[0], kernel, layer.params.get("bias"), layer.options["groups"], base)
    return _activated(g, layer, z, base)


def depthwise_conv2d(g: Graph, layer: DepthwiseConv2D, xs: list[str], base: str) -> str:
    kernel = _depthwise_kernel(layer.params["kernel"])
    channels = layer.input_shape[2]
    z = _conv(g, layer, xs[0], kernel, layer.params.get("bias"), channels, base)
    return _activated(g, layer, z, base)


def separable_conv2d(g: Graph, layer: SeparableConv2D, xs: list[str], base: str) -> str:
    """The depthwise step (the layer's window, no bias), then a 1x1 Conv with the bias."""
    kernel = _depthwise_kernel(layer.params["depthwise_kernel"])
    mid = _conv(g, layer, xs[0], kernel, None, layer.input_shape[2], f"{base}/depthwise")
    inputs = [
        mid,
        g.const(f"{base}/pointwise", layer.params["pointwise_kernel"].transpose(3, 2, 0, 1)),
    ]
    if "bias" in layer.params:
        inputs.append(g.const(f"{base}/bias", layer.params["bias"]))
    z = g.op("Conv", inputs, f"{base}/pointwise", kernel_shape=[1, 1])
    return _activated(g, layer, z, base)


# -- the other layers with weights ---------------------------------------------------------


def dense(g: Graph, layer: Dense, xs: list[str], base: str) -> str:
    kernel = g.const(f"{base}/kernel", layer.params["kernel"])
    if "bias" in layer.params:
        z = g.op("Gemm", [xs[0], kernel, g.const(f"{base}/bias", layer.params["bias"])], base)
    else:
        z = g.op("MatMul", [xs[0], kernel], base)
    return _activated(g, layer, z, base)


def batch_normalization(g: Graph, layer: BatchNormalization, xs: list[str], base: str) -> str:
    """ONNX BatchNormalization (channels: axis 1) with the moving statistics and Keras'
    epsilon; gamma 1 without scale, beta 0 without center."""
    c = layer.input_shape[-1]
    gamma = layer.params.get("gamma", np.ones(c, np.float32))
    beta = layer.params.get("beta", np.zeros(c, np.float32))
    inputs = [
        xs[0],
        g.const(f"{base}/gamma", gamma),
        g.const(f"{base}/beta", beta),
        g.const(f"{base}/moving_mean", layer.state["moving_mean"]),
        g.const(f"{base}/moving_variance", layer.state["moving_variance"]),
    ]
    return g.op("BatchNormalization", inputs, base, epsilon=float(layer.options["epsilon"]))


# -- pooling -----------------------------------------------------------------------------


def _window(layer: MaxPooling2D | AveragePooling2D) -> dict:
    size = [int(p) for p in layer.options["pool_size"]]
    strides = [int(s) for s in layer.strides]
    return {"kernel_shape": size, "strides": strides, "pads": _pads(layer, size, strides)}


def max_pooling2d(g: Graph, layer: MaxPooling2D, xs: list[str], base: str) -> str:
    return g.op("MaxPool", xs, base, **_window(layer))  # padding never wins a maximum


def average_pooling2d(g: Graph, layer: AveragePooling2D, xs: list[str], base: str) -> str:
    # count_include_pad 0, as Keras: the mean of the in-range values only
    return g.op("AveragePool", xs, base, count_include_pad=0, **_window(layer))


def _flat(g: Graph, x: str, base: str) -> str:
    return g.op("Flatten", [x], base, axis=1)


def _global(op_type: str) -> Callable[[Graph, Layer, list[str], str], str]:
    def convert(g: Graph, layer: Layer, xs: list[str], base: str) -> str:
        pooled = g.op(op_type, xs, base)  # (N, C, 1, 1): cnnkit's (1, 1, C) with keepdims
        return pooled if layer.options["keepdims"] else _flat(g, pooled, base)

    return convert


# -- reshaping and element-wise ------------------------------------------------------------


def flatten(g: Graph, layer: Flatten, xs: list[str], base: str) -> str:
    """cnnkit's (H, W, C) order: back to NHWC, then flat."""
    if len(layer.input_shape) != 3:
        return _flat(g, xs[0], base)
    return _flat(g, g.op("Transpose", xs, base, perm=NCHW_TO_NHWC), base)


def identity(g: Graph, layer: Layer, xs: list[str], base: str) -> str:
    return xs[0]


def activation_layer(g: Graph, layer: Layer, xs: list[str], base: str) -> str:
    return _activated(g, layer, xs[0], base)


def rescaling(g: Graph, layer: Rescaling, xs: list[str], base: str) -> str:
    scaled = g.op("Mul", [xs[0], g.const(f"{base}/scale", layer.options["scale"])], base)
    return g.op("Add", [scaled, g.const(f"{base}/offset", layer.options["offset"])], base)


def zero_padding2d(g: Graph, layer: ZeroPadding2D, xs: list[str], base: str) -> str:
    (top, bottom), (left, right) = layer.options["padding"]
    pads = g.const(f"{base}/pads", [0, 0, top, left, 0, 0, bottom, right], np.int64)
    return g.op("Pad", [xs[0], pads], base, mode="constant")


def _chain(op_type: str) -> Callable[[Graph, Layer, list[str], str], str]:
    """((a op b) op c) ...: the order cnnkit's reduce uses."""

    def convert(g: Graph, layer: Layer, xs: list[str], base: str) -> str:
        out = xs[0]
        for x in xs[1:]:
            out = g.op(op_type, [out, x], base)
        return out

    return convert


def average(g: Graph, layer: Average, xs: list[str], base: str) -> str:
    total = _chain("Add")(g, layer, xs, base)
    return g.op("Mul", [total, g.const(f"{base}/share", 1.0 / len(xs))], base)


def _variadic(op_type: str) -> Callable[[Graph, Layer, list[str], str], str]:
    def convert(g: Graph, layer: Layer, xs: list[str], base: str) -> str:
        return g.op(op_type, xs, base)

    return convert


def concatenate(g: Graph, layer: Concatenate, xs: list[str], base: str) -> str:
    """cnnkit's sample axis (H, W, C: 0, 1, 2) as the NCHW axis (2, 3, 1); flat: 1."""
    rank = len(layer.output_shape)
    sample_axis = layer._axis(rank, [])
    axis = (2, 3, 1)[sample_axis] if rank == 3 else sample_axis + 1
    return g.op("Concat", xs, base, axis=axis)


Converter = Callable[[Graph, Layer, list[str], str], str]

# by exact class: a subclass (SpatialDropout2D of Dropout) is listed on its own
CONVERTERS: dict[type[Layer], Converter] = {
    Conv2D: conv2d,
    DepthwiseConv2D: depthwise_conv2d,
    SeparableConv2D: separable_conv2d,
    Dense: dense,
    Flatten: flatten,
    Dropout: identity,
    SpatialDropout2D: identity,
    Activation: activation_layer,
    LeakyReLU: activation_layer,
    Rescaling: rescaling,
    BatchNormalization: batch_normalization,
    MaxPooling2D: max_pooling2d,
    AveragePooling2D: average_pooling2d,
    GlobalAveragePooling2D: _global("GlobalAveragePool"),
    GlobalMaxPooling2D: _global("GlobalMaxPool"),
    ZeroPadding2D: zero_padding2d,
    Add: _chain("Add"),
    Subtract: _chain("Sub"),
    Multiply: _chain("Mul"),
    Average: average,
    Maximum: _variadic("Max"),
    Minimum: _variadic("Min"),
    Concatenate: concatenate,
}


def convert_layer(g: Graph, layer: Layer, xs: list[str], base: str) -> str:
    """The layer's nodes reading the tensors xs (one per input); returns its output's name."""
    converter = CONVERTERS.get(type(layer))
    if converter is None:
        raise SpecError(
            f"{layer.keras_name} has no ONNX conversion yet",
            where=layer.where,
            hint="Every layer cnnkit has is meant to export: please report it.",
        )
    return converter(g, layer, xs, base)
