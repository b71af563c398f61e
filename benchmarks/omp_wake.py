"""How long an empty parallel region takes: the cost of waking Numba's OpenMP threads.

Times an empty `prange` over 2 items, 200 times, after the main thread has been busy for a
gap of 0, 0.5 and 2 ms (Python work between two kernels). Run it with the settings to compare,
e.g. (repo root):

    OMP_WAIT_POLICY=PASSIVE python benchmarks/omp_wake.py
    OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=3000000 python benchmarks/omp_wake.py

(cnnkit itself sets GOMP_SPINCOUNT=3000000 unless it is set: cnnkit.threads.)
"""

from __future__ import annotations

import os
import time

import numba
import numpy as np
from numba import prange


@numba.njit(parallel=True)
def _touch(a):
    for i in prange(a.shape[0]):
        a[i] += 1.0


def main() -> None:
    a = np.zeros(2)
    _touch(a)  # compile, start the threads
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    spin = os.environ.get("GOMP_SPINCOUNT", "libgomp's default")
    for gap in (0.0, 0.0005, 0.002):
        times = []
        for _ in range(200):
            start = time.perf_counter()
            while time.perf_counter() - start < gap:  # the main thread busy meanwhile
                pass
            start = time.perf_counter()
            _touch(a)
            times.append(time.perf_counter() - start)
        times.sort()
        print(
            f"GOMP_SPINCOUNT={spin}, gap {gap * 1e3:.1f} ms: median {times[100] * 1e6:.0f} us, "
            f"p90 {times[180] * 1e6:.0f} us"
        )


if __name__ == "__main__":
    main()
