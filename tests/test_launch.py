"""`--workers N`'s launcher without MPI: its command line, the missing extra, signals
forwarded to mpiexec, the exit codes said, the session cleaned up (a fake mpiexec). The real
mpiexec runs in tests/e2e/test_distributed.py."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from cnnkit import launch
from cnnkit.errors import ExtraMissing


def test_the_ranks_run_this_command_without_workers():
    args = ["-m", "cnnkit", "train", "s.yaml", "--workers", "2", "--workers=3", "-q"]
    assert launch.without_workers(args) == ["-m", "cnnkit", "train", "s.yaml", "-q"]
    command = launch.launch_command(Path("/x/mpiexec"), 2, ["-m", "cnnkit", "train"])
    assert command[:3] == ["/x/mpiexec", "-n", "2"]
    assert command[-4:] == [sys.executable, "-m", "cnnkit", "train"]
    assert ("--allow-run-as-root" in command) == (os.geteuid() == 0)
    assert "--bind-to" in command and "--oversubscribe" in command


def test_without_mpi4py_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    with pytest.raises(ExtraMissing) as info:
        launch.find_mpiexec()
    assert 'pip install "cnnkit[mpi]"' in info.value.hint and info.value.exit_code == 2


def fake_mpiexec(tmp_path: Path, body: str, monkeypatch) -> None:
    script = tmp_path / "mpiexec"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setattr(launch, "find_mpiexec", lambda: script)


def test_a_worker_that_dies_is_said(tmp_path, monkeypatch, capsys):
    fake_mpiexec(tmp_path, "exit 137", monkeypatch)
    assert launch.run_workers(2, ["-m", "cnnkit", "train", "s.yaml"]) == 137
    err = capsys.readouterr().err
    assert "a worker stopped unexpectedly (mpiexec exited with 137)" in err
    assert "--resume RUN_DIR --workers 2" in err


@pytest.mark.parametrize("ranks_exit", [130, 138])
def test_ctrl_c_reaches_the_ranks_as_sigusr1(ranks_exit, tmp_path, monkeypatch, capsys):
    """The fake mpiexec ends on SIGUSR1 (what Open MPI passes on to the ranks) with 130 (the
    ranks stopped as cnnkit does) or 138 (128 + SIGUSR1: a rank still importing): both are
    Ctrl-C's 130 for the user."""
    body = f"trap 'exit {ranks_exit}' USR1\necho $$ > pid\nwhile :; do sleep 0.05; done"
    fake_mpiexec(tmp_path, body, monkeypatch)
    monkeypatch.chdir(tmp_path)

    def interrupt() -> None:
        while not (tmp_path / "pid").exists():
            time.sleep(0.02)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    assert launch.run_workers(2, ["-c", "pass"]) == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    if ranks_exit == 138:
        assert "Interrupted (no training step in progress" in capsys.readouterr().err
    pid = int((tmp_path / "pid").read_text())
    assert pid not in launch.session_members(pid)


def test_session_members_lists_this_session():
    assert os.getpid() in launch.session_members(os.getsid(0))
