"""Nothing lost: a run interrupted by a real signal at any step and resumed ends bit for bit
like the uninterrupted run; checkpoints are replaced only when the new one is whole; NaN
stops training with exit 3; reproduce re-runs a saved spec and compares.

The interrupted runs are real subprocesses that send themselves SIGINT/SIGTERM after a chosen
optimizer step (tests/drivers/signal_at_step.py: the CLI with a callback given to the api);
everything else runs in-process through cnnkit.cli.app.main (a subprocess costs about a second
of imports)."""

from __future__ import annotations

import csv
import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cnnkit.train.callbacks import Callback
from tests.clitools import flat, run_cli, subprocess_env
from tests.drivers.signal_at_step import SignalAtStep

ROOT = Path(__file__).resolve().parents[2]

# 320 training images, batch 64: 5 steps an epoch, 2 epochs. Dropout, BatchNormalization,
# augmentation, shuffling and a per-step schedule: every random stream and every kind of state.
SPEC = """\
name: tiny
seed: 3
data:
  source: mnist
  path: {mnist}
  validation: test
  max_train_samples: 320
  max_test_samples: 100
model:
  input_shape: [28, 28, 1]
  layers:
    - Conv2D: {{filters: 4, kernel_size: 3, strides: 2, activation: relu}}
    - BatchNormalization: {{}}
    - MaxPooling2D: {{pool_size: 2}}
    - Flatten: {{}}
    - Dropout: {{rate: 0.2}}
    - Dense: {{units: 10, activation: softmax}}
loss: sparse_categorical_crossentropy
optimizer: {{name: adam, learning_rate: 0.01}}
metrics: [accuracy, {{top_k_accuracy: {{k: 3}}}}, f1]
train: {{epochs: 2, batch_size: 64}}
augmentation: {{rotation_range: 10, width_shift_range: 0.1}}
schedule: {{name: cosine_decay}}
callbacks: {{early_stopping: {{patience: 5, restore_best_weights: true}}}}
"""
STEPS = 5  # per epoch


