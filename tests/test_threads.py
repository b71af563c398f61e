"""Numba's thread count (cnnkit.threads): --threads and CNNKIT_NUM_THREADS."""

from __future__ import annotations

import numba
import pytest

from cnnkit.errors import CnnkitError
from cnnkit.threads import configure_threads


def test_threads_option_and_environment(restore_threads, monkeypatch):
    assert configure_threads(1) == 1 and numba.get_num_threads() == 1
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "1")
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert configure_threads() == 1 and numba.get_num_threads() == 1
    with pytest.raises(CnnkitError):
        configure_threads(0)
