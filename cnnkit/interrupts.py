"""Ctrl-C and SIGTERM during training (and a closed stdout pipe): finish the step, save, say
how to resume.

The first SIGINT or SIGTERM only sets a flag; the training loop looks at it after every step,
writes last.npz and its resume state, and raises `Interrupted`. A second signal exits at once
(os._exit: no cleanup code runs, no file is written or renamed), except during the few
milliseconds in which a checkpoint's finished files are renamed into place (`critical()`):
then it waits for the renames, so the set on disk is never half old, half new.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from cnnkit.distributed import env_rank, under_mpi

# under MPI: Open MPI's mpiexec kills the ranks on SIGINT/SIGTERM but passes SIGUSR1/SIGUSR2
# on to every rank; `--workers` (cnnkit.launch) forwards the user's signals as these
FORWARDED_AS = {signal.SIGUSR1: signal.SIGINT, signal.SIGUSR2: signal.SIGTERM}


class Interrupted(Exception):  # noqa: N818 (a request, not an error)
    """Training stopped on a signal after saving; the CLI exits with 128 + signum."""

    def __init__(self, signum: int, run_dir, epoch: int, step: int, steps: int, workers: int = 1):
        super().__init__(f"interrupted by signal {signum}")
        self.signum, self.run_dir = signum, run_dir
        self.epoch, self.step, self.steps = epoch, step, steps
        self.workers = workers  # data-parallel ranks: a resume needs as many

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 SIGINT, 143 SIGTERM


class CompileInterrupted(Exception):  # noqa: N818 (a request, not an error)
    """Ctrl-C while the kernels compiled (cnnkit.train.warmup), before training wrote anything. Not
    a KeyboardInterrupt, which Typer turns into a silent exit: the CLI says what happened and
    exits with 130 at once (the compiling thread cannot be stopped, only left behind)."""

    exit_code = 130

    def __init__(self, run_dir=None):
        where = f"{run_dir} is as it was" if run_dir else "no run directory was created"
        super().__init__(
            f"Interrupted while compiling the kernels, before training started: {where}."
        )
        self.run_dir = run_dir


@dataclass
class StopFlag:
    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None


_in_critical = 0
_exit_pending: int | None = None
_training: StopFlag | None = None  # the flag of the training loop running now (catch_signals)
_stdout_closed = False


def output_closed() -> None:
    """stdout's reader has gone (`cnnkit train SPEC | head -3`: BrokenPipeError). Training
    stops as after Ctrl-C: the step finishes, last.npz is saved, and the run ends interrupted
    with 128 + SIGPIPE = 141, as a Unix tool killed by a closed pipe, and can be resumed. From
    now on stdout writes to /dev/null, so nothing else fails on it (Python's advice on
    SIGPIPE); the resume hint goes to stderr."""
    global _stdout_closed
    first = not _stdout_closed
    _stdout_closed = True
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    if first and _training is not None and not _training.requested:
        _training.signum = signal.SIGPIPE
        _say("The output pipe closed: stopping after the current step and saving a checkpoint.")


def stdout_was_closed() -> bool:
    """stdout's reader went away during this process (output_closed has run)."""
    return _stdout_closed


def translate_forwarded_signals() -> None:
    """Under MPI, from the process's start: SIGUSR1 / SIGUSR2 (what mpiexec passes on for
    `--workers`' Ctrl-C and SIGTERM) act as SIGINT / SIGTERM, also before training (loading
    data, compiling), where their default action would kill the rank unannounced. Training
    (catch_signals) handles them itself."""
    if not under_mpi() or threading.current_thread() is not threading.main_thread():
        return
    for forwarded, original in FORWARDED_AS.items():
        signal.signal(forwarded, lambda s, f, original=original: signal.raise_signal(original))


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A second signal arriving inside waits until the block ends (checkpoint renames)."""
    global _in_critical
    _in_critical += 1
    try:
        yield
    finally:
        _in_critical -= 1
        if _in_critical == 0 and _exit_pending is not None:
            os._exit(_exit_pending)


def _say(text: str) -> None:
    # os.write: safe from a signal handler, even while Rich is drawing the progress bar
    if env_rank() != 0:  # data-parallel: rank 0 speaks for every rank
        return
    with contextlib.suppress(OSError):
        os.write(2, f"\n{text}\n".encode())


@contextlib.contextmanager
def catch_signals() -> Iterator[StopFlag]:
    """Install the SIGINT/SIGTERM handlers for the duration of training (main thread only;
    elsewhere the flag simply never rises). The previous handlers are put back after."""
    global _training
    flag = StopFlag(signal.SIGPIPE if _stdout_closed else None)
    _training = flag
    if threading.current_thread() is not threading.main_thread():
        try:
            yield flag
        finally:
            _training = None
        return

    def handler(signum, frame) -> None:
        global _exit_pending
        signum = FORWARDED_AS.get(signum, signum)
        if flag.signum is None:
            flag.signum = signum
            _say(
                "Stopping after the current step and saving a checkpoint to resume from "
                "(press Ctrl-C again to quit at once without saving)."
            )
            return
        _say("Quit at once: nothing saved after the last checkpoint.")
        if _in_critical:
            _exit_pending = 128 + flag.signum
            return
        os._exit(128 + flag.signum)

    caught = [signal.SIGINT, signal.SIGTERM, *(FORWARDED_AS if under_mpi() else ())]
    previous = {s: signal.signal(s, handler) for s in caught}
    try:
        yield flag
    finally:
        _training = None
        for s, h in previous.items():
            signal.signal(s, h)
