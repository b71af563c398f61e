"""`cnnkit bench`, the PyTorch twin's correctness guard, --threads, and the training step's
reuse of its arrays (issue 6)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numba
import numpy as np
import pytest
from clitools import run_subprocess

from cnnkit.bench import _CnnkitRunner, run_bench
from cnnkit.config import load_spec
from cnnkit.errors import CnnkitError
from cnnkit.threads import configure_threads

ROOT = Path(__file__).resolve().parents[1]

SPEC = """\
name: benchy
data: {source: synthetic, num_classes: 10}
model:
  input_shape: [12, 12, 3]
  layers:
    - Conv2D: {filters: 8, kernel_size: 3, padding: same, activation: relu}
    - MaxPooling2D: {pool_size: 2}
    - Conv2D: {filters: 8, kernel_size: 3, strides: 2, activation: relu}
    - Flatten: {}
    - Dense: {units: 16, activation: relu}
    - Dense: {units: 10, activation: softmax}
optimizer: adam
train: {batch_size: 16}
"""


@pytest.fixture()
def spec_path(tmp_path) -> Path:
    path = tmp_path / "benchy.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture()
def restore_threads():
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def test_bench_json(spec_path):
    result = run_subprocess(
        "bench", str(spec_path), "--steps", "2", "--rounds", "2", "--threads", "1", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["threads"] == 1 and report["batch_size"] == 16
    assert report["train_images_per_s"] > 0 and report["infer_images_per_s"] > 0
    assert report["train_gflops"] > 0 and report["infer_gflops"] > 0
    assert len(report["rounds_detail"]) == 2
    names = [row["name"] for row in report["layers"]]
    assert sorted(names) == sorted(
        ["conv2d", "max_pooling2d", "conv2d_1", "flatten", "dense", "dense_1"]
    )
    totals = [row["forward_ms"] + row["backward_ms"] for row in report["layers"]]
    assert totals == sorted(totals, reverse=True)  # slowest first
    assert report["torch"] is None


def test_bench_table_and_batch_size(spec_path):
    result = run_subprocess(
        "bench", str(spec_path), "--steps", "1", "--rounds", "1", "--batch-size", "4"
    )
    assert result.returncode == 0, result.stderr
    assert "batch 4" in result.stdout and "training" in result.stdout
    assert "conv2d_1 (Conv2D)" in result.stdout


def test_bad_thread_count_is_a_user_error(spec_path):
    result = run_subprocess(
        "bench", str(spec_path), "--steps", "1", env={"CNNKIT_NUM_THREADS": "two"}
    )
    assert result.returncode == 2
    assert "CNNKIT_NUM_THREADS" in result.stderr and "Traceback" not in result.stderr


def test_threads_option_and_environment(restore_threads, monkeypatch):
    assert configure_threads(1) == 1 and numba.get_num_threads() == 1
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "1")
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert configure_threads() == 1 and numba.get_num_threads() == 1
    with pytest.raises(CnnkitError):
        configure_threads(0)


def test_training_step_reuses_its_arrays(spec_path):
    """After the first step, a step allocates far less than one conv output (line 6)."""
    runner = _CnnkitRunner(load_spec(spec_path, {"train.batch_size": 256}), 256)
    runner.train_step()
    runner.train_step()
    tracemalloc.start()
    runner.train_step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    conv_out = 256 * 12 * 12 * 8 * 4  # bytes of the first conv layer's output
    assert peak < conv_out / 2, (peak, conv_out)


def test_vs_torch_guard(spec_path, restore_threads):
    pytest.importorskip("torch")
    from cnnkit.bench_torch import TorchRunner

    result = run_bench(load_spec(spec_path), steps=1, rounds=1, warmup=1, threads=1, vs="torch")
    torch = result.torch
    assert torch["check"]["ok"] and torch["check"]["outputs_max_rel_diff"] < 1e-4
    assert torch["check"]["grads_max_rel_diff"] < 1e-3
    assert torch["train_ratio"] == pytest.approx(
        result.train_images_per_s / torch["train_images_per_s"]
    )
    # the guard catches a kernel that computes something else
    spec = load_spec(spec_path)
    ours = _CnnkitRunner(spec, 8)
    theirs = TorchRunner(spec, ours.model, ours.loss_fn, 8, 1, ours.x, ours.y)
    ours.model.layers[2].params["kernel"][0, 0, 0, 0] += np.float32(0.5)
    with pytest.raises(CnnkitError, match="disagree"):
        theirs.check_against(ours)
