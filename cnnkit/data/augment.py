"""Data augmentation and input normalisation: Keras ImageDataGenerator's options, batch-wise.

The spec's `augmentation:` section uses ImageDataGenerator's names, meanings and defaults.
Per training batch: a random transform is drawn for every image from the seeded "augment"
stream, the geometric part (rotation, shifts, shear, zoom, flips) is composed into one 2x3
matrix per image, and one Numba kernel (cnnkit.kernels.affine) resamples the whole batch
(bilinear) and applies the channel shift, the brightness factor and data.rescale. Then the
normalisation options (samplewise, featurewise) apply, as Keras' standardize() does.

Augmentation touches training batches only; the normalisation applies to every batch the
model sees (training, validation, evaluate, predict). Featurewise statistics are computed
once on the training split (rescaled, not augmented: Keras' fit(augment=False)) and saved in
the run directory (normalization.json), so evaluate and predict apply the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnkit.data.batches import Split, scale
from cnnkit.errors import SpecError
from cnnkit.kernels.nojit import FILL_MODES, lazy
from cnnkit.options import (
    Option,
    checker,
    fraction,
    join_path,
    nullable,
    require_mapping,
    resolve_options,
)

EPSILON = 1e-6  # Keras' standardize(): x / (std + 1e-6)


# -- the spec section --------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "a boolean" if isinstance(value, bool) else type(value).__name__


@checker({"type": "number", "minimum": 0})
def _shift_range(value: Any, path: str) -> int | float:
    """Keras: a float < 1 is a fraction of the size, a float >= 1 pixels (uniform), an int n
    whole pixels (np.random.choice(n) with a random sign). The type is kept: 2 and 2.0 differ."""
    value = fraction(value, path)  # 1/10
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise SpecError(
            f"expected a number >= 0, found {value!r}",
            where=path,
            hint="0.1: up to 10% of the size; 2.5: up to 2.5 pixels; 3 (an integer): "
            "-2 to 2 whole pixels, as Keras.",
        )
    return value


def _pair(value: Any, path: str, lowest: float, what: str, example: str) -> list[float]:
    if isinstance(value, (list, tuple)):
        value = [fraction(v, f"{path}[{i}]") for i, v in enumerate(value)]
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and lowest <= value[0] <= value[1]
    )
    if not ok:
        raise SpecError(f"expected {what}, found {value!r}", where=path, hint=example)
    return [float(value[0]), float(value[1])]


# [lower, upper]
_NUMBER_PAIR = {
    "type": "array",
    "items": {"type": "number", "minimum": 0},
    "minItems": 2,
    "maxItems": 2,
}


@checker({"anyOf": [{"type": "number", "minimum": 0, "exclusiveMaximum": 1}, _NUMBER_PAIR]})
def _zoom_range(value: Any, path: str) -> list[float]:
    """Keras: a float z means [1 - z, 1 + z]; or [lower, upper]. Resolved to the pair."""
    value = fraction(value, path)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 <= value < 1:
            raise SpecError(
                f"{value!r} is out of range",
                where=path,
                hint="Valid: [0, 1) (zoom factors 1 - z to 1 + z), or a pair [lower, upper].",
            )
        return [1.0 - float(value), 1.0 + float(value)]
    pair = _pair(value, path, 0.0, "a number or a pair [lower, upper]", "Example: [0.9, 1.2].")
    if pair[0] <= 0:
        raise SpecError("zoom factors must be > 0", where=path, hint="Example: [0.9, 1.2].")
    return pair


@checker(nullable(_NUMBER_PAIR))
def _brightness_range(value: Any, path: str) -> list[float] | None:
    if value is None:
        return None
    return _pair(
        value, path, 0.0, "null or a pair [lower, upper] of factors >= 0", "Example: [0.8, 1.2]."
    )


AUGMENT_OPTIONS = {
    "rotation_range": Option("float", default=0.0, minimum=0.0),
    "width_shift_range": Option(_shift_range, default=0.0),
    "height_shift_range": Option(_shift_range, default=0.0),
    "shear_range": Option("float", default=0.0, minimum=0.0),
    "zoom_range": Option(_zoom_range, default=[1.0, 1.0]),
    "horizontal_flip": Option("bool", default=False),
    "vertical_flip": Option("bool", default=False),
    "fill_mode": Option("str", default="nearest", choices=FILL_MODES),
    "cval": Option("float", default=0.0),
    "brightness_range": Option(_brightness_range, default=None),
    "channel_shift_range": Option("float", default=0.0, minimum=0.0),
    "featurewise_center": Option("bool", default=False),
    "featurewise_std_normalization": Option("bool", default=False),
    "samplewise_center": Option("bool", default=False),
    "samplewise_std_normalization": Option("bool", default=False),
}
# ImageDataGenerator options cnnkit does not take here, and what to do instead
NOT_HERE = {
    "rescale": "cnnkit's rescale is data.rescale (default 1/255); it applies to every split, "
    "not only to augmented batches. Move it there.",
    "zca_whitening": "ZCA whitening is not supported; featurewise_center and "
    "featurewise_std_normalization are.",
    "zca_epsilon": "ZCA whitening is not supported.",
    "preprocessing_function": "a spec holds no code; there is no preprocessing_function.",
    "validation_split": "use data.validation_split.",
    "data_format": "images are always channels-last.",
    "interpolation_order": "sampling is always bilinear (Keras' default order 1).",
    "dtype": "inputs are always float32.",
}


def resolve_augmentation(value: Any = None, path: str = "augmentation") -> dict[str, Any]:
    """The `augmentation:` section with every default filled in (absent or null: all off)."""
    given = require_mapping(value, path, "a mapping of augmentation options")
    for key in given:
        if key in NOT_HERE:
            raise SpecError(
                f"'{key}' is not an augmentation option here",
                where=join_path(path, key),
                hint=f"{key}: {NOT_HERE[key]}",
            )
    return resolve_options(given, AUGMENT_OPTIONS, path, what="augmentation option")


def augments(section: Any) -> bool:
    """Does the section change training images at all (beyond normalisation)?"""
    return bool(
        section.rotation_range
        or section.width_shift_range
        or section.height_shift_range
        or section.shear_range
        or list(section.zoom_range) != [1.0, 1.0]
        or section.horizontal_flip
        or section.vertical_flip
        or section.brightness_range is not None
        or section.channel_shift_range
    )


# -- random transforms -------------------------------------------------------------------


@dataclass
class Transforms:
    """One batch's random draws, one entry per image (Keras' get_random_transform)."""

    theta: np.ndarray  # rotation, degrees; positive turns the image counterclockwise
    shift_rows: np.ndarray  # pixels (height_shift_range)
    shift_cols: np.ndarray  # pixels (width_shift_range)
    shear: np.ndarray  # degrees
    zoom_rows: np.ndarray  # sampling factor: > 1 shows more of the image (it shrinks)
    zoom_cols: np.ndarray
    flip_rows: np.ndarray  # bool: vertical flip
    flip_cols: np.ndarray  # bool: horizontal flip
    channel_shift: np.ndarray  # pixel units, added to every channel
    brightness: np.ndarray  # factor

    @classmethod
    def identity(cls, n: int) -> Transforms:
        zeros, ones, no = np.zeros, np.ones, np.zeros  # separate arrays: set in place safely
        return cls(
            zeros(n),
            zeros(n),
            zeros(n),
            zeros(n),
            ones(n),
            ones(n),
            no(n, bool),
            no(n, bool),
            zeros(n),
            ones(n),
        )


def _shift(rng: np.random.Generator, value: int | float, size: int, n: int) -> np.ndarray:
    """Keras' draw: int -> choice(value) * random sign; float -> uniform(-v, v); < 1 -> * size."""
    if not value:
        return np.zeros(n)
    if isinstance(value, int):
        pixels = rng.integers(0, value, size=n) * rng.choice(np.array([-1, 1]), size=n)
        return pixels.astype(np.float64)
    shifts = rng.uniform(-value, value, size=n)
    return shifts * size if value < 1 else shifts


