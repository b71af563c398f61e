"""Run cnnkit's real entry point: in-process (run_cli: cnnkit.cli.app.main, its error panels and
exit codes, without the second of imports a subprocess costs) or as a real process
(run_subprocess, start_subprocess) where the test needs one: signals, a pipe, a fresh import.

A subprocess always imports this checkout's cnnkit (PYTHONPATH), whatever is installed, and
never forced colour: a terminal width is set so that output wraps the same everywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from cnnkit.cli import app as cli
from cnnkit.cli import display

ROOT = Path(__file__).resolve().parents[1]  # the checkout: configs/, datasets/, cnnkit/
MNIST = ROOT / "cnnkit" / "data" / "mnist"


def tiny_pool_spec(name: str, epochs: int, train_samples: int, every_steps: int) -> str:
    """A spec of one max-pooling layer on synthetic data: two small kernels to compile, then
    thousands of steps a second (batch 8)."""
    data = f"source: synthetic, num_classes: 3, max_train_samples: {train_samples}"
    return f"""\
name: {name}
data: {{{data}, max_test_samples: 32}}
model:
  input_shape: [8, 8, 1]
  layers:
    - MaxPooling2D: {{pool_size: 2}}
    - Flatten: {{}}
    - Dense: {{units: 3, activation: softmax}}
train: {{epochs: {epochs}, batch_size: 8}}
logging: {{every_steps: {every_steps}}}
"""


# The environment the test run started with: a subprocess sees the user's environment, not
# what in-process tests left in os.environ (Numba's cache folder, OpenMP settings, ...).
STARTING_ENVIRONMENT = dict(os.environ)


def subprocess_env(columns: int = 120, env: dict | None = None) -> dict[str, str]:
    base = {**STARTING_ENVIRONMENT, "COLUMNS": str(columns), "PYTHONPATH": str(ROOT)}
    base.pop("FORCE_COLOR", None)
    return {**base, **(env or {})}


def run_subprocess(
    *args: str,
    cwd: Path = ROOT,
    columns: int = 120,
    env: dict | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """`python -m cnnkit ARGS...` to the end: returncode, stdout, stderr."""
    return subprocess.run(
        [sys.executable, "-m", "cnnkit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=subprocess_env(columns, env),
        timeout=timeout,
    )


def _as_from_a_terminal() -> None:
    """In the child before exec: SIGINT and SIGTERM at their defaults and unblocked, as for a
    command typed in a shell. An ignored signal survives exec (and Python then never installs
    its Ctrl-C handler): a native library loaded by an earlier in-process test left SIGINT
    ignored in the test process, and the Ctrl-C tests' cnnkit ignored it too."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def start_subprocess(
    *args: str, cwd: Path, columns: int = 200, env: dict | None = None
) -> subprocess.Popen:
    """`python -m cnnkit ARGS...` started in the background (stdout and stderr piped), with
    the signal dispositions of a command typed in a shell (the tests send it signals)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cnnkit", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(columns, env),
        preexec_fn=_as_from_a_terminal,
    )


def close_stdout_and_wait(
    proc: subprocess.Popen, after_lines: int = 0, timeout: float = 120
) -> tuple[int, str]:
    """Read after_lines lines of proc's stdout, close it (as `| head -N` exits), wait:
    (exit code, stderr). The process is killed if it is still running after the timeout."""
    try:
        for _ in range(after_lines):
            assert proc.stdout.readline(), proc.stderr.read()
        proc.stdout.close()
        code = proc.wait(timeout=timeout)
        return code, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def run_cli(*args: str, monkeypatch, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `cnnkit ARGS...`."""
    monkeypatch.setattr(sys, "argv", ["cnnkit", *args])
    for console in (display.console, display.error_console):
        monkeypatch.setattr(console, "width", 1000)  # long tmp paths unwrapped
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def flat(text: str) -> str:
    """Panel text without its borders and line wrapping."""
    for ch in "│╭╮╰╯─":
        text = text.replace(ch, " ")
    return " ".join(text.split())


WIDTH = 80  # the small terminal that output must fit (issue 12, line 10)


def assert_fits(text: str, cut: bool = False) -> None:
    """No line of text is wider than WIDTH, and (unless cut) none was cut with an ellipsis."""
    too_wide = [line for line in text.splitlines() if len(line.rstrip()) > WIDTH]
    assert not too_wide, too_wide
    assert cut or "…" not in text, text  # nothing cut with an ellipsis
