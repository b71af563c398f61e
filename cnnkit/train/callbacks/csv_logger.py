"""metrics.csv: one row per finished epoch, rewritten after every epoch and when a signal
stops training (Keras' CSVLogger)."""

from __future__ import annotations

from typing import Any

from cnnkit.interrupts import Interrupted
from cnnkit.runs.layout import RunDir
from cnnkit.runs.rundir import metrics_columns, write_metrics_csv
from cnnkit.train.callbacks.base import Callback


class CSVLogger(Callback):
    def on_train_begin(self) -> None:
        self.columns = metrics_columns(self.trainer.totals.metrics.names)

    def write(self) -> None:
        write_metrics_csv(RunDir(self.trainer.run_dir).metrics, self.trainer.history, self.columns)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self.write()

    def on_exception(self, error: BaseException) -> None:
        if isinstance(error, Interrupted):
            self.write()
