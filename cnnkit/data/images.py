"""User image files -> uint8 arrays in the model's input shape, for `cnnkit predict`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnkit.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expanded (recursively, sorted) to the image files inside."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not inside:
                raise ImageError(
                    "folder holds no images",
                    where=str(path),
                    hint=f"Image files end in {', '.join(IMAGE_SUFFIXES)}.",
                )
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise ImageError("no such file or folder", where=str(path))
    return found


@dataclass
class PreparedImage:
    array: np.ndarray  # uint8 (H, W, C), the model's input before rescale
    inverted: bool
    note: str | None = None  # e.g. the channel conversion made to fit the model


def prepare_image(
    path: Path,
    input_shape: tuple[int, int, int],
    background: str | None = None,
    centre_digits: bool = False,
    invert: bool | None = None,
) -> PreparedImage:
    """Read, convert and resize one image the way the training data looks.

    For data with a dark background (MNIST: white digits on black) a dark-on-light image, such
    as a digit drawn in a paint program, is inverted; `invert=None` decides from the border
    brightness. With centre_digits, the drawing is cropped, scaled into a 20x20 box and centred
    by its centre of mass in 28x28, which is how MNIST itself was made.
    """
    height, width, channels = input_shape
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            image = flatten_alpha(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(
            f"cannot read as an image ({exc.__class__.__name__}: {exc})",
            where=str(path),
            hint="Give PNG, JPEG, BMP, GIF, TIFF or WebP files.",
        ) from None
    image = image.convert("L" if channels == 1 else "RGB")
    note = _conversion_note(mode, channels)
    inverted = False
    if background == "dark":
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
        if invert is None:
            invert = _border_mean(pixels) > 127
        if invert:
            image = Image.fromarray(255 - np.asarray(image))
            inverted = True
    if centre_digits and channels == 1:
        array = _centre_digit(np.asarray(image), height, width)
    else:
        array = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    return PreparedImage(array.reshape(height, width, channels).astype(np.uint8), inverted, note)


_MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "F": 1, "I;16": 1, "LA": 2, "P": 3, "RGB": 3}


def _conversion_note(mode: str, channels: int) -> str | None:
    """Says so when the image's channel count is not the model's (it is converted)."""
    have = _MODE_CHANNELS.get(mode, len(mode))
    if have == channels:
        return None
    target = "grayscale (1 channel)" if channels == 1 else "RGB (3 channels)"
    alpha = ", transparency composited onto white" if mode in ("RGBA", "LA", "PA") else ""
    return (
        f"converted from {mode} ({have} channel{'s' * (have != 1)}) to {target}{alpha}: the "
        f"model expects {channels}"
    )


def flatten_alpha(img: Image.Image) -> Image.Image:
    """Transparent pixels become white, as they look in a viewer."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img


def _border_mean(pixels: np.ndarray) -> float:
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return float(edge.mean())


def _centre_digit(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    mask = pixels > 30
    if not mask.any():  # blank image: nothing to centre
        return np.asarray(
            Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR)
        )
    rows, cols = np.where(mask)
    crop = pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    box = max(1, round(20 * min(height, width) / 28))  # MNIST: 20x20 box in 28x28
    scale = box / max(crop.shape)
    new_h, new_w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    digit = np.asarray(
        Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.LANCZOS), dtype=np.float64
    )
    canvas = np.zeros((height, width), dtype=np.float64)
    total = digit.sum()
    cy = (digit.sum(axis=1) * np.arange(new_h)).sum() / total if total else new_h / 2
    cx = (digit.sum(axis=0) * np.arange(new_w)).sum() / total if total else new_w / 2
    top = int(np.clip(round(height / 2 - cy), 0, height - new_h))
    left = int(np.clip(round(width / 2 - cx), 0, width - new_w))
    canvas[top : top + new_h, left : left + new_w] = digit
    return np.clip(canvas, 0, 255).astype(np.uint8)
