"""The rendering of results (cnnkit.cli.display): at 80 columns the widest bench table (--vs
torch) and the runs table keep every figure whole; counts in messages agree with their nouns;
outside a terminal training prints plain lines. The same in a real
process: tests/e2e/test_small_terminals.py."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cnnkit import api
from cnnkit.cli import display
from cnnkit.cli.display import PlainReporter
from cnnkit.spec.build import build_model
from cnnkit.spec.config import load_spec
from tests.clitools import ROOT, WIDTH, assert_fits


@pytest.fixture(scope="module")
def mnist_bench() -> dict:
    """A real bench's figures (no peer), shared by the tables that add peers beside them."""
    return api.bench(load_spec(ROOT / "configs" / "mnist.yaml"), steps=1, rounds=1).to_dict()


@pytest.mark.e2e
def test_bench_with_pytorch_columns_at_80_columns(mnist_bench):
    """The widest table (--vs torch): a real bench's figures, with a PyTorch side beside them."""
    result = dict(mnist_bench)
    result["torch"] = {
        "version": "2.5.1+cpu",
        "train_images_per_s": result["train_images_per_s"] * 2,
        "infer_images_per_s": result["infer_images_per_s"] * 2,
        "train_ratio": 0.5,
        "infer_ratio": 0.5,
        "check": _guard_result(list(result_gradient_keys(result))),
    }
    result["rounds_detail"] = [{"torch_train_ratio": 0.5, "torch_infer_ratio": 0.5}]
    out = io.StringIO()
    console = Console(file=out, width=WIDTH)
    for renderable in display.bench_renderables(result):
        console.print(renderable)
    text = out.getvalue()
    assert_fits(text)
    assert "cnnkit / PyTorch" in text and "PyTorch images/s" in text
    assert f"{result['torch']['train_images_per_s']:,.0f}" in text
    # the guard's table: both sides' errors against the float64 reference, whole
    assert "Error vs a float64 reference" in text and "2.8e-03" in text and "5.9e-07" in text


@pytest.mark.e2e
def test_bench_with_pytorch_and_keras_columns_at_80_columns(mnist_bench):
    """--vs torch,keras: both peers' columns, ratios, guards, and the faster peer's ratio."""
    result = dict(mnist_bench)
    keys = list(result_gradient_keys(result))
    for name, label, factor in (("torch", "PyTorch", 2.0), ("keras", "Keras", 4.0)):
        result[name] = {
            "label": label,
            "version": "9.9.9",
            "train_images_per_s": result["train_images_per_s"] * factor,
            "infer_images_per_s": result["infer_images_per_s"] * factor,
            "train_ratio": 1 / factor,
            "infer_ratio": 1 / factor,
            "setup": {"chosen": {"train": "model.train_on_batch, jit_compile=True",
                                 "infer": "tf.function, jit_compile=False"}},
            "check": {**_guard_result(keys, name), "peer": name, "peer_label": label},
        }  # fmt: skip
    result["rounds_detail"] = [
        {"torch_train_ratio": 0.5, "torch_infer_ratio": 0.5,
         "keras_train_ratio": 0.25, "keras_infer_ratio": 0.25}
    ]  # fmt: skip
    result["vs_faster"] = {"train_ratio": 0.25, "infer_ratio": 0.25}
    out = io.StringIO()
    console = Console(file=out, width=WIDTH)
    for renderable in display.bench_renderables(result):
        console.print(renderable)
    text = out.getvalue()
    assert_fits(text)
    assert f"{result['keras']['train_images_per_s']:,.0f}" in text
    assert f"{result['torch']['train_images_per_s']:,.0f}" in text
    assert "Keras float32" in text and "PyTorch float32" in text
    assert "the faster peer" in text and "0.25×" in text and "jit_compile=True" in text


def result_gradient_keys(result: dict) -> list[str]:
    """Parameter names of the benchmarked model, as the guard reports them."""
    spec = load_spec(ROOT / "configs" / "mnist.yaml")

    return list(build_model(spec).build(spec.seed).named_params())


def _guard_result(keys: list[str], peer: str = "torch") -> dict:
    """A guard result in cnnkit.bench_torch's shape: cnnkit fine, PyTorch's first gradient off."""
    ours = {k: 5.9e-07 for k in keys}
    theirs = {k: 2.8e-03 if i == 0 else 3e-07 for i, k in enumerate(keys)}
    side = lambda grads, ok: {  # noqa: E731
        "output": 6e-07,
        "loss": 5e-08,
        "gradients": grads,
        "max": max(grads.values()),
        "worst": f"gradient of {keys[0]}",
        "ok": ok,
    }
    return {
        "tolerance": 1e-4,
        "reference": "float64 twin",
        "measure": "max|x-ref|/max|ref|",
        "cnnkit": side(ours, True),
        peer: side(theirs, False),
    }


def test_counts_in_messages_agree_with_their_nouns():
    from cnnkit.data.images import _conversion_note

    assert _conversion_note("L", 3).startswith("converted from L (1 channel) to RGB (3 channels)")
    assert _conversion_note("RGBA", 1).startswith("converted from RGBA (4 channels) to grayscale")
    assert display.plural(1, "batch") == "1 batch" and display.plural(2, "batch") == "2 batches"
    assert display.plural(1, "round") == "1 round" and display.plural(1_000, "key") == "1,000 keys"


def test_plain_reporter_lines():
    out = io.StringIO()
    reporter = PlainReporter(every_steps=2, file=out)
    reporter.epoch_begin(1, 3, 5)
    for step in range(1, 6):
        reporter.step(step, 0.5, {"accuracy": 0.75}, 100.0)
    row = {"epoch": 1, "loss": 0.5, "accuracy": 0.75, "val_loss": 0.6, "images_per_s": 100.0}
    reporter.epoch_end({**row, "seconds": 1.0, "lr": 0.001})
    lines = out.getvalue().splitlines()
    assert lines == [
        "epoch 1/3 step 2/5  loss 0.5000  accuracy 0.7500  100 img/s",
        "epoch 1/3 step 4/5  loss 0.5000  accuracy 0.7500  100 img/s",
        "Epoch 1/3  loss 0.5000  accuracy 0.7500  val_loss 0.6000  100 img/s  1.0s",
    ]


def test_runs_table_in_80_columns_never_cuts_figures_or_state(monkeypatch):
    from rich.console import Console

    from cnnkit.cli import display

    rows = [
        {
            "name": f"a_rather_long_experiment_name-{i}",
            "started": "2026-11-22T03:09:00",
            "dataset": "fashion_mnist",
            "epochs_done": 12,
            "epochs_planned": 12,
            "best_val_accuracy": 0.9288,
            "best_epoch": 12,
            "test_accuracy": 0.9911,
            "images_per_s": 12345.0,
            "state": state,
        }
        for i, state in enumerate(("interrupted", "finished"))
    ]
    console = Console(width=80, file=io.StringIO(), color_system=None)
    monkeypatch.setattr(display, "console", console)
    console.print(display.runs_table(rows, "runs"))
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for figure in ("12/12", "0.9288 (12)", "0.9911", "12,345", "interrupted", "finished"):
        assert figure in text, (figure, text)
