"""Who owns the cores: Numba's parallel kernels, not BLAS.

OpenBLAS keeps its worker threads spinning for a while after each matmul; when a Numba
parallel kernel runs next, both thread pools fight for the same cores. Measured on the
mnist_basic step (2 cores): conv backward 104 -> 40 ms, max-pool backward 39 -> 8 ms, Dense
backward 20 -> 9 ms with BLAS limited to one thread. threadpoolctl does this at run time, even
when numpy was imported (and OpenBLAS started) before cnnkit.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits

_configured = False


def configure_threads() -> None:
    """Limit BLAS to one thread for the rest of the process (idempotent)."""
    global _configured
    if not _configured:
        threadpool_limits(limits=1, user_api="blas")
        _configured = True
