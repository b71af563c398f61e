"""Image-folder datasets in the Keras `flow_from_directory` layout, decoded once and cached.

Two layouts:

    path/train/<class>/*.png  path/val|valid|validation/<class>/...  path/test/<class>/...
    path/<class>/*.png        (validation_split carves a stratified, seeded validation set)

Classes are the sub-folder names in alphabetical order, as Keras orders them. Images are
decoded with Pillow, converted to the colour mode and resized to target_size once, by
cnnkit.data.images.decode_image (what `cnnkit predict` calls too); the uint8 arrays are cached
in the user cache (cnnkit.places.cache_dir: CNNKIT_CACHE_DIR, else $CNNKIT_DATA/cache, else
~/.cache/cnnkit on Linux) under a key made of every file's path, size and
modification time plus the decoding options and the decoder (Pillow's version), so the second
epoch and the second run decode nothing, and any changed, added or removed file invalidates
the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnkit.data.images import CHANNELS, DECODER, IMAGE_SUFFIXES, ImageOptions, decode_image
from cnnkit.errors import DataError
from cnnkit.places import cache_dir

SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


@dataclass
class FolderScan:
    """What is on disk, before decoding: files per split, classes, what was ignored."""

    root: Path
    classes: list[str]
    splits: dict[str, list[tuple[Path, int]]]  # split -> [(file, class index)]
    ignored: int = 0  # hidden files and non-images
    folders: dict[str, Path] = field(default_factory=dict)  # split -> its folder


def _ignore(*_: object) -> None:
    pass


@dataclass
class LoadProgress:
    """What loading a folder tells its caller, who shows it (cnnkit.cli.display.load_progress):
    the data layer prints nothing itself."""

    # one line per split, as Keras' "Found 400 images belonging to 2 classes."
    found: Callable[[str], None] = _ignore
    # (split folder, images decoded, total): from 0 to total, only when images are decoded
    # (a cache hit decodes nothing and reports nothing)
    decoding: Callable[[str, int, int], None] = _ignore


@dataclass
class DecodedSplit:
    x: np.ndarray  # uint8 (N, H, W, C)
    y: np.ndarray  # int64 (N,)
    files: list[str] = field(default_factory=list)


def _split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    return found


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files_under(folder: Path) -> list[Path]:
    """Every file below folder, sorted; os.walk lists names without a stat call per file,
    several times faster than Path.rglob + is_file on a 10,000-file folder."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found.extend(Path(dirpath) / name for name in filenames)
    return sorted(found)


def scan_folder(root: Path) -> FolderScan:
    """List classes and image files; raise DataError naming the folder when the layout is off.

    The root is resolved once, so the files' paths (the cache key) are absolute."""
    if not root.is_dir():
        raise DataError(
            "image folder not found",
            where=str(root),
            hint="data.path must hold one sub-folder per class, or train/ (val/, test/) "
            "folders that each hold one sub-folder per class.",
        )
    root = root.resolve()
    split_dirs = _split_dirs(root)
    if not split_dirs:
        split_dirs = {"all": root}
    elif "train" not in split_dirs:
        raise DataError(
            f"has {', '.join(p.name for p in split_dirs.values())}/ but no train/ folder",
            where=str(root),
        )
    classes = _class_dirs(split_dirs.get("train", root))
    if not classes:
        raise DataError(
            "no class folders found",
            where=str(split_dirs.get("train", root)),
            hint="Put the images of each class in a sub-folder named after the class.",
        )
    splits: dict[str, list[tuple[Path, int]]] = {}
    ignored = 0
    for split, folder in split_dirs.items():
        here = _class_dirs(folder)
        if here != classes:
            missing = sorted(set(classes) - set(here))
            extra = sorted(set(here) - set(classes))
            raise DataError(
                "class folders differ from train/'s"
                + (f": missing {', '.join(missing)}" if missing else "")
                + (f"; extra {', '.join(extra)}" if extra else ""),
                where=str(folder),
                hint=f"Every split needs the same class folders: {', '.join(classes)}.",
            )
        files: list[tuple[Path, int]] = []
        for index, name in enumerate(classes):
            class_dir = folder / name
            count = 0
            for path in _files_under(class_dir):
                hidden = any(p.startswith(".") for p in path.relative_to(class_dir).parts)
                if hidden or path.suffix.lower() not in IMAGE_SUFFIXES:
                    ignored += 1
                    continue
                files.append((path, index))
                count += 1
            if count == 0:
                raise DataError(
                    "class folder holds no images",
                    where=str(class_dir),
                    hint=f"Image files end in {', '.join(IMAGE_SUFFIXES)}; remove the folder "
                    "or add images.",
                )
        splits[split] = files
    return FolderScan(root, classes, splits, ignored, split_dirs)