def transform_matrices(t: Transforms, height: int, width: int) -> np.ndarray:
    """(N, 2, 3) inverse maps, output (row, col) -> input (row, col), about the image centre.

    As Keras' apply_affine_transform: rotation · shift · shear · zoom composed in that order
    (Keras' transform_matrix_offset_center puts the composite about the centre), in (row, col)
    coordinates; flips act on the output, as Keras flips after transforming. The centre is the
    true pixel centre ((h - 1) / 2, (w - 1) / 2), not Keras' h / 2 + 0.5, so that a flip or a
    90-degree rotation maps the pixel grid onto itself exactly.
    """
    n = len(t.theta)
    th, sh = np.deg2rad(t.theta), np.deg2rad(t.shear)
    cos, sin = np.cos(th), np.sin(th)
    rot = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # (N, 2, 2)
    shear = np.zeros((n, 2, 2))
    shear[:, 0, 0], shear[:, 1, 0], shear[:, 1, 1] = np.cos(sh), -np.sin(sh), 1.0
    zoom = np.zeros((n, 2, 2))
    zoom[:, 0, 0], zoom[:, 1, 1] = t.zoom_rows, t.zoom_cols
    flip = np.zeros((n, 2, 2))
    flip[:, 0, 0] = np.where(t.flip_rows, -1.0, 1.0)
    flip[:, 1, 1] = np.where(t.flip_cols, -1.0, 1.0)
    shift = np.stack([t.shift_rows, t.shift_cols], -1)  # (N, 2)
    # R (T (S Z u)) = R S Z u + R t, then the output flip F first: A = R S Z F, offset R t
    linear = rot @ shear @ zoom @ flip
    offset = np.einsum("nij,nj->ni", rot, shift)
    centre = np.array([(height - 1) / 2.0, (width - 1) / 2.0])
    matrices = np.empty((n, 2, 3))
    matrices[:, :, :2] = linear
    matrices[:, :, 2] = centre + offset - linear @ centre
    return matrices


