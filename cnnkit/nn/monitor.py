"""Monitors: one column of an epoch's metrics row (loss, accuracy, a chosen metric, or their
val_ counterparts) and whether a new value beats the best so far, with Keras 3's rules.

`resolve_monitor` checks at spec time that the column will exist; `direction` says whether it
improves downwards (losses) or upwards (accuracy-like metrics). Early stopping, the best
checkpoint and ReduceLROnPlateau all watch one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnnkit.errors import SpecError
from cnnkit.options import Option, checker, did_you_mean

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


@checker({"type": ["string", "null"], "description": "a metrics.csv column, e.g. val_loss"})
def _monitor_name(value: Any, path: str) -> Any:
    return value  # resolve_monitor checks it, once the metric columns are known


def monitor_option() -> Option:
    """A monitor name, or null for the section's default (checked by resolve_monitor)."""
    return Option(_monitor_name, default=None)


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


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
