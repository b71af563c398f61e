"""Metrics: the spec's `metrics:` list, streamed over an epoch (MetricSet), and the per-class
report of `cnnkit evaluate`.

Every metric is computed from the model's logits (rankings and argmaxes are the same as on
the probabilities, and logits do not saturate). One sigmoid unit z is read as the two-class
logits [0, z]: class 1 when z > 0 (p > 0.5), the same rule as softmax([0, z]) = [1 - p, p].

Per step, `MetricSet.update` is O(batch x classes) numpy: a running confusion matrix (accuracy,
precision, recall, f1), a top-k hit count, and for auc the epoch's scores, ranked once in
`result()`.

precision, recall and f1 mean what Keras' metrics mean where Keras has one meaning: for a
binary task (one sigmoid unit) they are those of the positive class (class index 1), as
keras.metrics.Precision() / Recall() / F1Score(threshold=0.5) compute them (predicted positive
when p > 0.5). With K > 2 classes they are macro averages (as today's cnnkit; Keras'
Precision() on one-hot labels would be a micro average of every thresholded class column).
precision_macro, recall_macro and f1_macro are always the macro averages over all classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cnnkit.errors import SpecError
from cnnkit.options import Option, did_you_mean, join_path, require_mapping, resolve_options

# name -> its options (Keras' names and defaults)
METRIC_OPTIONS: dict[str, dict[str, Option]] = {
    "accuracy": {},
    "top_k_accuracy": {"k": Option("int", default=5, minimum=1)},
    "precision": {},
    "recall": {},
    "f1": {},
    "precision_macro": {},
    "recall_macro": {},
    "f1_macro": {},
    "auc": {},
}
METRICS = tuple(METRIC_OPTIONS)
# Keras' names for the same metrics (labels are class indices, so sparse_ or not is the same).
METRIC_ALIASES = {
    "acc": "accuracy",
    "categorical_accuracy": "accuracy",
    "sparse_categorical_accuracy": "accuracy",
    "binary_accuracy": "accuracy",
    "top_k_categorical_accuracy": "top_k_accuracy",
    "sparse_top_k_categorical_accuracy": "top_k_accuracy",
    "f1_score": "f1",
}
# precision / recall / f1: the positive class's (binary tasks) or the macro averages
CLASS_METRICS = ("precision", "recall", "f1")


# -- the spec's metrics list ---------------------------------------------------------------


def parse_metrics(raw: Any, path: str = "metrics") -> list[Any]:
    """`[accuracy, {top_k_accuracy: {k: 3}}, precision, ...]` -> the resolved list.

    Metrics without options stay names; top_k_accuracy always becomes `{top_k_accuracy: {k: N}}`
    (k = 5 by default, as Keras). accuracy is computed even when not listed (best.npz is chosen
    by it; MetricSet adds it first). Class-count checks are in `check_metrics`.
    """
    if raw is None:
        raw = []
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list):
        raise SpecError(
            f"expected a list of metrics, found {raw!r}",
            where=path,
            hint=f"Example: metrics: [accuracy, precision]. Valid: {', '.join(METRICS)}.",
        )
    resolved: list[Any] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(raw):
        item_path = f"{path}[{i}]"
        if isinstance(entry, str):
            name, given = entry, None
        elif isinstance(entry, dict) and len(entry) == 1:
            ((name, given),) = entry.items()
            given = require_mapping(given, join_path(item_path, str(name)))
        else:
            raise SpecError(
                f"expected a metric name or `{{name: {{options}}}}`, found {entry!r}",
                where=item_path,
                hint="Example: - top_k_accuracy: {k: 3}",
            )
        canonical = _canonical_metric(str(name), item_path)
        options = resolve_options(
            given,
            METRIC_OPTIONS[canonical],
            join_path(item_path, str(name)) if given else item_path,
            what=f"{canonical} option",
        )
        column = metric_column(canonical, options)
        if column in seen:
            raise SpecError(
                f"metric {column} is listed twice", where=item_path, hint="Remove one of them."
            )
        seen[column] = item_path
        resolved.append({canonical: options} if options else canonical)
    return resolved


def _canonical_metric(name: str, path: str) -> str:
    key = name.lower()
    key = METRIC_ALIASES.get(key, key)
    if key not in METRIC_OPTIONS:
        raise SpecError(
            f"unknown metric '{name}'",
            where=path,
            hint=f"{did_you_mean(name, METRICS)}Valid: {', '.join(METRICS)}.",
        )
    return key


def metric_entries(metrics: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Resolved spec entries -> [(name, options)]."""
    out = []
    for entry in metrics:
        if isinstance(entry, str):
            out.append((entry, {}))
        else:
            ((name, options),) = entry.items()
            out.append((name, dict(options)))
    return out


