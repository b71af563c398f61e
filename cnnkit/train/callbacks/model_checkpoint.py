"""best.npz: the weights of the epoch whose monitor was best (Keras' ModelCheckpoint with
save_best_only=True: a strict improvement, no min_delta). Default monitor val_accuracy."""

from __future__ import annotations

from typing import Any

from cnnkit.nn.monitor import Monitor
from cnnkit.runs.rundir import save_checkpoint
from cnnkit.train.callbacks.base import Callback


class ModelCheckpoint(Callback):
    name = "best_checkpoint"

    def __init__(self, monitor: str = "val_accuracy", mode: str = "auto"):
        self.watch = Monitor(monitor, mode)
        self.best_epoch: int | None = None

    def improved(self, epoch: int, logs: dict[str, Any]) -> bool:
        """True when this epoch's weights become best.npz."""
        current = self.watch.value(logs)
        if self.watch.improves(current, self.watch.best):
            self.watch.best, self.best_epoch = current, epoch
            return True
        return False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.improved(epoch, logs):
            trainer = self.trainer
            meta = {**trainer.checkpoint_meta(epoch, logs), "kind": "best"}
            save_checkpoint(trainer.checkpoints / "best", trainer.model.named_weights(), meta)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.watch.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.watch.best = float(state["best"])
        self.best_epoch = state["best_epoch"]
