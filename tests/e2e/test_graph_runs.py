"""A graph model through everything a Sequential one goes through (issue: graph models): train,
exact resume after Ctrl-C, evaluate with its error analysis, predict on image files, the run's
summary and checkpoint sidecars, check and --set on a named layer, bench's PyTorch twin."""

from __future__ import annotations

import csv
import functools
import json
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnkit import api
from cnnkit.data.augment import Preprocessor
from cnnkit.data.batches import batches, make_splits
from cnnkit.data.idx import read_idx
from cnnkit.runs.rundir import RunDir
from cnnkit.spec.config import load_spec
from cnnkit.train.trainer import inference
from tests.clitools import MNIST, run_cli
from tests.drivers.signal_at_step import SignalAtStep
from tests.train.test_resume import assert_same_run

GRAPH = f"""\
name: graph
seed: 7
data:
  source: mnist
  path: {MNIST}
  validation_split: 0.25
  max_train_samples: 256
  max_test_samples: 96
model:
  input_shape: [28, 28, 1]
  blocks:
    residual:                 # a projection shortcut around conv + batch norm
      params: [filters]
      layers:
        - Conv2D: {{filters: $filters, kernel_size: 3, strides: 2, padding: same, use_bias: false}}
        - BatchNormalization: {{name: main}}
        - Conv2D: {{filters: $filters, kernel_size: 1, strides: 2, inputs: [input], name: shortcut}}
        - Add: {{inputs: [main, shortcut]}}
        - Activation: relu
  layers:
    - Conv2D: {{filters: 4, kernel_size: 3, activation: relu, name: stem}}
    - residual: {{filters: 8, name: r1}}
    - DepthwiseConv2D: {{kernel_size: 3, padding: same, activation: relu, name: dw}}
    - SeparableConv2D: {{filters: 4, kernel_size: 3, padding: same, inputs: [r1], name: side}}
    - Concatenate: {{inputs: [dw, side]}}
    - GlobalAveragePooling2D: {{}}
    - Dropout: {{rate: 0.2}}
    - Dense: {{units: 10, activation: softmax}}
loss: sparse_categorical_crossentropy
optimizer: {{name: adam, learning_rate: 0.01}}
train: {{epochs: 2, batch_size: 64}}
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("graph")
    (work / "graph.yaml").write_text(GRAPH)
    return work


@pytest.fixture(scope="module")
def reference(work: Path) -> Path:
    result = api.train(load_spec(work / "graph.yaml"), out=work / "runs")
    return result.run_dir


def test_interrupted_and_resumed_is_bitwise_the_uninterrupted_run(
    reference, work, monkeypatch, capsys
):
    """3 steps an epoch: Ctrl-C after step 4 (mid-epoch 2), then --resume to the end."""
    monkeypatch.setattr(
        api, "train", functools.partial(api.train, callbacks=[SignalAtStep(4, signal.SIGINT)])
    )
    code, out, err = run_cli(
        "train", str(work / "graph.yaml"), "--out", str(work / "cut"),
        monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 130, out + err
    run = work / "cut" / "graph"
    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    assert (meta["epoch"], meta["step"], meta["optimizer"]["iterations"]) == (2, 1, 4)
    code, out, err = run_cli("train", "--resume", str(run), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out + err
    assert_same_run(reference, run)


def test_sidecars_name_each_position_key(reference):
    meta = json.loads((reference / "checkpoints" / "best.json").read_text())
    records = {r["key"]: r for r in meta["layers"]}
    assert records["layers.0"] == {
        "key": "layers.0", "name": "stem", "type": "Conv2D", "inputs": ["input_layer"],
    }  # fmt: skip
    assert records["layers.3"]["name"] == "r1_shortcut"
    assert records["layers.3"]["inputs"] == ["stem"]
    concatenate = next(r for r in meta["layers"] if r["type"] == "Concatenate")
    assert concatenate["inputs"] == ["dw", "side"]
    with np.load(reference / "checkpoints" / "best.npz") as weights:
        assert "layers.3.kernel" in weights.files  # keys by position, as every checkpoint's
        assert weights["layers.3.kernel"].shape == (1, 1, 4, 8)


def test_evaluate_and_predict_work_on_a_graph(reference, work):
    """evaluate's accuracy is what its predictions.csv says; predict reads PNG files."""
    result = api.evaluate(reference)
    for name in ("predictions.csv", "misclassified.csv", "confusion_matrix.png"):
        assert (reference / name).is_file(), name
    with open(reference / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result["samples"] == 96
    right = sum(r["true"] == r["predicted"] for r in rows)
    assert result["accuracy"] == pytest.approx(right / 96)
    for r in rows:  # the predicted class is the row's most probable one
        probabilities = [float(r[f"p_{k}"]) for k in range(10)]
        assert int(r["predicted"]) == int(np.argmax(probabilities))
    images = read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:3]
    paths = []
    for i, image in enumerate(images):
        paths.append(work / f"digit{i}.png")
        Image.fromarray(image).save(paths[-1])
    predictions = api.predict(paths, reference, top_k=10)
    assert [Path(p["image"]).name for p in predictions] == [p.name for p in paths]
    for p in predictions:
        assert p["error"] is None and len(p["top"]) == 10
        assert sum(t["probability"] for t in p["top"]) == pytest.approx(1.0, abs=1e-5)


