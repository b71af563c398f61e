"""The training loop: forward, loss, backward, optimizer step, metrics, checkpoints per epoch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cnnkit.config import Spec
from cnnkit.data.batches import Split, Splits, batches
from cnnkit.losses import Loss
from cnnkit.metrics import correct_count
from cnnkit.model import Sequential
from cnnkit.optimizers import Optimizer
from cnnkit.runs import save_checkpoint, write_metrics_csv
from cnnkit.seeding import random_stream


class Reporter(Protocol):
    """What the loop tells the outside world (the Rich display, or nothing in tests)."""

    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, step: int, loss: float, accuracy: float, images_per_s: float) -> None: ...
    def epoch_end(self, row: dict[str, Any]) -> None: ...


class SilentReporter:
    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, step: int, loss: float, accuracy: float, images_per_s: float) -> None:
        pass

    def epoch_end(self, row: dict[str, Any]) -> None:
        pass


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    probabilities: np.ndarray  # (N, classes)


def evaluate_split(
    model: Sequential, loss_fn: Loss, split: Split, rescale: float, batch_size: int
) -> EvalResult:
    """Loss, accuracy and class probabilities of a whole split, in inference mode."""
    total_loss, correct, probs = 0.0, 0, []
    for xb, yb in batches(split, batch_size, rescale):
        logits = model.forward(xb, training=False)
        loss, _ = loss_fn(logits, yb)
        total_loss += loss * len(yb)
        correct += correct_count(logits, yb)
        probs.append(loss_fn.probabilities(logits))
    n = max(len(split), 1)
    return EvalResult(total_loss / n, correct / n, np.concatenate(probs) if probs else np.empty(0))


def fit(
    model: Sequential,
    loss_fn: Loss,
    optimizer: Optimizer,
    splits: Splits,
    spec: Spec,
    run_dir: Path,
    reporter: Reporter,
) -> list[dict[str, Any]]:
    """Train for spec.train.epochs; write metrics.csv and checkpoints after every epoch."""
    train_cfg, rescale = spec.train, spec.data["rescale"]
    shuffle_rng = random_stream(spec.seed, "shuffle")
    params = model.named_params()  # arrays updated in place by the optimizer
    steps = -(-len(splits.train) // train_cfg["batch_size"])
    history: list[dict[str, Any]] = []
    best_score = -np.inf
    for epoch in range(1, train_cfg["epochs"] + 1):
        reporter.epoch_begin(epoch, train_cfg["epochs"], steps)
        start = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        rng = shuffle_rng if train_cfg["shuffle"] else None
        for step, (xb, yb) in enumerate(
            batches(splits.train, train_cfg["batch_size"], rescale, rng)
        ):
            logits = model.forward(xb, training=True)
            loss, dlogits = loss_fn(logits, yb)
            model.backward(dlogits)
            optimizer.step(params, model.named_grads())
            loss_sum += loss * len(yb)
            correct += correct_count(logits, yb)
            seen += len(yb)
            elapsed = time.perf_counter() - start
            reporter.step(step + 1, loss_sum / seen, correct / seen, seen / max(elapsed, 1e-9))
        row: dict[str, Any] = {
            "epoch": epoch,
            "loss": loss_sum / seen,
            "accuracy": correct / seen,
            "images_per_s": seen / max(time.perf_counter() - start, 1e-9),
        }
        if splits.validation is not None:
            result = evaluate_split(
                model, loss_fn, splits.validation, rescale, train_cfg["eval_batch_size"]
            )
            row["val_loss"], row["val_accuracy"] = result.loss, result.accuracy
        row["seconds"] = time.perf_counter() - start
        row["lr"] = optimizer.learning_rate
        history.append(row)
        write_metrics_csv(run_dir / "metrics.csv", history)

        # best.npz by val_accuracy; with no validation data, by training accuracy
        score = row.get("val_accuracy", row["accuracy"])
        meta = {
            "epoch": epoch,
            "metrics": {k: v for k, v in row.items() if k != "epoch"},
            "spec_hash": spec.hash(),
            "class_names": splits.class_names,
        }
        save_checkpoint(run_dir / "checkpoints" / "last", params, {**meta, "kind": "last"})
        if score > best_score:
            best_score = score
            save_checkpoint(run_dir / "checkpoints" / "best", params, {**meta, "kind": "best"})
        reporter.epoch_end(row)
    return history
