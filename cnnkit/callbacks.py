"""Epoch-end callbacks with Keras 3's semantics: early stopping and the best-checkpoint choice.

Both watch a *monitor*: a column of the epoch's metrics row (loss, accuracy, a chosen metric,
or their val_ counterparts). `resolve_monitor` checks at spec time that the column will exist;
`direction` says whether it improves downwards (losses) or upwards (accuracy-like metrics).
The training loop (cnnkit.training) calls `on_epoch_end` once per epoch, 1-based.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from cnnkit.errors import SpecError
from cnnkit.options import Option, did_you_mean

# metric names that improve upwards when mode is auto (anything else must say min or max,
# except losses, which improve downwards)
_UPWARD = ("acc", "precision", "recall", "auc", "f1", "iou")
_DOWNWARD = ("loss", "error", "mae", "mse", "crossentropy")

MODES = ("auto", "min", "max")


def direction(monitor: str, mode: str) -> str | None:
    """'min' or 'max'; None when mode is auto and the name does not tell (Keras raises too)."""
    if mode in ("min", "max"):
        return mode
    name = monitor.removeprefix("val_")
    if any(word in name for word in _DOWNWARD):
        return "min"
    if any(word in name for word in _UPWARD):
        return "max"
    return None


def available_monitors(metrics: list[str], has_validation: bool) -> list[str]:
    """Columns every epoch row has: loss, accuracy, the chosen metrics, and their val_ twins."""
    names = list(dict.fromkeys(["loss", "accuracy", *metrics]))
    return names + ([f"val_{n}" for n in names] if has_validation else [])


def resolve_monitor(
    given: Any,
    default: str,
    mode: str,
    path: str,
    metrics: list[str],
    has_validation: bool,
    notes: list[str],
) -> str:
    """The monitor a spec section names (or its default), checked against the run's metrics.

    With no validation data a *default* val_X monitor becomes X, with a note; a val_X the spec
    names explicitly is an error, as is any name the run will not report."""
    valid = available_monitors(metrics, has_validation)
    if given is None:
        monitor = default
        if not has_validation and default.startswith("val_"):
            monitor = default.removeprefix("val_")
            notes.append(
                f"{path.rsplit('.', 1)[0]} monitors {monitor}, not {default}: there is no "
                "validation data (data.validation: none)."
            )
    else:
        monitor = Option("str").check(given, path)
        if monitor not in valid:
            extra = ""
            if monitor.startswith("val_") and not has_validation:
                extra = " There is no validation data (data.validation: none), so no val_ metrics."
            raise SpecError(
                f"'{monitor}' is not a metric this run reports",
                where=path,
                hint=f"{did_you_mean(monitor, valid)}Valid monitors: {', '.join(valid)}.{extra}",
            )
    if direction(monitor, mode) is None:
        raise SpecError(
            f"cannot tell whether {monitor} should go down or up",
            where=path.rsplit(".", 1)[0] + ".mode",
            hint="Set mode: min (lower is better) or mode: max (higher is better).",
        )
    return monitor


def _monitor_option() -> Option:
    """A monitor name, or null for the section's default (checked by resolve_monitor)."""
    return Option(lambda value, path: value, default=None)


