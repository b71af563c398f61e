"""Splits and mini-batches: uint8 images are scaled to float32 one batch at a time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cnnkit.data.sources import Dataset


@dataclass
class Split:
    x: np.ndarray  # uint8 (N, H, W, C)
    y: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    train: Split
    validation: Split | None
    test: Split | None  # None when the data has no test split (an image folder without test/)
    class_names: list[str]


def make_splits(dataset: Dataset, data: dict) -> Splits:
    """Apply classes, max_*_samples and the validation choice of the spec's data section.

    A validation split that comes with the data (an image folder's val/, or its stratified
    validation_split) is used as it is. Otherwise validation_split takes the *last* fraction of
    the training set, before shuffling, as Keras' fit(validation_split=...) does, and
    validation: test uses the test split.
    """

    def prepare(x, y, limit):
        if x is None:
            return None
        split = Split(x, y)
        if data.get("classes"):
            split = _select(split, data["classes"])
        return Split(split.x[:limit], split.y[:limit]) if limit else split

    class_names = dataset.class_names
    if data.get("classes"):
        class_names = [dataset.class_names[c] for c in data["classes"]]
    train = prepare(dataset.x_train, dataset.y_train, data.get("max_train_samples"))
    test = prepare(dataset.x_test, dataset.y_test, data.get("max_test_samples"))
    validation = prepare(dataset.x_val, dataset.y_val, None)
    if data.get("validation") == "none":
        validation = None
    elif validation is None and data.get("validation_split"):
        n_val = max(1, int(round(len(train) * data["validation_split"])))
        validation = Split(train.x[-n_val:], train.y[-n_val:])
        train = Split(train.x[:-n_val], train.y[:-n_val])
    elif validation is None and data.get("validation") == "test":
        validation = test
    return Splits(train, validation, test, class_names)


def _select(split: Split, classes: list[int]) -> Split:
    """Keep the images of `classes`, relabelled 0, 1, ... in the order given."""
    relabel = np.full(int(max(classes)) + 1, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    keep = np.isin(split.y, classes)
    return Split(split.x[keep], relabel[split.y[keep]])


def scale(x: np.ndarray, rescale: float) -> np.ndarray:
    """uint8 -> float32 multiplied by rescale (Keras' ImageDataGenerator(rescale=1/255))."""
    return x.astype(np.float32) * np.float32(rescale)


def batches(
    split: Split,
    batch_size: int,
    rescale: float,
    rng: np.random.Generator | None = None,
    start: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x float32, y) batches; shuffled by rng when given. The last batch may be short."""
    order = rng.permutation(len(split)) if rng is not None else None
    for begin in range(start, len(split), batch_size):
        if order is None:
            idx = slice(begin, begin + batch_size)
        else:
            idx = np.sort(order[begin : begin + batch_size])  # sorted: faster gather
        yield scale(split.x[idx], rescale), split.y[idx]
