"""Learning-rate schedules (the spec's `schedule:` section), with Keras 3's formulas.

Two kinds, as in Keras:

- per optimizer step (Keras' `LearningRateSchedule` objects, keras/src/optimizers/schedules/
  learning_rate_schedule.py): `exponential_decay`, `cosine_decay`. The optimizer calls
  `schedule(step)` before every update with step = the updates done so far (0 for the first),
  so `decay_steps` and `warmup_steps` count optimizer steps (batches), exactly as in Keras.
- per epoch (Keras callbacks): `step_decay` (the classic LearningRateScheduler recipe) sets the
  learning rate at the start of each epoch; `reduce_on_plateau` (ReduceLROnPlateau) lowers it
  at the end of an epoch whose monitor has stopped improving. Their units are epochs.

The initial learning rate is the optimizer's `learning_rate`. metrics.csv's lr column holds
the learning rate of each epoch's last step.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from cnnkit.errors import SpecError
from cnnkit.nn.monitor import MODES, Monitor, finite_or_none, monitor_option, resolve_monitor
from cnnkit.options import Option


class Schedule:
    name: ClassVar[str] = "schedule"
    OPTIONS: ClassVar[dict[str, Option]] = {}
    per_step: ClassVar[bool] = False

    def __init__(self, learning_rate: float, steps_per_epoch: int = 1, epochs: int = 1, **options):
        # learning_rate: the optimizer's, where the schedule starts (cosine may override it)
        self.initial_learning_rate = float(learning_rate)
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.options = {k: options.get(k, opt.default) for k, opt in self.OPTIONS.items()}

    @classmethod
    def check_section(
        cls, section: dict[str, Any], metrics: list[str], has_validation: bool, notes: list[str]
    ) -> None:
        """Spec-time checks beyond single options (may fill in resolved values)."""

    def __call__(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based); per-step schedules only."""
        raise NotImplementedError

    def on_epoch_begin(self, epoch: int, optimizer) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, Any], optimizer) -> str | None:
        """Called after each epoch (1-based); returns a message when it changed something."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class StepDecay(Schedule):
    """lr(epoch) = lr0 * factor ** floor((epoch - 1) / step_epochs), epochs counted from 1:
    the first step_epochs epochs use lr0, the next step_epochs lr0 * factor, and so on."""

    name = "step_decay"
    OPTIONS = {
        "factor": Option("float", default=0.5, minimum=0.0, maximum=1.0, exclusive_min=True),
        "step_epochs": Option("int", default=10, minimum=1),
    }

    def lr_for_epoch(self, epoch: int) -> float:
        drops = (epoch - 1) // self.options["step_epochs"]
        return self.initial_learning_rate * self.options["factor"] ** drops

    def on_epoch_begin(self, epoch: int, optimizer) -> None:
        optimizer.learning_rate = self.lr_for_epoch(epoch)


class ExponentialDecay(Schedule):
    """Keras ExponentialDecay: lr0 * decay_rate ** (step / decay_steps); with staircase the
    exponent is floor(step / decay_steps). Per optimizer step."""

    name = "exponential_decay"
    per_step = True
    OPTIONS = {
        "decay_steps": Option("int", minimum=1, doc="optimizer steps (batches) per decay"),
        "decay_rate": Option("float", minimum=0.0, exclusive_min=True, doc="e.g. 0.96"),
        "staircase": Option("bool", default=False),
    }

    def __call__(self, step: int) -> float:
        p = step / self.options["decay_steps"]
        if self.options["staircase"]:
            p = math.floor(p)
        return self.initial_learning_rate * self.options["decay_rate"] ** p


class CosineDecay(Schedule):
    """Keras CosineDecay, per optimizer step. Without warmup_target:
    lr0 * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha).
    With warmup_target: a linear ramp from lr0 (initial_learning_rate if given, else the
    optimizer's learning_rate) to warmup_target over warmup_steps steps, then the cosine decay
    from warmup_target to warmup_target * alpha over decay_steps. decay_steps: null means
    "the rest of training": epochs * steps_per_epoch - warmup_steps."""

    name = "cosine_decay"
    per_step = True
    OPTIONS = {
        "decay_steps": Option("int_or_null", default=None, minimum=1),
        "alpha": Option("float", default=0.0, minimum=0.0, maximum=1.0),
        "warmup_target": Option("float_or_null", default=None, minimum=0.0, exclusive_min=True),
        "warmup_steps": Option("int", default=0, minimum=0),
        "initial_learning_rate": Option("float_or_null", default=None, minimum=0.0),
    }

    def __init__(self, learning_rate: float, steps_per_epoch=1, epochs=1, **options):
        super().__init__(learning_rate, steps_per_epoch, epochs, **options)
        if self.options["initial_learning_rate"] is not None:
            self.initial_learning_rate = float(self.options["initial_learning_rate"])
        self.warmup_steps = self.options["warmup_steps"]
        self.decay_steps = self.options["decay_steps"] or max(
            1, epochs * steps_per_epoch - self.warmup_steps
        )

    @classmethod
    def check_section(cls, section, metrics, has_validation, notes) -> None:
        if section["warmup_steps"] and section["warmup_target"] is None:
            raise SpecError(
                "warmup_steps needs warmup_target (the learning rate to warm up to)",
                where="schedule.warmup_steps",
                hint="Add warmup_target: 0.001 (Keras ignores warmup_steps without it).",
            )

    def _decay(self, step: float, decay_from: float) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * (step / self.decay_steps)))
        alpha = self.options["alpha"]
        return decay_from * ((1 - alpha) * cosine + alpha)

    def __call__(self, step: int) -> float:
        target = self.options["warmup_target"]
        if target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            fraction = step / self.warmup_steps
            return (target - self.initial_learning_rate) * fraction + self.initial_learning_rate
        return self._decay(step - self.warmup_steps, target)


class ReduceLROnPlateau(Schedule):
    """Keras 3 ReduceLROnPlateau (keras/src/callbacks/reduce_lr_on_plateau.py), at epoch end:
    after `patience` epochs whose monitor did not beat the best by more than min_delta, the
    learning rate becomes max(lr * factor, min_lr) (if lr > min_lr), then `cooldown` epochs
    pass before epochs count again. Direction from mode (auto: losses down, accuracy up)."""

    name = "reduce_on_plateau"
    OPTIONS = {
        "monitor": monitor_option(),
        "factor": Option("float", default=0.1, minimum=0.0, maximum=1.0, exclusive_max=True),
        "patience": Option("int", default=10, minimum=0),
        "min_delta": Option("float", default=1e-4, minimum=0.0),
        "cooldown": Option("int", default=0, minimum=0),
        "min_lr": Option("float", default=0.0, minimum=0.0),
        "mode": Option("str", default="auto", choices=MODES),
    }

    def __init__(self, learning_rate: float, steps_per_epoch=1, epochs=1, **options):
        super().__init__(learning_rate, steps_per_epoch, epochs, **options)
        opts = self.options
        self.watch = Monitor(opts["monitor"] or "val_loss", opts["mode"], opts["min_delta"])
        # Keras' ReduceLROnPlateau applies min_delta as `a < b - min_delta` / `a > b + min_delta`
        self.wait = 0
        self.cooldown_counter = 0

    @classmethod
    def check_section(cls, section, metrics, has_validation, notes) -> None:
        section["monitor"] = resolve_monitor(
            section["monitor"],
            "val_loss",
            section["mode"],
            "schedule.monitor",
            metrics,
            has_validation,
            notes,
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any], optimizer) -> str | None:
        current = self.watch.value(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.watch.improves(current, self.watch.best):
            self.watch.best = current
            self.wait = 0
            return None
        if self.cooldown_counter > 0:
            return None
        self.wait += 1
        patience = self.options["patience"]
        if self.wait < patience:
            return None
        old = optimizer.learning_rate
        if not old > self.options["min_lr"]:
            return None
        new = max(old * self.options["factor"], self.options["min_lr"])
        optimizer.learning_rate = new
        self.cooldown_counter = self.options["cooldown"]
        self.wait = 0
        return (
            f"Epoch {epoch}: {self.watch.monitor} has not improved for {patience} "
            f"epoch{'s' if patience != 1 else ''}; reducing the learning rate to {new:.6g}."
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": finite_or_none(self.watch.best),
            "wait": self.wait,
            "cooldown_counter": self.cooldown_counter,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state.get("best")
        if best is not None:
            self.watch.best = float(best)
        self.wait = int(state.get("wait", 0))
        self.cooldown_counter = int(state.get("cooldown_counter", 0))


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (StepDecay, ExponentialDecay, CosineDecay, ReduceLROnPlateau)
}


def make_schedule(
    section: Any, initial_learning_rate: float, steps_per_epoch: int, epochs: int
) -> Schedule | None:
    """The schedule of a resolved `schedule:` section (its name and options; None when the
    spec has none)."""
    if not section:
        return None
    schedule = SCHEDULES[section.name]
    return schedule(initial_learning_rate, steps_per_epoch, epochs, **section.options)
