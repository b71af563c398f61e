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
    test: Split
    class_names: list[str]


def make_splits(dataset: Dataset, data: dict) -> Splits:
    """Apply max_*_samples and the validation choice of the spec's data section.

    validation_split takes the *last* fraction of the training set, before shuffling, as
    Keras' fit(validation_split=...) does.
    """
    n_train = data.get("max_train_samples") or len(dataset.y_train)
    n_test = data.get("max_test_samples") or len(dataset.y_test)
    train = Split(dataset.x_train[:n_train], dataset.y_train[:n_train])
    test = Split(dataset.x_test[:n_test], dataset.y_test[:n_test])
    validation = None
    if data.get("validation_split"):
        n_val = max(1, int(round(len(train) * data["validation_split"])))
        validation = Split(train.x[-n_val:], train.y[-n_val:])
        train = Split(train.x[:-n_val], train.y[:-n_val])
    elif data.get("validation") == "test":
        validation = test
    return Splits(train, validation, test, dataset.class_names)


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
