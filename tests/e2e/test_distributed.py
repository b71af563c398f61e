"""Data-parallel training with real MPI processes on this machine (mpiexec of the `mpi` extra,
loopback): `--workers 2` and `mpiexec -n 2 cnnkit train` against one process, signals to the
launcher and to one rank, resume, a killed rank.

Each launch costs a few seconds of imports and kernel loading per rank, so one launch serves
several checks. Every launch runs in a session of its own and whatever is left of it is
killed in a finally; each test then checks that no process of its directory remains.

The spec covers every part of the contract: a short last batch split 4 + 4, augmentation
(drawn for the whole batch), Dropout (masks of the whole batch), a regularizer (added after
the allreduce), BatchNormalization synchronized across the ranks, validation on rank 0."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnkit.distributed import under_mpi
from cnnkit.launch import find_mpiexec, launch_command, session_members
from tests.clitools import ROOT, subprocess_env

pytestmark = pytest.mark.e2e

# 90 images, validation_split 0.2: 72 to train, batch 16: 16, 16, 16, 16, 8 (4 per rank):
# one epoch of K = 5 optimizer steps (each epoch's end costs rank 0 a second of curves.png)
SPEC = """\
name: tiny
seed: 3
data: {source: synthetic, num_classes: 3, max_train_samples: 90, max_test_samples: 12,
       validation_split: 0.2}
model:
  input_shape: [8, 8, 1]
  layers:
    - Conv2D: {filters: 4, kernel_size: 3, activation: relu, kernel_regularizer: {l2: 0.01}}
    - BatchNormalization: {synchronized: true}
    - Dropout: {rate: 0.25}
    - Flatten: {}
    - Dense: {units: 3, activation: softmax}
