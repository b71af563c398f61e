"""Splits and mini-batches: uint8 images are scaled to float32 one batch at a time."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnkit.data.sources import Dataset
from cnnkit.errors import DataError
from cnnkit.options import did_you_mean
from cnnkit.seeding import random_stream


@dataclass
class Split:
    x: np.ndarray  # uint8 (N, H, W, C)
    y: np.ndarray  # int64 (N,)
    files: list[str] | None = None  # each sample's image file, when the data came from files

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    train: Split
    validation: Split | None
    test: Split | None  # None when the data has no test split (an image folder without test/)
    class_names: list[str]
    notes: list[str] = field(default_factory=list)  # what the user should know of the splits


def make_splits(dataset: Dataset, data: Any, seed: int) -> Splits:
    """Apply classes, max_*_samples and the validation choice of the spec's data section.

    max_train_samples / max_test_samples keep a stratified subset chosen by the spec's seed
    (stratified_subset), in the data's own order. A validation split that comes with the data
    (an image folder's val/, or its stratified validation_split) is used as it is. Otherwise
    validation_split takes the *last* fraction of the training set, before shuffling, as
    Keras' fit(validation_split=...) does, and validation: test uses the test split.
    """
    # names (cat, dog) -> the source's class indices
    classes = class_indices(data.classes, dataset.class_names) if data.classes else None

    def prepare(x, y, limit, files=None, stream=""):
        if x is None:
            return None
        split = Split(x, y, files)
        if classes:
            split = _select(split, classes)
        if not limit or limit >= len(split):
            return split
        keep = stratified_subset(split.y, limit, random_stream(seed, stream))
        return Split(split.x[keep], split.y[keep], split.files and [split.files[i] for i in keep])

    class_names = dataset.class_names
    if classes:
        class_names = [dataset.class_names[c] for c in classes]
    train = prepare(dataset.x_train, dataset.y_train, data.max_train_samples, None, "train_subset")
    test = prepare(
        dataset.x_test,
        dataset.y_test,
        data.max_test_samples,
        dataset.files_test,
        "test_subset",
    )
    notes: list[str] = []
    validation = prepare(dataset.x_val, dataset.y_val, None, dataset.files_val)
    if data.validation == "none":
        validation = None
    elif validation is None and data.validation_split:
        n_val = max(1, int(round(len(train) * data.validation_split)))
        validation = Split(train.x[-n_val:], train.y[-n_val:])
        train = Split(train.x[:-n_val], train.y[:-n_val])
        notes.extend(_class_sorted_note(train, validation, class_names, data.validation_split))
    elif validation is None and data.validation == "test":
        validation = test
    return Splits(train, validation, test, class_names, notes)


def _class_sorted_note(
    train: Split, validation: Split, class_names: list[str], fraction: float
) -> list[str]:
    """validation_split takes the last fraction of the data, as Keras' fit does: on data
    sorted by class that is one or two classes, and the val_ metrics (and best.npz) mean
    little. Said, not changed: the split stays Keras' and every existing run the same."""
    missing = sorted(set(np.unique(train.y).tolist()) - set(np.unique(validation.y).tolist()))
    if not missing:
        return []
    names = ", ".join(class_names[c] for c in missing[:5]) + (", ..." if len(missing) > 5 else "")
    return [
        f"the validation split (the last {fraction:g} of the training data, as Keras' fit "
        f"takes it) has no image of {len(missing)} of {len(class_names)} classes ({names}): "
        "the data looks sorted by class, so its val_ metrics and best.npz mean little. "
        "Shuffle the arrays before saving them, or give a validation set of its own"
    ]


def stratified_subset(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of n samples: every class in proportion to its count (largest
    remainder; each class at least one when n allows), the members chosen by rng.

    The first n of a class-sorted folder would hold one class (a 64-image run then
    measures val_auc 0); the same seed picks the same subset."""
    labels, counts = np.unique(y, return_counts=True)
    ideal = n * counts / counts.sum()
    quota = np.floor(ideal).astype(np.int64)
    order = np.argsort(-(ideal - quota), kind="stable")  # largest remainders first
    quota[order[: n - quota.sum()]] += 1
    if n >= len(labels):
        for c in np.flatnonzero(quota == 0):  # from the class most above its ideal share
            donor = int(np.argmax(np.where(quota > 1, quota - ideal, -np.inf)))
            quota[donor] -= 1
            quota[c] = 1
    chosen = []
    for label, k in zip(labels, quota, strict=True):
        members = np.flatnonzero(y == label)
        chosen.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(chosen))


def class_indices(classes: list[int] | list[str], class_names: list[str]) -> list[int]:
    """data.classes as indices into the source's classes: a name is looked up (Keras'
    flow_from_directory(classes=[...])); an index stays."""
    indices = []
    for i, c in enumerate(classes):
        if isinstance(c, str) and c not in class_names:
            raise DataError(
                f"no class '{c}' in the data",
                where=f"data.classes[{i}]",
                hint=f"{did_you_mean(c, class_names)}Valid names: {', '.join(class_names)}.",
            )
        if isinstance(c, int) and c >= len(class_names):
            raise DataError(
                f"class {c} does not exist: the data has classes 0 to {len(class_names) - 1}",
                where=f"data.classes[{i}]",
            )
        indices.append(class_names.index(c) if isinstance(c, str) else c)
    return indices


def _select(split: Split, classes: list[int]) -> Split:
    """Keep the images of `classes`, relabelled 0, 1, ... in the order given."""
    relabel = np.full(int(max(classes)) + 1, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    keep = np.isin(split.y, classes)
    files = [f for f, k in zip(split.files, keep, strict=True) if k] if split.files else None
    return Split(split.x[keep], relabel[split.y[keep]], files)


def scale(x: np.ndarray, rescale: float) -> np.ndarray:
    """uint8 -> float32 multiplied by rescale (Keras' ImageDataGenerator(rescale=1/255))."""
    return x.astype(np.float32) * np.float32(rescale)


def batches(
    split: Split,
    batch_size: int,
    rescale: float | Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator | None = None,
    start: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x float32, y) batches; shuffled by rng when given. The last batch may be short.

    rescale: a factor, or a function that turns a uint8 batch into the model's float32 input
    (cnnkit.data.augment.Preprocessor: augmentation, rescale, normalisation)."""
    prepare = rescale if callable(rescale) else lambda x: scale(x, rescale)
    for idx in batch_indices(len(split), batch_size, rng, start):
        yield prepare(split.x[idx]), split.y[idx]


def batch_indices(
    n: int, batch_size: int, rng: np.random.Generator | None = None, start: int = 0
) -> Iterator[slice | np.ndarray]:
    """Each batch's rows of a split of n (what `batches` gathers): in order, or the rng's
    permutation (one draw per epoch), each batch's rows sorted (a faster gather)."""
    order = rng.permutation(n) if rng is not None else None
    for begin in range(start, n, batch_size):
        if order is None:
            yield slice(begin, begin + batch_size)
        else:
            yield np.sort(order[begin : begin + batch_size])


_DONE = object()


def prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Yield what `items` yields, produced by a background thread at most `depth` ahead.

    The batches (gather, scale, augment: numpy and nogil Numba kernels) are prepared while
    the previous batch trains. `items` runs entirely in that one thread, in order, so the
    random streams it draws from are consumed exactly as by a plain loop: same batches. An
    exception in the thread is raised here; closing this generator stops the thread."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as error:  # handed to the consumer, raised there
            put((_DONE, error))

    thread = threading.Thread(target=produce, name="cnnkit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = results.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()
