"""`cnnkit train --workers N`: run the same command as N MPI ranks on this machine.

cnnkit starts the `mpiexec` that the `mpi` extra installs (Open MPI's wheel puts it next to
the Python executable) with `-n N` and its own command line (the interpreter's, as it was
started: `cnnkit ...`, `python -m cnnkit ...`) minus `--workers`; the ranks
find out who they are from the launcher's variables (cnnkit.distributed). This process
stays the one the user talks to:

- mpiexec runs in a session of its own, so Ctrl-C at the terminal reaches only this process,
  which forwards SIGINT as SIGUSR1 and SIGTERM as SIGUSR2 (the signals Open MPI passes on to
  every rank; its own SIGINT/SIGTERM would kill the ranks at once): every rank then stops
  after the same step and rank 0 saves last.npz;
- a rank that dies makes mpiexec end the others (and a rank whose peer died exits by its
  watchdog, cnnkit.distributed); this process then says so and exits non-zero;
- whatever happens, mpiexec's process group is killed before this process returns: no rank
  is left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cnnkit.distributed import INSTALL_HINT, PEER_LOST_EXIT
from cnnkit.errors import ExtraMissing

LAUNCHER_PID = "CNNKIT_LAUNCHER_PID"
FORWARDED = {signal.SIGINT: signal.SIGUSR1, signal.SIGTERM: signal.SIGUSR2}
# what the ranks' exits mean (cnnkit's own codes pass through silently)
KNOWN_EXITS = {0, 1, 2, 3, 130, 141, 143}


def find_mpiexec() -> Path:
    """The mpiexec of the `mpi` extra: next to sys.executable (a venv's bin/), else on PATH.
    ExtraMissing when mpi4py or mpiexec is missing."""
    try:
        import mpi4py  # noqa: F401  (the package only: MPI starts in the ranks)
    except ImportError as error:
        raise ExtraMissing(
            f"--workers needs mpi4py and an MPI library, which are not installed ({error})",
            hint=f"Install them with: {INSTALL_HINT} (mpi4py and Open MPI from PyPI).",
        ) from None
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("mpiexec")
    if found is None:
        raise ExtraMissing(
            "--workers needs an MPI launcher (mpiexec), and none was found",
            hint=f"Install Open MPI from PyPI with: {INSTALL_HINT}, or put mpiexec on PATH.",
        )
    return Path(found)


def launch_command(mpiexec: Path, workers: int, args: Sequence[str]) -> list[str]:
    """mpiexec's command line: N ranks of `python ARGS` on this machine, bound to
    no core (each rank's Numba threads share the cores: cores / N each, cnnkit.threads),
    more ranks than cores allowed, TCP (when used at all) on loopback only."""
    command = [str(mpiexec), "-n", str(workers), "--oversubscribe", "--bind-to", "none"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-run-as-root")  # CI runs as root
    command += ["--mca", "btl_tcp_if_include", "lo"]
    return [*command, sys.executable, *args]


def without_workers(argv: Sequence[str]) -> list[str]:
    """argv minus `--workers N` / `--workers=N` (the ranks run the rest as given)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def run_workers(workers: int, argv: Sequence[str] | None = None) -> int:
    """Run this process's command (argv: the interpreter's arguments, default
    sys.orig_argv[1:]) without --workers as `workers` MPI ranks; their exit code."""
    mpiexec = find_mpiexec()
    args = without_workers(sys.orig_argv[1:] if argv is None else argv)
    command = launch_command(mpiexec, workers, args)
    env = {
        **os.environ,
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        LAUNCHER_PID: str(os.getpid()),  # whom to signal to stop every rank (tests, scripts)
    }
    # mpiexec gives the ranks a pseudo-terminal for stdout whatever this process's is: tell
    # Rich what the user's really is (live progress or plain lines) and how wide
    env.setdefault("TTY_COMPATIBLE", "1" if sys.stdout.isatty() else "0")
    env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
    process = subprocess.Popen(command, env=env, start_new_session=True)

    forwarded: list[int] = []

    def forward(signum, frame) -> None:
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, FORWARDED[signum])

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        code = process.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _kill_group(process)
    if code in KNOWN_EXITS:
        return code
    if forwarded and code in {128 + s for s in FORWARDED.values()}:
        # the signal reached a rank still starting (importing), before cnnkit handles it
        print("Interrupted (no training step in progress; nothing to save).", file=sys.stderr)
        return 128 + forwarded[0]
    why = (
        "a worker waited in vain for the others (one of them died or hangs)"
        if code == PEER_LOST_EXIT
        else f"a worker stopped unexpectedly (mpiexec exited with {code})"
    )
    print(
        f"Error: {why}; every worker has stopped. The run directory keeps its last "
        "checkpoint: continue with cnnkit train --resume RUN_DIR --workers "
        f"{workers}.",
        file=sys.stderr,
        flush=True,
    )
    return code if 0 < code < 256 else 1


def _kill_group(process: subprocess.Popen) -> None:
    """mpiexec's session: whatever is still in it (nothing, normally) is killed. Open MPI puts
    each rank in a process group of its own, inside mpiexec's session: the session is what
    finds them all."""
    for pid in session_members(process.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.wait(timeout=5)


def session_members(sid: int) -> list[int]:
    """The processes of session `sid` (Linux /proc; elsewhere only its leader)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return [sid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and int(fields[3]) == sid:  # state ppid pgrp session
            members.append(int(entry.name))
    return members
