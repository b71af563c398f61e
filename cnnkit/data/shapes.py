"""A small, deterministic image-folder dataset: circles, squares and triangles.

Random colour, size, position and rotation on a noisy background, written as PNG files in the
Keras folder layout (train/, val/, test/, one sub-folder per class). The tests and
configs/shapes_folder.yaml use it, so the folder source can be exercised without a download.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cnnkit.errors import DataError

CLASSES = ("circle", "square", "triangle")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners = 4 if kind == "square" else 3
    start = angle + (math.pi / 4 if kind == "square" else -math.pi / 2)
    return [
        (
            cx + r * math.cos(start + 2 * math.pi * k / corners),
            cy + r * math.sin(start + 2 * math.pi * k / corners),
        )
        for k in range(corners)
    ]


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image: a noisy background and one filled shape of a random colour."""
    background = rng.integers(0, 90, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(110, 256, size=3))
    r = float(rng.uniform(0.18, 0.38) * size)
    cx, cy = (float(v) for v in rng.uniform(r, size - r, size=2))
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi))), fill=colour)
    return image


def make_shapes(root: Path, size: int = 64, per_class: int = 300, seed: int = 0) -> dict:
    """Write train/ (per_class images a class), val/ and test/ (per_class // 4 each).

    Refuses a folder that already holds files, so nothing is ever overwritten.
    """
    if root.exists() and any(root.iterdir()):
        raise DataError("folder is not empty", where=str(root), hint="Give a new or empty folder.")
    rng = np.random.default_rng(seed)
    counts = {"train": per_class, "val": max(1, per_class // 4), "test": max(1, per_class // 4)}
    for split, n in counts.items():
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_shape(kind, size, rng).save(folder / f"{kind}_{i:04d}.png")
    return {split: n * len(CLASSES) for split, n in counts.items()}
