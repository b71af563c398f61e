"""Losses, always handed the model's logits: the loss owns the head activation.

The model's last layer returns its pre-activation outputs (logits) and the loss applies the head
(softmax, sigmoid or nothing) itself. Cross-entropies fuse it with the log for numerical
stability (softmax + CE, sigmoid + BCE); the others (mean_squared_error, categorical_hinge) chain
their gradient through the head's Jacobian inside the loss, so `dlogits` is always exact.

Labels arrive as integer class indices for every loss; the categorical losses one-hot encode them
themselves, so a spec can switch losses without touching the data. binary_crossentropy takes 0/1
labels and one output unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from cnnkit.nn.activations import ACTIVATIONS
from cnnkit.options import Option


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return ACTIVATIONS["sigmoid"][0](z)


def one_hot(labels: np.ndarray, num_classes: int, dtype) -> np.ndarray:
    t = np.zeros((labels.shape[0], num_classes), dtype=dtype)
    t[np.arange(labels.shape[0]), labels] = 1
    return t


class Loss:
    """`loss(logits, labels) -> (mean loss, dloss/dlogits)`; `probabilities(logits)`.

    head_activation: the activation the loss applies to the logits by default.
    accepted_heads: the last-layer activations the loss accepts (check_head enforces it; a
    loss with a `from_logits` option also accepts a linear last layer with from_logits: true).
    binary: the loss wants one output unit and a two-class task.
    """

    name: ClassVar[str] = "loss"
    OPTIONS: ClassVar[dict[str, Option]] = {}
    head_activation: ClassVar[str] = "softmax"
    accepted_heads: ClassVar[tuple[str, ...]] = ("softmax",)
    binary: ClassVar[bool] = False

    def __init__(self, head: str | None = None, **options):
        # `head` matters only to losses that accept several heads (mse, categorical_hinge).
        self.head = head or self.head_activation
        self.options = options

    @classmethod
    def for_head(cls, options: Mapping[str, Any], last_activation: str) -> Loss:
        """The loss with its resolved options, and the head the last layer's activation
        asks for (linear: logits)."""
        head = last_activation if last_activation in cls.accepted_heads else cls.head_activation
        return cls(head=head, **options)

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean loss over the batch and its gradient with respect to the logits."""
        raise NotImplementedError

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The head's outputs: what Keras' model.predict returns ((N, 1) for one sigmoid unit)."""
        return ACTIVATIONS[self.head][0](logits)

    def class_probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, classes): one column per class, for reports and predict. One sigmoid unit p
        becomes [1 - p, p]; a linear head (mse, categorical_hinge) gives its raw outputs."""
        p = self.probabilities(logits)
        if p.shape[1] == 1:
            return np.concatenate([1 - p, p], axis=1)
        return p


class CategoricalCrossentropy(Loss):
    """-sum(t * log softmax(z)), averaged over the batch; t is one-hot (optionally smoothed)."""

    name = "categorical_crossentropy"
    OPTIONS = {
        "label_smoothing": Option("float", default=0.0, minimum=0.0, maximum=1.0),
        "from_logits": Option("bool", default=False),
    }

    def targets(self, labels: np.ndarray, num_classes: int, dtype) -> np.ndarray:
        t = one_hot(labels, num_classes, dtype)
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


class BinaryCrossentropy(Loss):
    """-(y log p + (1 - y) log(1 - p)) with p = sigmoid(z), from the logit z of one unit.

    Computed as max(z, 0) - z y + log1p(exp(-|z|)): never overflows, never takes log(0).
    label_smoothing s moves the targets to y (1 - s) + s / 2, as Keras does.
    """

    name = "binary_crossentropy"
    OPTIONS = {
        "label_smoothing": Option("float", default=0.0, minimum=0.0, maximum=1.0),
        "from_logits": Option("bool", default=False),
    }
    head_activation = "sigmoid"
    accepted_heads = ("sigmoid",)
    binary = True

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        n = logits.shape[0]
        z = logits.reshape(n)
        y = labels.astype(logits.dtype)
        smoothing = self.options.get("label_smoothing", 0.0)
        if smoothing:
            y = y * (1 - smoothing) + smoothing / 2
        loss = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).sum() / n
        grad = (sigmoid(z) - y) / logits.dtype.type(n)
        return float(loss), grad.reshape(logits.shape).astype(logits.dtype, copy=False)


class _HeadChainedLoss(Loss):
    """A loss on the head's outputs y = head(z): dL/dz = J_head(z)^T dL/dy, here inside the loss."""

    accepted_heads = ("softmax", "linear")

    def on_outputs(self, y: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean loss and dL/dy for head outputs y and one-hot targets t."""
        raise NotImplementedError

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        forward, backward = ACTIVATIONS[self.head]
        y = forward(logits)
        loss, dy = self.on_outputs(y, one_hot(labels, logits.shape[1], logits.dtype))
        grad = backward(logits, y, dy)  # softmax: y * (dy - sum(dy * y)), the Jacobian product
        return float(loss), grad.astype(logits.dtype, copy=False)


class MeanSquaredError(_HeadChainedLoss):
    """mean((y - t)^2) over classes, then over the batch (Keras), y the head's outputs: the
    softmax probabilities with a softmax last layer, the raw outputs with a linear one."""

    name = "mean_squared_error"

    def on_outputs(self, y: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
        d = y - t
        size = y.dtype.type(d.size)
        return float((d * d).sum() / size), (2 * d / size).astype(y.dtype, copy=False)


class CategoricalHinge(_HeadChainedLoss):
    """Keras: pos = sum(t y), neg = max((1 - t) y), loss = max(neg - pos + 1, 0), batch mean."""

    name = "categorical_hinge"

    def on_outputs(self, y: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
        n = y.shape[0]
        rows = np.arange(n)
        pos = (t * y).sum(axis=1)
        wrong = (1 - t) * y
        j = wrong.argmax(axis=1)
        margin = wrong[rows, j] - pos + 1
        active = (margin > 0).astype(y.dtype)
        dy = -t * active[:, None]
        dy[rows, j] += (1 - t[rows, j]) * active  # d neg / dy_j = 1 - t_j at the argmax
        return float(np.maximum(margin, 0).sum() / n), dy / y.dtype.type(n)


ALL_LOSSES: tuple[type[Loss], ...] = (
    CategoricalCrossentropy,
    SparseCategoricalCrossentropy,
    BinaryCrossentropy,
    MeanSquaredError,
    CategoricalHinge,
)
# Keras' short names for the same losses.
LOSS_ALIASES = {"mse": "mean_squared_error"}
