"""A small synthetic stand-in for Kaggle's Cats vs Dogs, in the flow_from_directory layout.

Cats have pointed ears, dogs floppy ones; faces of random colour, size and position on a noisy
background. Writes cats_and_dogs/{train,validation,test}/{cats,dogs}/*.png (64x64 RGB).
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
COUNTS = {"train": 150, "validation": 40, "test": 40}  # images per class


def face(rng: np.random.Generator, kind: str) -> Image.Image:
    noise = rng.integers(90, 160, (SIZE, SIZE, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    r = int(rng.integers(12, 18))
    x, y = (int(v) for v in rng.integers(r + 6, SIZE - r - 6, 2))
    if kind == "cats":  # pointed ears above the head
        for side in (-1, 1):
            draw.polygon([(x + side * r, y - r // 2), (x + side * r // 3, y - r // 2),
                          (x + side * r, y - 2 * r)], fill=colour)  # fmt: skip
    else:  # floppy ears hanging beside the head
        for side in (-1, 1):
            draw.ellipse([x + side * r - r // 2, y - r // 2, x + side * r + r // 2,
                          y + r], fill=colour)  # fmt: skip
    draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    for side in (-1, 1):  # eyes
        draw.ellipse([x + side * r // 2 - 2, y - 4, x + side * r // 2 + 2, y], fill=(0, 0, 0))
    return image


def main() -> None:
    rng = np.random.default_rng(0)
    for split, count in COUNTS.items():
        for kind in ("cats", "dogs"):
            folder = Path("cats_and_dogs", split, kind)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                face(rng, kind).save(folder / f"{kind[:-1]}.{i}.png")


if __name__ == "__main__":
    main()
