"""Error analysis of an evaluation: the most-confused class pairs, the most confident
mistakes (misclassified.csv, misclassified.png) and every sample's probabilities
(predictions.csv). Plain numpy; the figures are cnnkit.runs.plots'."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.io import atomic_write_text


def most_confused(
    matrix: np.ndarray, class_names: Sequence[str], n: int = 5
) -> list[dict[str, Any]]:
    """The n largest off-diagonal cells, largest first: true class, predicted class, count,
    and the share of the true class's images that went there."""
    matrix = np.asarray(matrix, dtype=np.int64)
    totals = matrix.sum(axis=1)
    cells = [
        (int(matrix[i, j]), i, j)
        for i in range(len(matrix))
        for j in range(len(matrix))
        if i != j and matrix[i, j] > 0
    ]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [
        {
            "true": class_names[i],
            "predicted": class_names[j],
            "count": count,
            "fraction_of_true": count / int(totals[i]) if totals[i] else 0.0,
        }
        for count, i, j in cells[:n]
    ]


def mistakes(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of the wrongly predicted samples (argmax), most confident mistake first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")]


def misclassified_rows(
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    files: Sequence[str] | None = None,
    top_k: int = 3,
) -> list[dict[str, Any]]:
    """One row per mistake, most confident first: index in the evaluated split (and its file
    when the data came from files), true and predicted class, confidence, top-k."""
    rows = []
    k = max(1, min(top_k, probabilities.shape[1]))
    for index in mistakes(probabilities, labels):
        p = probabilities[index]
        order = np.argsort(-p, kind="stable")[:k]
        rows.append(
            {
                "index": int(index),
                "file": files[index] if files is not None else "",
                "true": class_names[int(labels[index])],
                "predicted": class_names[int(order[0])],
                "confidence": float(p[order[0]]),
                "top_k": " ".join(f"{class_names[int(c)]}:{p[c]:.4f}" for c in order),
            }
        )
    return rows


def write_misclassified_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    buffer = io.StringIO()
    columns = ["index", "file", "true", "predicted", "confidence", "top_k"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "confidence": f"{row['confidence']:.6f}"})
    atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)


def write_predictions_csv(
    path: Path,
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    files: Sequence[str] | None = None,
) -> Path:
    """Every evaluated sample: index, file (when the data came from files), true and
    predicted class, and one column p_<class> per class. Probabilities at full precision
    (the float32 value, as `cnnkit predict --json` prints it): predicting the same files
    gives these numbers exactly."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "file", "true", "predicted", *(f"p_{n}" for n in class_names)])
    predicted = probabilities.argmax(axis=1) if len(probabilities) else []
    for index, (p, label, best) in enumerate(zip(probabilities, labels, predicted, strict=True)):
        writer.writerow(
            [
                index,
                files[index] if files is not None else "",
                class_names[int(label)],
                class_names[int(best)],
                *(repr(float(v)) for v in p),
            ]
        )
    atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)
