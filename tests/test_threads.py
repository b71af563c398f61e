"""Numba's thread count (cnnkit.threads): --threads and CNNKIT_NUM_THREADS."""

from __future__ import annotations

import os

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


def test_openmp_threads_spin_a_while_before_sleeping(restore_threads, monkeypatch):
    """GOMP_SPINCOUNT and OMP_WAIT_POLICY get cnnkit's defaults; a user's own values win."""
    from cnnkit.threads import SPIN_COUNT

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    configure_threads(1)
    assert (os.environ["GOMP_SPINCOUNT"], os.environ["OMP_WAIT_POLICY"]) == (SPIN_COUNT, "PASSIVE")
    monkeypatch.setenv("GOMP_SPINCOUNT", "0")
    configure_threads(1)
    assert os.environ["GOMP_SPINCOUNT"] == "0"
