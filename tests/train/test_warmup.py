"""The first run does not look hung (issue 12, line 6): before the first step, a status says
the kernels are compiling and about how long it takes; epoch 1's images/s does not include
the compilation; Ctrl-C while compiling exits at once and leaves nothing half-written.

Each test points NUMBA_CACHE_DIR at an empty folder, so that the kernels really compile."""

from __future__ import annotations

import copy
import csv
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cnnkit.spec.build import build_loss, build_model, build_optimizer
from cnnkit.spec.config import load_spec
from cnnkit.train import warmup
from tests.clitools import start_subprocess, tiny_pool_spec

# one max-pooling layer: compiles two small kernels (a few seconds), then trains in a moment
POOL_SPEC = tiny_pool_spec("poolonly", epochs=1, train_samples=256, every_steps=8)

# convolutions: compiling takes tens of seconds, time enough to interrupt it
CONV_SPEC = """\
name: convnet
data: {source: synthetic, num_classes: 3, max_train_samples: 64, max_test_samples: 16}
model:
  input_shape: [12, 12, 1]
  layers:
    - Conv2D: {filters: 4, kernel_size: 3, activation: relu}
    - Flatten: {}
    - Dense: {units: 3, activation: softmax}
train: {epochs: 1, batch_size: 16}
"""