def folder_classes(root: Path) -> list[str] | None:
    """Class names of an image folder without reading any image (None if there is no folder)."""
    if not root.is_dir():
        return None
    split_dirs = _split_dirs(root)
    return _class_dirs(split_dirs.get("train", root)) or None


def _decode(path: Path, size: tuple[int, int], color_mode: str, interpolation: str) -> np.ndarray:
    """cnnkit.data.images.decode_image: the decoder predict uses too."""
    return decode_image(path, ImageOptions(tuple(size), color_mode, interpolation))


def _cache_key(files: list[tuple[Path, int]], options: dict) -> str:
    """The files (path, size, mtime, label), the options and the decoder (DECODER)."""
    digest = hashlib.sha256(json.dumps({**options, **DECODER}, sort_keys=True).encode())
    for path, label in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
    return digest.hexdigest()[:32]


def decode_split(
    files: list[tuple[Path, int]],
    size: tuple[int, int],
    color_mode: str,
    interpolation: str,
    skip_bad_images: bool,
    bad: list[str],
    progress: Callable[[int, int], None] | None = None,
) -> DecodedSplit:
    """Decode (or load from the cache) every file of a split; bad files raise or are skipped.

    progress(done, total) is called from 0 to total while images are decoded (not on a cache
    hit), in this thread."""
    options = {"size": list(size), "color_mode": color_mode, "interpolation": interpolation}
    key = _cache_key(files, {**options, "skip_bad_images": skip_bad_images})
    cached = cache_dir() / "folders" / f"{key}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as archive:
                return DecodedSplit(archive["x"], archive["y"], [str(f) for f in archive["files"]])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt below

    def load(item: tuple[Path, int]) -> np.ndarray | None:
        path, _ = item
        try:
            return _decode(path, size, color_mode, interpolation)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            if not skip_bad_images:
                raise DataError(
                    f"cannot read image ({exc.__class__.__name__}: {exc})",
                    where=str(path),
                    hint="Remove or replace the file, or set data.skip_bad_images: true.",
                ) from None
            return None

    # Pillow releases the GIL while decoding and resizing: threads decode in parallel.
    report = progress or _ignore
    report(0, len(files))
    arrays: list[np.ndarray | None] = []
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for array in pool.map(load, files):  # in order, as each is ready
            arrays.append(array)
            report(len(arrays), len(files))
    keep = [i for i, a in enumerate(arrays) if a is not None]
    bad.extend(str(files[i][0]) for i, a in enumerate(arrays) if a is None)
    channels = CHANNELS[color_mode]
    x = np.empty((len(keep), size[0], size[1], channels), dtype=np.uint8)
    for row, i in enumerate(keep):
        x[row] = arrays[i]
    y = np.array([files[i][1] for i in keep], dtype=np.int64)
    names = [str(files[i][0]) for i in keep]
    _write_cache(cached, x, y, names)
    return DecodedSplit(x, y, names)


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray, files: list[str]) -> None:
    """Best effort: a read-only home only costs the next run a decode."""
    try:
        from cnnkit.io import atomic_write_bytes

        buffer = io.BytesIO()
        np.savez(buffer, x=x, y=y, files=np.array(files, dtype=str))
        atomic_write_bytes(path, buffer.getvalue())
    except OSError:
        pass


def stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): `fraction` of every class, chosen by rng, for validation."""
    train_idx, val_idx = [], []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        members = members[rng.permutation(len(members))]
        n_val = int(round(len(members) * fraction))
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))
