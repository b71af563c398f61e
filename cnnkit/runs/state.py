"""run.json: the state of a run (running, finished, interrupted, failed), kept current.

Written atomically when training starts, at the end of every epoch and when training ends, so
`cnnkit runs` can tell a finished run from one that was stopped, crashed or is still going.
The training code calls these functions; anything else only reads the record (read_state).

    {"state": "running", "started": "2026-11-22T01:50:03+00:00", "updated": "...",
     "ended": null, "epochs_done": 3, "epochs_planned": 10, "images_per_s": 1830.5,
     "pid": 1234, "host": "...", "error": null, "workers": 1}

workers: the number of data-parallel ranks that train the run (cnnkit.distributed); pid and
host are rank 0's.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cnnkit.io import write_json
from cnnkit.runs.layout import RunDir


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """The record, or None when the run has none (written before run.json existed) or it is
    unreadable. A 'running' run whose process is gone (killed: no chance to say so) reads as
    'interrupted' with `"killed": true`."""
    state = RunDir(run_dir).read_state()
    if state is None:
        return None
    if state.get("state") == "running" and not _alive(state):
        state = {**state, "state": "interrupted", "killed": True}
    return state


def _alive(state: dict[str, Any]) -> bool:
    pid, host = state.get("pid"), state.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return True  # another machine's run: cannot tell, believe the record
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _update(run_dir: Path, **changes: Any) -> dict[str, Any]:
    run = RunDir(run_dir)
    state = run.read_state() or {}  # an unreadable record is replaced by a readable one
    state.update(changes, updated=now())
    write_json(run.state, state)
    return state


def mark_running(
    run_dir: Path, epochs_planned: int, epochs_done: int = 0, workers: int | None = None
) -> dict[str, Any]:
    """Training starts (or resumes: epochs_done > 0; `started` is kept, `resumed` set).
    workers: the data-parallel ranks (a new run; a resumed one keeps its record's)."""
    fields: dict[str, Any] = {
        "state": "running",
        "ended": None,
        "error": None,
        "epochs_done": epochs_done,
        "epochs_planned": epochs_planned,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    if workers is not None:
        fields["workers"] = workers
    if RunDir(run_dir).state.is_file():
        fields["resumed"] = now()
    else:
        fields["started"] = now()
    return _update(run_dir, **fields)


def mark_epoch(
    run_dir: Path, epochs_done: int, images_per_s: float | None = None
) -> dict[str, Any]:
    """An epoch ended: epochs_done and the mean training throughput so far."""
    fields: dict[str, Any] = {"epochs_done": epochs_done}
    if images_per_s is not None:
        fields["images_per_s"] = images_per_s
    return _update(run_dir, **fields)


def mark_finished(run_dir: Path) -> dict[str, Any]:
    return _update(run_dir, state="finished", ended=now())


def mark_interrupted(run_dir: Path) -> dict[str, Any]:
    """Stopped by the user (Ctrl+C / SIGINT): what the finished epochs wrote is kept."""
    return _update(run_dir, state="interrupted", ended=now())


def mark_failed(run_dir: Path, error: BaseException | str) -> dict[str, Any]:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return _update(run_dir, state="failed", ended=now(), error=text)