class Monitor:
    """The value of one metrics column and whether a new value beats the best so far."""

    def __init__(self, monitor: str, mode: str = "auto", min_delta: float = 0.0):
        self.monitor = monitor
        self.mode = direction(monitor, mode) or "min"
        self.min_delta = abs(min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf

    def value(self, logs: dict[str, Any]) -> float:
        if self.monitor not in logs:
            raise KeyError(
                f"monitor {self.monitor!r} is not in the epoch's metrics {sorted(logs)} "
                "(the spec check should have caught this)"
            )
        return float(logs[self.monitor])

    def improves(self, current: float, reference: float) -> bool:
        """Keras: `current - min_delta > reference` (max) / `current + min_delta < reference`
        (min). NaN never improves."""
        if self.mode == "min":
            return bool(np.less(current + self.min_delta, reference))
        return bool(np.greater(current - self.min_delta, reference))


# -- the spec sections --------------------------------------------------------------------

EARLY_STOPPING_OPTIONS = {
    "monitor": _monitor_option(),
    "min_delta": Option("float", default=0.0),
    "patience": Option("int", default=0, minimum=0),
    "mode": Option("str", default="auto", choices=MODES),
    "restore_best_weights": Option("bool", default=False),
    "start_from_epoch": Option("int", default=0, minimum=0),
}
CHECKPOINT_OPTIONS = {
    "monitor": _monitor_option(),
    "mode": Option("str", default="auto", choices=MODES),
}
CALLBACK_SECTIONS = {"early_stopping": EARLY_STOPPING_OPTIONS, "checkpoint": CHECKPOINT_OPTIONS}
DEFAULT_MONITORS = {"early_stopping": "val_loss", "checkpoint": "val_accuracy"}


# -- the callbacks ------------------------------------------------------------------------


class BestCheckpoint:
    """Decides which epoch best.npz holds: Keras' ModelCheckpoint(save_best_only=True) rule,
    a strict improvement of the monitor (no min_delta). Default monitor val_accuracy."""

    def __init__(self, monitor: str = "val_accuracy", mode: str = "auto"):
        self.watch = Monitor(monitor, mode)
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> bool:
        """True when this epoch's weights become best.npz."""
        current = self.watch.value(logs)
        if self.watch.improves(current, self.watch.best):
            self.watch.best, self.best_epoch = current, epoch
            return True
        return False


class EarlyStopping:
    """Keras 3 EarlyStopping (keras/src/callbacks/early_stopping.py), with 1-based epochs.

    From epoch start_from_epoch + 1 on, `wait` counts epochs since the monitor last improved
    by more than min_delta; training stops at the end of the epoch where wait reaches
    patience (never after the first epoch). With restore_best_weights the weights of the best
    monitored epoch are kept and `restore` puts them back when training ends, stopped or not."""

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        mode: str = "auto",
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ):
        self.watch = Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.wait = 0
        self.best_epoch: int | None = None
        self.best_weights: dict[str, np.ndarray] | None = None
        self.stopped_epoch: int | None = None
        self.reason = ""

    def on_epoch_end(
        self,
        epoch: int,
        logs: dict[str, Any],
        get_weights: Callable[[], dict[str, np.ndarray]] | None = None,
    ) -> bool:
        """True when training should stop after this epoch; `reason` says why."""
        if epoch <= self.start_from_epoch:
            return False  # warm-up: not monitored (Keras: epoch < start_from_epoch, 0-based)
        current = self.watch.value(logs)
        snapshot = self.restore_best_weights and get_weights is not None
        if snapshot and self.best_weights is None:
            self.best_weights, self.best_epoch = _copy(get_weights()), epoch
        self.wait += 1
        if self.watch.improves(current, self.watch.best):
            self.watch.best, self.best_epoch = current, epoch
            if snapshot:
                self.best_weights = _copy(get_weights())
            self.wait = 0
            return False
        if self.wait >= self.patience and epoch > 1:
            self.stopped_epoch = epoch
            best = f"{self.watch.best:.6g}" if math.isfinite(self.watch.best) else "none yet"
            self.reason = (
                f"Early stopping after epoch {epoch}: {self.watch.monitor} = {current:.6g} "
                f"has not improved on its best ({best}, epoch {self.best_epoch}) by more than "
                f"min_delta {self.watch.min_delta:g} for {self.wait} epoch"
                f"{'s' if self.wait != 1 else ''} (patience {self.patience})."
            )
            return True
        return False

    def restore(self, weights: dict[str, np.ndarray]) -> int | None:
        """Copy the best weights into `weights` (in place) if kept; the epoch they are from."""
        if not self.restore_best_weights or self.best_weights is None:
            return None
        for key, array in self.best_weights.items():
            np.copyto(weights[key], array)
        return self.best_epoch

    def state(self) -> dict[str, Any]:
        return {
            "monitor": self.watch.monitor,
            "best": _finite_or_none(self.watch.best),
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
        }


def _copy(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.array(array, copy=True) for key, array in weights.items()}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def make_callbacks(section: dict[str, Any]) -> tuple[BestCheckpoint, EarlyStopping | None]:
    """The callbacks of a resolved `callbacks:` section (checkpoint is always there)."""
    checkpoint = BestCheckpoint(**section.get("checkpoint", {}))
    early = section.get("early_stopping")
    return checkpoint, (EarlyStopping(**early) if early else None)


# -- what the run chose on its validation data ----------------------------------------------


def validation_choices(spec: Any, checkpoint: str = "best") -> list[str]:
    """What training decided by a val_ column, in words: on the data the val_ metrics were
    computed on, the chosen model scores better than on unseen data. checkpoint: the one
    evaluated ('best' counts best.npz's monitor; last.npz is chosen by early stopping only)."""
    out = []
    monitor = (spec.callbacks.get("checkpoint") or {}).get("monitor") or ""
    if checkpoint == "best" and monitor.startswith("val_"):
        out.append(f"best.npz is the epoch with the best {monitor}")
    stopping = spec.callbacks.get("early_stopping") or {}
    if str(stopping.get("monitor") or "").startswith("val_"):
        out.append(f"early stopping watches {stopping['monitor']}")
    schedule = spec.schedule or {}
    if str(schedule.get("monitor") or "").startswith("val_"):
        out.append(f"schedule {schedule['name']} follows {schedule['monitor']}")
    return out


def optimistic_test_notes(spec) -> list[str]:
    """[the warning] when training chooses by val_ metrics (best.npz, early stopping, a
    plateau schedule): what check and train say when the validation split is the test's."""
    note = optimistic_test_note(validation_choices(spec))
    return [note] if note else []


def optimistic_test_note(choices: list[str]) -> str | None:
    """The warning when the val_ metrics are the test split's and training chose by them."""
    if not choices:
        return None
    return (
        "the val_ metrics are computed on the test split (data.validation: test) and "
        + "; ".join(choices)
        + ": the test score `cnnkit evaluate` reports is optimistic (the model was selected "
        "on the test set). For an unbiased test score, hold out a validation split: "
        "data.validation_split: 0.1."
    )
