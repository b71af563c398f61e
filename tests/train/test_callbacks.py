"""Learning-rate schedules and epoch-end callbacks against hand-computed numbers (Keras 3's
formulas and semantics), their spec sections, and one short real training run."""

from __future__ import annotations

import csv
import json
import math
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from cnnkit import api
from cnnkit.data.sources import MNIST_DIR
from cnnkit.errors import SpecError
from cnnkit.nn.optimizers import SGD
from cnnkit.nn.schedules import (
    CosineDecay,
    ExponentialDecay,
    ReduceLROnPlateau,
    StepDecay,
    make_schedule,
)
from cnnkit.runs.rundir import load_checkpoint, load_optimizer_state
from cnnkit.spec.config import parse_spec
from cnnkit.train.callbacks import EarlyStopping, ModelCheckpoint


def close(actual, expected, rtol=1e-12, atol=1e-15):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def sgd_trajectory(schedule, steps=3):
    """SGD (no momentum) with gradient 1 on p0 = 1: each step subtracts that step's lr."""
    opt = SGD(learning_rate=schedule.initial_learning_rate)
    opt.schedule = schedule
    p, history = np.array([1.0]), []
    for _ in range(steps):
        opt.step({"w": p}, {"w": np.array([1.0])})
        history.append(float(p[0]))
    return history


# ----------------------------------------------------------------------------- per step


def test_exponential_decay_per_optimizer_step():
    # Keras ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5): lr(step) = 0.1 * 0.5^(step/2)
    # step 0: 0.1; step 1: 0.1 * sqrt(0.5) = 0.070710678; step 2: 0.05
    schedule = ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    close(sgd_trajectory(schedule), [0.9, 0.8292893218813453, 0.7792893218813453])


def test_exponential_decay_staircase():
    # floor(step / 2): steps 0, 1 -> 0.1; step 2 -> 0.05; p = 0.9, 0.8, 0.75
    schedule = ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5, staircase=True)
    close(sgd_trajectory(schedule), [0.9, 0.8, 0.75])


def test_cosine_decay():
    # Keras CosineDecay(0.1, decay_steps=4, alpha=0.1):
    # lr = 0.1 * (0.9 * 0.5 * (1 + cos(pi * min(step, 4) / 4)) + 0.1)
    # step 0: 0.1; step 1: 0.1 * (0.9 * 0.85355339 + 0.1) = 0.086819805;
    # step 2: 0.1 * (0.9 * 0.5 + 0.1) = 0.055; step 4 and later: 0.1 * 0.1 = 0.01
    schedule = CosineDecay(0.1, decay_steps=4, alpha=0.1)
    close(sgd_trajectory(schedule), [0.9, 0.8131801948466054, 0.7581801948466054])
    close([schedule(4), schedule(10)], [0.01, 0.01])


def test_cosine_decay_with_linear_warmup():
    # warm up from initial_learning_rate 0 to 0.1 over 2 steps, then cosine over 2 steps:
    # step 0: 0; step 1: 0.1 * 1/2 = 0.05; step 2: 0.1; step 3: 0.1 * 0.5 * (1 + cos(pi/2)) = 0.05;
    # step 4: 0.1 * 0.5 * (1 + cos(pi)) = 0; later: held at step 4
    schedule = CosineDecay(
        0.001, initial_learning_rate=0.0, warmup_target=0.1, warmup_steps=2, decay_steps=2
    )
    close([schedule(s) for s in range(6)], [0.0, 0.05, 0.1, 0.05, 0.0, 0.0], atol=1e-17)
    close(sgd_trajectory(schedule), [1.0, 0.95, 0.85])  # 1 - 0, - 0.05, - 0.1


def test_cosine_decay_steps_default_to_the_rest_of_training():
    # 3 epochs of 10 steps, 5 of them warm-up: decay over the remaining 25
    section = parse_spec(
        spec_text("schedule: {name: cosine_decay, warmup_target: 0.1, warmup_steps: 5}\n")
    ).schedule
    assert (
        section.options["decay_steps"] is None and section.options["initial_learning_rate"] is None
    )
    schedule = make_schedule(section, 0.01, 10, 3)
    assert schedule.decay_steps == 25
    close(schedule(30), 0.0, atol=1e-17)


# ----------------------------------------------------------------------------- per epoch


