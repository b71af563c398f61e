"""Array-file sources: CIFAR-10's binary version and .npz files (both read without pickle)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from cnnkit.errors import DataError

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR10_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR10_TEST = "test_batch.bin"
CIFAR10_RECORD = 1 + 32 * 32 * 3  # label byte, then the R, G and B planes, 32x32 row-major


def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch -> (uint8 NHWC images, int64 labels)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read CIFAR-10 batch: {exc}", where=str(path)) from None
    if raw.size == 0 or raw.size % CIFAR10_RECORD:
        raise DataError(
            f"not a CIFAR-10 binary batch: {raw.size} bytes is not a multiple of {CIFAR10_RECORD}",
            where=str(path),
            hint="Use the binary version (cifar-10-binary.tar.gz), not the Python one.",
        )
    records = raw.reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError("labels above 9: not a CIFAR-10 batch", where=str(path))
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def find_cifar10_dir(root: Path) -> Path | None:
    for candidate in (root, root / "cifar-10-batches-bin"):
        if (candidate / CIFAR10_TEST).is_file():
            return candidate
    return None


def extract_cifar10(archive: Path, into: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(into, filter="data")  # "data": no absolute paths, links or devices


def read_cifar10(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    missing = [n for n in [*CIFAR10_TRAIN, CIFAR10_TEST] if not (directory / n).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 files missing: {', '.join(missing)}",
            where=str(directory),
            hint="The folder must hold data_batch_1.bin ... data_batch_5.bin and test_batch.bin.",
        )
    parts = [read_cifar10_batch(directory / n) for n in CIFAR10_TRAIN]
    x_test, y_test = read_cifar10_batch(directory / CIFAR10_TEST)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return x_train, y_train, x_test, y_test


def _images(array: np.ndarray, name: str, path: Path) -> np.ndarray:
    if array.ndim == 3:
        array = array[..., None]  # (N, H, W) grayscale, as keras.datasets.mnist gives
    if array.ndim != 4:
        raise DataError(
            f"array {name} has shape {array.shape}; expected (N, H, W) or (N, H, W, C)",
            where=str(path),
        )
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
            raise DataError(
                f"array {name} has dtype {array.dtype}; expected uint8 pixels 0-255",
                where=str(path),
                hint="Save the images before scaling, e.g. x.astype(np.uint8).",
            )
        array = array.astype(np.uint8)
    return array


def _labels(array: np.ndarray, name: str, n: int, path: Path) -> np.ndarray:
    if array.ndim == 2 and array.shape[1] > 1:
        array = array.argmax(axis=1)  # one-hot, as to_categorical gives
    array = array.reshape(-1)
    if not np.issubdtype(array.dtype, np.integer) or array.size != n or array.min() < 0:
        raise DataError(
            f"array {name} must hold {n} non-negative integer class indices (or one-hot rows)",
            where=str(path),
        )
    return array.astype(np.int64)


def read_npz(path: Path) -> dict[str, np.ndarray | list[str] | None]:
    """x, y and optional x_test, y_test, class_names from an .npz (allow_pickle=False)."""
    if not path.is_file():
        raise DataError(
            "npz file not found",
            where=str(path),
            hint="data.path must name an .npz file with arrays x and y (and optionally "
            "x_test, y_test, class_names).",
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read npz file: {exc}", where=str(path)) from None
    for required in ("x", "y"):
        if required not in arrays:
            raise DataError(
                f"npz file has no array '{required}' (it has {', '.join(arrays) or 'none'})",
                where=str(path),
            )
    x = _images(arrays["x"], "x", path)
    y = _labels(arrays["y"], "y", len(x), path)
    x_test = y_test = None
    if "x_test" in arrays:
        x_test = _images(arrays["x_test"], "x_test", path)
        y_test = _labels(arrays.get("y_test", np.empty(0)), "y_test", len(x_test), path)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"x_test images are {x_test.shape[1:]}, x images {x.shape[1:]}", where=str(path)
            )
    count = int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    if names is not None and len(names) < count:
        raise DataError(
            f"class_names has {len(names)} names but the labels go up to {count - 1}",
            where=str(path),
        )
    return {
        "x": x,
        "y": y,
        "x_test": x_test,
        "y_test": y_test,
        "class_names": names or [str(i) for i in range(count)],
    }


def npz_class_names(path: Path) -> list[str] | None:
    """Class names without reading the images (None if the file is not there yet)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "class_names" in archive.files:
                return [str(n) for n in archive["class_names"]]
            top = int(archive["y"].max())
            if "y_test" in archive.files:
                top = max(top, int(archive["y_test"].max()))
            return [str(i) for i in range(top + 1)]
    except (OSError, ValueError, KeyError):
        return None  # the loader reports the problem with the full message
