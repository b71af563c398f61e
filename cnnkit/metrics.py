"""Metrics from predictions and labels: accuracy during training, a full report at evaluation."""

from __future__ import annotations

import numpy as np

METRICS = ("accuracy",)


def correct_count(logits: np.ndarray, labels: np.ndarray) -> int:
    return int((logits.argmax(axis=1) == labels).sum())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes (as scikit-learn and Keras reports)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class_report(matrix: np.ndarray, class_names: list[str]) -> dict:
    """Precision, recall, F1 and support per class, plus macro and support-weighted averages.

    A class never predicted has precision 0 (not NaN), as scikit-learn's zero_division=0.
    """
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
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
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
        },
        "weighted": {
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
        },
    }