def test_step_decay_per_epoch():
    # lr0 0.1, factor 0.5, step_epochs 2: epochs 1-2 0.1, 3-4 0.05, 5 0.025
    schedule = StepDecay(0.1, factor=0.5, step_epochs=2)
    optimizer = SimpleNamespace(learning_rate=0.1)
    lrs = []
    for epoch in range(1, 6):
        schedule.on_epoch_begin(epoch, optimizer)
        lrs.append(optimizer.learning_rate)
    close(lrs, [0.1, 0.1, 0.05, 0.05, 0.025])


def plateau_run(schedule, values, lr=0.1, monitor="val_loss"):
    optimizer = SimpleNamespace(learning_rate=lr)
    lrs, messages = [], []
    for epoch, value in enumerate(values, start=1):
        message = schedule.on_epoch_end(epoch, {monitor: value}, optimizer)
        lrs.append(optimizer.learning_rate)
        if message:
            messages.append(epoch)
    return lrs, messages


def test_reduce_on_plateau_scripted():
    # factor 0.5, patience 2, min_delta 0.01 (improve = below best - 0.01), cooldown 2,
    # min_lr 0.02; the lr after each epoch's end (it applies from the next epoch):
    values = [1.0, 0.995, 0.98, 0.975, 0.975, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99]
    values += [0.99, 0.99, 0.5]
    expected = [
        0.1,  # e1 1.0: best 1.0
        0.1,  # e2 0.995 is not below 0.99: wait 1
        0.1,  # e3 0.98 < 0.99: best 0.98, wait 0
        0.1,  # e4 0.975 is not below 0.97: wait 1
        0.05,  # e5 wait 2 = patience: lr 0.1 * 0.5; cooldown 2, wait 0
        0.05,  # e6 cooldown 2 -> 1: wait 0, not counted
        0.05,  # e7 cooldown 1 -> 0: wait 0, then counted (no longer in cooldown): wait 1
        0.025,  # e8 wait 2: 0.05 * 0.5
        0.025,  # e9 cooldown
        0.025,  # e10 wait 1
        0.02,  # e11 wait 2: max(0.025 * 0.5, min_lr 0.02)
        0.02,  # e12 cooldown
        0.02,  # e13 wait 1
        0.02,  # e14 wait 2 but lr 0.02 is not above min_lr: unchanged (wait stays 2)
        0.02,  # e15 wait 3: unchanged
        0.02,  # e16 0.5 improves: best 0.5, wait 0
    ]
    schedule = ReduceLROnPlateau(
        0.1, monitor="val_loss", factor=0.5, patience=2, min_delta=0.01, cooldown=2, min_lr=0.02
    )
    lrs, messages = plateau_run(schedule, values)
    close(lrs, expected)
    assert messages == [5, 8, 11]
    assert (schedule.watch.best, schedule.wait) == (0.5, 0)


def test_reduce_on_plateau_accuracy_goes_up_and_keras_defaults():
    # auto mode: accuracy improves upwards. Keras defaults factor 0.1, patience 10, min_delta 1e-4
    schedule = ReduceLROnPlateau(0.1, monitor="val_accuracy")
    assert schedule.options == {
        "monitor": "val_accuracy",
        "factor": 0.1,
        "patience": 10,
        "min_delta": 1e-4,
        "cooldown": 0,
        "min_lr": 0.0,
        "mode": "auto",
    }
    values = [0.5 + 0.01 * i for i in range(5)] + [0.54] * 10
    lrs, messages = plateau_run(schedule, values, monitor="val_accuracy")
    assert messages == [15]  # rising for 5 epochs, then 10 flat epochs
    close(lrs[-1], 0.01)


def test_plateau_state_round_trips():
    a = ReduceLROnPlateau(0.1, monitor="val_loss", patience=3, cooldown=1)
    plateau_run(a, [1.0, 1.0, 1.0])
    b = ReduceLROnPlateau(0.1, monitor="val_loss", patience=3, cooldown=1)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert (b.watch.best, b.wait, b.cooldown_counter) == (1.0, 2, 0)
    # both reduce on the next flat epoch
    assert plateau_run(a, [1.0])[1] == plateau_run(b, [1.0])[1] == [1]


# ----------------------------------------------------------------------------- callbacks


