"""`cnnkit bench`, the PyTorch twin's correctness guard, --threads, and the training step's
reuse of its arrays (issue 6); the guard judges both sides against a float64 twin (issue 12)."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import numba
import numpy as np
import pytest

from cnnkit.bench import _CnnkitRunner, run_bench
from cnnkit.errors import CnnkitError
from cnnkit.spec.config import load_spec
from cnnkit.threads import configure_threads
from tests.clitools import flat, run_cli, run_subprocess

ROOT = Path(__file__).resolve().parents[2]

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
    from cnnkit.bench_torch import TOLERANCE, TorchRunner

    result = run_bench(load_spec(spec_path), steps=1, rounds=1, warmup=1, threads=1, vs="torch")
    torch = result.torch
    check = torch["check"]
    assert check["ok"] and check["tolerance"] == TOLERANCE
    keys = _param_keys(spec_path)
    for side in ("cnnkit", "torch"):  # both judged against the float64 twin, every array
        errors = check[side]
        assert list(errors["gradients"]) == keys
        values = [errors["output"], errors["loss"], *errors["gradients"].values()]
        assert all(0 <= v < 1e-5 for v in values), errors
        assert errors["max"] == max(values) and errors["ok"]
    assert torch["train_ratio"] == pytest.approx(
        result.train_images_per_s / torch["train_images_per_s"]
    )
    # the guard catches a kernel that computes something else
    spec = load_spec(spec_path)
    ours = _CnnkitRunner(spec, 8)
    theirs = TorchRunner(spec, ours.model, ours.loss_fn, 8, 1, ours.x, ours.y)
    ours.model.layers[2].params["kernel"][0, 0, 0, 0] += np.float32(0.5)
    with pytest.raises(CnnkitError, match="cnnkit's .* is off by .* from a float64 reference"):
        theirs.check_against(ours)


def _param_keys(spec_path) -> list[str]:
    return list(_CnnkitRunner(load_spec(spec_path), 1).model.named_params())


def _perturb_torch(monkeypatch, factor: float = 1e-3) -> None:
    """PyTorch's float32 side computes slightly off: its first conv kernel is scaled by
    1 + factor after cnnkit's weights are copied in (the float64 reference keeps them)."""
    from cnnkit.bench_torch import TorchRunner

    copy_weights = TorchRunner.copy_weights

    def perturbed(self, model):
        copy_weights(self, model)
        with self.torch.no_grad():
            self.copies[0][1].mul_(1 + factor)

    monkeypatch.setattr(TorchRunner, "copy_weights", perturbed)


def test_vs_torch_guard_does_not_blame_cnnkit_for_torch(spec_path, restore_threads, monkeypatch):
    """PyTorch off, cnnkit right: the benchmark runs and reports whose error it is."""
    pytest.importorskip("torch")
    from cnnkit.bench_torch import TOLERANCE

    _perturb_torch(monkeypatch)
    result = run_bench(load_spec(spec_path), steps=1, rounds=1, warmup=1, threads=1, vs="torch")
    check = result.torch["check"]
    assert check["ok"] and check["cnnkit"]["ok"] and check["cnnkit"]["max"] < 1e-5
    assert not check["torch"]["ok"] and check["torch"]["max"] > TOLERANCE
    assert check["torch"]["output"] > TOLERANCE
    assert check["torch"]["gradients"]["layers.0.kernel"] > TOLERANCE
    assert (
        check["torch"]["gradients"]["layers.0.kernel"]
        > 100 * (check["cnnkit"]["gradients"]["layers.0.kernel"])
    )
    text = flat(_render(result))
    assert "cnnkit within 1e-04 of a float64 reference" in text
    assert "PyTorch float32 is not" in text and "the benchmark ran" in text
    assert "gradient layers.0.kernel" in text and "PyTorch float32" in text


def _render(result) -> str:
    from rich.console import Console

    from cnnkit.cli.display import bench_renderables

    console = Console(width=100, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    for renderable in bench_renderables(result.to_dict()):
        console.print(renderable)
    return console.export_text()


def test_bench_vs_torch_json_reports_both_errors(spec_path, monkeypatch, capsys, restore_threads):
    pytest.importorskip("torch")
    _perturb_torch(monkeypatch)
    code, out, err = run_cli(
        "bench", str(spec_path), "--steps", "1", "--rounds", "1", "--threads", "1",
        "--vs", "torch", "--json", monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    check = json.loads(out)["torch"]["check"]
    keys = _param_keys(spec_path)
    for side in ("cnnkit", "torch"):
        assert set(check[side]) >= {"output", "loss", "gradients", "max", "worst", "ok"}
        assert list(check[side]["gradients"]) == keys
    assert check["cnnkit"]["ok"] is True and check["torch"]["ok"] is False
    assert check["torch"]["worst"] in ("output", "loss", *(f"gradient of {k}" for k in keys))


def test_bench_refuses_a_wrong_cnnkit_kernel(spec_path, monkeypatch, capsys, restore_threads):
    """A conv weight-gradient kernel that skips the batch's last image: exit 2, cnnkit named."""
    pytest.importorskip("torch")
    import cnnkit.nn.layers.conv as conv

    real = conv.conv2d_backward_weights

    def skips_last_image(x, dz, *args):
        real(x[:-1], dz[:-1], *args)

    monkeypatch.setattr(conv, "conv2d_backward_weights", skips_last_image)
    code, out, err = run_cli(
        "bench", str(spec_path), "--steps", "1", "--rounds", "1", "--threads", "1",
        "--vs", "torch", monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err
    text = flat(err)
    assert "cnnkit's gradient of layers." in text and "from a float64 reference" in text
    assert "tolerance 1e-04" in text and "images/s" not in out


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"model.layers[0].Conv2D.kernel_regularizer": {"l2": 0.01}}, "kernel_regularizer"),
        ({"loss": {"name": "categorical_crossentropy", "label_smoothing": 0.1}}, None),
    ],
)
def test_twin_models_the_loss_or_refuses(spec_path, change, refused, restore_threads):
    """What the twin (the guard's reference) cannot model is refused up front, never blamed
    on cnnkit; label smoothing it models."""
    pytest.importorskip("torch")
    from cnnkit.bench_torch import TorchRunner

    spec = load_spec(spec_path, change)
    ours = _CnnkitRunner(spec, 8)
    if refused:
        with pytest.raises(CnnkitError, match=f"cannot build {refused}"):
            TorchRunner(spec, ours.model, ours.loss_fn, 8, 1, ours.x, ours.y)
        return
    check = TorchRunner(spec, ours.model, ours.loss_fn, 8, 1, ours.x, ours.y).check_against(ours)
    assert check["cnnkit"]["ok"] and check["torch"]["ok"], check