def metric_column(name: str, options: dict[str, Any]) -> str:
    """The column (and progress bar, evaluation.json) name: top_k_accuracy -> top_5_accuracy."""
    return f"top_{options['k']}_accuracy" if name == "top_k_accuracy" else name


def check_metrics(metrics: Sequence[Any], num_classes: int, where: str = "metrics") -> None:
    """auc is for two-class tasks only; top-k needs k below the class count."""
    for i, (name, options) in enumerate(metric_entries(metrics)):
        path = f"{where}[{i}]"
        if name == "auc" and num_classes != 2:
            raise SpecError(
                f"auc is for binary tasks, this one has {num_classes} classes",
                where=path,
                hint="Remove auc, or train on two classes (data.classes: [3, 8]); for "
                "several classes use precision_macro, recall_macro and f1_macro.",
            )
        if name == "top_k_accuracy" and options["k"] >= num_classes:
            raise SpecError(
                f"top_k_accuracy with k = {options['k']} is always 1 with {num_classes} classes",
                where=path,
                hint=f"Use k below {num_classes}, e.g. {{top_k_accuracy: {{k: 1}}}}, or remove it.",
            )


def head_classes(units: int) -> int:
    """Classes of the task as a head of `units` outputs sees them: one sigmoid unit means two."""
    return 2 if units == 1 else units


def is_binary_head(units: int) -> bool:
    """One output unit (sigmoid, or linear with from_logits): a binary task with a positive
    class (index 1), whose precision / recall / f1 Keras reports."""
    return units == 1


# -- streaming computation -----------------------------------------------------------------


def as_class_logits(logits: np.ndarray) -> np.ndarray:
    """(N, K) scores whose argmax is the predicted class; one unit z becomes [0, z]."""
    if logits.ndim == 2 and logits.shape[1] == 1:
        return np.concatenate([np.zeros_like(logits), logits], axis=1)
    return logits


