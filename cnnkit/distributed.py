"""Data-parallel training over MPI: which rank this process is, and the few collectives.

A process started by an MPI launcher (`mpiexec`, `srun`, or `cnnkit train --workers N`, which
runs `mpiexec`) finds the launcher's variables in its environment (`under_mpi`); `start()`
then imports mpi4py (the `mpi` extra) and, with more than one rank, makes `world()` an
`MPICommunicator`. Everywhere else `world()` is the single-process `Communicator`, whose
collectives do nothing, and mpi4py is never imported.

The contract is Horovod's: the spec's batch_size is the global batch; every rank shuffles
with the same seed and takes its slice of each batch (`slice_bounds`: contiguous, the first
`n % ranks` ranks one image more); gradients are summed by one Allreduce of one buffer
(cnnkit.train.parallel). A collective that waits longer than CNNKIT_MPI_TIMEOUT seconds
(default 25) means a peer has died or hangs: the watchdog says so and ends the process, and
the MPI launcher then ends the others. Waits that may be long by design are not watched: for
the run directory, for validation (rank 0 alone evaluates), at an epoch's end and after a
step at which rank 0 saves a checkpoint (Open MPI's mpiexec ends every rank as soon as one
dies, watched or not).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from cnnkit.errors import CnnkitError, ExtraMissing

# set by Open MPI (OMPI_*), PMIx launchers (prterun, srun --mpi=pmix), PMI-1/2 (MPICH hydra,
# srun --mpi=pmi2), MVAPICH
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")
_LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")
ENV_TIMEOUT = "CNNKIT_MPI_TIMEOUT"
DEFAULT_TIMEOUT = 25.0  # seconds; a rank that died is noticed within 30 s
PEER_LOST_EXIT = 75  # the watchdog's exit code (EX_TEMPFAIL)
INSTALL_HINT = 'pip install "cnnkit[mpi]"'


def under_mpi() -> bool:
    """An MPI launcher started this process (its variables are set), whatever the size."""
    return any(name in os.environ for name in (*_SIZE_VARIABLES, *_RANK_VARIABLES))


def env_rank() -> int:
    """This process's rank as the launcher's variables say (0 outside MPI): read without
    initialising MPI, e.g. in a signal handler deciding who prints."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def env_size() -> int:
    """The number of ranks the launcher started (1 outside MPI), without initialising MPI."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def local_ranks() -> int:
    """How many ranks share this machine (1 outside MPI): threads per rank are cores / this."""
    for name in _LOCAL_SIZE_VARIABLES:
        value = os.environ.get(name, "").split("(")[0]  # SLURM writes "2(x3)"
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def slice_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """[lo, hi) of rank's share of a batch of n: contiguous, sizes differ by at most one, the
    first n % size ranks one more (numpy.array_split's rule)."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def import_mpi() -> Any:
    """mpi4py's MPI module (initialises MPI); ExtraMissing when the extra is not installed."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ExtraMissing(
            f"data-parallel training needs mpi4py and an MPI library ({error})",
            hint=f"Install them with: {INSTALL_HINT} (mpi4py and Open MPI from PyPI).",
        ) from None
    return MPI


class Communicator:
    """The single process: rank 0 of 1; every collective returns its input."""

    rank = 0
    size = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum_(self, buffer: np.ndarray, what: str = "allreduce", timeout: bool = True) -> np.ndarray:
        """Sum `buffer` (contiguous) over the ranks, in place. timeout=False: a wait that may
        be long (rank 0 writing files meanwhile) is not watched."""
        return buffer

    def broadcast(self, value: Any, what: str = "broadcast", timeout: bool = True) -> Any:
        """Rank 0's `value` (a small picklable object), on every rank."""
        return value

    def close(self) -> None:
        pass


class MPICommunicator(Communicator):
    """COMM_WORLD through mpi4py, every collective watched by a timeout (a dead peer would
    otherwise leave a blocking Allreduce waiting for ever under some launchers)."""

    def __init__(self, comm: Any, mpi: Any, timeout: float = DEFAULT_TIMEOUT):
        self.comm, self.mpi = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.timeout = timeout
        self.seconds = 0.0  # time spent in sum_ (the benchmark's allreduce ms per step)
        self.calls = 0
        self._waiting: tuple[str, float] | None = None  # (what, deadline)
        self._closed = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="cnnkit-mpi-watchdog")
        self._watchdog.daemon = True
        self._watchdog.start()

    @contextlib.contextmanager
    def _watched(self, what: str, timeout: bool = True) -> Iterator[None]:
        self._waiting = (what, time.monotonic() + self.timeout) if timeout else None
        try:
            yield
        finally:
            self._waiting = None

    def _watch(self) -> None:
        while not self._closed.wait(0.5):
            waiting = self._waiting
            if waiting is not None and time.monotonic() > waiting[1]:
                with contextlib.suppress(OSError):
                    os.write(
                        2,
                        (
                            f"\nError: rank {self.rank} of {self.size} waited {self.timeout:g} s "
                            f"for the other ranks ({waiting[0]}): a worker has died or hangs. "
                            f"Stopping; the run directory keeps its last checkpoint "
                            f"(set {ENV_TIMEOUT} to wait longer).\n"
                        ).encode(),
                    )
                os._exit(PEER_LOST_EXIT)  # the launcher ends the other ranks

    def sum_(self, buffer: np.ndarray, what: str = "allreduce", timeout: bool = True) -> np.ndarray:
        start = time.perf_counter()
        with self._watched(what, timeout):
            self.comm.Allreduce(self.mpi.IN_PLACE, buffer, op=self.mpi.SUM)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return buffer

    def broadcast(self, value: Any, what: str = "broadcast", timeout: bool = True) -> Any:
        with self._watched(what, timeout):
            return self.comm.bcast(value, root=0)

    def close(self) -> None:
        self._closed.set()


_world: Communicator = Communicator()


def world() -> Communicator:
    """The communicator of this process (the single-process one unless start() found ranks)."""
    return _world


def start() -> Communicator:
    """Under an MPI launcher: initialise MPI and make world() the MPI communicator when there
    is more than one rank. Idempotent; outside MPI the single-process one, mpi4py untouched."""
    global _world
    if _world.distributed or not under_mpi():
        return _world
    mpi = import_mpi()
    comm = mpi.COMM_WORLD
    if comm.Get_size() > 1:
        _world = MPICommunicator(comm, mpi, timeout())
    return _world


def timeout() -> float:
    raw = os.environ.get(ENV_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise CnnkitError(
            f"{ENV_TIMEOUT}={raw!r} is not a positive number of seconds",
            hint=f"Set {ENV_TIMEOUT} to e.g. 60, or unset it (default {DEFAULT_TIMEOUT:g}).",
        )
    return value


# the slice of the global batch this rank trains on now: (lo, hi, n), set by the training
# step around forward/backward; Dropout draws the whole batch's mask and keeps these rows, so
# that every rank's random stream advances as a single process's does. Per thread: the
# prefetch thread never sees it, and tests run ranks as threads.
_part = threading.local()


def batch_part() -> tuple[int, int, int] | None:
    return getattr(_part, "value", None)


@contextlib.contextmanager
def training_part(lo: int, hi: int, n: int) -> Iterator[None]:
    previous, _part.value = batch_part(), (lo, hi, n)
    try:
        yield
    finally:
        _part.value = previous


def say(text: str) -> None:
    """Print on rank 0 only (stderr): what one process of the run tells the user."""
    if env_rank() == 0:
        print(text, file=sys.stderr, flush=True)