def lines_of(stream) -> queue.Queue:
    """A background reader: the process' lines as they come (None at the end)."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for(lines: queue.Queue, pattern: str, timeout: float) -> tuple[str, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if re.search(pattern, line, re.IGNORECASE):
            return line, seen
    raise AssertionError(f"no line matching {pattern!r} in {seen}")


@pytest.mark.e2e
def test_cold_cache_says_compiling_before_the_first_step_and_epoch_1_excludes_it(tmp_path):
    spec = tmp_path / "pool.yaml"
    spec.write_text(POOL_SPEC)
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba"), "CNNKIT_NUM_THREADS": "1"}
    proc = start_subprocess(
        "train", str(spec), "--out", str(tmp_path / "runs"), cwd=tmp_path, env=env
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    announced = next(i for i, line in enumerate(lines) if "compiling kernels" in line.lower())
    first_step = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1 step"))
    assert announced < first_step, out
    assert re.search(r"\(first run only, about \d+ s\)", lines[announced]), lines[announced]
    compiled = re.search(r"Kernels compiled in (\d+) s", out)
    assert compiled, out
    # the compilation is timed apart: epoch 1 (32 steps of 8 images) takes a fraction of it
    (run_dir,) = (tmp_path / "runs").iterdir()
    with open(run_dir / "metrics.csv") as f:
        (row,) = csv.DictReader(f)
    assert float(row["seconds"]) < min(1.0, int(compiled[1]) / 2), (row, compiled[0])
    speed = re.search(r"^Epoch 1/1 .* ([\d,]+) img/s", out, re.MULTILINE)
    assert int(speed[1].replace(",", "")) > 1000, speed[0]

    # the same cache, warm now: nothing is announced
    proc = start_subprocess(
        "train", str(spec), "--out", str(tmp_path / "runs"), cwd=tmp_path, env=env
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "kernels" not in out.lower(), out


def _ctrl_c_while_compiling(workdir: Path) -> tuple[int | None, float, str, Path]:
    """Start training a conv spec on a cold kernel cache, press Ctrl-C 0.5 s into the compile:
    (exit code or None if still running after 10 s, seconds to exit, stderr, runs folder)."""
    workdir.mkdir()
    spec = workdir / "conv.yaml"
    spec.write_text(CONV_SPEC)
    runs = workdir / "runs"
    env = {"NUMBA_CACHE_DIR": str(workdir / "numba"), "CNNKIT_NUM_THREADS": "1"}
    proc = start_subprocess("train", str(spec), "--out", str(runs), cwd=workdir, env=env)
    errors = lines_of(proc.stderr)  # drained as it comes: a full stderr pipe must not block it
    try:
        line, _ = wait_for(lines_of(proc.stdout), r"compiling kernels", timeout=120)
        assert re.search(r"first run only, about \d+ s", line), line
        time.sleep(0.5)  # well inside the compiler (tens of seconds for convolutions)
        assert proc.poll() is None, "finished compiling already: the spec is too small"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        waited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = []
    while (item := errors.get(timeout=5)) is not None:
        err.append(item)
    return code, waited, "".join(err), runs


@pytest.mark.e2e
def test_ctrl_c_while_compiling_exits_at_once_and_writes_nothing(tmp_path):
    code, waited, err, runs = _ctrl_c_while_compiling(tmp_path / "ctrl_c")
    assert code == 130, err
    assert waited < 2.0, f"took {waited:.1f} s to exit"
    assert "Interrupted while compiling the kernels" in err, err
    assert "Traceback" not in err, err
    # the run directory is made after the compilation: there is none, half-written or not
    assert not runs.exists() or not any(runs.iterdir()), list(runs.rglob("*"))


def test_estimate_counts_the_kernels_of_the_model_not_in_the_cache(monkeypatch):
    spec = load_spec("configs/mnist_lenet.yaml")
    kernels = warmup.kernels_used(build_model(spec))
    assert "cnnkit.kernels.conv.conv2d_forward" in kernels
    # lenet's 2x2 pools tile their inputs: the tiling kernels, not the general ones
    assert "cnnkit.kernels.pool.maxpool2d_backward_tiles" in kernels
    assert "cnnkit.kernels.pool.maxpool2d_backward" not in kernels
    with_sgd = warmup.kernels_used(build_model(spec).build(0), optimizer=build_optimizer(spec))
    assert set(with_sgd) - set(kernels) == {"cnnkit.kernels.optimizers.momentum_update"}
    assert not any("avgpool" in k or "batchnorm" in k or "affine" in k for k in kernels), kernels
    reference = sum(warmup.COMPILE_SECONDS[k] for k in kernels)
    # scaled by how much slower than the reference machine a calibration loop runs now
    assert 0.25 <= warmup.machine_slowness() < 100
    monkeypatch.setattr(warmup, "machine_slowness", lambda: 2.0)
    assert warmup.estimate_seconds(kernels) == pytest.approx(2 * reference)
    assert warmup.rounded(17.4) == 15 and warmup.rounded(3.4) == 3


def test_warm_up_leaves_the_model_as_it_was():
    """The warm-up trains a copy: the real model's weights, BatchNorm moving statistics and
    dropout stream are untouched, so a run is the same with or without it."""
    from cnnkit.data.augment import Preprocessor

    spec = load_spec("configs/mnist.yaml")  # BatchNormalization and Dropout
    model = build_model(spec).build(spec.seed)
    state = lambda m: {  # noqa: E731
        "params": {k: v.copy() for k, v in m.named_params().items()},
        "rest": copy.deepcopy([vars(layer) for layer in m.layers]),
    }
    before = state(model)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (4, 28, 28, 1), dtype=np.uint8)
    y = np.arange(4) % 10
    loss_fn = build_loss(spec)
    done = warmup.warm_up(model, loss_fn, Preprocessor.from_spec(spec), x, y)
    assert done.seconds > 0
    after = state(model)
    assert before["params"].keys() == after["params"].keys()
    for key, value in before["params"].items():
        assert np.array_equal(value, after["params"][key]), key
    for a, b in zip(before["rest"], after["rest"], strict=True):
        assert a.keys() == b.keys()
        for name in a:
            if isinstance(a[name], np.ndarray):
                assert np.array_equal(a[name], b[name], equal_nan=True), name
            elif isinstance(a[name], np.random.Generator):
                assert a[name].bit_generator.state == b[name].bit_generator.state, name


def test_a_python_dispatcher_is_cached_through_the_compiled_paths_it_reaches():
    """conv2d_backward_input runs on conv2d_forward, itself a plain function choosing the
    direct or the GEMM kernel: the cache check follows both levels (seen: mnist_basic's warm-up
    announced a compile on every run when it looked one level deep)."""
    from cnnkit.kernels import conv

    reached = {d.py_func.__name__ for d in warmup._called_dispatchers(conv.conv2d_backward_input)}
    assert {"conv2d_forward_direct", "conv2d_forward_gemm", "conv2d_backward_input_cols"} <= reached