optimizer: {name: adam, learning_rate: 0.01}
augmentation: {horizontal_flip: true}
train: {epochs: 1, batch_size: 16}
"""

DRIVER = [sys.executable, "-m", "tests.drivers.mpi_rank"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    if under_mpi():
        pytest.skip("the tests start their own MPI processes")
    find_mpiexec()  # ExtraMissing (a failure) when the test extra lacks the mpi extra
    root = tmp_path_factory.mktemp("mpi")
    (root / "tiny.yaml").write_text(SPEC)
    return root


def launch(args: list[str], cwd: Path, timeout: float = 120, env=None) -> tuple[int, str, str]:
    """Run a command in a session of its own to the end; kill what is left of it whatever
    happens: (exit code, stdout, stderr)."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(env=env),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    finally:
        for pid in session_members(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def cnnkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnkit", *args]


def mpiexec(n: int, *args: str) -> list[str]:
    """`mpiexec -n N ARGS` as a user types it (as root: --allow-run-as-root, as CI needs)."""
    return launch_command(find_mpiexec(), n, args)


def leftovers(marker: Path) -> list[str]:
    """Command lines of live processes that name `marker` (a test's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(marker) in line:
                found.append(line)
    return found


def weights(run: Path, name: str = "last") -> dict[str, np.ndarray]:
    with np.load(run / "checkpoints" / f"{name}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def relative_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(b[k])), 1e-30)) for k in a)


@pytest.fixture(scope="module")
def one_process(work: Path) -> Path:
    """The same spec trained by one process, in this one. Trained first: on a cold kernel
    cache it compiles the kernels (a minute or more on a busy machine) and caches them, so
    the ranks launched next load them instead of both compiling within a launch's timeout."""
    from cnnkit import api
    from cnnkit.spec.config import load_spec

    return api.train(load_spec(work / "tiny.yaml"), out=work / "one", threads=1).run_dir


@pytest.fixture(scope="module")
def two_workers(work: Path, one_process: Path) -> Path:
    """`cnnkit train SPEC --workers 2`: the run every other test compares with. Its timeout
    leaves room for kernels only the data-parallel step uses to compile in both ranks."""
    out_dir = str(work / "a")  # absolute: the ranks' command lines name it (leftovers)
    args = cnnkit("train", "tiny.yaml", "--workers", "2", "--out", out_dir)
    code, out, err = launch(args, work, timeout=300)
    assert code == 0, err
    return work / "a" / "tiny"


def test_two_workers_equal_one_process_and_rank_0_alone_writes(
    two_workers: Path, one_process: Path, work: Path
):
    from cnnkit import api

    single = one_process
    a, b = weights(two_workers), weights(single)
    difference = relative_difference(a, b)
    assert difference < 1e-5, difference  # only the order of float additions differs
    print(f"2 workers vs 1 process after 5 steps: max relative difference {difference:.2e}")
    # rank 0's logs are the one process's (the whole batch's loss and metrics)
    import csv

    def rows(run: Path) -> dict[str, str]:
        with open(run / "metrics.csv") as f:
            return next(csv.DictReader(f))

    two, one = rows(two_workers), rows(single)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert float(two[key]) == pytest.approx(float(one[key]), rel=1e-5), key
    # one run directory, written by rank 0 alone; the run knows its workers
    assert [p.name for p in (work / "a").iterdir()] == ["tiny"]
    state = api.RunDir(two_workers).read_state()
    assert state["workers"] == 2 and state["state"] == "finished"
    assert api.load_resume_state(two_workers, api.load_run_spec(two_workers)).info["workers"] == 2
    rows = (two_workers / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2  # header and the epoch
    # evaluate, predict and export as on any run
    from PIL import Image

    report = api.evaluate(two_workers)
    assert report["samples"] == 12 and 0.0 <= report["accuracy"] <= 1.0
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(work / "x.png")
    (top,) = api.predict([work / "x.png"], two_workers)
    assert top["error"] is None and len(top["top"]) == 3
    exported = api.export(two_workers, out=work / "tiny.onnx")
    assert exported.verification.argmax_agreement == 1.0
    assert leftovers(work / "a") == []


def test_mpiexec_reproduce_is_bitwise_and_resume_refuses_other_worker_counts(
    two_workers: Path, work: Path
):
    """`cnnkit reproduce` of a 2-worker run trains it again with 2 workers: bit for bit."""
    code, out, err = launch(cnnkit("reproduce", str(two_workers)), work)
    assert code == 0, out + err
    assert "match" in out.lower()
    again = work / "a" / "tiny-2"
    a, b = weights(two_workers), weights(again)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # a finished 2-worker run extended by one process: refused, with the command to use
    from cnnkit import api
    from cnnkit.errors import CheckpointError

    with pytest.raises(CheckpointError, match="trained by 2 workers") as info:
        api.resume(two_workers, epochs=2)
    assert "--workers 2" in info.value.hint


def test_sigterm_to_one_rank_stops_all_and_resume_is_bitwise(two_workers: Path, work: Path):
    """`mpiexec -n 2` directly; rank 1 gets SIGTERM after step 3: every rank stops after the
    same step, rank 0 saves last.npz, exit 143; --resume with 2 workers ends as the run that
    was never interrupted."""
    args = mpiexec(2, "-m", "tests.drivers.mpi_rank", "TERM", "1", "3", "train", "tiny.yaml")
    code, out, err = launch([*args, "--out", str(work / "c")], work)
    assert code == 143, out + err
    run = work / "c" / "tiny"
    from cnnkit import api

    meta = api.RunDir(run).read_checkpoint_meta("last")
    assert meta["epoch"] == 1 and not meta["epoch_complete"] and meta["step"] in (3, 4)
    assert api.RunDir(run).read_state()["state"] == "interrupted"
    code, out, err = launch(cnnkit("train", "--resume", str(run), "--workers", "2"), work)
    assert code == 0, out + err
    a, b = weights(two_workers), weights(run)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert leftovers(work / "c") == []


def test_ctrl_c_to_the_launcher_stops_every_rank(work: Path):
    args = [*DRIVER, "LAUNCHER-INT", "0", "2", "train", "tiny.yaml", "--workers", "2"]
    code, out, err = launch([*args, "--out", str(work / "e")], work)
    assert code == 130, out + err
    assert f"--resume {work / 'e' / 'tiny'} --workers 2" in out + err
    from cnnkit import api

    run = work / "e" / "tiny"
    meta = api.RunDir(run).read_checkpoint_meta("last")
    assert meta["epoch"] == 1 and not meta["epoch_complete"] and meta["step"] >= 2
    assert leftovers(work / "e") == []


def test_a_killed_rank_stops_the_others_quickly_and_leaves_the_checkpoint(work: Path):
    mark = work / "killed_at"
    args = [*DRIVER, "KILL", "1", "3", "train", "tiny.yaml", "--workers", "2"]
    args += ["--out", str(work / "f")]
    args += ["--set", "train.save_every_steps=2"]
    code, out, err = launch(args, work, env={"MPI_RANK_MARK": str(mark)})
    ended = time.time()
    assert code not in (0, 130, 143), out + err
    assert "worker stopped unexpectedly" in err, err
    assert ended - float(mark.read_text()) < 30
    from cnnkit import api

    run = work / "f" / "tiny"
    weights_at_2, meta = api.load_checkpoint(run / "checkpoints" / "last")
    assert meta["step"] == 2 and weights_at_2  # the last good checkpoint, whole
    assert leftovers(work / "f") == []


def test_workers_without_the_extra_says_what_to_install(work: Path, tmp_path: Path):
    """No mpi4py importable (a directory that shadows it with a broken one): exit 2."""
    (tmp_path / "mpi4py").mkdir()
    (tmp_path / "mpi4py" / "__init__.py").write_text("raise ImportError('hidden')\n")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    code, out, err = launch(cnnkit("train", "tiny.yaml", "--workers", "2"), work, env=env)
    assert code == 2, out + err
    assert 'pip install "cnnkit[mpi]"' in " ".join((out + err).split())