def test_early_stopping_scripted_with_restore_best_weights():
    # val_loss (min), min_delta 0.01, patience 2, start_from_epoch 1 (epoch 1 not watched)
    stopper = EarlyStopping(
        "val_loss", min_delta=0.01, patience=2, restore_best_weights=True, start_from_epoch=1
    )
    values = {1: 5.0, 2: 1.0, 3: 0.995, 4: 0.98, 5: 0.975, 6: 0.9795, 7: 0.1}
    stopped = None
    for epoch, value in values.items():
        # weights stand-in: the epoch number
        if stopper.should_stop(epoch, {"val_loss": value}, lambda e=epoch: {"w": np.array([e])}):
            stopped = epoch
            break
    # e1 warm-up; e2 best 1.0 (wait 0); e3 0.995 + 0.01 is not < 1.0 (wait 1);
    # e4 0.98 + 0.01 < 1.0: best 0.98 (wait 0); e5 0.985 !< 0.98 (wait 1); e6 wait 2: stop
    assert stopped == 6
    assert (stopper.best_epoch, stopper.watch.best, stopper.wait) == (4, 0.98, 2)
    assert "epoch 6" in stopper.reason and "patience 2" in stopper.reason
    weights = {"w": np.array([6])}
    assert stopper.restore(weights) == 4
    assert weights["w"][0] == 4


def test_early_stopping_patience_zero_and_never_after_the_first_epoch():
    # accuracy (max), patience 0: epoch 1 is NaN (no improvement, but epoch 1 never stops);
    # epoch 2 improves; epoch 3 does not: stop
    stopper = EarlyStopping("accuracy")
    results = [stopper.should_stop(e, {"accuracy": v}) for e, v in ((1, math.nan), (2, 0.5))]
    assert results == [False, False]
    assert stopper.should_stop(3, {"accuracy": 0.5}) is True
    assert stopper.restore({"w": np.zeros(1)}) is None  # restore_best_weights is off


def test_best_checkpoint_strict_improvement():
    best = ModelCheckpoint("val_loss")
    assert [best.improved(e, {"val_loss": v}) for e, v in enumerate([1, 1.2, 0.8, 0.8], 1)] == [
        True,
        False,
        True,
        False,
    ]
    assert best.best_epoch == 3


# ----------------------------------------------------------------------------- spec sections

SPEC = """\
name: sched
data: {source: mnist, validation: VALIDATION}
model:
  layers:
    - Flatten: {}
    - Dense: {units: 10, activation: softmax}
metrics: [accuracy, precision]
"""


def spec_text(extra: str = "", validation: str = "test") -> str:
    return SPEC.replace("VALIDATION", validation) + textwrap.dedent(extra)


def test_schedule_and_callbacks_resolve_with_keras_defaults():
    spec = parse_spec(
        spec_text("""\
        schedule: {name: reduce_on_plateau, patience: 3}
        callbacks:
          early_stopping:
          checkpoint: {monitor: val_precision}
        """)
    )
    assert spec.schedule.to_dict() == {
        "name": "reduce_on_plateau",
        "monitor": "val_loss",
        "factor": 0.1,
        "patience": 3,
        "min_delta": 1e-4,
        "cooldown": 0,
        "min_lr": 0.0,
        "mode": "auto",
    }
    assert spec.callbacks.to_dict() == {
        "early_stopping": {
            "monitor": "val_loss",
            "min_delta": 0.0,
            "patience": 0,
            "mode": "auto",
            "restore_best_weights": False,
            "start_from_epoch": 0,
        },
        "checkpoint": {"monitor": "val_precision", "mode": "auto"},
    }
    assert spec.notes == ()
    again = parse_spec(spec.to_yaml())
    assert (again.schedule, again.callbacks) == (spec.schedule, spec.callbacks)


def test_defaults_without_schedule_or_early_stopping():
    spec = parse_spec(spec_text())
    assert spec.schedule is None
    assert spec.callbacks.to_dict() == {"checkpoint": {"monitor": "val_accuracy", "mode": "auto"}}
    off = parse_spec(spec_text("callbacks: {early_stopping: false}\n"))
    assert off.callbacks.early_stopping is None


def test_without_validation_default_monitors_fall_back_with_a_note():
    spec = parse_spec(
        spec_text("schedule: reduce_on_plateau\ncallbacks: {early_stopping: {}}\n", "none")
    )
    assert spec.schedule.options["monitor"] == "loss"
    assert spec.callbacks.early_stopping.monitor == "loss"
    assert spec.callbacks.checkpoint.monitor == "accuracy"
    assert len(spec.notes) == 3
    assert "no validation data" in spec.notes[0]


