"""The fused inference path (cnnkit.nn.inference): the same outputs as the layer-by-layer path
(bit for bit where nothing is folded, within float32 rounding where a BatchNormalization is),
over Sequential and graph models: BatchNormalization after a convolution whose output another
layer also reads (not folded), pooling with odd sizes and `same` padding, Dropout, Add + relu;
the plan rebuilt after a training pass and after load_params; buffers reused from batch to
batch without touching the outputs already handed out; bitwise reproducible."""

from __future__ import annotations

import numpy as np

from cnnkit.nn.inference import AddStep, InferencePlan, KernelStep, PoolStep, ScaleShiftStep
from cnnkit.spec.build import build_model
from cnnkit.spec.config import parse_spec
from tests.nn.gradcheck import spec_text

SEQUENTIAL = """
    - Conv2D: {filters: 5, kernel_size: 3, padding: same}
    - BatchNormalization: {}
    - Activation: relu
    - MaxPooling2D: {pool_size: 3, strides: 2, padding: same}
    - Dropout: {rate: 0.5}
    - Conv2D: {filters: 4, kernel_size: [2, 3], activation: relu, use_bias: false}
    - MaxPooling2D: {pool_size: 2}
    - Flatten: {}
    - Dense: {units: 6}
    - BatchNormalization: {}
    - Activation: relu
    - Dense: {units: 3, activation: softmax}
"""

# the first convolution's output is read by its BatchNormalization and by the shortcut Add:
# it must not be folded; the second's only by its BatchNormalization: folded
GRAPH = """
    - Conv2D: {filters: 4, kernel_size: 3, padding: same, name: stem}
    - BatchNormalization: {name: stem_bn}
    - Activation: {activation: relu, name: stem_relu}
    - Conv2D: {filters: 4, kernel_size: 3, padding: same, name: conv}
    - BatchNormalization: {name: main}
    - Add: {inputs: [main, stem]}
    - Activation: relu
    - BatchNormalization: {}
    - MaxPooling2D: {pool_size: 2, padding: same}
    - Flatten: {}
    - Dense: {units: 3, activation: softmax}
"""


def _model(layers: str, input_shape=(9, 7, 2), seed=4):
    model = build_model(parse_spec(spec_text(layers, input_shape=input_shape, seed=seed)))
    model.build(seed)
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # moving statistics and affine weights away from 0/1
        for store in (layer.params, layer.state):
            for name, array in store.items():
                if name == "moving_variance":
                    array[...] = rng.uniform(0.5, 2.0, array.shape)
                elif name != "kernel":
                    array[...] = rng.normal(0, 0.5, array.shape)
    model.invalidate_plan()
    return model


def _x(model, n=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *model.input_shape)).astype(np.float32)


def test_sequential_fused_equals_layer_by_layer():
    model = _model(SEQUENTIAL)
    x = _x(model)
    fused = model.forward(x)
    np.testing.assert_allclose(fused, model.forward(x, fused=False), rtol=1e-5, atol=1e-5)
    kinds = [type(s) for s in model.inference_plan().steps]
    # conv+bn+relu+pool+dropout, conv+relu+pool+flatten, dense+bn+relu, dense
    assert kinds == [KernelStep] * 4
    first = model.inference_plan().steps[0]
    assert [type(la).__name__ for la in first.layers] == [
        "Conv2D", "BatchNormalization", "Activation", "MaxPooling2D", "Dropout",
    ]  # fmt: skip
    assert np.array_equal(model.forward(x), fused)  # bitwise run to run


