"""`cnnkit bench` (cnnkit.bench) in-process: the training step's reuse of its arrays (issue 6) and
the PyTorch twin's correctness guard, which judges both sides against a float64 twin (issue 12).
In a real process: tests/e2e/test_bench.py; --threads: tests/test_threads.py."""

from __future__ import annotations

import json
import os
import sys
import tracemalloc

import numpy as np
import pytest

from cnnkit.bench import _CnnkitRunner, parse_vs, run_bench
from cnnkit.errors import CnnkitError
from cnnkit.spec.config import load_spec
from tests.clitools import flat, run_cli


def test_training_step_reuses_its_arrays(bench_spec):
    """After the first step, a step allocates far less than one conv output (line 6)."""
    runner = _CnnkitRunner(load_spec(bench_spec, {"train.batch_size": 256}), 256)
    runner.train_step()
    runner.train_step()
    tracemalloc.start()
    runner.train_step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    conv_out = 256 * 12 * 12 * 8 * 4  # bytes of the first conv layer's output
    assert peak < conv_out / 2, (peak, conv_out)


@pytest.mark.e2e
def test_vs_torch_guard(bench_spec, restore_threads):
    pytest.importorskip("torch")
    from cnnkit.bench_torch import TOLERANCE, TorchRunner

    result = run_bench(load_spec(bench_spec), steps=1, rounds=1, warmup=1, threads=1, vs="torch")
    torch = result.torch
    check = torch["check"]
    assert check["ok"] and check["tolerance"] == TOLERANCE
    keys = _param_keys(bench_spec)
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
    spec = load_spec(bench_spec)
    ours = _CnnkitRunner(spec, 8)
    theirs = TorchRunner(spec, ours.model, ours.loss_fn, 8, 1, ours.x, ours.y)
    ours.model.layers[2].params["kernel"][0, 0, 0, 0] += np.float32(0.5)
    with pytest.raises(CnnkitError, match="cnnkit's .* is off by .* from a float64 reference"):
        theirs.check_against(ours)


def _param_keys(bench_spec) -> list[str]:
    return list(_CnnkitRunner(load_spec(bench_spec), 1).model.named_params())


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


@pytest.mark.e2e
def test_vs_torch_guard_does_not_blame_cnnkit_for_torch(bench_spec, restore_threads, monkeypatch):
    """PyTorch off, cnnkit right: the benchmark runs and reports whose error it is."""
    pytest.importorskip("torch")
    from cnnkit.bench_torch import TOLERANCE

    _perturb_torch(monkeypatch)
    result = run_bench(load_spec(bench_spec), steps=1, rounds=1, warmup=1, threads=1, vs="torch")
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
    assert "Correctness guard against the float64 PyTorch twin: cnnkit within 1e-04" in text
    assert "PyTorch float32 is not" in text and "the benchmark ran" in text
    assert "gradient layers.0.kernel" in text and "PyTorch float32" in text


def _render(result) -> str:
    from rich.console import Console

    from cnnkit.cli.display import bench_renderables

    console = Console(width=100, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    for renderable in bench_renderables(result.to_dict()):
        console.print(renderable)
    return console.export_text()


@pytest.mark.e2e
def test_bench_vs_torch_json_reports_both_errors(bench_spec, monkeypatch, capsys, restore_threads):
    pytest.importorskip("torch")
    _perturb_torch(monkeypatch)
    code, out, err = run_cli(
        "bench", str(bench_spec), "--steps", "1", "--rounds", "1", "--threads", "1",
        "--vs", "torch", "--json", monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    check = json.loads(out)["torch"]["check"]
    keys = _param_keys(bench_spec)
    for side in ("cnnkit", "torch"):
        assert set(check[side]) >= {"output", "loss", "gradients", "max", "worst", "ok"}
        assert list(check[side]["gradients"]) == keys
    assert check["cnnkit"]["ok"] is True and check["torch"]["ok"] is False
    assert check["torch"]["worst"] in ("output", "loss", *(f"gradient of {k}" for k in keys))


@pytest.mark.e2e
def test_bench_refuses_a_wrong_cnnkit_kernel(bench_spec, monkeypatch, capsys, restore_threads):
    """A conv weight-gradient kernel that skips the batch's last image: exit 2, cnnkit named."""
    pytest.importorskip("torch")
    import cnnkit.nn.layers.conv as conv

    real = conv.conv2d_backward_weights

    def skips_last_image(x, dz, *args):
        real(x[:-1], dz[:-1], *args)

    monkeypatch.setattr(conv, "conv2d_backward_weights", skips_last_image)
    code, out, err = run_cli(
        "bench", str(bench_spec), "--steps", "1", "--rounds", "1", "--threads", "1",
        "--vs", "torch", monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err
    text = flat(err)
    assert "cnnkit's gradient of layers." in text and "from a float64 reference" in text
    assert "tolerance 1e-04" in text and "images/s" not in out


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"model.layers[0].Conv2D.kernel_regularizer": {"l2": 0.5}}, None),
        ({"model.layers[0].Conv2D.kernel_regularizer": {"l1_l2": {"l1": 0.3, "l2": 0.2}}}, None),
        ({"loss": {"name": "categorical_crossentropy", "label_smoothing": 0.1}}, None),
        ({"optimizer": {"name": "adagrad"}}, "the adagrad optimizer"),
    ],
)
def test_twin_models_the_loss_or_refuses(bench_spec, change, refused, restore_threads):
    """What the twin (the guard's reference) cannot model is refused up front, never blamed
    on cnnkit; label smoothing and the regularizers' penalties (large enough here to weigh in
    the loss and the gradients) it models."""
    pytest.importorskip("torch")
    from cnnkit.bench_torch import TorchRunner

    spec = load_spec(bench_spec, change)
    ours = _CnnkitRunner(spec, 8)
    if refused:
        with pytest.raises(CnnkitError, match=f"cannot build {refused}"):
            TorchRunner(spec, ours.model, ours.loss_fn, 8, 1, ours.x, ours.y)
        return
    check = TorchRunner(spec, ours.model, ours.loss_fn, 8, 1, ours.x, ours.y).check_against(ours)
    assert check["cnnkit"]["ok"] and check["torch"]["ok"], check


def test_vs_names_the_peers_in_order():
    assert parse_vs(None) == ()
    assert parse_vs("torch") == ("torch",) and parse_vs("keras") == ("keras",)
    assert parse_vs("torch,keras") == ("torch", "keras")
    assert parse_vs("Keras, torch") == ("keras", "torch")  # the order of alternation
    for bad in ("jax", "torch,torch", "torch,", ""):
        with pytest.raises(CnnkitError, match="is not supported") as error:
            parse_vs(bad)
        assert "--vs torch, --vs keras or --vs torch,keras" in error.value.hint


@pytest.mark.parametrize(
    ("vs", "module", "install"),
    [("keras", "tensorflow", "pip install tensorflow-cpu"), ("torch,keras", "torch", "torch")],
)
def test_a_missing_peer_says_what_to_install(bench_spec, monkeypatch, capsys, vs, module, install):
    """Without the peer's package (hidden here where it is installed): exit 2, no traceback,
    the pip line; nothing is timed. A bad --vs: exit 2 naming the valid ones."""
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    code, out, err = run_cli(
        "bench", str(bench_spec), "--steps", "1", "--rounds", "1", "--vs", vs,
        monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err and "images/s" not in out
    text = flat(err)
    assert "needs" in text and "which is not installed" in text and install in text
    code, _, err = run_cli(
        "bench", str(bench_spec), "--vs", "tensorflow", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "--vs torch,keras" in flat(err)
