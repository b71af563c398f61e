"""The rendering of results (cnnkit.cli.display) at 80 columns: the widest bench table (--vs
torch) keeps every figure whole; counts in messages agree with their nouns. The same in a real
process: tests/e2e/test_small_terminals.py."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cnnkit import api
from cnnkit.cli import display
from cnnkit.spec.build import build_model
from cnnkit.spec.config import load_spec
from tests.clitools import ROOT, WIDTH, assert_fits


@pytest.mark.e2e
def test_bench_with_pytorch_columns_at_80_columns():
    """The widest table (--vs torch): a real bench's figures, with a PyTorch side beside them."""
    result = api.bench(load_spec(ROOT / "configs" / "mnist.yaml"), steps=1, rounds=1).to_dict()
    result["torch"] = {
        "version": "2.5.1+cpu",
        "train_images_per_s": result["train_images_per_s"] * 2,
        "infer_images_per_s": result["infer_images_per_s"] * 2,
        "train_ratio": 0.5,
        "infer_ratio": 0.5,
        "check": _guard_result(list(result_gradient_keys(result))),
    }
    result["rounds_detail"] = [{"train_ratio": 0.5, "infer_ratio": 0.5}]
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


def result_gradient_keys(result: dict) -> list[str]:
    """Parameter names of the benchmarked model, as the guard reports them."""
    spec = load_spec(ROOT / "configs" / "mnist.yaml")

    return list(build_model(spec).build(spec.seed).named_params())


def _guard_result(keys: list[str]) -> dict:
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
        "torch": side(theirs, False),
    }


def test_counts_in_messages_agree_with_their_nouns():
    from cnnkit.data.images import _conversion_note

    assert _conversion_note("L", 3).startswith("converted from L (1 channel) to RGB (3 channels)")
    assert _conversion_note("RGBA", 1).startswith("converted from RGBA (4 channels) to grayscale")
    assert display.plural(1, "batch") == "1 batch" and display.plural(2, "batch") == "2 batches"
    assert display.plural(1, "round") == "1 round" and display.plural(1_000, "key") == "1,000 keys"
