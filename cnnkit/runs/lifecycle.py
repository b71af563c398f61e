"""A run's life around training: run.json says how it ended, and report.md is rewritten
whatever the ending (finished, interrupted by a signal, failed)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from cnnkit.interrupts import Interrupted
from cnnkit.runs.report import write_report
from cnnkit.runs.state import mark_failed, mark_finished, mark_interrupted, read_state


@contextlib.contextmanager
def track_run_state(run_dir: Path) -> Iterator[None]:
    """Around training (after mark_running): finished when the block ends normally (unless
    the code inside already marked the run interrupted, e.g. a SIGINT handler that stops after
    the epoch), interrupted on KeyboardInterrupt, failed on any other exception. report.md is
    rewritten in every case."""
    try:
        yield
    except (KeyboardInterrupt, Interrupted):  # Interrupted: stopped cleanly on a signal
        mark_interrupted(run_dir)
        _report(run_dir)
        raise
    except BaseException as exc:
        mark_failed(run_dir, exc)
        _report(run_dir)
        raise
    state = read_state(run_dir) or {}
    if state.get("state") == "running":
        mark_finished(run_dir)
    write_report(run_dir)


def _report(run_dir: Path) -> None:
    with contextlib.suppress(OSError):  # a full disk must not hide why training stopped
        write_report(run_dir)
