"""Each callback's state survives state_dict() -> JSON and npz -> load_state_dict() (a fresh
callback then decides as the original would), and CallbackList does it for all of them by
name, whatever callbacks a run has."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnkit.nn.optimizers import SGD
from cnnkit.nn.schedules import ReduceLROnPlateau as PlateauRule
from cnnkit.train.callbacks import (
    Callback,
    CallbackList,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
)


class Notes:
    """What a callback needs of the Trainer here: notes, stop_training, the learning rate."""

    def __init__(self):
        self.notes, self.stop_training, self.epochs = [], False, 100
        self.optimizer = SGD(learning_rate=0.1)

    def note(self, text: str) -> None:
        self.notes.append(text)


def through_disk(callbacks: CallbackList) -> tuple[dict, dict]:
    """The list's state as a checkpoint holds it: JSON text and plain arrays."""
    entries, arrays = callbacks.state_dict()
    return json.loads(json.dumps(entries)), {k: np.array(v) for k, v in arrays.items()}


def test_model_checkpoint_state_round_trips():
    a, b = ModelCheckpoint("val_loss"), ModelCheckpoint("val_loss")
    for epoch, value in enumerate([1.0, 0.5, 0.7], 1):
        a.improved(epoch, {"val_loss": value})
    CallbackList([b], Notes()).load_state_dict(*through_disk(CallbackList([a], Notes())))
    assert (b.best_epoch, b.watch.best) == (2, 0.5)
    assert [c.improved(4, {"val_loss": 0.5}) for c in (a, b)] == [False, False]
    assert [c.improved(5, {"val_loss": 0.4}) for c in (a, b)] == [True, True]


def test_model_checkpoint_before_any_epoch_keeps_an_infinite_best():
    a, b = ModelCheckpoint("val_loss"), ModelCheckpoint("val_loss")
    entries, arrays = through_disk(CallbackList([a], Notes()))
    assert entries["best_checkpoint"]["best"] == "inf"  # JSON has no infinity
    CallbackList([b], Notes()).load_state_dict(entries, arrays)
    assert b.watch.best == float("inf") and b.improved(1, {"val_loss": 1e30})


def test_early_stopping_state_round_trips_with_its_best_weights():
    def make():
        return EarlyStopping("val_loss", patience=2, restore_best_weights=True)

    weights = {"dense/kernel": np.zeros((2, 2), np.float32)}
    a, b = make(), make()
    trainer_a = Notes()
    trainer_a.model = type("M", (), {"named_weights": lambda self: weights})()
    list_a = CallbackList([a], trainer_a)
    for epoch, value in enumerate([1.0, 0.5, 0.6], 1):
        weights["dense/kernel"][:] = epoch
        a.on_epoch_end(epoch, {"val_loss": value})
    entries, arrays = through_disk(list_a)
    assert set(arrays) == {"early_stopping.best_weights.dense/kernel"}
    CallbackList([b], Notes()).load_state_dict(entries, arrays)
    assert (b.best_epoch, b.watch.best, b.wait, b.stopped_epoch) == (2, 0.5, 1, None)
    assert [c.should_stop(4, {"val_loss": 0.7}) for c in (a, b)] == [True, True]
    restored = {"dense/kernel": np.zeros((2, 2), np.float32)}
    assert b.restore(restored) == 2 and (restored["dense/kernel"] == 2).all()


def test_reduce_lr_on_plateau_state_round_trips():
    def make():
        return ReduceLROnPlateau(PlateauRule(0.1, monitor="val_loss", patience=3, cooldown=1))

    a, b = make(), make()
    trainer_a, trainer_b = Notes(), Notes()
    list_a = CallbackList([a], trainer_a)
    for epoch in (1, 2, 3):
        a.on_epoch_end(epoch, {"val_loss": 1.0})
    CallbackList([b], trainer_b).load_state_dict(*through_disk(list_a))
    assert (b.rule.watch.best, b.rule.wait, b.rule.cooldown_counter) == (1.0, 2, 0)
    for callback in (a, b):
        callback.on_epoch_end(4, {"val_loss": 1.0})  # the third flat epoch: reduce
    assert trainer_a.notes == trainer_b.notes and len(trainer_b.notes) == 1
    assert trainer_a.optimizer.learning_rate == trainer_b.optimizer.learning_rate == 0.1 * 0.1


class Counter(Callback):
    name = "counter"

    def __init__(self):
        self.count, self.seen = 0, np.zeros(3)

    def on_epoch_end(self, epoch, logs):
        self.count += 1
        self.seen[epoch % 3] += logs["x"]

    def state_dict(self):
        return {"count": self.count, "seen": self.seen}

    def load_state_dict(self, state):
        self.count, self.seen = state["count"], state["seen"]


def test_the_list_restores_each_callback_by_its_name_and_leaves_the_others_fresh():
    saved = [Counter(), ModelCheckpoint("loss"), CSVLogger()]  # CSVLogger: no state
    list_a = CallbackList(saved, Notes())
    for epoch in (1, 2):
        saved[0].on_epoch_end(epoch, {"x": 0.5 * epoch})
        saved[1].improved(epoch, {"loss": 1.0 / epoch})
    entries, arrays = through_disk(list_a)
    assert set(entries) == {"counter", "best_checkpoint"} and set(arrays) == {"counter.seen"}
    # another run's list: in another order, with a callback the saved run did not have
    fresh = [EarlyStopping("loss"), ModelCheckpoint("loss"), Counter()]
    CallbackList(fresh, Notes()).load_state_dict(entries, arrays)
    assert fresh[2].count == 2 and fresh[2].seen.tolist() == [0.0, 0.5, 1.0]
    assert fresh[1].best_epoch == 2
    assert (fresh[0].wait, fresh[0].best_epoch) == (0, None)


def test_two_callbacks_with_one_state_name_are_refused():
    with pytest.raises(ValueError, match="counter"):
        CallbackList([Counter(), Counter()], Notes())