def test_unknown_monitor_lists_the_valid_ones():
    with pytest.raises(SpecError) as info:
        parse_spec(spec_text("callbacks: {early_stopping: {monitor: val_los}}\n"))
    assert "callbacks.early_stopping.monitor" in info.value.where
    assert "did you mean 'val_loss'" in info.value.hint
    assert "loss, accuracy, precision, val_loss, val_accuracy, val_precision" in info.value.hint


def test_explicit_val_monitor_without_validation_is_an_error():
    with pytest.raises(SpecError) as info:
        parse_spec(spec_text("schedule: {name: reduce_on_plateau, monitor: val_loss}\n", "none"))
    assert "no validation data" in info.value.hint


def test_schedule_errors():
    with pytest.raises(SpecError, match="not a valid value"):
        parse_spec(spec_text("schedule: cosine\n"))
    with pytest.raises(SpecError, match="warmup_steps needs warmup_target"):
        parse_spec(spec_text("schedule: {name: cosine_decay, warmup_steps: 10}\n"))
    with pytest.raises(SpecError, match="missing required exponential_decay option"):
        parse_spec(spec_text("schedule: {name: exponential_decay, decay_rate: 0.9}\n"))
    with pytest.raises(SpecError) as info:
        parse_spec(spec_text("callbacks: {early_stop: {}}\n"))
    assert "did you mean 'early_stopping'" in info.value.hint


# ----------------------------------------------------------------------------- a real run

TINY = """\
name: tiny_schedule
seed: 5
data:
  source: mnist
  path: {mnist}
  validation: test
  max_train_samples: 256
  max_test_samples: 128
model:
  layers:
    - Flatten: {{}}
    - Dense: {{units: 10, activation: softmax}}
loss: sparse_categorical_crossentropy
optimizer: {{name: sgd, learning_rate: 0.05, momentum: 0.9}}
schedule: {{name: exponential_decay, decay_steps: 4, decay_rate: 0.5}}
callbacks:
  # improving by more than 1.0 is impossible: epoch 2 (the first watched) is the best,
  # epoch 3 exhausts patience 1
  early_stopping: {{monitor: val_accuracy, min_delta: 1.0, patience: 1, start_from_epoch: 1,
                   restore_best_weights: true}}
train: {{epochs: 6, batch_size: 64}}
"""


@pytest.mark.e2e
def test_training_with_a_schedule_and_early_stopping(tmp_path):
    spec = parse_spec(TINY.format(mnist=MNIST_DIR))
    notes: list[str] = []
    result = api.train(spec, out=tmp_path, on_note=notes.append)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert any(n.startswith("Early stopping after epoch 3: val_accuracy") for n in notes)
    assert any("Restored the weights of epoch 2" in n for n in notes)
    # 4 steps per epoch; the lr of epoch e's last step (step 4e - 1, from 0) is
    # 0.05 * 0.5^((4e - 1) / 4): 0.029730178, 0.014865089, 0.0074325445
    expected_lr = [0.05 * 0.5 ** (3 / 4), 0.05 * 0.5 ** (7 / 4), 0.05 * 0.5 ** (11 / 4)]
    assert [row["lr"] for row in result.history] == expected_lr
    with open(result.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    close([float(r["lr"]) for r in rows], expected_lr, rtol=0, atol=1e-6)

    last = result.run_dir / "checkpoints" / "last"
    arrays, meta = load_checkpoint(last.with_suffix(".npz"))
    assert meta["epoch"] == 3 and meta["restored_best_weights_from_epoch"] == 2
    assert meta["callbacks"]["early_stopping"]["stopped_epoch"] == 3
    state_arrays, state = load_optimizer_state(last)
    assert state["name"] == "sgd" and state["iterations"] == 12
    assert set(state_arrays) == {f"momentum.{key}" for key in arrays}

    # the restored weights are those after epoch 2: a 2-epoch run of the same spec ends there
    two = parse_spec(
        TINY.format(mnist=MNIST_DIR),
        overrides={"train.epochs": 2, "callbacks": {}},
    )
    other = api.train(two, out=tmp_path)
    arrays2, _ = load_checkpoint(other.run_dir / "checkpoints" / "last.npz")
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], arrays2[key])
