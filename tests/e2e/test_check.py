"""`cnnkit check` and `cnnkit summary` in a real process: the summary, every error at once, the
memory warning, and no numba imported to check a spec."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial

from cnnkit import api
from tests.clitools import ROOT, run_subprocess

cnnkit = partial(run_subprocess, columns=160, timeout=120)


def test_check_ok_prints_summary_and_ok():
    result = cnnkit("check", "configs/mnist.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "conv2d_1 (Conv2D)" in result.stdout
    assert "training step:" in result.stdout


def test_check_reports_every_error_and_exits_2(tmp_path):
    spec = tmp_path / "bad.yaml"
    text = (ROOT / "configs" / "mnist.yaml").read_text()
    spec.write_text(text.replace("epochs: 11", "epochs: 0").replace("units: 10,", "unit: 10,"))
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


# -- what check finds on disk without reading an image ------------------------------------