def interrupted_cli(step: int, signame: str, times: int, *args: str, cwd: Path):
    """`cnnkit ARGS...` in a subprocess that sends itself SIG<signame> `times` times after
    optimizer step `step` (stdout and stderr piped)."""
    driver = [sys.executable, "-m", "tests.drivers.signal_at_step", str(step), signame, str(times)]
    return subprocess.Popen(
        [*driver, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(200),
    )


def metrics_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.pop("seconds")
    return rows


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def assert_same_run(a: Path, b: Path) -> None:
    assert metrics_rows(a) == metrics_rows(b)
    for name in ("last.npz", "last.optimizer.npz", "best.npz"):
        x, y = arrays(a / "checkpoints" / name), arrays(b / "checkpoints" / name)
        assert x.keys() == y.keys(), name
        for key in x:
            assert np.array_equal(x[key], y[key]), f"{name} {key}"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("resume")
    (work / "tiny.yaml").write_text(SPEC.format(mnist=ROOT / "cnnkit" / "data" / "mnist"))
    return work


@pytest.fixture(scope="module")
def runs(work: Path) -> dict[str, tuple[Path, int, str]]:
    """Started at once with the same name: two real subprocesses, one interrupted by SIGINT
    after step 3 (mid-epoch 1), one quit by a double Ctrl-C after step 7, and the
    uninterrupted reference run, in this process. Each must get its own run directory."""
    procs = {
        "int3": interrupted_cli(3, "INT", 1, "train", "tiny.yaml", "--out", "runs", cwd=work),
        "twice7": interrupted_cli(7, "INT", 2, "train", "tiny.yaml", "--out", "runs", cwd=work),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        from cnnkit import api
        from cnnkit.spec.config import load_spec

        reference = api.train(load_spec(work / "tiny.yaml"), out=work / "runs").run_dir
    out = {"reference": (reference, 0, "")}
    prefix = "Run directory:"
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        run_dirs = [
            line.removeprefix(prefix).strip()
            for line in stdout.splitlines()
            if line.startswith(prefix)
        ]
        assert run_dirs, stdout + stderr
        out[key] = (work / run_dirs[0], proc.returncode, stdout + stderr)
    return out


@pytest.mark.e2e
def test_simultaneous_runs_get_their_own_directories(runs):
    dirs = {run.resolve() for run, _, _ in runs.values()}
    assert len(dirs) == len(runs)
    assert all(d.name.startswith("tiny") for d in dirs)


def check_interrupted(
    run: Path, shown: Path, step: int, code: int, expected_code: int, output: str
) -> None:
    assert code == expected_code, output
    assert "Traceback" not in output
    assert f"cnnkit train --resume {shown}" in output  # the exact command
    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    assert (meta["epoch"], meta["step"]) == (1 + (step - 1) // STEPS, (step - 1) % STEPS + 1)
    assert meta["epoch_complete"] is False
    assert meta["optimizer"]["iterations"] == step
    assert len(metrics_rows(run)) == (step - 1) // STEPS  # flushed: the finished epochs
    state = json.loads((run / "run.json").read_text())  # what `cnnkit runs` shows
    assert state["state"] == "interrupted" and state["epochs_done"] == (step - 1) // STEPS


@pytest.mark.e2e
def test_second_ctrl_c_quits_at_once_without_saving(runs):
    run, code, output = runs["twice7"]
    assert code == 130, output
    assert "Quit at once" in output and "--resume" not in output
    # last.npz is still the one of the end of epoch 1: step 7's save never happened
    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    assert (meta["epoch"], meta["epoch_complete"]) == (1, True)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert len(metrics_rows(run)) == 1


@pytest.mark.e2e
def test_interrupted_anywhere_and_resumed_is_bitwise_the_uninterrupted_run(
    runs, work, monkeypatch, capsys
):
    """The subprocess stopped by SIGINT after step 3 is resumed in another subprocess that
    SIGTERM stops after step 5 (the last step of epoch 1, before its validation), then here,
    where a real SIGINT stops it after step 8 (mid-epoch 2), and then to the end."""
    reference = runs["reference"][0]
    run, code, output = runs["int3"]
    check_interrupted(run, run.relative_to(work), 3, code, 130, output)  # --out runs: relative
    proc = interrupted_cli(5, "TERM", 1, "train", "--resume", str(run), cwd=work)
    stdout, stderr = proc.communicate(timeout=300)
    check_interrupted(run, run, 5, proc.returncode, 143, stdout + stderr)
    from cnnkit import api

    real_resume = api.resume
    at_step_8 = functools.partial(real_resume, callbacks=[SignalAtStep(8, signal.SIGINT)])
    monkeypatch.setattr(api, "resume", at_step_8)
    code, out, err = run_cli("train", "--resume", str(run), monkeypatch=monkeypatch, capsys=capsys)
    check_interrupted(run, run, 8, code, 130, out + err)
    monkeypatch.setattr(api, "resume", real_resume)
    code, out, err = run_cli("train", "--resume", str(run), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out + err
    assert "Resuming" in out
    assert_same_run(reference, run)
    state = json.loads((run / "run.json").read_text())
    assert state["state"] == "finished" and "resumed" in state
    assert state["epochs_done"] == len(metrics_rows(reference))
    assert (run / "curves.png").is_file() and (run / "report.md").is_file()


@pytest.mark.e2e
def test_resume_refuses_changes_with_a_diff(runs, work, monkeypatch, capsys):
    run = runs["reference"][0]
    edited = work / "edited.yaml"
    text = (work / "tiny.yaml").read_text()
    edited.write_text(text.replace("learning_rate: 0.01", "learning_rate: 0.02"))
    before = (run / "checkpoints" / "last.json").read_bytes()
    code, _, err = run_cli(
        "train", str(edited), "--resume", str(run), monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "Traceback" not in err
    assert "optimizer.learning_rate: 0.01 -> 0.02" in flat(err)
    code, _, err = run_cli(
        "train", "--resume", str(run), "--batch-size", "32", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "train.batch_size: 64 -> 32" in flat(err)
    # a finished run: --epochs must extend it
    code, _, err = run_cli("train", "--resume", str(run), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "finished 2 of 2 epochs" in flat(err)
    assert (run / "checkpoints" / "last.json").read_bytes() == before


@pytest.mark.e2e
def test_resume_with_more_epochs_extends_the_run(runs, work, monkeypatch, capsys):
    run = work / "extended"
    shutil.copytree(runs["reference"][0], run)
    code, out, err = run_cli(
        "train", "--resume", str(run), "--epochs", "3", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 0, out + err
    assert [r["epoch"] for r in metrics_rows(run)] == ["1", "2", "3"]
    assert metrics_rows(run)[:2] == metrics_rows(runs["reference"][0])
    assert "epochs: 3" in (run / "config.yaml").read_text()


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


@pytest.mark.e2e
def test_save_every_steps_checkpoints_mid_epoch_and_resumes_exactly(
    runs, work, monkeypatch, capsys
):
    import cnnkit.train.callbacks.backup_and_restore as training

    spec = work / "every.yaml"
    spec.write_text(
        (work / "tiny.yaml")
        .read_text()
        .replace("batch_size: 64", "batch_size: 64, save_every_steps: 2")
    )
    saved = []
    real_save = training.save_checkpoint

    def save(path, params, meta, *rest):
        real_save(path, params, meta, *rest)
        if meta["kind"] == "last":
            saved.append((meta["epoch"], meta["step"], meta["epoch_complete"]))
            if len(saved) == 4:  # epoch 2, step 1: killed right after this save
                raise Killed

    monkeypatch.setattr(training, "save_checkpoint", save)
    with pytest.raises(Killed):
        run_cli(
            "train", str(spec), "--out", str(work / "every"), monkeypatch=monkeypatch, capsys=capsys
        )
    assert saved == [(1, 2, False), (1, 4, False), (1, 5, True), (2, 1, False)]
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    run = work / "every" / "tiny"
    code, out, err = run_cli("train", "--resume", str(run), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out + err
    assert_same_run(runs["reference"][0], run)


@pytest.mark.e2e
def test_new_checkpoint_replaces_the_old_only_once_verified(runs, work, monkeypatch, capsys):
    """A write that comes back short (what a full disk can do) is caught by reading the file
    back; the previous checkpoint set stays as it was, byte for byte."""
    import cnnkit.runs.rundir as runs_module

    run = work / "short_write"
    shutil.copytree(runs["reference"][0], run)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    real_stage = runs_module.stage

    def short_stage(path, data):
        return real_stage(path, data[: len(data) // 2] if path.name == "last.npz" else data)

    monkeypatch.setattr(runs_module, "stage", short_stage)
    code, _, err = run_cli(
        "train", "--resume", str(run), "--epochs", "3", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "Traceback" not in err
    assert "could not write last.npz" in flat(err) and "intact" in flat(err)
    after = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    assert after.keys() == before.keys()  # no temporary file left behind
    for name in ("last.npz", "last.json", "last.optimizer.npz", "last.state.npz"):
        assert after[name] == before[name], name  # (best.npz: epoch 3 was rightly saved)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("error", "message"),
    [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")],
)
def test_full_disk_or_unwritable_run_dir_keeps_the_previous_checkpoint(
    runs, work, monkeypatch, capsys, error, message
):
    import cnnkit.runs.rundir as runs_module

    run = work / f"disk_{error}"
    shutil.copytree(runs["reference"][0], run)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    real_stage = runs_module.stage

    def failing_stage(path, data):
        if path.parent.name == "checkpoints":
            raise OSError(error, os.strerror(error))
        return real_stage(path, data)

    monkeypatch.setattr(runs_module, "stage", failing_stage)
    code, _, err = run_cli(
        "train", "--resume", str(run), "--epochs", "3", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "Traceback" not in err
    assert message in flat(err) and "intact" in flat(err)
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


@pytest.mark.e2e
def test_nan_loss_stops_with_exit_3_and_keeps_the_last_good_checkpoint(
    runs, work, monkeypatch, capsys
):
    from cnnkit.nn.losses import SparseCategoricalCrossentropy

    run = work / "nan"
    shutil.copytree(runs["reference"][0], run)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    real_call = SparseCategoricalCrossentropy.__call__
    calls = []

    def poisoned(self, logits, labels):
        loss, grad = real_call(self, logits, labels)
        if threading.current_thread().name == "cnnkit-warm-up":  # compiling, not training
            return loss, grad
        calls.append(1)
        return (float("nan"), grad) if len(calls) == 2 else (loss, grad)

    monkeypatch.setattr(SparseCategoricalCrossentropy, "__call__", poisoned)
    code, _, err = run_cli(
        "train", "--resume", str(run), "--epochs", "3", monkeypatch=monkeypatch, capsys=capsys
    )
    text = flat(err)
    assert code == 3 and "Traceback" not in err
    assert "diverged at epoch 3, step 2/5: the loss is nan" in text
    assert "learning rate" in text and "rescale" in text
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


@pytest.mark.e2e
def test_real_divergence_names_missing_rescale(work, monkeypatch, capsys):
    spec = work / "diverge.yaml"
    spec.write_text(
        "name: diverge\ndata: {source: synthetic, num_classes: 2, max_train_samples: 64, "
        "max_test_samples: 16, rescale: 1.0}\nmodel:\n  input_shape: [8, 8, 1]\n  layers:\n"
        "    - Flatten: {}\n    - Dense: {units: 2, activation: softmax}\n"
        "optimizer: {name: sgd, learning_rate: 1.0e+37}\ntrain: {epochs: 1, batch_size: 16}\n"
    )
    code, _, err = run_cli(
        "train", str(spec), "--out", str(work / "diverged"), monkeypatch=monkeypatch, capsys=capsys
    )
    text = flat(err)
    assert code == 3 and "Traceback" not in err
    assert "diverged at epoch 1, step" in text and "data.rescale is 1" in text
    assert not (work / "diverged" / "diverge" / "checkpoints" / "last.npz").exists()


def test_create_run_dir_claims_atomically(tmp_path):
    from cnnkit.runs.rundir import create_run_dir

    barrier, made = threading.Barrier(8), []

    def claim():
        barrier.wait()
        made.append(create_run_dir(tmp_path, "same"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and all((d / "checkpoints").is_dir() for d in made)


@pytest.mark.e2e
def test_reproduce_matches_bit_for_bit(runs, monkeypatch, capsys):
    reference = runs["reference"][0]
    code, out, err = run_cli("reproduce", str(reference), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out + err
    text = flat(out)
    assert "Reproduced bit for bit" in text and "final weights identical" in text


@pytest.mark.e2e
def test_reproduce_reports_a_difference(runs, work, monkeypatch, capsys):
    run = work / "tampered"
    shutil.copytree(runs["reference"][0], run)
    last = run / "checkpoints" / "last.json"
    meta = json.loads(last.read_text())
    meta["resume"]["history"][0]["val_loss"] += 1e-12  # one bit of one metric
    last.write_text(json.dumps(meta))
    code, out, _ = run_cli(
        "reproduce", str(run), "--epochs", "1", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 1
    assert "Not reproduced" in flat(out) and "val_loss" in out


# a model that trains in a moment: 64 images, batch 8, 8 steps an epoch
SMALL = """\
name: small
seed: 5
data: {source: synthetic, num_classes: 3, max_train_samples: 64, max_test_samples: 16}
model:
  input_shape: [8, 8, 1]
  layers:
    - Flatten: {}
    - Dense: {units: 3, activation: softmax}
optimizer: {name: sgd, learning_rate: 0.1}
train: {epochs: 4, batch_size: 8}
"""


class StepCounter(Callback):
    """A caller's callback with state of its own: the batches it has seen, over resumes."""

    name = "step_counter"

    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, step, logs):
        self.batches += 1

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]


def test_resume_restores_a_callers_callback_by_its_name(tmp_path):
    from cnnkit import api
    from cnnkit.interrupts import Interrupted
    from cnnkit.spec.config import parse_spec

    spec = parse_spec(SMALL)
    first = StepCounter()
    with pytest.raises(Interrupted) as stopped:
        api.train(spec, out=tmp_path, callbacks=[first, SignalAtStep(11, signal.SIGINT)])
    assert (stopped.value.epoch, stopped.value.step, first.batches) == (2, 3, 11)
    again = StepCounter()
    result = api.resume(stopped.value.run_dir, callbacks=[again])
    assert len(result.history) == 4
    assert again.batches == 4 * 8  # 11 before, 21 after: it went on counting


def test_a_checkpoint_of_the_previous_layout_still_resumes_exactly(tmp_path):
    """Before the callbacks owned their state, reduce_on_plateau's counters were saved with
    the optimizer's state (last.json's "optimizer" entry) and the resume state had
    "early_stopping": null without early stopping. Such a checkpoint, after epoch 2, resumes
    bit for bit: epoch 3 lowers the learning rate only if epoch 2's wait was kept."""
    from cnnkit import api
    from cnnkit.spec.config import parse_spec

    text = SMALL + "schedule: {name: reduce_on_plateau, patience: 2, min_delta: 10.0}\n"
    reference = api.train(parse_spec(text), out=tmp_path / "reference").run_dir
    part = api.train(parse_spec(text, overrides={"train.epochs": 2}), out=tmp_path / "old")
    last = part.run_dir / "checkpoints" / "last.json"
    meta = json.loads(last.read_text())
    plateau = meta["resume"].pop("reduce_on_plateau")
    assert plateau["wait"] == 1
    meta["optimizer"]["schedule"] = {"name": "reduce_on_plateau", **plateau}
    meta["resume"]["early_stopping"] = None
    meta["callbacks"] = {
        "checkpoint": {"best_epoch": meta["resume"]["best_checkpoint"]["best_epoch"]}
    }
    last.write_text(json.dumps(meta))
    result = api.resume(part.run_dir, epochs=4)
    assert [row["lr"] for row in result.history] == [0.1, 0.1, 0.1, 0.1 * 0.1]
    assert metrics_rows(part.run_dir) == metrics_rows(reference)
    for name in ("last.npz", "last.optimizer.npz", "best.npz"):
        a = arrays(reference / "checkpoints" / name)
        b = arrays(part.run_dir / "checkpoints" / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
