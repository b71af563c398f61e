"""The layer contract (cnnkit.nn.layers.base), checked on every registered layer.

Each layer in ALL_LAYERS needs at least one sample below (a new layer without one fails
test_every_layer_has_a_sample): its options, an input shape, and its parameter count by
Keras' formula, worked out by hand. Every sample is then put through the same checks:
pure shape inference that forward agrees with, float64 finite-difference gradients of the
input and of every trainable weight (inference and training mode), the save/load round trip
of its weights under their checkpoint keys, Keras' parameter count, the arrays it declares
for the memory plan against those a real forward keeps, and its PyTorch twin (when it has
one and PyTorch is installed) against its own forward.

The per-layer files (test_conv.py, test_pooling.py, ...) check what is particular to a
layer over many more shapes and options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from cnnkit.errors import CnnkitError
from cnnkit.nn.layers import ALL_LAYERS
from cnnkit.nn.layers.base import ActivationMixin
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
from cnnkit.nn.model import Model
from cnnkit.options import resolve_options
from tests.nn.gradcheck import (
    away_from_zero,
    check_layer_gradients,
    distinct_values,
    make_layer,
    reseed,
)


@dataclass
class Sample:
    options: dict[str, Any]
    input_shape: tuple[int, ...]
    keras_params: int  # Keras' "Param #" (trainable + non-trainable), by its formula
    keras_non_trainable: int = 0
    inputs: Any = field(default=away_from_zero)  # (rng, shape) -> x: kinks and ties out of reach
    # a merge layer's input_shape is the list of its inputs' shapes


# Keras' formulas: Conv2D kh*kw*(c_in/groups)*filters (+ filters with use_bias);
# DepthwiseConv2D kh*kw*c_in*depth_multiplier (+ c_in*depth_multiplier); SeparableConv2D
# kh*kw*c_in*depth_multiplier + c_in*depth_multiplier*filters (+ filters); Dense n_in*units
# (+ units); BatchNormalization 4*C (gamma, beta trainable; moving_mean, moving_variance
# non-trainable, 2*C), less C for each of scale/center off; every other layer here 0.
SAMPLES: dict[type, list[Sample]] = {
    Conv2D: [
        Sample(
            {"filters": 3, "kernel_size": [3, 2], "activation": "tanh"},
            (5, 6, 2),
            3 * 2 * 2 * 3 + 3,
        ),
        Sample(
            {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same", "use_bias": False},
            (5, 4, 3),
            3 * 3 * 3 * 2,
        ),
        Sample(
            {"filters": 6, "kernel_size": 3, "groups": 2, "padding": "same", "activation": "relu"},
            (5, 4, 4),
            3 * 3 * (4 // 2) * 6 + 6,
        ),
        Sample(
            {"filters": 3, "kernel_size": [2, 3], "groups": 3, "strides": 2, "use_bias": False},
            (6, 7, 6),
            2 * 3 * (6 // 3) * 3,
        ),
    ],
    DepthwiseConv2D: [
        Sample({"kernel_size": 3, "depth_multiplier": 2}, (5, 6, 8), 3 * 3 * 8 * 2 + 8 * 2),
        Sample(
            {"kernel_size": [3, 2], "strides": 2, "padding": "same", "activation": "tanh"},
            (6, 5, 3),
            3 * 2 * 3 * 1 + 3,
        ),
        Sample(
            {"kernel_size": 3, "dilation_rate": 2, "use_bias": False, "activation": "relu"},
            (6, 7, 2),
            3 * 3 * 2,
        ),
    ],
    SeparableConv2D: [
        Sample(
            {"filters": 4, "kernel_size": 3, "depth_multiplier": 2, "activation": "tanh"},
            (5, 6, 3),
            3 * 3 * 3 * 2 + 3 * 2 * 4 + 4,
        ),
        Sample(
            {
                "filters": 5,
                "kernel_size": [2, 3],
                "strides": 2,
                "padding": "same",
                "use_bias": False,
                "activation": "relu",
            },
            (6, 5, 2),
            2 * 3 * 2 * 1 + 2 * 1 * 5,
        ),
    ],
    Dense: [
        Sample({"units": 4, "activation": "sigmoid"}, (5,), 5 * 4 + 4),
        Sample({"units": 3, "use_bias": False}, (6,), 6 * 3),
    ],
    Flatten: [Sample({}, (3, 4, 2), 0)],
    Dropout: [Sample({"rate": 0.5}, (4, 5, 2), 0)],
    SpatialDropout2D: [Sample({"rate": 0.4}, (3, 4, 5), 0)],
    Activation: [Sample({"activation": "tanh"}, (3, 4, 2), 0)],
    LeakyReLU: [Sample({}, (6,), 0)],
    Rescaling: [
        Sample({"scale": 1 / 255}, (3, 4, 2), 0),
        Sample({"scale": 2.0, "offset": -1.0}, (5,), 0),
    ],
    BatchNormalization: [
        Sample({}, (3, 4, 3), 4 * 3, keras_non_trainable=2 * 3),
        Sample({"center": False}, (5,), 3 * 5, keras_non_trainable=2 * 5),
    ],
    MaxPooling2D: [Sample({"pool_size": 2}, (5, 4, 2), 0, inputs=distinct_values)],
    AveragePooling2D: [Sample({"pool_size": [2, 3], "strides": 1}, (4, 5, 2), 0)],
    GlobalAveragePooling2D: [Sample({}, (3, 4, 3), 0)],
    GlobalMaxPooling2D: [Sample({"keepdims": True}, (3, 4, 3), 0, inputs=distinct_values)],
    ZeroPadding2D: [
        Sample({}, (3, 4, 2), 0),
        Sample({"padding": [[1, 0], [2, 3]]}, (2, 3, 1), 0),
    ],
    # merges: no weights; element-wise ones broadcast axes of size 1, as Keras'
    Add: [
        Sample({}, [(3, 4, 2), (3, 4, 2), (3, 4, 2)], 0),
        Sample({}, [(3, 4, 2), (1, 1, 2)], 0),
    ],
    Subtract: [Sample({}, [(3, 4, 2), (3, 4, 2)], 0)],
    Multiply: [Sample({}, [(5,), (5,), (5,)], 0), Sample({}, [(2, 3, 2), (2, 3, 1)], 0)],
    Average: [Sample({}, [(2, 3, 2), (2, 3, 2)], 0)],
    Maximum: [Sample({}, [(2, 3, 2), (2, 3, 2), (2, 3, 2)], 0, inputs=distinct_values)],
    Minimum: [Sample({}, [(4,), (4,)], 0, inputs=distinct_values)],
    Concatenate: [
        Sample({}, [(3, 4, 2), (3, 4, 3)], 0),
        Sample({"axis": 1}, [(2, 3, 2), (1, 3, 2)], 0),
        Sample({"axis": -1}, [(4,), (2,), (3,)], 0),
    ],
}

CASES = [
    pytest.param(cls, sample, id=f"{cls.keras_name}-{i}")
    for cls in ALL_LAYERS
    for i, sample in enumerate(SAMPLES.get(cls, []))
]
BATCH = 3


def sample_input(sample: Sample, batch: int = BATCH, seed: int = 5) -> Any:
    """The batch for the sample's layer: an array, or a merge layer's list of arrays (the
    inputs drawn as one array, so that distinct_values stays distinct across them)."""
    rng = np.random.default_rng(seed)
    if not isinstance(sample.input_shape, list):
        return sample.inputs(rng, (batch, *sample.input_shape))
    sizes = [int(np.prod(s)) for s in sample.input_shape]
    flat = sample.inputs(rng, (batch, sum(sizes)))
    parts = np.split(flat, np.cumsum(sizes)[:-1], axis=1)
    return [p.reshape(batch, *s) for p, s in zip(parts, sample.input_shape, strict=True)]


def as32(x: Any) -> Any:
    return [a.astype(np.float32) for a in x] if isinstance(x, list) else x.astype(np.float32)


@pytest.mark.parametrize("cls", ALL_LAYERS, ids=lambda cls: cls.keras_name)
def test_every_layer_has_a_sample(cls):
    assert SAMPLES.get(cls), f"add a sample of {cls.keras_name} to SAMPLES (tests/nn/layers)"


@pytest.mark.parametrize("cls, sample", CASES)
def test_shape_inference_is_pure_and_forward_agrees(cls, sample):
    layer = cls(resolve_options(sample.options, cls.OPTIONS, "test"), index=0)
    before = dict(vars(layer))
    shape = layer.compute_output_shape(sample.input_shape)
    assert vars(layer) == before, "compute_output_shape must not set anything"
    assert layer.infer_shape(sample.input_shape) == shape == layer.output_shape
    assert layer.compute_output_shape(sample.input_shape) == shape
    assert not layer.params and not layer.state, "build declares weights, allocates none"
    layer.create_weights(np.random.default_rng(0), np.dtype(np.float32))
    layer.rng = np.random.default_rng(0)  # Dropout's, set by the model
    for training in (False, True):
        y = layer.forward(as32(sample_input(sample)), training)
        assert y.shape == (BATCH, *shape) and y.dtype == np.float32


@pytest.mark.parametrize("cls, sample", CASES)
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_finite_difference_gradients(cls, sample, training):
    layer = make_layer(cls, sample.options, sample.input_shape)
    assert set(layer.params) == set(layer.param_shapes())
    check_layer_gradients(layer, sample_input(sample), training=training, before_forward=reseed)


@pytest.mark.parametrize("cls, sample", CASES)
def test_weights_round_trip_through_a_checkpoint(cls, sample, tmp_path):
    if cls.merges:
        pytest.skip("a merge layer has no weights (graphs: tests/nn/test_model.py)")

    def model(seed: int) -> Model:
        layer = cls(resolve_options(sample.options, cls.OPTIONS, "test"), index=0)
        layer.infer_shape(sample.input_shape)
        return Model([layer], sample.input_shape).build(seed)

    trained, fresh = model(0), model(1)
    x = sample_input(sample).astype(np.float32)
    for _ in range(2):  # moves BatchNormalization's moving statistics
        trained.forward(x, training=True)
    weights = trained.named_weights()
    assert sorted(weights) == sorted(f"layers.0.{name}" for name in trained.layers[0].weights)
    path = tmp_path / "weights.npz"
    np.savez(path, **weights)
    with np.load(path, allow_pickle=False) as saved:
        fresh.load_params({k: saved[k] for k in saved.files}, str(path))
    for key, array in weights.items():
        np.testing.assert_array_equal(fresh.named_weights()[key], array)
    np.testing.assert_array_equal(fresh.forward(x), trained.forward(x))


@pytest.mark.parametrize("cls, sample", CASES)
def test_keras_parameter_count(cls, sample):
    layer = make_layer(cls, sample.options, sample.input_shape)
    (row,) = Model([layer], sample.input_shape).summary_rows()
    assert (row.params, row.non_trainable) == (sample.keras_params, sample.keras_non_trainable)
    assert row.type == cls.keras_name and row.name == cls.type_name


def kept_bytes(layer, x: np.ndarray, training: bool) -> int:
    """Bytes of the distinct arrays `layer` keeps after its forward (output and attributes),
    its input not counted."""
    y = layer.forward(x, training)
    counted, total = list(x) if isinstance(x, list) else [x], 0
    for array in (y, *vars(layer).values()):
        if isinstance(array, np.ndarray) and not any(np.shares_memory(array, c) for c in counted):
            counted.append(array)
            total += array.nbytes
    return total


@pytest.mark.parametrize("cls, sample", CASES)
@pytest.mark.parametrize("last", [False, True], ids=["inner", "last"])
def test_declared_saved_arrays_are_what_forward_keeps(cls, sample, last):
    layer = cls(resolve_options(sample.options, cls.OPTIONS, "test"), index=0)
    layer.infer_shape(sample.input_shape)
    layer.create_weights(np.random.default_rng(0), np.dtype(np.float32))
    layer.rng = np.random.default_rng(0)
    if last and isinstance(layer, ActivationMixin) and layer.fuses_head():
        layer.returns_logits = True  # as Model.from_configs makes the last layer
    for training in (False, True):
        # per image: the difference of two batch sizes (what does not scale cancels)
        small, large = (kept_bytes(layer, as32(sample_input(sample, n)), training) for n in (2, 5))
        declared = sum(
            int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
            for a in layer.saved_arrays(training, last=last)
        )
        assert (large - small) / 3 == declared, f"training={training}"


def workspace_bytes(layer) -> int:
    return sum(a.nbytes for a in vars(layer).get("_workspaces", {}).values())


@pytest.mark.parametrize("cls, sample", CASES)
@pytest.mark.parametrize("last", [False, True], ids=["inner", "last"])
def test_declared_kept_gradients_are_the_workspaces_backward_adds(cls, sample, last):
    """Per image, the workspaces a training step's backward adds to the forward's (weight
    gradients do not scale with the batch and cancel) are what kept_gradients declares."""
    per_batch = []
    for n in (2, 5):
        layer = cls(resolve_options(sample.options, cls.OPTIONS, "test"), index=0)
        layer.infer_shape(sample.input_shape)
        layer.create_weights(np.random.default_rng(0), np.dtype(np.float32))
        layer.rng = np.random.default_rng(0)
        if last and isinstance(layer, ActivationMixin) and layer.fuses_head():
            layer.returns_logits = True
        y = layer.forward(as32(sample_input(sample, n)), True)
        before = workspace_bytes(layer)
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
        layer.backward(dy)
        per_batch.append(workspace_bytes(layer) - before)
    declared = sum(
        int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in layer.kept_gradients(last)
    )
    assert (per_batch[1] - per_batch[0]) / 3 == declared


@pytest.mark.parametrize("cls, sample", CASES)
def test_torch_twin_computes_the_same_function(cls, sample):
    torch = pytest.importorskip("torch")
    from cnnkit.bench_torch import TwinBuilder

    layer = make_layer(cls, sample.options, sample.input_shape)
    twin = TwinBuilder(torch)
    try:
        layer.torch_twin(twin)
    except CnnkitError as error:
        assert "--vs torch cannot build" in str(error)
        pytest.skip(f"{cls.keras_name} has no twin: {error}")
    net = torch.nn.Sequential(*twin.modules).double().eval()
    with torch.no_grad():
        for key, tensor, to_torch in twin.copies:
            name = key.removeprefix("layers.0.")
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(to_torch(layer.params[name]))))
        x = sample_input(sample)

        def nchw(a):
            return torch.from_numpy(
                np.array(a.transpose(0, 3, 1, 2) if a.ndim == 4 else a, order="C")
            )

        out = net([nchw(a) for a in x] if cls.merges else nchw(x)).numpy()
    expected = layer.forward(x, False)
    if twin.flat_from is not None:  # torch flattens (C, H, W): the next Dense is permuted
        expected = x.transpose(0, 3, 1, 2).reshape(BATCH, -1)
    elif out.ndim == 4:
        out = out.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_and_multiply_in_training_are_bitwise_numpy(dtype):
    """Add (over the threads, into a workspace) and Multiply (into a workspace) in training:
    bitwise the left-to-right numpy reduction of their inputs, as in inference."""
    from functools import reduce

    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((4, 6, 5, 3)).astype(dtype) for _ in range(3)]
    for cls, ufunc in ((Add, np.add), (Multiply, np.multiply)):
        layer = make_layer(cls, {}, [x.shape[1:] for x in xs])
        expected = reduce(ufunc, xs)
        assert layer.forward(xs, training=True).tobytes() == expected.tobytes()
        assert layer.forward(xs, training=False).tobytes() == expected.tobytes()
