"""The training loop: forward, loss, backward, optimizer step, metrics, checkpoints per epoch."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cnnkit.data.augment import Preprocessor
from cnnkit.data.batches import Split, Splits, batches, prefetch
from cnnkit.errors import DivergenceError
from cnnkit.interrupts import Interrupted, StopFlag, maybe_self_interrupt
from cnnkit.nn.losses import Loss
from cnnkit.nn.metrics import MetricSet
from cnnkit.nn.model import Sequential
from cnnkit.nn.optimizers import Optimizer
from cnnkit.nn.schedules import make_schedule
from cnnkit.runs.rundir import metrics_columns, save_checkpoint, write_metrics_csv
from cnnkit.seeding import random_stream
from cnnkit.spec.build import build_metrics
from cnnkit.spec.config import Spec
from cnnkit.train.callbacks import make_callbacks
from cnnkit.train.resume import ResumeState, capture


class Reporter(Protocol):
    """What the loop tells the outside world (the Rich display, or nothing in tests).

    Optionally also kernels(phase, seconds), before the first step (cnnkit.api): "loading"
    (0), then "compiling" (the estimate) only when Numba compiles, then "compiled" or
    "loaded" (the time taken)."""

    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(
        self, step: int, loss: float, metrics: dict[str, float], images_per_s: float
    ) -> None: ...
    def epoch_end(self, row: dict[str, Any]) -> None: ...


class SilentReporter:
    def kernels(self, phase: str, seconds: float) -> None:
        pass

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


def inference(
    model: Sequential,
    split: Split,
    rescale: float | Callable[[np.ndarray], np.ndarray],
    batch_size: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(logits, labels) of a split batch by batch, in order, in inference mode: what evaluate
    and predict both run. BLAS results depend on a row's batch (its size, its place in it), so
    the same images batched the same way give the same probabilities bit for bit."""
    for xb, yb in batches(split, batch_size, rescale):
        yield model.forward(xb, training=False), yb


def predict_probabilities(
    model: Sequential,
    loss_fn: Loss,
    x: np.ndarray,
    rescale: float | Callable[[np.ndarray], np.ndarray],
    batch_size: int,
) -> np.ndarray:
    """Class probabilities (N, K) of uint8 images x, as evaluate_split computes them."""
    split = Split(x, np.zeros(len(x), dtype=np.int64))
    probs = [
        loss_fn.class_probabilities(logits)
        for logits, _ in inference(model, split, rescale, batch_size)
    ]
    return np.concatenate(probs)


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
    for logits, yb in inference(model, split, rescale, batch_size):
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


