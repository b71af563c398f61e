"""Keras 3 EarlyStopping (keras/src/callbacks/early_stopping.py), with 1-based epochs.

From epoch start_from_epoch + 1 on, `wait` counts epochs since the monitor last improved by
more than min_delta; training stops at the end of the epoch where wait reaches patience (never
after the first epoch). With restore_best_weights the weights of the best monitored epoch are
kept and put back when training ends, stopped or not, before last.npz is saved."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from cnnkit.nn.monitor import Monitor
from cnnkit.train.callbacks.base import Callback

_WEIGHTS = "best_weights."


class EarlyStopping(Callback):
    name = "early_stopping"

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

    def should_stop(
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

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        trainer = self.trainer
        stop = self.should_stop(epoch, logs, trainer.model.named_weights)
        if stop:
            trainer.stop_training = True
            trainer.note(self.reason)
        if not (stop or epoch == trainer.epochs):
            return
        restored = self.restore(trainer.model.named_weights())
        trainer.restored_best_weights_from_epoch = restored
        if restored is not None and restored != epoch:
            trainer.note(
                f"Restored the weights of epoch {restored}, the best "
                f"{self.watch.monitor} (restore_best_weights); last.npz holds them."
            )

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "best": self.watch.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
        }
        for key, array in (self.best_weights or {}).items():
            state[_WEIGHTS + key] = array
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.watch.best = float(state["best"])
        self.best_epoch = state["best_epoch"]
        self.wait = int(state["wait"])
        self.stopped_epoch = state["stopped_epoch"]
        kept = {k.removeprefix(_WEIGHTS): v for k, v in state.items() if k.startswith(_WEIGHTS)}
        self.best_weights = kept or None


def _copy(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.array(array, copy=True) for key, array in weights.items()}
