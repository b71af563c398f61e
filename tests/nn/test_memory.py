"""The memory plan (cnnkit.nn.memory) that `cnnkit check` and `cnnkit summary` print."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.nn.memory import available_memory, check_memory, optimizer_slots, plan
from cnnkit.nn.model import Model
from cnnkit.nn.registry import OPTIMIZERS
from cnnkit.spec.build import build_model
from cnnkit.spec.config import parse_spec
from tests.clitools import ROOT

SPEC = """\
data: {source: synthetic, num_classes: 3}
model:
  input_shape: [12, 10, 2]
  layers:
    - Conv2D: {filters: 4, kernel_size: 3, activation: relu, padding: same}
    - BatchNormalization: {}
    - LeakyReLU: {}
    - MaxPooling2D: {pool_size: 2}
    - Conv2D: {filters: 5, kernel_size: 3}
    - SpatialDropout2D: {rate: 0.3}
    - AveragePooling2D: {pool_size: 2}
    - Activation: tanh
    - Flatten: {}
    - Dropout: {rate: 0.5}
    - Dense: {units: 6}
    - Activation: relu
    - Dense: {units: 3, activation: softmax}
optimizer: {name: adam, amsgrad: true}
"""


def kept_bytes(model: Model, x: np.ndarray, training: bool) -> list[int]:
    """Bytes of the distinct arrays each layer keeps after a forward pass (its output and
    its attributes), not counting its input, and in training the workspaces its backward
    adds: what the memory plan claims."""
    kept = []
    for layer in model.layers:
        y = layer.forward(x, training)
        arrays = [a for a in (y, *vars(layer).values()) if isinstance(a, np.ndarray)]
        counted: list[np.ndarray] = [x]
        total = 0
        for array in arrays:
            if any(np.shares_memory(array, other) for other in counted):
                continue
            counted.append(array)
            total += array.nbytes
        kept.append(total)
        x = y
    if training:  # and the gradients backward writes into workspaces, kept for the next step
        dy = np.ones_like(x)
        for i in reversed(range(len(model.layers))):
            layer = model.layers[i]
            before = sum(a.nbytes for a in vars(layer).get("_workspaces", {}).values())
            dy = layer.backward(dy)
            after = sum(a.nbytes for a in vars(layer).get("_workspaces", {}).values())
            kept[i] += after - before
    return kept


@pytest.mark.parametrize(
    "spec_text", [SPEC, (ROOT / "configs" / "mnist.yaml").read_text()], ids=["layers", "mnist"]
)
def test_memory_plan_matches_the_arrays_layers_keep(spec_text):
    spec = parse_spec(spec_text)
    model = build_model(spec).build(0)
    shape = tuple(spec.model.input_shape)
    rng = np.random.default_rng(0)
    per_image = {}
    for training in (False, True):
        # the difference of two batch sizes: arrays that do not scale with the batch cancel
        # (a fresh model each: workspaces grow with the batch and stay)
        small, large = (
            kept_bytes(build_model(spec).build(0), rng.random((n, *shape), np.float32), training)
            for n in (2, 5)
        )
        per_image[training] = [(b - a) // 3 for a, b in zip(small, large, strict=True)]
    one, two = plan(spec, 1), plan(spec, 2)
    forward = [b.forward - a.forward for a, b in zip(one.layers, two.layers, strict=True)]
    training = [b.training - a.training for a, b in zip(one.layers, two.layers, strict=True)]
    assert forward == per_image[False]
    assert training == per_image[True]
    # the fixed part of the training column: gradients and optimizer state of the weights
    fixed = [2 * a.training - b.training for a, b in zip(one.layers, two.layers, strict=True)]
    slots = optimizer_slots(spec.optimizer.name, spec.optimizer.options)
    assert fixed == [
        4 * (1 + slots) * sum(int(np.prod(s)) for s in layer.param_shapes().values())
        for layer in model.layers
    ]


@pytest.mark.parametrize(
    "section",
    [
        {"name": "sgd", "momentum": 0.0},
        {"name": "sgd", "momentum": 0.9},
        {"name": "rmsprop", "momentum": 0.9, "centered": True},
        {"name": "rmsprop"},
        {"name": "adam"},
        {"name": "adam", "amsgrad": True},
        {"name": "adamw"},
        {"name": "adagrad"},
        {"name": "adadelta"},
        {"name": "nadam"},
    ],
)
def test_optimizer_slots_match_the_optimizer_state(section):
    optimizer = OPTIMIZERS[section["name"]](**{k: v for k, v in section.items() if k != "name"})
    p, g = np.ones(3, np.float32), np.full(3, 0.1, np.float32)
    optimizer.step({"w": p}, {"w": g})
    assert len(optimizer.state) == optimizer_slots(section["name"], optimizer.options)


def test_memory_warning_and_largest_batch_that_fits():
    spec = parse_spec((ROOT / "configs" / "mnist.yaml").read_text())
    need = plan(spec).training_total
    evaluation = plan(spec, spec.train.eval_batch_size).forward_total
    assert check_memory(spec, available=2 * max(need, evaluation)) == []  # 50%: fine
    warnings = check_memory(spec, available=need)  # training needs 100% > 80%
    (warning,) = [w for w in warnings if w.what == "training"]
    assert warning.option == "train.batch_size" and warning.batch_size == 128
    budget = int(need * 0.8)
    assert plan(spec, warning.fits).training_total <= budget
    assert plan(spec, warning.fits + 1).training_total > budget
    assert check_memory(spec, available=None) == []


def test_available_memory_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable:    2048 kB\n")
    assert available_memory(meminfo) == 2048 * 1024
    fallback = available_memory(tmp_path / "missing")  # sysconf, or None: never an exception
    assert fallback is None or fallback > 0


def _graph_spec(shortcut: bool) -> str:
    add = "    - Add: {inputs: [c2, stem]}\n" if shortcut else ""
    return f"""
