"""Each layer's ONNX nodes (cnnkit.export.layers) against the layer's own forward, run by
onnxruntime: every sample of the layer contract's table (tests/nn/layers/test_base.py SAMPLES,
so a new layer or sample is covered here the day it is added), with random weights and
BatchNormalization statistics, and every activation cnnkit has over a range that reaches
their overflow-prone tails."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from onnx import TensorProto  # noqa: E402
from onnx import helper as onnx_helper  # noqa: E402

from cnnkit.errors import SpecError  # noqa: E402
from cnnkit.export.graph import Graph  # noqa: E402
from cnnkit.export.layers import CONVERTERS, activation, convert_layer  # noqa: E402
from cnnkit.export.verify import session  # noqa: E402
from cnnkit.nn.activations import ACTIVATIONS  # noqa: E402
from cnnkit.nn.layers import ALL_LAYERS  # noqa: E402
from cnnkit.nn.layers.core import Activation, LeakyReLU  # noqa: E402
from cnnkit.nn.layers.normalization import BatchNormalization  # noqa: E402
from cnnkit.options import resolve_options  # noqa: E402
from tests.nn.layers.test_base import CASES, as32, sample_input  # noqa: E402

TOL = 2e-5  # float32: onnxruntime's kernels sum in another order than cnnkit's


def onnx_layout(x: np.ndarray) -> np.ndarray:
    """cnnkit's NHWC image batch as the graph's NCHW (a flat batch as it is)."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


def run_layer(layer, xs: list[np.ndarray], opset: int = 17) -> np.ndarray:
    """The layer's nodes alone, inputs x0, x1, ... in the graph's layout, output back in
    cnnkit's."""
    g = Graph(opset)
    names = [g.reserve(f"x{i}") for i in range(len(xs))]
    out = convert_layer(g, layer, names, "layer")
    g.op("Identity", [out], "y", output=g.reserve("y"))
    ins = [
        onnx_helper.make_tensor_value_info(n, TensorProto.FLOAT, list(onnx_layout(x).shape))
        for n, x in zip(names, xs, strict=True)
    ]
    outs = [onnx_helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = onnx_helper.make_graph(g.nodes, "layer", ins, outs, g.initializers)
    proto = onnx_helper.make_model(graph, opset_imports=[onnx_helper.make_opsetid("", opset)])
    proto.ir_version = 8
    feed = {n: onnx_layout(x) for n, x in zip(names, xs, strict=True)}
    y = session(proto.SerializeToString()).run(None, feed)[0]
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y


def random_layer(cls, options: dict, input_shape, seed: int = 1):
    """A float32 layer with random weights, and random moving statistics for
    BatchNormalization (its initial ones, mean 0 and variance 1, would hide a swap)."""
    layer = cls(resolve_options(options, cls.OPTIONS, "test"), index=0)
    layer.infer_shape(input_shape)
    rng = np.random.default_rng(seed)
    layer.create_weights(rng, np.dtype(np.float32))
    for array in layer.params.values():
        array[...] = rng.standard_normal(array.shape) * 0.5
    if isinstance(layer, BatchNormalization):
        layer.state["moving_mean"][...] = rng.standard_normal(input_shape[-1])
        layer.state["moving_variance"][...] = rng.uniform(0.2, 3.0, input_shape[-1])
    return layer


@pytest.mark.parametrize("cls, sample", CASES)
def test_every_layer_sample_matches_its_forward(cls, sample):
    layer = random_layer(cls, sample.options, sample.input_shape)
    x = as32(sample_input(sample, batch=3, seed=4))
    xs = x if isinstance(x, list) else [x]
    expected = layer.forward(x, training=False)
    np.testing.assert_allclose(run_layer(layer, xs), expected, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("cls", ALL_LAYERS, ids=lambda cls: cls.keras_name)
def test_every_layer_has_a_converter(cls):
    assert cls in CONVERTERS, f"{cls.keras_name} has no ONNX conversion (cnnkit.export.layers)"


@pytest.mark.parametrize(
    "options, shape",
    [
        # rows: 4 outputs, 3 rows of padding in all (1 top, 2 bottom)
        (
            {"filters": 4, "kernel_size": 3, "dilation_rate": 2, "strides": 2, "padding": "same"},
            (8, 7, 2),
        ),
        # one row and one column of padding in all: bottom and right only
        ({"filters": 3, "kernel_size": [4, 3], "strides": [3, 2], "padding": "same"}, (9, 8, 2)),
        ({"filters": 4, "kernel_size": 2, "strides": 2, "padding": "same", "groups": 2}, (5, 5, 4)),
    ],
    ids=["dilated-strided", "even-kernel", "grouped-strided"],
)
def test_conv2d_same_padding_puts_the_extra_row_and_column_bottom_right(options, shape):
    """The cases where Keras' `same` pads unevenly, with dilation and groups."""
    from cnnkit.nn.layers.conv import Conv2D

    layer = random_layer(Conv2D, {**options, "activation": "linear"}, shape)
    x = np.random.default_rng(2).standard_normal((2, *shape)).astype(np.float32)
    np.testing.assert_allclose(run_layer(layer, [x]), layer.forward(x, False), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("padding, pool", [("same", 3), ("same", 2), ("valid", 3)])
@pytest.mark.parametrize("kind", ["MaxPooling2D", "AveragePooling2D"])
def test_pooling_windows_and_padding(kind, padding, pool):
    """5x7 with strides 2: `same` pads unevenly; the average excludes the padding."""
    from cnnkit.nn.layers import pooling

    cls = getattr(pooling, kind)
    layer = random_layer(cls, {"pool_size": pool, "strides": 2, "padding": padding}, (5, 7, 3))
    x = np.random.default_rng(3).permutation(2 * 5 * 7 * 3).reshape(2, 5, 7, 3)
    x = (x - 100).astype(np.float32) * 0.01
    np.testing.assert_allclose(run_layer(layer, [x]), layer.forward(x, False), rtol=TOL, atol=TOL)


# values from -40 to 40 with 0 itself: sigmoid's and softplus' tails, elu's and selu's kink
WIDE = np.concatenate([np.linspace(-40, 40, 47), [0.0]]).astype(np.float32)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("image", [True, False], ids=["image", "flat"])
def test_every_activation_matches_cnnkits_formula(name, image):
    shape = (2, 4, 6) if image else (12,)
    x = np.resize(WIDE, (4, *shape)).astype(np.float32)
    layer = random_layer(Activation, {"activation": name}, shape)
    expected = layer.forward(x, training=False)
    np.testing.assert_allclose(run_layer(layer, [x]), expected, rtol=1e-5, atol=1e-6)


def test_leaky_relu_layer_keeps_its_slope():
    layer = random_layer(LeakyReLU, {"negative_slope": 0.05}, (8,))
    x = np.resize(WIDE, (3, 8)).astype(np.float32)
    np.testing.assert_allclose(run_layer(layer, [x]), layer.forward(x, False), rtol=1e-6)


def test_an_activation_without_an_onnx_form_is_a_clear_error():
    with pytest.raises(SpecError, match="'mish' has no ONNX form"):
        activation(Graph(17), "mish", "x", "layer")


def test_a_layer_without_a_converter_is_a_clear_error(monkeypatch):
    layer = random_layer(LeakyReLU, {}, (4,))
    monkeypatch.delitem(CONVERTERS, LeakyReLU)
    with pytest.raises(SpecError, match="LeakyReLU has no ONNX conversion"):
        convert_layer(Graph(17), layer, ["x"], "leaky")
