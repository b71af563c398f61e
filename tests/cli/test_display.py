"""Small terminals (issue 12, line 10): at 80 columns `summary` and `bench` keep every name,
shape and figure whole, and an error's caret stays under its column when the line is long."""

from __future__ import annotations

import io
import re

from rich.console import Console

from cnnkit import api
from cnnkit.cli import display
from cnnkit.spec.build import build_model
from cnnkit.spec.config import load_spec
from tests.clitools import ROOT, run_subprocess

WIDTH = 80


def assert_fits(text: str, cut: bool = False) -> None:
    too_wide = [line for line in text.splitlines() if len(line.rstrip()) > WIDTH]
    assert not too_wide, too_wide
    assert cut or "…" not in text, text  # nothing cut with an ellipsis


def test_alexnet_summary_at_80_columns_keeps_every_name_shape_and_figure():
    proc = run_subprocess("summary", "configs/alexnet.yaml", columns=WIDTH)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert_fits(out)
    info = api.summarize(load_spec(ROOT / "configs" / "alexnet.yaml"))
    lines = out.splitlines()
    for row, layer in zip(info.rows, info.memory.layers, strict=True):
        # the layer's row: its name, its whole shape and its figures on one line
        at = next(i for i, line in enumerate(lines) if re.match(rf"\s+{row.name}\s", line))
        line = lines[at]
        assert row.output_shape in line, (row, line)
        assert f"{row.params:,}" in line and f"{row.macs:,}" in line, line
        # the type on the layer's own line, or stacked under its name
        assert any(f"({row.type})" in x for x in lines[at : at + 2]), lines[at : at + 2]
        memory = [
            line
            for line in lines
            if re.match(rf"\s+{row.name}\s", line) and display.human_bytes(layer.training) in line
        ]
        assert memory, (row.name, display.human_bytes(layer.training))
    assert f"Total params: {info.totals['total']:,}" in out


def test_wide_terminal_keeps_the_one_row_per_layer_summary():
    proc = run_subprocess("summary", "configs/mnist.yaml", columns=160)
    assert proc.returncode == 0, proc.stderr
    assert re.search(
        r"batch_normalization \(BatchNormalization\)\s+\(None, 26, 26, 32\)", proc.stdout
    )
    assert "Memory per layer" not in proc.stdout


def test_bench_at_80_columns_keeps_every_figure(tmp_path):
    proc = run_subprocess(
        "bench", "configs/mnist.yaml", "--steps", "1", "--rounds", "1", columns=WIDTH
    )
    assert proc.returncode == 0, proc.stderr
    assert_fits(proc.stdout)
    assert "1 round of 1 batch (medians)" in proc.stdout  # not "1 rounds of 1 batches"
    for name in ("batch_normalization_1 (BatchNormalization)", "max_pooling2d_1"):
        assert name in proc.stdout
    assert re.search(r"^\s+training\s+[\d,]+\s+\d+\.\d\s*$", proc.stdout, re.MULTILINE), proc.stdout


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


def test_caret_stays_under_its_column_when_the_line_is_wider_than_the_terminal(tmp_path):
    long_line = (
        "    - Conv2D: {filters: 4, kernel_size: 3, activation: relu, padding: same, "
        "strides: 1, use_bias: true, dilation_rate: 1, filtres: 8}"
    )
    assert len(long_line) > 2 * WIDTH - 40
    spec = tmp_path / "wide.yaml"
    spec.write_text(
        "name: wide\n"
        "data: {source: synthetic, num_classes: 3}\n"
        "model:\n"
        "  input_shape: [12, 12, 1]\n"
        "  layers:\n"
        f"{long_line}\n"
        "    - Flatten: {}\n"
        "    - Dense: {units: 3, activation: softmax}\n"
    )
    proc = run_subprocess("check", str(spec), columns=WIDTH, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert_fits(proc.stderr, cut=True)  # the excerpt: a window of its line
    (at,) = [i for i, line in enumerate(lines) if re.match(r"│\s+\^\s+│$", line)]
    source, caret = lines[at - 1], lines[at]
    assert source.startswith("│    6 | …"), source  # the gutter kept, the start cut
    assert source[caret.index("^") :].startswith("filtres: 8}"), (source, caret)


def test_train_messages_keep_long_paths_on_one_line_in_an_80_column_pipe(tmp_path):
    out = tmp_path / "a_rather_long_folder_name_for_the_runs" / "and_one_more_level_of_them"
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "name: tiny\n"
        "data: {source: synthetic, num_classes: 3, max_train_samples: 32, max_test_samples: 8}\n"
        "model:\n  input_shape: [8, 8, 1]\n"
        "  layers: [{Flatten: {}}, {Dense: {units: 3, activation: softmax}}]\n"
        "train: {epochs: 1, batch_size: 8}\n"
    )
    proc = run_subprocess("train", str(spec), "--out", str(out), columns=WIDTH, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = out / "tiny"
    lines = proc.stdout.splitlines()
    assert len(f"Next: cnnkit evaluate {run_dir}") > WIDTH
    assert f"Run directory: {run_dir}" in lines, proc.stdout  # whole, not broken at 80
    assert f"Run directory: {run_dir} (report.md, curves.png)" in lines, proc.stdout
    assert f"Next: cnnkit evaluate {run_dir}" in lines, proc.stdout


def test_counts_in_messages_agree_with_their_nouns():
    from cnnkit.data.images import _conversion_note

    assert _conversion_note("L", 3).startswith("converted from L (1 channel) to RGB (3 channels)")
    assert _conversion_note("RGBA", 1).startswith("converted from RGBA (4 channels) to grayscale")
    assert display.plural(1, "batch") == "1 batch" and display.plural(2, "batch") == "2 batches"
    assert display.plural(1, "round") == "1 round" and display.plural(1_000, "key") == "1,000 keys"
