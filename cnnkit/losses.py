"""Losses, computed from the model's logits when the head is softmax (fused, stable).

Labels arrive as integer class indices for every loss; categorical_crossentropy one-hot encodes
them itself, so a spec can switch between the two cross-entropies without touching the data.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from cnnkit.activations import softmax
from cnnkit.options import Option


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class Loss:
    name: ClassVar[str] = "loss"
    OPTIONS: ClassVar[dict[str, Option]] = {}
    # The activation the model's last layer must end in (the loss fuses it).
    head_activation: ClassVar[str] = "softmax"

    def __init__(self, **options):
        self.options = options

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean loss over the batch and its gradient with respect to the logits."""
        raise NotImplementedError

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits)


class CategoricalCrossentropy(Loss):
    """-sum(t * log softmax(z)), averaged over the batch; t is one-hot (optionally smoothed)."""

    name = "categorical_crossentropy"
    OPTIONS = {
        "label_smoothing": Option("float", default=0.0, minimum=0.0, maximum=1.0),
        "from_logits": Option("bool", default=False),
    }

    def targets(self, labels: np.ndarray, num_classes: int, dtype) -> np.ndarray:
        t = np.zeros((labels.shape[0], num_classes), dtype=dtype)
        t[np.arange(labels.shape[0]), labels] = 1
        smoothing = self.options.get("label_smoothing", 0.0)
        if smoothing:
            t = t * (1 - smoothing) + smoothing / num_classes
        return t

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        n, k = logits.shape
        t = self.targets(labels, k, logits.dtype)
        logp = log_softmax(logits)
        loss = -(t * logp).sum() / n
        grad = (np.exp(logp) - t) / logits.dtype.type(n)
        return float(loss), grad.astype(logits.dtype, copy=False)


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """The same loss with integer labels; Keras keeps both names, so do we."""

    name = "sparse_categorical_crossentropy"
    OPTIONS = {"from_logits": Option("bool", default=False)}
