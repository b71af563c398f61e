"""Keras-named callbacks, one behaviour a module, and the list a training run uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cnnkit.spec.config import Spec
from cnnkit.train.callbacks.backup_and_restore import BackupAndRestore
from cnnkit.train.callbacks.base import Callback, CallbackList
from cnnkit.train.callbacks.csv_logger import CSVLogger
from cnnkit.train.callbacks.early_stopping import EarlyStopping
from cnnkit.train.callbacks.learning_rate import (
    LearningRateScheduler,
    ReduceLROnPlateau,
    schedule_callbacks,
)
from cnnkit.train.callbacks.model_checkpoint import ModelCheckpoint
from cnnkit.train.callbacks.progress import ProgressDisplay, Reporter, SilentReporter
from cnnkit.train.callbacks.run_state import RunState
from cnnkit.train.callbacks.terminate_on_nan import TerminateOnNaN

__all__ = [
    "BackupAndRestore",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ProgressDisplay",
    "ReduceLROnPlateau",
    "Reporter",
    "RunState",
    "SilentReporter",
    "TerminateOnNaN",
    "training_callbacks",
]


def training_callbacks(
    spec: Spec,
    learning_rate: float,
    steps: int,
    reporter: Reporter | None = None,
    extra: Sequence[Callback] = (),
    resume: Any = None,
    tensorboard: Callback | None = None,
    root: bool = True,
) -> list[Callback]:
    """A run's callbacks, in the order each hook calls them: `extra` (a caller's) first, so a
    stop it asks for at a step is saved at that step; then metrics.csv, best.npz, the learning
    rate, early stopping (which may restore the best weights), last.npz with everyone's
    state, curves.png and run.json, TensorBoard, and the display last (Keras' progress bar),
    when the epoch's files are written. A stop first seen by the display (a closed stdout)
    is saved at the same step, by BackupAndRestore.on_exception.

    root=False: a data-parallel rank other than 0, which writes nothing: only the callbacks
    that steer training (the caller's, TerminateOnNaN, the learning rate, early stopping)
    and BackupAndRestore to restore a resumed run, without saving."""
    section = spec.callbacks
    early = section.early_stopping
    if not root:
        return [
            *extra,
            TerminateOnNaN(),
            *schedule_callbacks(spec, learning_rate, steps),
            *([EarlyStopping(**early.to_dict())] if early else []),
            BackupAndRestore(spec.train.save_every_steps, resume, save=False),
        ]
    return [
        *extra,
        TerminateOnNaN(),
        CSVLogger(),
        ModelCheckpoint(**section.checkpoint.to_dict()),
        *schedule_callbacks(spec, learning_rate, steps),
        *([EarlyStopping(**early.to_dict())] if early else []),
        BackupAndRestore(spec.train.save_every_steps, resume),
        RunState(),
        *([tensorboard] if tensorboard is not None else []),
        ProgressDisplay(reporter or SilentReporter()),
    ]
