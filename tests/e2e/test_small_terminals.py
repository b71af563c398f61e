"""Small terminals (issue 12, line 10), in a real process at 80 columns: `summary` and `bench` keep
every name, shape and figure whole, an error's caret stays under its column when the line is
long, and train's messages keep long paths on one line."""

from __future__ import annotations

import re

from cnnkit import api
from cnnkit.cli import display
from cnnkit.spec.config import load_spec
from tests.clitools import ROOT, WIDTH, assert_fits, run_subprocess


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
        r"batch_normalization \(BatchNormalization\)\s+\(None, 13, 13, 32\)", proc.stdout
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
