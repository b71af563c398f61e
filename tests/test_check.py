"""`cnnkit check` and the memory plan of `cnnkit summary`."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from clitools import run_subprocess

from cnnkit import api
from cnnkit.config import parse_spec
from cnnkit.memory import available_memory, check_memory, optimizer_slots, plan
from cnnkit.model import Sequential
from cnnkit.registry import OPTIMIZERS

ROOT = Path(__file__).resolve().parents[1]
cnnkit = partial(run_subprocess, columns=160, timeout=120)


def test_check_ok_prints_summary_and_ok():
    result = cnnkit("check", "configs/mnist.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "conv2d_1 (Conv2D)" in result.stdout
    assert "training step:" in result.stdout


def test_check_reports_every_error_and_exits_2(tmp_path):
    spec = tmp_path / "bad.yaml"
    text = (ROOT / "configs" / "mnist.yaml").read_text()
    spec.write_text(text.replace("epochs: 6", "epochs: 0").replace("units: 10,", "unit: 10,"))
    result = cnnkit("check", str(spec), "--set", "train.batch_size=-1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "3 errors in the spec" in result.stderr
    assert "--set train.batch_size=-1" in result.stderr
    assert f"{spec.name}:" in result.stderr and "did you mean 'units'" in result.stderr


def test_check_path_imports_no_numba():
    """Checking a spec builds layers but must not import numba (0.3 s) or compile kernels."""
    code = (
        "import sys; from cnnkit import api, cli; api.check('configs/alexnet.yaml'); "
        "print('numba' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert result.stdout.strip() == "False", result.stderr


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


def kept_bytes(model: Sequential, x: np.ndarray, training: bool) -> list[int]:
    """Bytes of the distinct arrays each layer keeps after a forward pass (its output and
    its attributes), not counting its input: what the memory plan claims."""
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
    return kept


@pytest.mark.parametrize(
    "spec_text", [SPEC, (ROOT / "configs" / "mnist.yaml").read_text()], ids=["layers", "mnist"]
)
def test_memory_plan_matches_the_arrays_layers_keep(spec_text):
    spec = parse_spec(spec_text)
    model = Sequential.from_spec(spec).build(0)
    shape = tuple(spec.model["input_shape"])
    rng = np.random.default_rng(0)
    per_image = {}
    for training in (False, True):
        # the difference of two batch sizes: arrays that do not scale with the batch cancel
        small = kept_bytes(model, rng.random((2, *shape), dtype=np.float32), training)
        large = kept_bytes(model, rng.random((5, *shape), dtype=np.float32), training)
        per_image[training] = [(b - a) // 3 for a, b in zip(small, large, strict=True)]
    one, two = plan(spec, 1), plan(spec, 2)
    forward = [b.forward - a.forward for a, b in zip(one.layers, two.layers, strict=True)]
    training = [b.training - a.training for a, b in zip(one.layers, two.layers, strict=True)]
    assert forward == per_image[False]
    assert training == per_image[True]
    # the fixed part of the training column: gradients and optimizer state of the weights
    fixed = [2 * a.training - b.training for a, b in zip(one.layers, two.layers, strict=True)]
    slots = optimizer_slots(spec.optimizer)
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
    assert len(optimizer.state) == optimizer_slots({**optimizer.options, "name": section["name"]})


def test_memory_warning_and_largest_batch_that_fits():
    spec = parse_spec((ROOT / "configs" / "mnist.yaml").read_text())
    need = plan(spec).training_total
    evaluation = plan(spec, spec.train["eval_batch_size"]).forward_total
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


def test_summary_batch_size_option():
    result = cnnkit("summary", "configs/mnist.yaml", "--batch-size", "7")
    assert result.returncode == 0, result.stderr
    assert "Memory for a batch of 7" in result.stdout
    info = api.summarize(api.spec_from_spec_or_run(ROOT / "configs" / "mnist.yaml"), 7)
    assert info.memory.batch_size == 7


def test_check_warns_when_training_would_not_fit_in_memory():
    # ~0.6 MB per image for mnist.yaml: ten million images need terabytes
    result = cnnkit("check", "configs/mnist.yaml", "--set", "train.batch_size=10000000")
    assert result.returncode == 0, result.stderr
    assert "Warning: training at train.batch_size 10,000,000" in result.stdout
    assert "The largest batch size that fits" in result.stdout
    assert "--set train.batch_size=" in result.stdout
