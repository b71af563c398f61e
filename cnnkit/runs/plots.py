"""PNG figures of a run, drawn with matplotlib (Agg backend, no display needed).

matplotlib is imported inside the functions: `cnnkit summary` and the CLI's start-up never pay
for it. Every figure is rendered to memory and written atomically (cnnkit.runs.rundir).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.io import atomic_write_bytes

# row keys that are not curves
_NOT_CURVES = ("epoch", "seconds", "lr", "images_per_s")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 100) -> Path:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def curve_names(history: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics with a curve: loss first, then the others in row order (without val_)."""
    names: list[str] = []
    for row in history:
        for key, value in row.items():
            base = key.removeprefix("val_")
            if key in _NOT_CURVES or base in names or not _is_number(value):
                continue
            names.append(base)
    return sorted(names, key=lambda n: n != "loss")  # stable: loss first


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _values(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    epochs, values = [], []
    for row in history:
        value = row.get(key)
        if _is_number(value) and math.isfinite(value):
            epochs.append(int(row["epoch"]))
            values.append(float(value))
    return epochs, values


def plot_curves(
    history: Sequence[dict[str, Any]],
    path: Path,
    best_epoch: int | None = None,
    monitor: str | None = None,
    title: str = "",
) -> Path:
    """One panel per metric (loss first), train and validation per epoch; the best epoch
    (the checkpoint monitor's) marked in every panel; the learning rate on a second axis of
    the loss panel."""
    plt = _pyplot()
    names = curve_names(history) or ["loss"]
    columns = min(len(names), 3)
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    last_epoch = max((int(r["epoch"]) for r in history), default=1)
    for ax, name in zip(axes.flat, names, strict=False):
        for key, style, label in ((name, "-o", "train"), (f"val_{name}", "-s", "validation")):
            epochs, values = _values(history, key)
            if epochs:
                ax.plot(epochs, values, style, markersize=4, label=label)
                if best_epoch is not None and monitor == key and best_epoch in epochs:
                    value = values[epochs.index(best_epoch)]
                    ax.plot(
                        [best_epoch],
                        [value],
                        "*",
                        color="gold",
                        markersize=16,
                        zorder=5,
                        markeredgecolor="black",
                        label=f"best ({key} {value:.4f})",
                    )
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, last_epoch + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if name == "loss":
            epochs, lrs = _values(history, "lr")
            if epochs:
                twin = ax.twinx()
                twin.plot(epochs, lrs, ":", color="tab:green", label="lr")
                twin.set_ylabel("learning rate", color="tab:green")
                twin.tick_params(axis="y", colors="tab:green")
                if min(lrs) > 0 and max(lrs) / min(lrs) > 20:
                    twin.set_yscale("log")
                handles, labels = ax.get_legend_handles_labels()
                more, more_labels = twin.get_legend_handles_labels()
                ax.legend(handles + more, labels + more_labels, fontsize=8)
                continue
        ax.legend(fontsize=8)
    heading = title or "Training curves"
    if best_epoch is not None:
        heading += f"  (best epoch {best_epoch}" + (f" by {monitor})" if monitor else ")")
    fig.suptitle(heading)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Counts (left) and row-normalised fractions (right: each true class sums to 1)."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=np.int64)
    k = len(class_names)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    size = min(max(5.0, 0.55 * k + 2.5), 18.0)  # 1000 classes must not make a 550-inch figure
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    panels = (
        (axes[0], matrix, "Counts", "{:d}"),
        (axes[1], normalised, "Row-normalised (each true class sums to 1)", "{:.2f}"),
    )
    for ax, values, title, fmt in panels:
        image = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        step = -(-k // 40)  # at most 40 class names an axis
        ticks = list(range(0, k, step))
        names = [str(class_names[i]) for i in ticks]
        rotate = k > 6
        ax.set_xticks(
            ticks, labels=names, rotation=45 if rotate else 0, ha="right" if rotate else "center"
        )
        ax.set_yticks(ticks, labels=names)
        if k <= 30:
            high = values.max() if values.size else 0
            for i in range(k):
                for j in range(k):
                    v = values[i, j]
                    text = fmt.format(int(v) if fmt == "{:d}" else float(v))
                    colour = "white" if high and v > high / 2 else "black"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    fig.tight_layout()
    return _save(fig, path)


def plot_misclassified(
    images: np.ndarray,
    true: Sequence[str],
    predicted: Sequence[str],
    confidence: Sequence[float],
    path: Path,
    columns: int = 8,
) -> Path:
    """A grid of images (uint8, N×H×W×C) titled 'true → predicted (confidence)'."""
    plt = _pyplot()
    n = len(images)
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.7 * columns, 2.15 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, t, p, c in zip(axes.flat, images, true, predicted, confidence, strict=False):
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image[..., :3] if image.shape[-1] >= 3 else image[..., 0])
        ax.set_title(f"true {t}\npred {p} ({c:.0%})", fontsize=8)
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.suptitle("Most confident mistakes", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def sample_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """uint8 images (N×H×W×C) tiled into one (rows·H)×(columns·W)×C image, 2 px gaps."""
    n, h, w, c = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    gap = 2
    grid = np.zeros((rows * (h + gap) - gap, columns * (w + gap) - gap, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * (h + gap) : r * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = image
    return grid