(augment_batch,) = lazy("cnnkit.kernels.affine", "augment_batch")  # numba on first use only


class Augmenter:
    """Draws and applies the random transforms of a resolved `augmentation:` section."""

    def __init__(self, section: Any):
        self.section = section
        self.mode = FILL_MODES.index(section.fill_mode)

    def draw(self, n: int, height: int, width: int, rng: np.random.Generator) -> Transforms:
        s, t = self.section, Transforms.identity(n)
        if s.rotation_range:
            t.theta = rng.uniform(-s.rotation_range, s.rotation_range, size=n)
        t.shift_rows = _shift(rng, s.height_shift_range, height, n)
        t.shift_cols = _shift(rng, s.width_shift_range, width, n)
        if s.shear_range:
            t.shear = rng.uniform(-s.shear_range, s.shear_range, size=n)
        lower, upper = s.zoom_range
        if (lower, upper) != (1.0, 1.0):
            t.zoom_rows = rng.uniform(lower, upper, size=n)
            t.zoom_cols = rng.uniform(lower, upper, size=n)
        if s.horizontal_flip:
            t.flip_cols = rng.random(n) < 0.5
        if s.vertical_flip:
            t.flip_rows = rng.random(n) < 0.5
        if s.channel_shift_range:
            r = s.channel_shift_range
            t.channel_shift = rng.uniform(-r, r, size=n)
        if s.brightness_range is not None:
            t.brightness = rng.uniform(*s.brightness_range, size=n)
        return t

    def apply(self, x: np.ndarray, t: Transforms, rescale: float = 1.0) -> np.ndarray:
        """uint8 or float32 (N, H, W, C) in pixel units -> float32 transformed, times rescale."""
        if x.dtype not in (np.uint8, np.float32):
            x = x.astype(np.float32)
        x = np.ascontiguousarray(x)
        out = np.empty(x.shape, np.float32)
        matrices = transform_matrices(t, x.shape[1], x.shape[2])
        augment_batch(
            x,
            matrices,
            self.mode,
            float(self.section.cval),
            t.channel_shift.astype(np.float64),
            bool(self.section.channel_shift_range),
            t.brightness.astype(np.float64),
            self.section.brightness_range is not None,
            float(rescale),
            out,
        )
        return out

    def __call__(self, x: np.ndarray, rng: np.random.Generator, rescale: float = 1.0):
        return self.apply(x, self.draw(len(x), x.shape[1], x.shape[2], rng), rescale)


# -- normalisation -----------------------------------------------------------------------


