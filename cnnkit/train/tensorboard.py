"""Optional TensorBoard logging (`logging.tensorboard: true`), written with tensorboardX.

Event files go to <run>/tensorboard/, so `tensorboard --logdir runs` shows every run. tensorboardX
is an optional extra (`pip install "cnnkit[tensorboard]"`): it is imported only when a spec
turns logging on, and its absence is a clear error before training starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.errors import SpecError
from cnnkit.runs.layout import RunDir


def require_writer():
    """The SummaryWriter class, or a SpecError saying how to install it."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise SpecError(
            "logging.tensorboard is true but the tensorboardX package is not installed",
            where="logging.tensorboard",
            hint='Install it with `pip install "cnnkit[tensorboard]"` (or `pip install '
            "tensorboardX`), or set logging.tensorboard: false.",
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """Scalars per epoch (`epoch/<column>`) and every N steps (`step/<name>`, at the global
    step), the model summary as text and sample images."""

    def __init__(self, run_dir: Path, every_steps: int):
        writer_class = require_writer()
        self.writer = writer_class(logdir=str(RunDir(run_dir).tensorboard), flush_secs=30)
        self.every_steps = every_steps

    def text(self, tag: str, text: str) -> None:
        # TensorBoard renders text as Markdown: indent to keep the table monospaced
        self.writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), 0)

    def images(self, tag: str, grid: np.ndarray, step: int = 0) -> None:
        """grid: uint8 H×W×C (C 1 or 3)."""
        if grid.shape[-1] not in (1, 3):
            grid = grid[..., :3] if grid.shape[-1] > 3 else grid[..., :1]
        self.writer.add_image(tag, grid, step, dataformats="HWC")

    def step(self, global_step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            if math.isfinite(value):
                self.writer.add_scalar(f"step/{name}", value, global_step)

    def epoch(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        for name, value in row.items():
            if name == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"epoch/{name}", float(value), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