name: g
data: {{source: synthetic, num_classes: 3}}
model:
  input_shape: [8, 8, 2]
  layers:
    - Conv2D: {{filters: 4, kernel_size: 3, padding: same, activation: relu, name: stem}}
    - Conv2D: {{filters: 4, kernel_size: 3, padding: same}}
    - Conv2D: {{filters: 4, kernel_size: 3, padding: same, name: c2}}
{add}    - GlobalAveragePooling2D: {{}}
    - Dense: {{units: 3, activation: softmax}}
"""


def test_inference_keeps_an_output_alive_until_its_last_reader():
    """With the shortcut, the stem's output (8x8x4 floats an image) is still alive while the
    two convolutions after it run: the inference peak holds three such maps, not two."""
    one_map = 8 * 8 * 4 * 4
    stack, graph = (plan(parse_spec(_graph_spec(s)), 10) for s in (False, True))
    assert stack.weights == graph.weights and stack.input == graph.input
    assert stack.forward_total - stack.input - stack.weights == 10 * 2 * one_map
    assert graph.forward_total - graph.input - graph.weights == 10 * 3 * one_map
    # backward: the stem's summed gradient waits while the main path runs backward
    assert graph.backward_peak == stack.backward_peak + 10 * one_map


def test_a_graph_plan_counts_the_summed_gradients_a_step_keeps():
    """trunk's output is read by three layers: a training step keeps the sum of their
    gradients in an array of the model's (Model._gradient_sum), which the plan counts."""
    from cnnkit.nn.memory import gradient_bytes
    from tests.nn.test_model import GRAPH_SPECS, spec_text

    spec = parse_spec(spec_text(GRAPH_SPECS["three-readers"], seed=4))
    sums = []
    for n in (2, 5):
        model = build_model(spec).build(0)
        x = np.random.default_rng(0).random((n, *spec.model.input_shape), np.float32)
        model.forward(x, training=True)
        model.backward(np.ones((n, 3), np.float32))
        sums.append(sum(a.nbytes for a in model._grad_sums.values()))
    trunk = model.layers[0]
    assert model.readers[0] == 3 and list(model._grad_sums) == [0]
    per_image = (sums[1] - sums[0]) // 3
    assert per_image == 4 * int(np.prod(trunk.output_shape)) > 0
    layer = spec.model.layers[0]
    assert gradient_bytes(layer, False, 3) - gradient_bytes(layer, False, 1) == per_image