@dataclass
class Preprocessor:
    """uint8 batches -> float32 model inputs: [augment,] rescale, normalise (Keras' order).

    Calling it prepares evaluation batches (no augmentation); `training(rng)` gives the
    function that prepares training batches."""

    rescale: float
    samplewise_center: bool = False
    samplewise_std_normalization: bool = False
    mean: np.ndarray | None = None  # (C,) float32: featurewise_center
    std: np.ndarray | None = None  # (C,) float32: featurewise_std_normalization
    augmenter: Augmenter | None = None

    @classmethod
    def from_spec(
        cls,
        spec: Any,
        train: Split | None = None,
        saved: Callable[[], dict[str, Any]] | None = None,
    ):
        """Featurewise statistics from the training split (train) or, for a trained run, what
        statistics() gave at training (saved: its reader, called only when the spec needs
        them: RunDir.read_normalization)."""
        section = spec.augmentation
        pre = cls(
            spec.data.rescale,
            section.samplewise_center,
            section.samplewise_std_normalization,
            augmenter=Augmenter(section) if augments(section) else None,
        )
        center, std = section.featurewise_center, section.featurewise_std_normalization
        if center or std:
            if train is not None:
                mean, sd = featurewise_stats(train.x, pre.rescale)
            elif saved is not None:
                mean, sd = saved_featurewise_stats(saved())
            else:
                raise ValueError("featurewise statistics need the training split or a run's")
            pre.mean = mean if center else None
            pre.std = sd if std else None
        return pre

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """In place on a float32 batch, as Keras' standardize() after rescale."""
        axes = tuple(range(1, x.ndim))
        if self.samplewise_center:
            x -= x.mean(axis=axes, keepdims=True)
        if self.samplewise_std_normalization:
            x /= x.std(axis=axes, keepdims=True) + np.float32(EPSILON)
        if self.mean is not None:
            x -= self.mean
        if self.std is not None:
            x /= self.std + np.float32(EPSILON)
        return x

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.normalize(scale(x, self.rescale))

    def training(self, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
        if self.augmenter is None:
            return self
        return lambda x: self.normalize(self.augmenter(x, rng, self.rescale))

    def statistics(self) -> dict[str, Any] | None:
        """The featurewise statistics a trained run keeps (its normalization.json), or None
        when there are none to keep."""
        if self.mean is None and self.std is None:
            return None
        return {
            "rescale": self.rescale,
            "featurewise_mean": None if self.mean is None else self.mean.tolist(),
            "featurewise_std": None if self.std is None else self.std.tolist(),
            "computed_on": "the training split, rescaled, not augmented",
        }


def featurewise_stats(x: np.ndarray, rescale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of rescale * x over a whole uint8 split."""
    channels = x.shape[-1]
    total, squares, count = np.zeros(channels), np.zeros(channels), 0
    for begin in range(0, len(x), 4096):  # float64 in chunks: exact enough, little memory
        chunk = x[begin : begin + 4096].reshape(-1, channels).astype(np.float64)
        total += chunk.sum(axis=0)
        squares += np.square(chunk).sum(axis=0)
        count += len(chunk)
    mean = total / max(count, 1)
    var = np.maximum(squares / max(count, 1) - mean**2, 0.0)
    return (mean * rescale).astype(np.float32), (np.sqrt(var) * rescale).astype(np.float32)


def saved_featurewise_stats(saved: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessor.statistics()' mean and std, as arrays."""
    mean, std = saved.get("featurewise_mean"), saved.get("featurewise_std")
    return (
        None if mean is None else np.asarray(mean, np.float32),
        None if std is None else np.asarray(std, np.float32),
    )


# -- preview -----------------------------------------------------------------------------


def preview_grid(
    x: np.ndarray, augmenter: Augmenter, rng: np.random.Generator, versions: int = 4
) -> np.ndarray:
    """uint8 (rows * cell, n * cell, C) image: the originals in the first row, then
    `versions` rows of random augmentations of them (pixel units: rescale and normalisation
    are not shown). Small images are enlarged (nearest) so a 28x28 digit stays visible."""
    n, h, w, c = x.shape
    rows = [x.astype(np.float32)] + [augmenter(x, rng) for _ in range(versions)]
    factor = max(1, 64 // max(h, w))
    gap = 2
    cell_h, cell_w = h * factor + gap, w * factor + gap
    grid = np.full((len(rows) * cell_h + gap, n * cell_w + gap, c), 128, np.uint8)
    for i, images in enumerate(rows):
        pixels = np.clip(np.rint(images), 0, 255).astype(np.uint8)
        pixels = pixels.repeat(factor, axis=1).repeat(factor, axis=2)
        for j in range(n):
            top, left = gap + i * cell_h, gap + j * cell_w
            grid[top : top + h * factor, left : left + w * factor] = pixels[j]
    return grid
