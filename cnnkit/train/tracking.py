"""What a training run leaves behind besides checkpoints, kept current epoch by epoch.

RunTracker is a Reporter (cnnkit.train.trainer) wrapped around the display's: it passes every call
on, and at the end of each epoch rewrites curves.png and run.json (and logs to TensorBoard when
the spec asks), so a run stopped at any point still has its pictures and its state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.runs.state import mark_epoch
from cnnkit.spec.config import Spec
from cnnkit.train.trainer import Reporter, SilentReporter

CURVES = "curves.png"


def best_epoch(run_dir: Path) -> int | None:
    """The epoch of checkpoints/best.npz (what callbacks.checkpoint.monitor chose)."""
    try:
        return int(json.loads((Path(run_dir) / "checkpoints" / "best.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_curves(run_dir: Path, history: list[dict[str, Any]], spec: Spec) -> Path:
    from cnnkit.runs.plots import plot_curves

    return plot_curves(
        history,
        Path(run_dir) / CURVES,
        best_epoch(run_dir),
        spec.callbacks.checkpoint.monitor,
        title=f"{spec.name}: {Path(run_dir).name}",
    )


class RunTracker:
    """Reporter that also writes curves.png, run.json and TensorBoard events."""

    def __init__(
        self,
        run_dir: Path,
        spec: Spec,
        inner: Reporter | None = None,
        samples: np.ndarray | None = None,
        summary_text: str = "",
        history: list[dict[str, Any]] | None = None,
    ):
        """history: the rows of epochs already done (a resumed run), so curves.png shows
        every epoch; samples: training images for TensorBoard's image tab."""
        self.run_dir = Path(run_dir)
        self.spec = spec
        self.inner = inner or SilentReporter()
        self.history: list[dict[str, Any]] = [dict(r) for r in history or []]
        self.steps = 0
        self.epoch = 0
        self.tb = None
        logging = spec.logging
        if logging.tensorboard:
            from cnnkit.train.tensorboard import TensorBoardLog

            self.tb = TensorBoardLog(self.run_dir, logging.every_steps)
            if summary_text:
                self.tb.text("model/summary", summary_text)
            self.tb.text("spec/config.yaml", spec.to_yaml())
            if samples is not None and len(samples):
                from cnnkit.runs.plots import sample_grid

                self.tb.images("data/training_samples", sample_grid(samples))

    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch, self.steps = epoch, steps
        self.inner.epoch_begin(epoch, epochs, steps)

    def step(self, step: int, loss: float, metrics: dict[str, float], images_per_s: float) -> None:
        self.inner.step(step, loss, metrics, images_per_s)
        if self.tb is not None and (step % self.tb.every_steps == 0 or step == self.steps):
            global_step = (self.epoch - 1) * self.steps + step
            self.tb.step(global_step, {"loss": loss, **metrics, "images_per_s": images_per_s})

    def epoch_end(self, row: dict[str, Any]) -> None:
        self.history.append(dict(row))
        write_curves(self.run_dir, self.history, self.spec)
        speeds = [r["images_per_s"] for r in self.history if "images_per_s" in r]
        mark_epoch(self.run_dir, int(row["epoch"]), float(np.mean(speeds)) if speeds else None)
        if self.tb is not None:
            self.tb.epoch(row)
        self.inner.epoch_end(row)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
