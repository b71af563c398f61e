"""The training loop: epochs of steps, with callbacks (cnnkit.train.callbacks) doing the rest.

Per step: TrainStep (cnnkit.train.step), then on_train_batch_end; a signal (cnnkit.interrupts)
stops the epoch after the step in progress, and Interrupted is raised once the callbacks saw it
(on_exception: BackupAndRestore saves last.npz). Per epoch: validation, the row appended to the
history, on_epoch_end (metrics.csv, best.npz, schedules, early stopping, last.npz, curves and
run.json, the display), then the callbacks' notes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.data.augment import Preprocessor
from cnnkit.data.batches import Split, Splits, batches, prefetch
from cnnkit.distributed import Communicator, world
from cnnkit.interrupts import Interrupted, StopFlag
from cnnkit.nn.losses import Loss
from cnnkit.nn.metrics import MetricSet
from cnnkit.nn.model import Model
from cnnkit.nn.optimizers import Optimizer
from cnnkit.runs.layout import RunDir
from cnnkit.seeding import random_stream
from cnnkit.spec.build import build_metrics
from cnnkit.spec.config import Spec
from cnnkit.train.callbacks.base import Callback, CallbackList, decode_float, encode_float
from cnnkit.train.callbacks.progress import Reporter, SilentReporter
from cnnkit.train.parallel import STOP_SIGNALS, ParallelStep, check_slices, rank_batches
from cnnkit.train.step import TrainStep

__all__ = [
    "Reporter",
    "SilentReporter",
    "Trainer",
    "evaluate_split",
    "predict_probabilities",
    "steps_per_epoch",
]


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    probabilities: np.ndarray  # (N, classes): Loss.class_probabilities
    metrics: dict[str, float] = field(default_factory=dict)  # MetricSet.result(), accuracy first
    confusion: np.ndarray | None = None  # (classes, classes), rows true, columns predicted


def inference(
    model: Model,
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
    model: Model,
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
    model: Model,
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

    def mean_loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)


def steps_per_epoch(spec: Spec, train: Split) -> int:
    return -(-len(train) // spec.train.batch_size)  # the last batch may be short


class Trainer:
    """Trains a built model on splits.train for spec.train.epochs (or until a callback sets
    stop_training), evaluating splits.validation after each epoch. stop: raised by a signal.

    comm (default cnnkit.distributed.world()): with more than one rank, each trains on its
    slice of every batch (ParallelStep); `stop` is then this rank's signal, and self.stop
    the one every rank agreed on (carried by the step's allreduce), so that all stop after
    the same step; rank 0 evaluates the validation split and sends every rank its results."""

    def __init__(
        self,
        model: Model,
        loss_fn: Loss,
        optimizer: Optimizer,
        splits: Splits,
        spec: Spec,
        run_dir: Path,
        callbacks: Sequence[Callback],
        preprocessor: Preprocessor,
        stop: StopFlag | None = None,
        on_note: Callable[[str], None] | None = None,
        comm: Communicator | None = None,
    ):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.comm = comm or world()
        self.splits, self.spec, self.preprocessor = splits, spec, preprocessor
        self.run_dir, self.checkpoints = Path(run_dir), RunDir(run_dir).checkpoints
        self.class_names = splits.class_names
        self.stop = stop or StopFlag()
        self.local_stop = self.stop  # what this process's signal handlers set
        self._on_note = on_note or (lambda text: None)
        self._notes: list[str] = []
        self.epochs = spec.train.epochs
        self.steps = steps_per_epoch(spec, splits.train)
        self.shuffle_rng = random_stream(spec.seed, "shuffle")
        self.augment_rng = random_stream(spec.seed, "augment")
        self.dropout_rng = getattr(model, "dropout_rng", None)
        self.totals = EpochTotals(build_metrics(spec))
        self.val_metrics = build_metrics(spec)
        self.train_step = TrainStep(model, loss_fn, optimizer, self.totals.metrics)
        if self.comm.distributed:
            check_slices(len(splits.train), spec.train.batch_size, self.comm)
            self.stop = StopFlag()  # set when the ranks agree, after a step's allreduce
            self.train_step = ParallelStep(
                model,
                loss_fn,
                optimizer,
                self.totals.metrics,
                self.comm,
                spec.train.batch_size,
                self.local_stop,
                self.stop,
            )
        self.history: list[dict[str, Any]] = []
        self.epoch, self.step = 1, 0  # where training is: the epoch, its steps done
        self.epoch_complete = False  # its validation and callbacks done
        self.stop_training = False  # set by a callback (early stopping): no further epoch
        self.restored_best_weights_from_epoch: int | None = None
        self.callbacks = CallbackList(callbacks, self)

    def fit(self) -> list[dict[str, Any]]:
        """The history: one row per epoch (resumed ones included)."""
        try:
            self.callbacks.on_train_begin()
            self._flush_notes()
            for epoch in range(self.epoch, self.epochs + 1):
                self._begin_epoch(epoch)
                logs = self._train_epoch()
                if logs is None:  # a signal: the step in progress was finished
                    raise self._interrupted(epoch, self.step)
                row = self._end_epoch(logs)
                self.epoch_complete = True  # what its callbacks save: a finished epoch
                self.callbacks.on_epoch_end(epoch, row)
                self._flush_notes()
                if self.stop_training:
                    break
                self._agree_stop()
                if self.stop.requested and epoch < self.epochs:  # came during validation
                    raise self._interrupted(epoch + 1, 0)
        except BaseException as error:
            self.callbacks.on_exception(error)
            raise
        self.callbacks.on_train_end()
        return self.history

    def _interrupted(self, epoch: int, step: int) -> Interrupted:
        return Interrupted(self.stop.signum, self.run_dir, epoch, step, self.steps, self.comm.size)

    def _agree_stop(self) -> None:
        """Distributed: a signal that came after the epoch's last step, on any rank, stops
        every rank here (one small allreduce)."""
        if not self.comm.distributed or self.stop.requested:
            return
        flags = np.zeros(len(STOP_SIGNALS), dtype=np.float32)
        if self.local_stop.signum in STOP_SIGNALS:
            flags[STOP_SIGNALS.index(self.local_stop.signum)] = 1.0
        self.comm.sum_(flags, "the end-of-epoch stop check", timeout=False)  # rank 0 writes
        for signum, flag in zip(STOP_SIGNALS, flags, strict=True):
            if flag > 0:
                self.stop.signum = int(signum)
                return

    def note(self, text: str) -> None:
        """A message for the user, shown after the epoch's row (callbacks' notes)."""
        self._notes.append(text)

    def _flush_notes(self) -> None:
        for text in self._notes:
            self._on_note(text)
        self._notes.clear()

    def _begin_epoch(self, epoch: int) -> None:
        if self.comm.distributed:
            self.train_step.patient = True  # rank 0 may still be at the last epoch's files
        if self.epoch_complete:  # else: the first epoch, or the rest of a resumed one
            self.step = 0
        self.epoch, self.epoch_complete = epoch, False
        if self.step == 0:
            self.totals.reset()
        self.restored_best_weights_from_epoch = None
        self.epoch_shuffle_state = self.shuffle_rng.bit_generator.state  # draws the order
        self.augment_state = self.augment_rng.bit_generator.state  # after the last batch
        self.callbacks.on_epoch_begin(epoch)
        self.epoch_start = time.perf_counter()

    def _train_epoch(self) -> dict[str, Any] | None:
        """The epoch's steps from self.step on; its training logs, None if a signal stopped
        it. Batches are prepared one ahead in a background thread (prefetch)."""
        start, seen_before, totals = time.perf_counter(), self.totals.seen, self.totals
        batch_size = self.spec.train.batch_size
        order = self.shuffle_rng if self.spec.train.shuffle else None
        prepare = self.preprocessor.training(self.augment_rng)
        if self.comm.distributed:
            whole = self.preprocessor.augmenter is not None  # one draw per batch (rank_batches)
            begin = self.step * batch_size
            source = rank_batches(
                self.splits.train, batch_size, prepare, order, begin, self.comm, whole
            )
        else:
            source = batches(
                self.splits.train, batch_size, prepare, order, start=self.step * batch_size
            )
        # overflow is caught by TerminateOnNaN with a clear message, not as numpy warnings
        with (
            closing(prefetch(_with_rng_state(source, self.augment_rng))) as stream,
            np.errstate(over="ignore", invalid="ignore", divide="ignore"),
        ):
            for *batch, augment_state in stream:
                xb, yb, *part = batch  # part: this rank's first row (distributed)
                self.step += 1
                loss = self.train_step(xb, yb, self.callbacks.on_before_optimizer_step, *part)
                self.augment_state = augment_state  # the stream's state after this batch
                totals.loss_sum += loss * len(yb)
                totals.seen += len(yb)
                speed = (totals.seen - seen_before) / max(time.perf_counter() - start, 1e-9)
                logs = {"loss": totals.mean_loss(), **totals.metrics.running()}
                self.callbacks.on_train_batch_end(self.step, {**logs, "images_per_s": speed})
                if self.comm.distributed:  # rank 0 may have saved a checkpoint: no timeout
                    every = self.spec.train.save_every_steps
                    self.train_step.patient = bool(every) and self.optimizer.iterations % every == 0
                if self.stop.requested:
                    return None
        speed = (totals.seen - seen_before) / max(time.perf_counter() - start, 1e-9)
        return {"loss": totals.mean_loss(), **totals.metrics.result(), "images_per_s": speed}

    def _end_epoch(self, logs: dict[str, Any]) -> dict[str, Any]:
        """The epoch's metrics.csv row, appended to the history: training logs, validation,
        seconds, and lr (the learning rate of the epoch's last step)."""
        row = {"epoch": self.epoch, **logs}
        if self.splits.validation is not None:
            values = None
            if self.comm.is_root:  # distributed: rank 0's model (its BN statistics) is the run's
                result = evaluate_split(
                    self.model,
                    self.loss_fn,
                    self.splits.validation,
                    self.preprocessor,  # normalised, never augmented
                    self.spec.train.eval_batch_size,
                    self.val_metrics,
                )
                values = {"val_loss": result.loss}
                values.update({f"val_{name}": value for name, value in result.metrics.items()})
            row.update(self.comm.broadcast(values, "the validation results", timeout=False))
        row["seconds"] = time.perf_counter() - self.epoch_start
        row["lr"] = self.optimizer.lr
        self.history.append(row)
        return row

    def model_meta(self) -> dict[str, Any]:
        """What every checkpoint's sidecar says about the model its arrays belong to: the
        spec's hash, the class names, and each layers.{i} key's layer (name and type)."""
        return {
            "spec_hash": self.spec.hash(),
            "class_names": self.class_names,
            "layers": self.model.layer_records(),
        }

    def checkpoint_meta(self, epoch: int, row: dict[str, Any]) -> dict[str, Any]:
        """What best.json and last.json say about an epoch's end."""
        return {
            "epoch": epoch,
            "metrics": {k: v for k, v in row.items() if k != "epoch"},
            **self.model_meta(),
        }

    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON, arrays) of where training is: position, random streams, the epoch's running
        totals, the finished epochs. A finished epoch saves the streams as they are; a partial
        one the shuffle stream of the epoch's start and the augmentation stream's state right
        after its last trained batch (the prefetch thread has run ahead)."""
        done = self.epoch_complete
        shuffle = self.shuffle_rng.bit_generator.state if done else self.epoch_shuffle_state
        augment = self.augment_rng.bit_generator.state if done else self.augment_state
        metric_arrays, metric_scalars = self.totals.metrics.state()
        info = {
            "epoch": self.epoch,
            "step": self.step,
            "steps_per_epoch": self.steps,
            "epoch_complete": done,
            "stopped_early": self.stop_training,
            "workers": self.comm.size,  # a resume needs as many (cnnkit.train.resume)
            "rng": {
                "shuffle": shuffle,
                "augment": augment,
                "dropout": None
                if self.dropout_rng is None
                else self.dropout_rng.bit_generator.state,
            },
            "totals": {
                "loss_sum": self.totals.loss_sum,
                "seen": self.totals.seen,
                "metrics": metric_scalars,
            },
            "history": [{k: encode_float(v) for k, v in row.items()} for row in self.history],
        }
        return info, {f"metrics.{k}": v for k, v in metric_arrays.items()}

    def load_state_dict(self, info: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        rng = info["rng"]
        self.shuffle_rng.bit_generator.state = rng["shuffle"]
        self.augment_rng.bit_generator.state = rng["augment"]
        if self.dropout_rng is not None and rng.get("dropout") is not None:
            self.dropout_rng.bit_generator.state = rng["dropout"]
        complete = bool(info["epoch_complete"])
        self.epoch, self.step = (
            (info["epoch"] + 1, 0) if complete else (info["epoch"], info["step"])
        )
        self.history = [
            {k: decode_float(v) for k, v in row.items()}
            for row in info["history"]
            if row["epoch"] < self.epoch
        ]
        if self.step:
            saved = info["totals"]
            self.totals.loss_sum, self.totals.seen = float(saved["loss_sum"]), int(saved["seen"])
            metric_arrays = {
                k.removeprefix("metrics."): v for k, v in arrays.items() if k.startswith("metrics.")
            }
            self.totals.metrics.load_state(metric_arrays, saved["metrics"])


def _with_rng_state(items: Iterator, rng: np.random.Generator | None) -> Iterator:
    """Each batch with the augmentation stream's state right after it was prepared: what a
    checkpoint taken after training that batch must save (the prefetch thread runs ahead)."""
    for item in items:
        yield (*item, None if rng is None else rng.bit_generator.state)
