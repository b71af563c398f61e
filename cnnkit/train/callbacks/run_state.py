"""What a run leaves besides checkpoints, kept current: curves.png and run.json after every
epoch (so a run stopped at any point still has its pictures and its state), and how the run
ended in run.json and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.runs.layout import RunDir
from cnnkit.runs.lifecycle import record_ending
from cnnkit.runs.plots import plot_curves
from cnnkit.runs.state import mark_epoch
from cnnkit.train.callbacks.base import Callback


def best_epoch(run_dir: Path) -> int | None:
    """The epoch of checkpoints/best.npz (what callbacks.checkpoint.monitor chose)."""
    try:
        return int((RunDir(run_dir).read_checkpoint_meta("best") or {})["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


class RunState(Callback):
    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        run_dir, spec, history = self.trainer.run_dir, self.trainer.spec, self.trainer.history
        plot_curves(
            history,
            RunDir(run_dir).curves,
            best_epoch(run_dir),
            spec.callbacks.checkpoint.monitor,
            title=f"{spec.name}: {run_dir.name}",
        )
        speeds = [r["images_per_s"] for r in history if "images_per_s" in r]
        mark_epoch(run_dir, int(logs["epoch"]), float(np.mean(speeds)) if speeds else None)

    def on_train_end(self) -> None:
        record_ending(self.trainer.run_dir)

    def on_exception(self, error: BaseException) -> None:
        record_ending(self.trainer.run_dir, error)
