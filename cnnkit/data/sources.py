"""Built-in data sources: files on disk -> uint8 NHWC arrays, integer labels, class names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.data.idx import md5sum, read_idx
from cnnkit.errors import DataError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Dataset:
    x_train: np.ndarray  # uint8 (N, H, W, C)
    y_train: np.ndarray  # int64 class indices
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]


def resolve_data_dir(path: str, spec_dir: Path | None) -> Path:
    """A relative data path is looked up in the working directory, next to the spec, then in
    the cnnkit checkout, so `datasets/mnist` works from anywhere in a fresh clone."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    for base in (Path.cwd(), spec_dir, PROJECT_ROOT):
        if base is not None and (base / candidate).is_dir():
            return base / candidate
    return Path.cwd() / candidate


# MNIST, as shipped in datasets/mnist: file -> accepted md5s of the .gz (the train images are
# recompressed in this repository; the original file's md5 is accepted too).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (
        "e3fc4e8c62dc6b44129a6c5dc73f271c",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ),
    "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432",),
    "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3",),
    "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c",),
}


def _checked_idx(directory: Path, name: str, md5s: tuple[str, ...], source: str) -> np.ndarray:
    path = directory / name
    if not path.is_file():
        raise DataError(
            f"{source} file not found: {path}",
            where=str(directory),
            hint=f"{source} needs these files in {directory}: {', '.join(MNIST_FILES)}. "
            "A fresh clone of cnnkit ships them in datasets/mnist/; set data.path to "
            "the folder that holds them.",
        )
    actual = md5sum(path)
    if actual not in md5s:
        raise DataError(
            f"checksum mismatch: md5 {actual}, expected {md5s[0]}",
            where=str(path),
            hint="The file is corrupt or not the original; copy it again from a fresh clone.",
        )
    return read_idx(path)


def load_mnist(options: dict[str, Any], spec_dir: Path | None, input_shape: tuple) -> Dataset:
    directory = resolve_data_dir(options.get("path") or "datasets/mnist", spec_dir)
    arrays = [_checked_idx(directory, n, m, "MNIST") for n, m in MNIST_FILES.items()]
    x_train, y_train, x_test, y_test = arrays
    return Dataset(
        x_train=x_train[..., None],
        y_train=y_train.astype(np.int64),
        x_test=x_test[..., None],
        y_test=y_test.astype(np.int64),
        class_names=[str(i) for i in range(10)],
    )


def load_synthetic(options: dict[str, Any], spec_dir: Path | None, input_shape: tuple) -> Dataset:
    """Seeded random images and labels of any shape and class count: for summaries of models
    with no dataset at hand (AlexNet) and for benchmarks. Nothing is learnable here."""
    rng = np.random.default_rng(options.get("synthetic_seed", 0))
    n_train = options.get("max_train_samples") or SYNTHETIC_TRAIN
    n_test = options.get("max_test_samples") or SYNTHETIC_TEST
    k = options["num_classes"]
    return Dataset(
        x_train=rng.integers(0, 256, size=(n_train, *input_shape), dtype=np.uint8),
        y_train=rng.integers(0, k, size=n_train).astype(np.int64),
        x_test=rng.integers(0, 256, size=(n_test, *input_shape), dtype=np.uint8),
        y_test=rng.integers(0, k, size=n_test).astype(np.int64),
        class_names=[str(i) for i in range(k)],
    )


SYNTHETIC_TRAIN, SYNTHETIC_TEST = 1024, 256  # images made when max_*_samples is not set


@dataclass(frozen=True)
class SourceInfo:
    """What the spec checker needs to know without loading a single file."""

    load: Callable[[dict[str, Any], Path | None, tuple], Dataset]
    input_shape: tuple[int, int, int] | None  # None: any shape, taken from model.input_shape
    num_classes: int | None  # None: set by data.num_classes
    default_path: str | None
    # "dark" when images are light strokes on a dark background (MNIST): predict inverts
    # dark-on-light user images to match. None when there is no such convention.
    background: str | None = None
    # True when the training images are digits centred by mass in a 20x20 box (MNIST's own
    # preprocessing): predict crops and centres a user's drawing the same way.
    centre_digits: bool = False


SOURCES: dict[str, SourceInfo] = {
    "mnist": SourceInfo(
        load_mnist, (28, 28, 1), 10, "datasets/mnist", background="dark", centre_digits=True
    ),
    "synthetic": SourceInfo(load_synthetic, None, None, None),
}
