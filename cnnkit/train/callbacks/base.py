"""The callback contract: Keras' hook names, and Lightning's state_dict() / load_state_dict()
so that a resumed run restores every callback the same way, by its stable `name`.

A callback sees the Trainer it is attached to (`self.trainer`, as Keras' `self.model`): the
model, the optimizer, the position (epoch, step), the history, and `stop_training`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np


class Callback:
    """Every hook does nothing; override the ones a behaviour needs.

    name: the key of the callback's state in a checkpoint's resume state (None: it has none).
    state_dict(): JSON-safe values, plus numpy arrays, which go to last.state.npz as
    `<name>.<key>`; load_state_dict() receives the same dict back."""

    name: ClassVar[str | None] = None

    def set_trainer(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_train_begin(self) -> None: ...
    def on_epoch_begin(self, epoch: int) -> None: ...
    def on_before_optimizer_step(self, loss: float, grads: dict[str, np.ndarray]) -> None: ...
    def on_train_batch_end(self, step: int, logs: dict[str, float]) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None: ...
    def on_train_end(self) -> None: ...

    def on_exception(self, error: BaseException) -> None:
        """Training ends on an exception (Lightning's hook): a signal's Interrupted, a
        DivergenceError, a failed write; it is raised again after every callback saw it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def encode_float(value: Any) -> Any:
    """JSON keeps NaN and infinities as strings ("nan", "inf", "-inf"): a row's undefined auc,
    a monitor's initial best."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def decode_float(value: Any) -> Any:
    return float(value) if value in ("nan", "inf", "-inf") else value


class CallbackList:
    """Calls each hook on every callback, in list order."""

    def __init__(self, callbacks: Sequence[Callback], trainer: Any):
        self.callbacks = list(callbacks)
        names = [c.name for c in self.callbacks if c.name is not None]
        if len(names) != len(set(names)):
            raise ValueError(f"two callbacks share a state name: {names}")
        for callback in self.callbacks:
            callback.set_trainer(trainer)

    def on_train_begin(self) -> None:
        for callback in self.callbacks:
            callback.on_train_begin()

    def on_epoch_begin(self, epoch: int) -> None:
        for callback in self.callbacks:
            callback.on_epoch_begin(epoch)

    def on_before_optimizer_step(self, loss: float, grads: dict[str, np.ndarray]) -> None:
        for callback in self.callbacks:
            callback.on_before_optimizer_step(loss, grads)

    def on_train_batch_end(self, step: int, logs: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_train_batch_end(step, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)

    def on_train_end(self) -> None:
        for callback in self.callbacks:
            callback.on_train_end()

    def on_exception(self, error: BaseException) -> None:
        for callback in self.callbacks:
            callback.on_exception(error)

    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON entries keyed by callback name, arrays keyed `<name>.<key>`)."""
        entries: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        for callback in self.callbacks:
            if callback.name is None:
                continue
            state = callback.state_dict()
            entries[callback.name] = {
                k: encode_float(v) for k, v in state.items() if not isinstance(v, np.ndarray)
            }
            for key, value in state.items():
                if isinstance(value, np.ndarray):
                    arrays[f"{callback.name}.{key}"] = value
        return entries, arrays

    def load_state_dict(self, entries: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Each named callback gets its entry back (with its arrays); a callback the saved run
        did not have (or had without state) keeps its fresh state."""
        for callback in self.callbacks:
            saved = entries.get(callback.name) if callback.name is not None else None
            if saved is None:
                continue
            prefix = f"{callback.name}."
            state = {k: decode_float(v) for k, v in saved.items()}
            state.update(
                {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
            )
            callback.load_state_dict(state)
