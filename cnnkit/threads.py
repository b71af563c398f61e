"""Who owns the cores: Numba's parallel kernels, not BLAS.

OpenBLAS keeps its worker threads spinning for a while after each matmul; when a Numba
parallel kernel runs next, both thread pools fight for the same cores. Measured on the
mnist_basic step (2 cores): conv backward 104 -> 40 ms, max-pool backward 39 -> 8 ms, Dense
backward 20 -> 9 ms with BLAS limited to one thread. threadpoolctl does this at run time, even
when numpy was imported (and OpenBLAS started) before cnnkit.

The number of Numba threads is `--threads`, else the CNNKIT_NUM_THREADS environment variable,
else every core Numba sees, shared among the data-parallel ranks on this machine (cores //
ranks each, at least one: cnnkit.distributed.local_ranks), so that they never oversubscribe.
BLAS stays at one thread whatever that number: the two pools never oversubscribe the cores.
"""

from __future__ import annotations

import os

from threadpoolctl import threadpool_limits

from cnnkit.distributed import local_ranks
from cnnkit.errors import CnnkitError

_configured = False

ENV_THREADS = "CNNKIT_NUM_THREADS"

# libgomp's spins before an idle thread sleeps (GOMP_SPINCOUNT; see configure_threads)
SPIN_COUNT = "3000000"


def requested_threads(threads: int | None = None) -> int | None:
    """`threads`, else CNNKIT_NUM_THREADS, else None (all cores). A bad value is a user error."""
    if threads is None:
        raw = os.environ.get(ENV_THREADS, "").strip()
        if not raw:
            return None
        try:
            threads = int(raw)
        except ValueError:
            raise CnnkitError(
                f"{ENV_THREADS}={raw!r} is not a whole number",
                hint=f"Set {ENV_THREADS} to a number of threads such as 2, or unset it.",
            ) from None
    if threads < 1:
        raise CnnkitError(
            f"the number of threads must be at least 1, got {threads}",
            hint=f"Use --threads N or {ENV_THREADS}=N with N >= 1.",
        )
    return threads


def configure_threads(threads: int | None = None) -> int:
    """Limit BLAS to one thread for the rest of the process (idempotent) and set Numba's
    thread count (`threads`, CNNKIT_NUM_THREADS, or all cores, capped at Numba's maximum).
    Returns the number of Numba threads in use."""
    global _configured
    # Idle OpenMP threads spin a bounded while, then sleep (both must be set before libgomp
    # loads: Numba loads it at the first parallel kernel). Spinning for good (ACTIVE) made
    # cnnkit and PyTorch (in `bench --vs torch`) 1.5-3x slower on shared 2-core machines;
    # sleeping at once (PASSIVE alone) costs 40-130 us to wake a thread on these VMs, per
    # parallel region (benchmarks/omp_wake.py), and a training step runs dozens: an epoch of
    # 4 Conv2D with BatchNormalization (Fashion-MNIST, 2 threads) 739 img/s passive, 960 with
    # the spin (a few ms of spinning after each kernel; libgomp counts ~100,000 spins a ms).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    if not _configured:
        import scipy.linalg.cython_blas  # noqa: F401  (the BLAS the kernels call: limit it too)

        threadpool_limits(limits=1, user_api="blas")
        _configured = True
    import numba  # here, not at the top: `cnnkit --help` should not pay for importing numba

    wanted = requested_threads(threads)
    most = numba.config.NUMBA_NUM_THREADS
    n = max(1, most // local_ranks()) if wanted is None else min(wanted, most)
    numba.set_num_threads(n)
    return n