def test_fused_inference_keeps_the_predictions_of_the_layer_path(reference):
    """evaluate's pass (the fused inference plan: BatchNormalization folded into r1's
    convolution, Add + relu in one pass) against the layer-by-layer path on the run's test
    split: the same predicted classes, probabilities within float32 rounding."""
    spec, model, _, _ = api.load_model(reference)
    test = make_splits(api.load_dataset(spec), spec.data, spec.seed).test
    prepare = Preprocessor.from_spec(spec, saved=RunDir(reference).read_normalization)
    batch = spec.train.eval_batch_size
    fused = np.concatenate([logits for logits, _ in inference(model, test, prepare, batch)])
    layers = np.concatenate(
        [model.forward(xb, fused=False) for xb, _ in batches(test, batch, prepare)]
    )
    assert np.array_equal(fused.argmax(axis=1), layers.argmax(axis=1))
    np.testing.assert_allclose(fused, layers, rtol=1e-4, atol=1e-5)


def test_summary_of_the_run_is_keras_functional_table(reference, monkeypatch, capsys):
    code, out, _ = run_cli("summary", str(reference), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    assert "Connected to" in out and "input_layer (InputLayer)" in out
    assert "dw[0][0], side[0][0]" in out  # the Concatenate's inputs
    assert "r1_main[0][0], r1_shortcut[0][0]" in out


def test_set_on_a_named_layer(work, monkeypatch, capsys):
    spec = load_spec(work / "graph.yaml", ["model.layers.stem.filters=6"])
    assert spec.model.layers[0].options["filters"] == 6
    code, _, err = run_cli(
        "check", str(work / "graph.yaml"), "--set", "model.layers.stm.filters=6",
        monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "no layer named 'stm'" in err and "did you mean 'stem'?" in err


def test_bench_twin_of_the_graph_passes_the_guard(work, reference):
    """After training in this process, one thread, a one-channel input: PyTorch's convolution
    backward corrupted the heap on the batch's transposed strides before the twin got a fresh
    copy (bench_torch.TorchRunner)."""
    pytest.importorskip("torch")
    from cnnkit.bench import _CnnkitRunner
    from cnnkit.bench_torch import TorchRunner

    # without the Dropout (random masks differ), so that the gradients are compared too
    spec = load_spec(work / "graph.yaml", ["model.layers[6]={Activation: linear}"])
    ours = _CnnkitRunner(spec, 8)
    twin = TorchRunner(spec, ours.model, ours.loss_fn, 8, 1, ours.x, ours.y)
    check = twin.check_against(ours)
    assert check["ok"] and check["cnnkit"]["ok"], check
    assert len(check["cnnkit"]["gradients"]) == 14  # every trainable array of the graph
    for _ in range(3):  # the timed steps, where the corrupted heap used to abort
        twin.train_step()
