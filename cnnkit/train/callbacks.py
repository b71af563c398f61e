"""Epoch-end callbacks with Keras 3's semantics: early stopping and the best-checkpoint choice.

Both watch a *monitor*: a column of the epoch's metrics row (loss, accuracy, a chosen metric,
or their val_ counterparts). `resolve_monitor` checks at spec time that the column will exist;
`direction` says whether it improves downwards (losses) or upwards (accuracy-like metrics).
The training loop (cnnkit.train.trainer) calls `on_epoch_end` once per epoch, 1-based.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from cnnkit.nn.monitor import Monitor, finite_or_none

# -- the spec sections --------------------------------------------------------------------


# -- the callbacks ------------------------------------------------------------------------


class BestCheckpoint:
    """Decides which epoch best.npz holds: Keras' ModelCheckpoint(save_best_only=True) rule,
    a strict improvement of the monitor (no min_delta). Default monitor val_accuracy."""

    def __init__(self, monitor: str = "val_accuracy", mode: str = "auto"):
        self.watch = Monitor(monitor, mode)
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> bool:
        """True when this epoch's weights become best.npz."""
        current = self.watch.value(logs)
        if self.watch.improves(current, self.watch.best):
            self.watch.best, self.best_epoch = current, epoch
            return True
        return False


class EarlyStopping:
    """Keras 3 EarlyStopping (keras/src/callbacks/early_stopping.py), with 1-based epochs.

    From epoch start_from_epoch + 1 on, `wait` counts epochs since the monitor last improved
    by more than min_delta; training stops at the end of the epoch where wait reaches
    patience (never after the first epoch). With restore_best_weights the weights of the best
    monitored epoch are kept and `restore` puts them back when training ends, stopped or not."""

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        mode: str = "auto",
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ):
        self.watch = Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.wait = 0
        self.best_epoch: int | None = None
        self.best_weights: dict[str, np.ndarray] | None = None
        self.stopped_epoch: int | None = None
        self.reason = ""

    def on_epoch_end(
        self,
        epoch: int,
        logs: dict[str, Any],
        get_weights: Callable[[], dict[str, np.ndarray]] | None = None,
    ) -> bool:
        """True when training should stop after this epoch; `reason` says why."""
        if epoch <= self.start_from_epoch:
            return False  # warm-up: not monitored (Keras: epoch < start_from_epoch, 0-based)
        current = self.watch.value(logs)
        snapshot = self.restore_best_weights and get_weights is not None
        if snapshot and self.best_weights is None:
            self.best_weights, self.best_epoch = _copy(get_weights()), epoch
        self.wait += 1
        if self.watch.improves(current, self.watch.best):
            self.watch.best, self.best_epoch = current, epoch
            if snapshot:
                self.best_weights = _copy(get_weights())
            self.wait = 0
            return False
        if self.wait >= self.patience and epoch > 1:
            self.stopped_epoch = epoch
            best = f"{self.watch.best:.6g}" if math.isfinite(self.watch.best) else "none yet"
            self.reason = (
                f"Early stopping after epoch {epoch}: {self.watch.monitor} = {current:.6g} "
                f"has not improved on its best ({best}, epoch {self.best_epoch}) by more than "
                f"min_delta {self.watch.min_delta:g} for {self.wait} epoch"
                f"{'s' if self.wait != 1 else ''} (patience {self.patience})."
            )
            return True
        return False

    def restore(self, weights: dict[str, np.ndarray]) -> int | None:
        """Copy the best weights into `weights` (in place) if kept; the epoch they are from."""
        if not self.restore_best_weights or self.best_weights is None:
            return None
        for key, array in self.best_weights.items():
            np.copyto(weights[key], array)
        return self.best_epoch

    def state(self) -> dict[str, Any]:
        return {
            "monitor": self.watch.monitor,
            "best": finite_or_none(self.watch.best),
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
        }


def _copy(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.array(array, copy=True) for key, array in weights.items()}


def make_callbacks(section: Any) -> tuple[BestCheckpoint, EarlyStopping | None]:
    """The callbacks of a resolved `callbacks:` section (checkpoint is always there)."""
    checkpoint = BestCheckpoint(**section.checkpoint.to_dict())
    early = section.early_stopping
    return checkpoint, (EarlyStopping(**early.to_dict()) if early else None)


# -- what the run chose on its validation data ----------------------------------------------
