"""The training loop: forward, loss, backward, optimizer step, metrics, checkpoints per epoch."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cnnkit.callbacks import make_callbacks
from cnnkit.config import Spec
from cnnkit.data.augment import Preprocessor
from cnnkit.data.batches import Split, Splits, batches, prefetch
from cnnkit.losses import Loss
from cnnkit.metrics import MetricSet
from cnnkit.model import Sequential
from cnnkit.optimizers import Optimizer
from cnnkit.runs import metrics_columns, save_checkpoint, write_metrics_csv
from cnnkit.schedules import make_schedule
from cnnkit.seeding import random_stream


class Reporter(Protocol):
    """What the loop tells the outside world (the Rich display, or nothing in tests)."""

    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(
        self, step: int, loss: float, metrics: dict[str, float], images_per_s: float
    ) -> None: ...
    def epoch_end(self, row: dict[str, Any]) -> None: ...


class SilentReporter:
    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, step: int, loss: float, metrics: dict[str, float], images_per_s: float) -> None:
        pass

    def epoch_end(self, row: dict[str, Any]) -> None:
        pass


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    probabilities: np.ndarray  # (N, classes): Loss.class_probabilities
    metrics: dict[str, float] = field(default_factory=dict)  # MetricSet.result(), accuracy first
    confusion: np.ndarray | None = None  # (classes, classes), rows true, columns predicted


def evaluate_split(
    model: Sequential,
    loss_fn: Loss,
    split: Split,
    rescale: float | Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    metrics: MetricSet | None = None,
) -> EvalResult:
    """Loss, metrics (accuracy only unless a MetricSet is given) and class probabilities of a
    whole split, in inference mode. rescale: a factor or a Preprocessor (never augments)."""
    total_loss, probs = 0.0, []
    if metrics is not None:
        metrics.reset()
    for xb, yb in batches(split, batch_size, rescale):
        logits = model.forward(xb, training=False)
        loss, _ = loss_fn(logits, yb)
        total_loss += loss * len(yb)
        if metrics is None:
            metrics = MetricSet(["accuracy"], max(2, logits.shape[1]))
        metrics.update(logits, yb)
        probs.append(loss_fn.class_probabilities(logits))
    n = max(len(split), 1)
    total_loss += model.regularization_loss() * n  # Keras' evaluate reports penalties too
    values = metrics.result() if metrics is not None else {"accuracy": 0.0}
    return EvalResult(
        total_loss / n,
        values["accuracy"],
        np.concatenate(probs) if probs else np.empty(0),
        values,
        metrics.confusion if metrics is not None else None,
    )


def fit(
    model: Sequential,
    loss_fn: Loss,
    optimizer: Optimizer,
    splits: Splits,
    spec: Spec,
    run_dir: Path,
    reporter: Reporter,
    on_note: Callable[[str], None] | None = None,
    preprocessor: Preprocessor | None = None,
) -> list[dict[str, Any]]:
    """Train for spec.train.epochs, or until early stopping.

    After every epoch: metrics.csv (lr: the learning rate of the epoch's last step), best.npz
    when the checkpoint monitor improves, then last.npz with the optimizer state beside it.
    Epoch-end order: best checkpoint, early stopping, schedule (an lr it lowers applies from
    the next epoch); restore_best_weights acts when training ends, before the last save.
    preprocessor: what turns uint8 batches into model inputs (augmentation for training
    batches only); None: made from the spec, featurewise statistics from splits.train."""
    note = on_note or (lambda text: None)
    epochs = spec.train["epochs"]
    steps = -(-len(splits.train) // spec.train["batch_size"])
    schedule = make_schedule(spec.schedule, optimizer.learning_rate, steps, epochs)
    optimizer.schedule = schedule
    best_checkpoint, early_stopping = make_callbacks(spec.callbacks)
    for text in spec.notes:
        note(text)
    shuffle_rng = random_stream(spec.seed, "shuffle")
    augment_rng = random_stream(spec.seed, "augment")
    if preprocessor is None:
        preprocessor = Preprocessor.from_spec(spec, splits.train)
    params = model.named_params()  # arrays updated in place by the optimizer
    train_metrics, val_metrics = MetricSet.from_spec(spec), MetricSet.from_spec(spec)
    history: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        if schedule is not None:
            schedule.on_epoch_begin(epoch, optimizer)
        reporter.epoch_begin(epoch, epochs, steps)
        start = time.perf_counter()
        row = _train_epoch(
            model,
            loss_fn,
            optimizer,
            params,
            splits.train,
            spec,
            shuffle_rng,
            train_metrics,
            reporter,
            preprocessor.training(augment_rng),
        )
        row = {"epoch": epoch, **row}
        if splits.validation is not None:
            result = evaluate_split(
                model,
                loss_fn,
                splits.validation,
                preprocessor,  # normalised, never augmented
                spec.train["eval_batch_size"],
                val_metrics,
            )
            row["val_loss"] = result.loss
            row.update({f"val_{name}": value for name, value in result.metrics.items()})
        row["seconds"] = time.perf_counter() - start
        row["lr"] = optimizer.lr  # the learning rate of this epoch's last step
        history.append(row)
        write_metrics_csv(run_dir / "metrics.csv", history, metrics_columns(train_metrics.names))

        is_best = best_checkpoint.on_epoch_end(epoch, row)
        stop = early_stopping is not None and early_stopping.on_epoch_end(
            epoch, row, lambda: model.named_weights()
        )
        lr_message = schedule.on_epoch_end(epoch, row, optimizer) if schedule else None

        meta = {
            "epoch": epoch,
            "metrics": {k: v for k, v in row.items() if k != "epoch"},
            "spec_hash": spec.hash(),
            "class_names": splits.class_names,
        }
        checkpoints = run_dir / "checkpoints"
        if is_best:
            save_checkpoint(checkpoints / "best", model.named_weights(), {**meta, "kind": "best"})
        restored = None
        if early_stopping is not None and (stop or epoch == epochs):
            restored = early_stopping.restore(model.named_weights())
        last_meta = {
            **meta,
            "kind": "last",
            "restored_best_weights_from_epoch": restored,
            "callbacks": {
                "checkpoint": {"best_epoch": best_checkpoint.best_epoch},
                "early_stopping": None if early_stopping is None else early_stopping.state(),
            },
        }
        save_checkpoint(
            checkpoints / "last", model.named_weights(), last_meta, optimizer.state_dict()
        )
        reporter.epoch_end(row)
        if lr_message:
            note(lr_message)
        if stop:
            note(early_stopping.reason)
        if restored is not None and restored != epoch:
            note(
                f"Restored the weights of epoch {restored}, the best "
                f"{early_stopping.watch.monitor} (restore_best_weights); last.npz holds them."
            )
        if stop:
            break
    return history


def _train_epoch(
    model: Sequential,
    loss_fn: Loss,
    optimizer: Optimizer,
    params: dict[str, np.ndarray],
    split: Split,
    spec: Spec,
    shuffle_rng: np.random.Generator,
    train_metrics: MetricSet,
    reporter: Reporter,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """One pass over the training split: loss (regularization included) and metrics.

    prepare: uint8 batch -> model input (augmentation, rescale, normalisation); default: the
    spec's rescale only. Batches are prepared one ahead in a background thread (prefetch)."""
    start = time.perf_counter()
    loss_sum, seen = 0.0, 0
    train_metrics.reset()
    rng = shuffle_rng if spec.train["shuffle"] else None
    prepare = prepare or spec.data["rescale"]
    for step, (xb, yb) in enumerate(
        prefetch(batches(split, spec.train["batch_size"], prepare, rng))
    ):
        logits = model.forward(xb, training=True)
        loss, dlogits = loss_fn(logits, yb)
        model.backward(dlogits)
        optimizer.step(params, model.named_grads())
        loss += model.regularization_loss()  # as Keras reports it: data loss + penalties
        loss_sum += loss * len(yb)
        train_metrics.update(logits, yb)
        seen += len(yb)
        elapsed = time.perf_counter() - start
        reporter.step(step + 1, loss_sum / seen, train_metrics.running(), seen / max(elapsed, 1e-9))
    return {
        "loss": loss_sum / seen,
        **train_metrics.result(),
        "images_per_s": seen / max(time.perf_counter() - start, 1e-9),
    }
