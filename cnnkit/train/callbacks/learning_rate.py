"""The spec's `schedule:` section as callbacks. The formulas are cnnkit.nn.schedules' (Keras');
these say when they act: LearningRateScheduler hands a per-step schedule to the optimizer, or
sets an epoch's rate when it begins (step_decay); ReduceLROnPlateau lowers the rate at the end
of an epoch whose monitor stopped improving, and owns its counters."""

from __future__ import annotations

from typing import Any

from cnnkit.nn.schedules import ReduceLROnPlateau as PlateauRule
from cnnkit.nn.schedules import Schedule, make_schedule
from cnnkit.spec.config import Spec
from cnnkit.train.callbacks.base import Callback


class LearningRateScheduler(Callback):
    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def on_train_begin(self) -> None:
        if self.schedule.per_step:
            self.trainer.optimizer.schedule = self.schedule  # the optimizer asks every step

    def on_epoch_begin(self, epoch: int) -> None:
        self.schedule.on_epoch_begin(epoch, self.trainer.optimizer)


class ReduceLROnPlateau(Callback):
    name = "reduce_on_plateau"

    def __init__(self, rule: PlateauRule):
        self.rule = rule

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        message = self.rule.on_epoch_end(epoch, logs, self.trainer.optimizer)
        if message:
            self.trainer.note(message)

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state)


def schedule_callbacks(spec: Spec, learning_rate: float, steps: int) -> list[Callback]:
    """The callback of the spec's schedule, if it has one; learning_rate: where it starts."""
    schedule = make_schedule(spec.schedule, learning_rate, steps, spec.train.epochs)
    if schedule is None:
        return []
    if schedule.name == "reduce_on_plateau":
        return [ReduceLROnPlateau(schedule)]
    return [LearningRateScheduler(schedule)]