class MetricSet:
    """The chosen metrics, accumulated over batches: reset(), update(logits, labels), result().

    `names` are the columns in order (accuracy first). `running()` is cheap (no auc) for the
    progress bar; `result()` has everything. binary: one sigmoid unit, so precision, recall
    and f1 are the positive class's (Keras' meaning); otherwise macro averages.
    """

    def __init__(self, metrics: Sequence[Any], num_classes: int, binary: bool = False):
        self.entries = metric_entries(metrics)
        if not any(name == "accuracy" for name, _ in self.entries):
            self.entries.insert(0, ("accuracy", {}))
        self.names = [metric_column(name, opts) for name, opts in self.entries]
        self.num_classes = num_classes
        self.binary = binary
        self.top_ks = sorted({opts["k"] for name, opts in self.entries if name == "top_k_accuracy"})
        self.wants_auc = any(name == "auc" for name, _ in self.entries)
        self.reset()

    @classmethod
    def for_head(cls, metrics: Sequence[Any], units: int) -> MetricSet:
        """The metrics of a model whose last layer has `units` outputs."""
        return cls(metrics, head_classes(units), binary=is_binary_head(units))

    def reset(self) -> None:
        k = self.num_classes
        self.confusion = np.zeros((k, k), dtype=np.int64)
        self.top_k_hits = dict.fromkeys(self.top_ks, 0)
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What update() accumulated so far, as (arrays, JSON-safe scalars): saved with a
        mid-epoch checkpoint so the resumed epoch reports the same metrics."""
        arrays = {"confusion": self.confusion.copy()}
        if self.wants_auc:
            arrays["scores"] = np.concatenate(self._scores) if self._scores else np.empty(0)
            arrays["labels"] = (
                np.concatenate(self._labels) if self._labels else np.empty(0, np.intp)
            )
        return arrays, {"top_k_hits": {str(k): v for k, v in self.top_k_hits.items()}}

    def load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        self.reset()
        self.confusion = np.array(arrays["confusion"], dtype=np.int64)
        self.top_k_hits.update({int(k): int(v) for k, v in scalars["top_k_hits"].items()})
        if self.wants_auc and len(arrays.get("scores", ())):
            self._scores = [np.array(arrays["scores"], dtype=np.float64)]
            self._labels = [np.array(arrays["labels"], dtype=np.intp)]

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch: logits (N, K) or one unit (N, 1); labels (N,) class indices."""
        z = as_class_logits(logits)
        labels = np.asarray(labels).astype(np.intp, copy=False)
        k = self.num_classes
        predicted = z.argmax(axis=1)
        self.confusion += np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
        if self.top_ks:
            # ties are in the top k (as tf.math.in_top_k): rank = classes scored strictly higher
            true_score = z[np.arange(len(labels)), labels]
            higher = (z > true_score[:, None]).sum(axis=1)
            for top in self.top_ks:
                self.top_k_hits[top] += int((higher < top).sum())
        if self.wants_auc:
            self._scores.append((z[:, 1] - z[:, 0]).astype(np.float64))
            self._labels.append(labels.copy())

    def running(self) -> dict[str, float]:
        """The metrics known from counts so far (everything but auc): cheap at every step."""
        return self._compute(with_auc=False)

    def result(self) -> dict[str, float]:
        return self._compute(with_auc=True)

    def _compute(self, with_auc: bool) -> dict[str, float]:
        total = self.count
        macro = macro_averages(self.confusion)
        chosen = positive_class(self.confusion) if self.binary else macro
        out: dict[str, float] = {}
        for (name, opts), column in zip(self.entries, self.names, strict=True):
            if name == "accuracy":
                out[column] = float(np.trace(self.confusion) / total) if total else 0.0
            elif name == "top_k_accuracy":
                out[column] = self.top_k_hits[opts["k"]] / total if total else 0.0
            elif name in CLASS_METRICS:
                out[column] = chosen[name]
            elif name.endswith("_macro"):
                out[column] = macro[name.removesuffix("_macro")]
            elif name == "auc" and with_auc:
                scores = np.concatenate(self._scores) if self._scores else np.empty(0)
                labels = np.concatenate(self._labels) if self._labels else np.empty(0, np.intp)
                out[column] = roc_auc(scores, labels)
        return out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC: the probability that a random positive scores above a random negative,
    ties counting 1/2 (Mann-Whitney U with average ranks). NaN when a class is missing.

    Keras' AUC metric approximates this with 200 thresholds; this is the exact value
    (scikit-learn's roc_auc_score)."""
    positive = labels == 1
    n_pos = int(positive.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    average_rank = ends - (counts - 1) / 2.0
    rank_sum = average_rank[inverse.reshape(-1)][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# -- the evaluation report -----------------------------------------------------------------


def _per_class(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """precision, recall, f1, support per class; 0 (not NaN) where undefined (zero_division=0)."""
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    return precision, recall, f1, support


def macro_averages(matrix: np.ndarray) -> dict[str, float]:
    """Unweighted means over all classes of per-class precision, recall and F1 (the F1 of each
    class, then averaged: scikit-learn's and Keras' F1Score macro, not F1 of the averages)."""
    precision, recall, f1, _ = _per_class(matrix)
    return {
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
    }


def positive_class(matrix: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of class 1 of a two-class confusion matrix, as Keras'
    Precision(), Recall() and F1Score(threshold=0.5) on one sigmoid unit: tp / (tp + fp),
    tp / (tp + fn), 2 tp / (2 tp + fp + fn); 0 where the denominator is 0 (Keras'
    divide_no_nan)."""
    tp, fp, fn = int(matrix[1, 1]), int(matrix[0, 1]), int(matrix[1, 0])
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
    }


def per_class_report(matrix: np.ndarray, class_names: list[str]) -> dict:
    """Precision, recall, F1 and support per class, plus macro and support-weighted averages.

    A class never predicted has precision 0 (not NaN), as scikit-learn's zero_division=0.
    """
    precision, recall, f1, support = _per_class(matrix)
    classes = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
    total = support.sum()
    weights = support / total if total else np.zeros_like(support)
    return {
        "classes": classes,
        "macro": macro_averages(matrix),
        "weighted": {
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
        },
    }
