"""Image files -> uint8 arrays in the model's input shape: the one preparation path.

`decode_image` is how every image file becomes model input: folder training and `evaluate`
(through cnnkit.data.folder's decoder and cache), `cnnkit predict` and `cnnkit serve` (an
upload's bytes: ImageBytes, read as the file would be). The float step
(rescale, normalisation) is cnnkit.data.augment.Preprocessor, called the same way by both.
For data that does not come from image files (MNIST, CIFAR-10, npz) predict adapts a user's
image to look like the training data (inversion, digit centring): `prepare_image`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image, UnidentifiedImageError

from cnnkit.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}
PIL_MODE = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}
# what Pillow raises for a file it cannot read as an image
READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)
# Part of the folder cache's key: decoded arrays cached by another decoder (a Pillow whose
# decoders or resampling differ, or a change here: bump DECODER) are decoded again, so that
# evaluate's cached arrays are what decode_image gives predict today.
DECODER = {"decoder": 1, "pillow": PIL.__version__}


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


@dataclass(frozen=True)
class ImageOptions:
    """How a file becomes the model's uint8 input: size (height, width), colour mode,
    interpolation."""

    size: tuple[int, int]
    color_mode: str = "rgb"
    interpolation: str = "nearest"

    @classmethod
    def from_spec(cls, spec: Any) -> ImageOptions:
        """An image folder's data.target_size (else input_shape), color_mode and
        interpolation, as its training decoded it; for other sources (arrays: no decoder)
        the input shape's size and channels, resized bilinear."""
        data, shape = spec.data, spec.model.input_shape
        if data.source == "folder":
            size = tuple(data.target_size or shape[:2])
            return cls(size, data.color_mode, data.interpolation)
        modes = {c: m for m, c in CHANNELS.items()}
        if shape[2] not in modes:
            raise ImageError(
                f"the model takes {shape[2]}-channel input; image files give 1 (grayscale), "
                "3 (RGB) or 4 (RGBA) channels",
                where="model.input_shape",
            )
        return cls(tuple(shape[:2]), modes[shape[2]], "bilinear")


@dataclass(frozen=True)
class ImageBytes:
    """An image file's bytes with its name (an upload to `cnnkit serve`): read as the file
    itself would be, without a temporary file; errors name it as they would name a path."""

    name: str
    data: bytes = b""

    def __str__(self) -> str:
        return self.name


class _NamedBuffer(io.BytesIO):
    """Pillow names a file object it cannot identify by its repr: the file's name here."""

    def __init__(self, image: ImageBytes):
        super().__init__(image.data)
        self.label = image.name

    def __repr__(self) -> str:
        return repr(self.label)


def read_converted(path: Path | ImageBytes, color_mode: str) -> tuple[str, Image.Image]:
    """(the file's own mode, the image decoded by Pillow in the colour mode): transparency
    composited onto white, except for rgba, which keeps it. Raises READ_ERRORS."""
    with Image.open(_NamedBuffer(path) if isinstance(path, ImageBytes) else path) as img:
        img.load()
        mode = img.mode
        if color_mode != "rgba":
            img = flatten_alpha(img)  # transparent -> white; palette/RGBA/LA converted
        return mode, img.convert(PIL_MODE[color_mode])  # a new image, the file closed


def resize_image(img: Image.Image, options: ImageOptions) -> np.ndarray:
    """uint8 (H, W, C) at options.size (resized only when the size differs)."""
    height, width = options.size
    if img.size != (width, height):
        img = img.resize((width, height), INTERPOLATION[options.interpolation])
    array = np.asarray(img, dtype=np.uint8)
    return array.reshape(height, width, CHANNELS[options.color_mode])


def decode_image(path: Path, options: ImageOptions) -> np.ndarray:
    """The model's uint8 input (H, W, C) from an image file: Pillow's decoder, the colour
    conversion, the interpolation. Raises READ_ERRORS for an unreadable file."""
    return resize_image(read_converted(path, options.color_mode)[1], options)


def read_error(path: Path | ImageBytes, exc: BaseException) -> ImageError:
    return ImageError(
        f"cannot read as an image ({exc.__class__.__name__}: {exc})",
        where=str(path),
        hint="Give PNG, JPEG, BMP, GIF, TIFF or WebP files.",
    )


@dataclass
class PreparedImage:
    array: np.ndarray  # uint8 (H, W, C), the model's input before rescale
    inverted: bool
    note: str | None = None  # e.g. the channel conversion made to fit the model


def prepare_image(
    path: Path | ImageBytes,
    options: ImageOptions,
    background: str | None = None,
    centre_digits: bool = False,
    invert: bool | None = None,
    adapt: bool = True,
) -> PreparedImage:
    """Read one image for predict: decode_image, and with adapt (data that did not come from
    image files) made to look like the training data.

    For data with a dark background (MNIST: white digits on black) a dark-on-light image, such
    as a digit drawn in a paint program, is inverted; `invert=None` decides from the border
    brightness. With centre_digits, the drawing is cropped, scaled into a 20x20 box and centred
    by its centre of mass in 28x28, which is how MNIST itself was made. Without adapt (an image
    folder) the array is exactly what training and evaluate decoded. Raises ImageError.
    """
    try:
        mode, image = read_converted(path, options.color_mode)
        if not adapt:
            return PreparedImage(resize_image(image, options), False)
    except READ_ERRORS as exc:
        raise read_error(path, exc) from None
    height, width = options.size
    channels = CHANNELS[options.color_mode]
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
        array = _centre_digit(np.asarray(image), height, width).reshape(height, width, 1)
    else:
        array = resize_image(image, options)
    return PreparedImage(array, inverted, note)


_MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "F": 1, "I;16": 1, "LA": 2, "P": 3, "RGB": 3}
_TARGET = {1: "grayscale (1 channel)", 3: "RGB (3 channels)", 4: "RGBA (4 channels)"}


def _conversion_note(mode: str, channels: int) -> str | None:
    """Says so when the image's channel count is not the model's (it is converted)."""
    have = _MODE_CHANNELS.get(mode, len(mode))
    if have == channels:
        return None
    target = _TARGET[channels]
    alpha = ""
    if mode in ("RGBA", "LA", "PA") and channels != 4:
        alpha = ", transparency composited onto white"
    return (
        f"converted from {mode} ({have} channel{'s' * (have != 1)}) to {target}{alpha}, "
        "as the model was trained"
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
