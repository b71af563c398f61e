"""A run's life around training: run.json says how it ended, and report.md is rewritten
whatever the ending (finished, interrupted by a signal, failed)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from cnnkit.interrupts import Interrupted
from cnnkit.runs.report import write_report
from cnnkit.runs.state import mark_failed, mark_finished, mark_interrupted, read_state


def record_ending(run_dir: Path, error: BaseException | None = None) -> None:
    """After training (which began with mark_running): finished when error is None (unless
    the run was already marked otherwise), interrupted on a signal (Interrupted or
    KeyboardInterrupt), failed on any other exception. report.md is rewritten in every case."""
    if error is None:
        state = read_state(run_dir) or {}
        if state.get("state") == "running":
            mark_finished(run_dir)
        write_report(run_dir)
        return
    if isinstance(error, (KeyboardInterrupt, Interrupted)):
        mark_interrupted(run_dir)
    else:
        mark_failed(run_dir, error)
    with contextlib.suppress(OSError):  # a full disk must not hide why training stopped
        write_report(run_dir)
