"""The progress display: what the loop tells a Reporter (the CLI's Rich display, or nothing)."""

from __future__ import annotations

from typing import Any, Protocol

from cnnkit.train.callbacks.base import Callback


class Reporter(Protocol):
    """What the loop tells the outside world (the Rich display, or nothing in tests).

    Optionally also kernels(phase, seconds), before the first step (cnnkit.api): "loading"
    (0), then "compiling" (the estimate) only when Numba compiles, then "compiled" or
    "loaded" (the time taken)."""

    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(
        self, step: int, loss: float, metrics: dict[str, float], images_per_s: float
    ) -> None: ...
    def epoch_end(self, row: dict[str, Any]) -> None: ...


class SilentReporter:
    def kernels(self, phase: str, seconds: float) -> None:
        pass

    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, step: int, loss: float, metrics: dict[str, float], images_per_s: float) -> None:
        pass

    def epoch_end(self, row: dict[str, Any]) -> None:
        pass


class ProgressDisplay(Callback):
    """Keras' ProgbarLogger: passes the loop's progress on to a Reporter. The batch logs are
    {"loss": running mean, **running metrics, "images_per_s": ...}."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter

    def on_epoch_begin(self, epoch: int) -> None:
        self.reporter.epoch_begin(epoch, self.trainer.epochs, self.trainer.steps)

    def on_train_batch_end(self, step: int, logs: dict[str, float]) -> None:
        metrics = {k: v for k, v in logs.items() if k not in ("loss", "images_per_s")}
        self.reporter.step(step, logs["loss"], metrics, logs["images_per_s"])

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self.reporter.epoch_end(logs)