@dataclass
class EpochTotals:
    """What the current epoch has accumulated: saved with a mid-epoch checkpoint and restored
    on resume, so the resumed epoch's row in metrics.csv is the uninterrupted run's."""

    metrics: MetricSet
    loss_sum: float = 0.0
    seen: int = 0

    def reset(self) -> None:
        self.metrics.reset()
        self.loss_sum, self.seen = 0.0, 0


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
    resume: ResumeState | None = None,
    stop: StopFlag | None = None,
) -> list[dict[str, Any]]:
    """Train for spec.train.epochs, or until early stopping.

    After every epoch: metrics.csv (lr: the learning rate of the epoch's last step), best.npz
    when the checkpoint monitor improves, then last.npz with the optimizer state and the
    resume state beside it (cnnkit.train.resume); also every train.save_every_steps optimizer steps.
    Epoch-end order: best checkpoint, early stopping, schedule (an lr it lowers applies from
    the next epoch); restore_best_weights acts when training ends, before the last save.
    preprocessor: what turns uint8 batches into model inputs (augmentation for training
    batches only); None: made from the spec, featurewise statistics from splits.train.
    resume: a last checkpoint to continue from (the model already holds its weights).
    stop: raised by a signal (cnnkit.interrupts): the step in progress finishes, last.npz is
    saved, and Interrupted is raised. A NaN or infinite loss or gradient raises
    DivergenceError before the bad step is applied; nothing is saved after it."""
    note = on_note or (lambda text: None)
    stop = stop or StopFlag()
    epochs = spec.train.epochs
    steps = -(-len(splits.train) // spec.train.batch_size)
    schedule = make_schedule(spec.schedule, optimizer.learning_rate, steps, epochs)
    optimizer.schedule = schedule
    best_checkpoint, early_stopping = make_callbacks(spec.callbacks)
    shuffle_rng = random_stream(spec.seed, "shuffle")
    augment_rng = random_stream(spec.seed, "augment")
    dropout_rng = getattr(model, "dropout_rng", None)
    if preprocessor is None:
        preprocessor = Preprocessor.from_spec(spec, splits.train)
    params = model.named_params()  # arrays updated in place by the optimizer
    totals = EpochTotals(build_metrics(spec))
    val_metrics = build_metrics(spec)
    columns = metrics_columns(totals.metrics.names)
    history: list[dict[str, Any]] = []
    first_epoch, first_step = 1, 0
    if resume is None:
        for text in spec.notes:
            note(text)
    else:
        optimizer.load_state_dict(resume.optimizer_arrays, resume.optimizer_meta)
        resume.restore_rngs(shuffle_rng, augment_rng, dropout_rng)
        resume.restore_callbacks(best_checkpoint, early_stopping)
        first_epoch, first_step = resume.next_position()
        history = [row for row in resume.history if row["epoch"] < first_epoch]
        if first_step:
            resume.restore_totals(totals)
    checkpoints = run_dir / "checkpoints"
    every = spec.train.save_every_steps
    stopped_at = [0]  # the step after which a signal stopped the epoch

    def save_last(epoch, step, complete, shuffle_state, augment_state, meta, stopped=False):
        info, arrays = capture(
            epoch=epoch,
            step=step,
            steps=steps,
            complete=complete,
            stopped_early=stopped,
            shuffle_state=shuffle_state,
            augment_state=augment_state,
            dropout_rng=dropout_rng,
            totals=totals,
            history=history,
            best_checkpoint=best_checkpoint,
            early_stopping=early_stopping,
        )
        last_meta = {
            "spec_hash": spec.hash(),
            "class_names": splits.class_names,
            **meta,
            "kind": "last",
            "step": step,
            "steps_per_epoch": steps,
            "callbacks": {
                "checkpoint": {"best_epoch": best_checkpoint.best_epoch},
                "early_stopping": None if early_stopping is None else early_stopping.state(),
            },
            "resume": info,
        }
        save_checkpoint(
            checkpoints / "last", model.named_weights(), last_meta, optimizer.state_dict(), arrays
        )

    for epoch in range(first_epoch, epochs + 1):
        start_step = first_step if epoch == first_epoch else 0
        if start_step == 0:
            totals.reset()
            if schedule is not None:
                schedule.on_epoch_begin(epoch, optimizer)
        shuffle_state = shuffle_rng.bit_generator.state  # the epoch's permutation comes from it
        reporter.epoch_begin(epoch, epochs, steps)
        start = time.perf_counter()

        def after_step(step: int, augment_state: dict, epoch=epoch, shuffle_state=shuffle_state):
            maybe_self_interrupt(optimizer.iterations)
            due = every and optimizer.iterations % every == 0 and step < steps
            stopped_at[0] = step
            if stop.requested or due:
                partial = {"loss": totals.loss_sum / max(totals.seen, 1)}
                partial.update(totals.metrics.running())
                meta = {"epoch": epoch, "epoch_complete": False, "metrics": partial}
                save_last(epoch, step, False, shuffle_state, augment_state, meta)
            return stop.requested

        try:
            row = _train_epoch(
                model,
                loss_fn,
                optimizer,
                params,
                splits.train,
                spec,
                shuffle_rng,
                totals,
                reporter,
                preprocessor.training(augment_rng),
                start_step=start_step,
                augment_rng=augment_rng,
                after_step=after_step,
                epoch=epoch,
            )
        except DivergenceError as error:
            last = checkpoints / "last.json"
            if last.is_file():
                saved = json.loads(last.read_text())
                error.hint += (
                    f" The bad step was not applied and nothing was saved after it: "
                    f"{checkpoints / 'last.npz'} keeps the last good weights (epoch "
                    f"{saved.get('epoch')}, step {saved.get('step')}), metrics.csv the "
                    "finished epochs."
                )
            else:
                error.hint += " No checkpoint had been saved yet."
            raise
        if row is None:  # stopped by a signal; last.npz saved by after_step
            write_metrics_csv(run_dir / "metrics.csv", history, columns)
            raise Interrupted(stop.signum, run_dir, epoch, stopped_at[0], steps)
        row = {"epoch": epoch, **row}
        if splits.validation is not None:
            result = evaluate_split(
                model,
                loss_fn,
                splits.validation,
                preprocessor,  # normalised, never augmented
                spec.train.eval_batch_size,
                val_metrics,
            )
            row["val_loss"] = result.loss
            row.update({f"val_{name}": value for name, value in result.metrics.items()})
        row["seconds"] = time.perf_counter() - start
        row["lr"] = optimizer.lr  # the learning rate of this epoch's last step
        history.append(row)
        write_metrics_csv(run_dir / "metrics.csv", history, columns)

        is_best = best_checkpoint.on_epoch_end(epoch, row)
        stop_early = early_stopping is not None and early_stopping.on_epoch_end(
            epoch, row, lambda: model.named_weights()
        )
        lr_message = schedule.on_epoch_end(epoch, row, optimizer) if schedule else None

        meta = {
            "epoch": epoch,
            "metrics": {k: v for k, v in row.items() if k != "epoch"},
            "spec_hash": spec.hash(),
            "class_names": splits.class_names,
        }
        if is_best:
            save_checkpoint(checkpoints / "best", model.named_weights(), {**meta, "kind": "best"})
        restored = None
        if early_stopping is not None and (stop_early or epoch == epochs):
            restored = early_stopping.restore(model.named_weights())
        save_last(
            epoch,
            steps,
            True,
            shuffle_rng.bit_generator.state,
            augment_rng.bit_generator.state,
            {**meta, "epoch_complete": True, "restored_best_weights_from_epoch": restored},
            stopped=bool(stop_early),
        )
        reporter.epoch_end(row)
        if lr_message:
            note(lr_message)
        if stop_early:
            note(early_stopping.reason)
        if restored is not None and restored != epoch:
            note(
                f"Restored the weights of epoch {restored}, the best "
                f"{early_stopping.watch.monitor} (restore_best_weights); last.npz holds them."
            )
        if stop_early:
            break
        if stop.requested and epoch < epochs:  # the signal came during validation
            raise Interrupted(stop.signum, run_dir, epoch + 1, 0, steps)
    return history


def _with_rng_state(items: Iterator, rng: np.random.Generator | None) -> Iterator:
    """Each batch with the augmentation stream's state right after it was prepared: what a
    checkpoint taken after training that batch must save (the prefetch thread runs ahead)."""
    for xb, yb in items:
        yield xb, yb, (None if rng is None else rng.bit_generator.state)


def _check_finite(
    loss: float,
    grads: dict[str, np.ndarray],
    epoch: int,
    step: int,
    steps: int,
    optimizer: Optimizer,
    spec: Spec,
) -> None:
    """DivergenceError, before the optimizer applies a NaN or infinite loss or gradient."""
    what = None
    if not math.isfinite(loss):
        what = f"the loss is {loss}"
    else:
        for key, grad in grads.items():
            total = float(np.sum(grad, dtype=np.float64))
            if not math.isfinite(total):
                what = f"the gradient of {key} contains {'NaN' if math.isnan(total) else 'inf'}"
                break
    if what is None:
        return
    rescale = spec.data.rescale
    causes = [
        f"the learning rate is too high (this step's: {optimizer.lr:g}; try 10x lower, or "
        "optimizer.clipnorm: 1.0)",
    ]
    if not callable(rescale) and rescale is not None and float(rescale) >= 0.5:
        causes.insert(
            0,
            f"the pixels are not rescaled (data.rescale is {rescale:g}, so inputs reach 255; "
            "the usual value is 1/255 = 0.00392156862745098)",
        )
    else:
        causes.append("inputs not rescaled to [0, 1] (data.rescale; Keras' rescale=1./255)")
    raise DivergenceError(
        f"training diverged at epoch {epoch}, step {step}/{steps}: {what}",
        where=str(spec.file) if spec.file else spec.name,
        hint="Likely causes: " + "; ".join(causes) + ".",
    )


def _train_epoch(
    model: Sequential,
    loss_fn: Loss,
    optimizer: Optimizer,
    params: dict[str, np.ndarray],
    split: Split,
    spec: Spec,
    shuffle_rng: np.random.Generator,
    totals: EpochTotals,
    reporter: Reporter,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    start_step: int = 0,
    augment_rng: np.random.Generator | None = None,
    after_step: Callable[[int, dict | None], bool] | None = None,
    epoch: int = 1,
) -> dict[str, Any] | None:
    """One pass over the training split (from batch start_step on, when resuming): loss
    (regularization included) and metrics, accumulated in `totals`. None when after_step
    (called after every optimizer step) asked to stop.

    prepare: uint8 batch -> model input (augmentation, rescale, normalisation); default: the
    spec's rescale only. Batches are prepared one ahead in a background thread (prefetch)."""
    start = time.perf_counter()
    rng = shuffle_rng if spec.train.shuffle else None
    prepare = prepare or spec.data.rescale
    batch_size = spec.train.batch_size
    steps = -(-len(split) // batch_size)
    source = batches(split, batch_size, prepare, rng, start=start_step * batch_size)
    seen_before = totals.seen
    # overflow is caught by _check_finite with a clear message, not as numpy warnings
    with (
        closing(prefetch(_with_rng_state(source, augment_rng))) as stream,
        np.errstate(over="ignore", invalid="ignore", divide="ignore"),
    ):
        for step, (xb, yb, augment_state) in enumerate(stream, start=start_step + 1):
            logits = model.forward(xb, training=True)
            loss, dlogits = loss_fn(logits, yb)
            model.backward(dlogits)
            grads = model.named_grads()
            _check_finite(loss, grads, epoch, step, steps, optimizer, spec)
            optimizer.step(params, grads)
            loss += model.regularization_loss()  # as Keras reports it: data loss + penalties
            totals.loss_sum += loss * len(yb)
            totals.metrics.update(logits, yb)
            totals.seen += len(yb)
            elapsed = time.perf_counter() - start
            reporter.step(
                step,
                totals.loss_sum / totals.seen,
                totals.metrics.running(),
                (totals.seen - seen_before) / max(elapsed, 1e-9),
            )
            if after_step is not None and after_step(step, augment_state):
                return None
    return {
        "loss": totals.loss_sum / max(totals.seen, 1),
        **totals.metrics.result(),
        "images_per_s": (totals.seen - seen_before) / max(time.perf_counter() - start, 1e-9),
    }