def test_graph_shortcut_reader_keeps_the_convolution_unfolded():
    model = _model(GRAPH, input_shape=(5, 7, 3))
    x = _x(model, n=3)
    np.testing.assert_allclose(
        model.forward(x), model.forward(x, fused=False), rtol=1e-5, atol=1e-5
    )
    steps = model.inference_plan().steps
    names = [[la.name or type(la).__name__ for la in s.layers] for s in steps]
    assert names[0] == ["stem"]  # read by stem_bn and the Add: no fold
    assert names[1] == ["stem_bn", "stem_relu"] and isinstance(steps[1], ScaleShiftStep)
    assert names[2] == ["conv", "main"]  # folded
    assert isinstance(steps[3], AddStep) and steps[3].relu
    assert isinstance(steps[4], ScaleShiftStep) and not steps[4].relu
    # five outputs of one shape in three buffers (each back after its last reader), the
    # pooling's own
    shapes = [b.shape[1:] for b in model.inference_plan().pooled]
    assert sorted(shapes) == [(3, 4, 4), (5, 7, 4), (5, 7, 4), (5, 7, 4)]


def test_without_folding_the_plan_is_bitwise_the_layer_path():
    layers = """
    - Conv2D: {filters: 3, kernel_size: 3, strides: 2, padding: same, activation: relu}
    - MaxPooling2D: {pool_size: 3, strides: 1}
    - Conv2D: {filters: 8, kernel_size: 2, activation: tanh}
    - MaxPooling2D: {pool_size: 2, padding: same}
    - Flatten: {}
    - Dropout: {rate: 0.2}
    - Dense: {units: 4, activation: relu}
    - Dense: {units: 3, activation: softmax}
"""
    model = _model(layers, input_shape=(11, 13, 1))
    x = _x(model, n=7)
    assert np.array_equal(model.forward(x), model.forward(x, fused=False))
    kinds = [type(s) for s in model.inference_plan().steps]
    assert PoolStep in kinds  # after tanh: pooled alone, without argmax


def test_plan_follows_the_weights():
    model = _model(SEQUENTIAL)
    x = _x(model)
    before = model.forward(x)
    plan = model.inference_plan()
    model.forward(x, training=True)  # moves the moving statistics: a new plan
    assert model.inference_plan() is not plan
    np.testing.assert_allclose(model.forward(x), model.forward(x, fused=False), atol=1e-5)
    model.forward(x, training=True)
    model.forward(x)  # a plan built between a training forward and the optimizer's step
    model.backward(np.ones((len(x), 3), np.float32))
    for array in model.named_params().values():
        array *= 0.9  # as an optimizer step, in place
    np.testing.assert_allclose(model.forward(x), model.forward(x, fused=False), atol=1e-5)
    arrays = {k: v * 1.5 for k, v in model.named_weights().items()}
    model.load_params(arrays, "test")
    np.testing.assert_allclose(model.forward(x), model.forward(x, fused=False), atol=1e-5)
    assert not np.allclose(model.forward(x), before)


def test_buffers_reused_and_outputs_kept():
    model = _model(SEQUENTIAL)
    x = _x(model, n=6)
    first = model.forward(x)
    kept = first.copy()
    plan = model.inference_plan()
    made = len(plan.pooled)
    second = model.forward(x[:4])  # a shorter last batch: views of the same buffers
    assert len(plan.pooled) == made
    assert np.array_equal(first, kept)  # the model's output is never a pooled buffer
    np.testing.assert_allclose(second, model.forward(x[:4], fused=False), atol=1e-5)


def test_a_view_as_output_is_copied():
    """A plan whose last layer is a Flatten (a view of a pooled buffer) hands out a copy."""
    layers = """
    - Conv2D: {filters: 3, kernel_size: 1}
    - BatchNormalization: {}
    - Activation: relu
    - Flatten: {}
    - Dense: {units: 3, activation: softmax}
"""
    model = _model(layers, input_shape=(3, 3, 2))
    plan = InferencePlan(model.layers[:4])  # ends at the Flatten
    x = _x(model)
    first = plan.forward(x)
    kept = first.copy()
    plan.forward(x[::-1].copy())
    assert np.array_equal(first, kept)
    np.testing.assert_allclose(
        first,
        model.layers[3].forward(
            model.layers[2].forward(
                model.layers[1].forward(model.layers[0].forward(x, False), False), False
            ),
            False,
        ),
        atol=1e-5,
    )
