"""`cnnkit bench --vs keras` (cnnkit.bench_keras): the Keras twin of a stack and of a graph
(merges, DepthwiseConv2D, SeparableConv2D, groups, BatchNormalization, regularizers), judged with
cnnkit against the Keras twin in float64; what it cannot model is refused up front; `--vs
torch,keras` in one process. Skipped where TensorFlow is not installed (CI has neither peer);
the --vs parsing and the missing-extra message: tests/test_bench.py."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.bench import _CnnkitRunner, run_bench
from cnnkit.errors import CnnkitError
from cnnkit.spec.config import load_spec

pytest.importorskip("tensorflow")

GRAPH = """\
name: kgraph
seed: 3
data: {source: synthetic, num_classes: 5}
model:
  input_shape: [9, 9, 3]
  layers:
    - Conv2D: {filters: 8, kernel_size: 3, padding: same, use_bias: false, name: stem,
               kernel_regularizer: {l2: 0.05}}
    - BatchNormalization: {name: bn}
    - Activation: relu
    - DepthwiseConv2D: {kernel_size: 3, padding: same, depth_multiplier: 2, name: dw}
    - Conv2D: {filters: 16, kernel_size: 1, inputs: [stem], name: proj}
    - Add: {inputs: [dw, proj], name: sum}
    - SeparableConv2D: {filters: 8, kernel_size: 3, strides: 2, padding: same, name: sep}
    - Conv2D: {filters: 8, kernel_size: 3, strides: 2, padding: same, groups: 4, inputs: [sum],
               activation: relu, name: grouped}
    - Concatenate: {inputs: [sep, grouped]}
    - GlobalAveragePooling2D: {}
    - Dense: {units: 5, activation: softmax}
loss: sparse_categorical_crossentropy
optimizer: adam
train: {batch_size: 6}
"""


@pytest.fixture
def graph_spec(tmp_path):
    path = tmp_path / "kgraph.yaml"
    path.write_text(GRAPH)
    return path


def _runner(spec, batch: int = 6):
    from cnnkit.bench_keras import KerasRunner

    ours = _CnnkitRunner(spec, batch)
    return ours, KerasRunner(spec, ours.model, ours.loss_fn, batch, 1, ours.x, ours.y)


@pytest.mark.e2e
def test_vs_keras_times_and_guards(bench_spec, restore_threads):
    """The round loop with Keras: both sides judged on every array, ratios from the medians'
    rounds, the timed variant (XLA off or on) named; a wrong cnnkit kernel is refused."""
    result = run_bench(load_spec(bench_spec), steps=1, rounds=1, warmup=1, threads=1, vs="keras")
    keras = result.keras
    assert result.torch is None and keras["label"] == "Keras" and keras["threads"] == 1
    check = keras["check"]
    assert check["ok"] and check["peer"] == "keras"
    keys = list(_CnnkitRunner(load_spec(bench_spec), 1).model.named_params())
    for side in ("cnnkit", "keras"):
        errors = check[side]
        assert list(errors["gradients"]) == keys
        values = [errors["output"], errors["loss"], *errors["gradients"].values()]
        assert all(0 <= v < 1e-5 for v in values), errors
    assert keras["train_ratio"] == pytest.approx(
        result.train_images_per_s / keras["train_images_per_s"]
    )
    assert result.vs_faster["infer_ratio"] == pytest.approx(keras["infer_ratio"])
    setup = keras["setup"]
    assert set(setup["train"]) >= {"jit_compile=False"} and "train_on_batch" in str(setup)
    ours, twin = _runner(load_spec(bench_spec), 8)
    ours.model.layers[2].params["kernel"][0, 0, 0, 0] += np.float32(0.5)
    with pytest.raises(CnnkitError, match="cnnkit's .* is off by .* from a float64 reference"):
        twin.check_against(ours)


def test_graph_twin_passes_the_guard(graph_spec, restore_threads):
    """Every trainable array of the graph compared, cnnkit and Keras within the tolerance;
    the check changes neither model (cnnkit's moving statistics stay, the twin's too)."""
    ours, twin = _runner(load_spec(graph_spec))
    moving = ours.model.layers[1].state["moving_mean"].copy()
    check = twin.check_against(ours)
    assert check["ok"] and check["cnnkit"]["ok"] and check["keras"]["ok"], check
    assert len(check["cnnkit"]["gradients"]) == len(ours.model.named_params()) == 14
    np.testing.assert_array_equal(ours.model.layers[1].state["moving_mean"], moving)
    np.testing.assert_array_equal(twin.variables["layers.1.moving_mean"].numpy(), moving)
    twin.train_step()  # the compiled Keras step runs on the graph


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"loss": {"name": "categorical_crossentropy", "label_smoothing": 0.1}}, None),
        ({"optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True}}, None),
        ({"model.layers[5]": {"Subtract": {"inputs": ["dw", "proj"], "name": "sum"}}}, None),
        ({"loss": "mean_squared_error"}, "the mean_squared_error loss"),
    ],
)
def test_twin_models_the_loss_or_refuses(graph_spec, change, refused, restore_threads):
    spec = load_spec(graph_spec, change)
    if refused:
        with pytest.raises(CnnkitError, match=f"--vs keras cannot build {refused}"):
            _runner(spec)
        return
    ours, twin = _runner(spec)
    check = twin.check_against(ours)
    assert check["cnnkit"]["ok"] and check["keras"]["ok"], check


@pytest.mark.e2e
def test_vs_torch_and_keras_alternately(bench_spec, restore_threads):
    """Both peers in one process: each its ratios and guard; the faster peer's ratio per round."""
    pytest.importorskip("torch")
    result = run_bench(
        load_spec(bench_spec), steps=1, rounds=1, warmup=1, threads=1, vs="torch,keras"
    )
    row = result.rounds_detail[0]
    for kind in ("train", "infer"):
        ratios = [row[f"torch_{kind}_ratio"], row[f"keras_{kind}_ratio"]]
        assert row[f"faster_{kind}_ratio"] == pytest.approx(min(ratios))
        assert result.vs_faster[f"{kind}_ratio"] == pytest.approx(min(ratios))
    assert result.torch["check"]["ok"] and result.keras["check"]["ok"]
