"""Who this process is among the ranks (read from the launcher's variables, MPI untouched),
the remainder rule, the watchdog; the MPI collectives themselves run in
tests/e2e/test_distributed.py and, as threads, in tests/train/test_parallel.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cnnkit import distributed
from cnnkit.distributed import (
    PEER_LOST_EXIT,
    Communicator,
    env_rank,
    env_size,
    local_ranks,
    slice_bounds,
    under_mpi,
)
from cnnkit.errors import CnnkitError
from tests.clitools import ROOT

LAUNCHER_VARIABLES = (
    "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMIX_RANK",
    "PMIX_SIZE", "PMI_SIZE", "PMI_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK",
    "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE",
)  # fmt: skip


@pytest.fixture
def no_launcher(monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_slices_cover_the_batch_contiguously_first_ranks_one_more(size):
    for n in range(size, 40):
        bounds = [slice_bounds(n, r, size) for r in range(size)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        sizes = [hi - lo for lo, hi in bounds]
        assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1
        assert sizes == [len(part) for part in np.array_split(np.arange(n), size)]


def test_outside_mpi_one_process_and_no_mpi(no_launcher):
    assert not under_mpi() and env_rank() == 0 and env_size() == 1 and local_ranks() == 1
    world = distributed.start()
    assert type(world) is Communicator and world.is_root and not world.distributed
    buffer = np.arange(3.0)
    assert world.sum_(buffer) is buffer and world.broadcast({"a": 1}) == {"a": 1}


def test_launcher_variables_give_rank_size_and_ranks_per_machine(no_launcher):
    no_launcher.setenv("OMPI_COMM_WORLD_SIZE", "4")
    no_launcher.setenv("OMPI_COMM_WORLD_RANK", "3")
    no_launcher.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2")
    assert under_mpi() and env_rank() == 3 and env_size() == 4 and local_ranks() == 2
    for name in ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        no_launcher.delenv(name)
    no_launcher.setenv("PMI_RANK", "1")  # srun --mpi=pmi2 / MPICH
    no_launcher.setenv("SLURM_NTASKS_PER_NODE", "8(x2)")
    assert under_mpi() and env_rank() == 1 and local_ranks() == 8


def test_threads_default_to_cores_divided_among_the_ranks(no_launcher):
    import numba

    from cnnkit.threads import configure_threads

    no_launcher.delenv("CNNKIT_NUM_THREADS", raising=False)
    no_launcher.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", str(numba.config.NUMBA_NUM_THREADS * 2))
    before = numba.get_num_threads()
    try:
        assert configure_threads() == 1  # more ranks than cores: one thread each
        assert configure_threads(2) == min(2, numba.config.NUMBA_NUM_THREADS)  # --threads wins
    finally:
        numba.set_num_threads(before)


def test_a_bad_timeout_is_a_user_error(no_launcher):
    no_launcher.setenv(distributed.ENV_TIMEOUT, "soon")
    with pytest.raises(CnnkitError, match="CNNKIT_MPI_TIMEOUT='soon'"):
        distributed.timeout()
    no_launcher.setenv(distributed.ENV_TIMEOUT, "2.5")
    assert distributed.timeout() == 2.5


def test_the_watchdog_ends_a_rank_whose_peers_never_come():
    """A collective that does not return within the timeout: the message, exit code 75."""
    script = textwrap.dedent(
        """
        import time
        import numpy as np
        from cnnkit.distributed import MPICommunicator

        class Stuck:  # an Allreduce whose peer has died
            def Get_rank(self): return 1
            def Get_size(self): return 2
            def Allreduce(self, *args, **kwargs): time.sleep(30)

        class MPI:
            IN_PLACE = SUM = None

        MPICommunicator(Stuck(), MPI, timeout=0.5).sum_(np.zeros(3), "the gradient allreduce")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == PEER_LOST_EXIT, done.stderr
    assert "rank 1 of 2 waited 0.5 s for the other ranks (the gradient allreduce)" in done.stderr
