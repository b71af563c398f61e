"""TensorBoard events (`logging.tensorboard: true`): scalars every logging.every_steps steps
and per epoch, the model summary and the spec as text, sample training images."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit.runs.plots import sample_grid
from cnnkit.train.callbacks.base import Callback
from cnnkit.train.tensorboard import TensorBoardLog


class TensorBoard(Callback):
    def __init__(self, run_dir, spec, summary_text: str = "", samples: np.ndarray | None = None):
        self.log = TensorBoardLog(run_dir, spec.logging.every_steps)
        if summary_text:
            self.log.text("model/summary", summary_text)
        self.log.text("spec/config.yaml", spec.to_yaml())
        if samples is not None and len(samples):
            self.log.images("data/training_samples", sample_grid(samples))

    def on_train_batch_end(self, step: int, logs: dict[str, float]) -> None:
        steps = self.trainer.steps
        if step % self.log.every_steps == 0 or step == steps:
            self.log.step((self.trainer.epoch - 1) * steps + step, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self.log.epoch(logs)

    def on_train_end(self) -> None:
        self.log.close()

    def on_exception(self, error: BaseException) -> None:
        self.log.close()
