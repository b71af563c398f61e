"""`cnnkit bench` in a real process: --json, the table and --batch-size, a bad thread count."""

from __future__ import annotations

import json

import pytest

from tests.clitools import run_subprocess


def test_bench_json(bench_spec):
    result = run_subprocess(
        "bench", str(bench_spec), "--steps", "2", "--rounds", "2", "--threads", "1", "--json"
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
    # issue 17 line 3: the measured peak, and each layer's GFLOP/s as a share of it
    peak = report["peak_gflops"]
    assert peak > 0
    rows = {row["name"]: row for row in report["layers"]}
    for name in ("conv2d", "conv2d_1", "dense", "dense_1"):
        row = rows[name]
        for kind in ("forward", "backward"):
            assert row[f"{kind}_gflops"] > 0
            assert row[f"{kind}_peak_share"] == pytest.approx(row[f"{kind}_gflops"] / peak)
    # conv2d reads the input: its backward is the weight gradient alone (half of conv2d_1's)
    conv = rows["conv2d"]
    assert conv["forward_gflops"] / conv["backward_gflops"] == pytest.approx(
        conv["backward_ms"] / conv["forward_ms"]
    )
    for name in ("max_pooling2d", "flatten"):
        assert rows[name]["forward_gflops"] is None and rows[name]["backward_peak_share"] is None


def test_bench_table_and_batch_size(bench_spec):
    result = run_subprocess(
        "bench", str(bench_spec), "--steps", "1", "--rounds", "1", "--batch-size", "4"
    )
    assert result.returncode == 0, result.stderr
    assert "batch 4" in result.stdout and "training" in result.stdout
    assert "conv2d_1 (Conv2D)" in result.stdout
    assert "FP32 peak, measured (FMA microkernel" in result.stdout
    assert "GFLOP/s (peak)" in result.stdout and "%)" in result.stdout


def test_bad_thread_count_is_a_user_error(bench_spec):
    result = run_subprocess(
        "bench", str(bench_spec), "--steps", "1", env={"CNNKIT_NUM_THREADS": "two"}
    )
    assert result.returncode == 2
    assert "CNNKIT_NUM_THREADS" in result.stderr and "Traceback" not in result.stderr
