"""The spec's `callbacks:` sections (early_stopping, checkpoint) and what a run chose on its
validation data (the optimistic-test note check, train and evaluate show)."""

from __future__ import annotations

from typing import Any

from cnnkit.nn.monitor import MODES, monitor_option
from cnnkit.options import Option

EARLY_STOPPING_OPTIONS = {
    "monitor": monitor_option(),
    "min_delta": Option("float", default=0.0),
    "patience": Option("int", default=0, minimum=0),
    "mode": Option("str", default="auto", choices=MODES),
    "restore_best_weights": Option("bool", default=False),
    "start_from_epoch": Option("int", default=0, minimum=0),
}


CHECKPOINT_OPTIONS = {
    "monitor": monitor_option(),
    "mode": Option("str", default="auto", choices=MODES),
}


CALLBACK_SECTIONS = {"early_stopping": EARLY_STOPPING_OPTIONS, "checkpoint": CHECKPOINT_OPTIONS}


DEFAULT_MONITORS = {"early_stopping": "val_loss", "checkpoint": "val_accuracy"}


def validation_choices(spec: Any, checkpoint: str = "best") -> list[str]:
    """What training decided by a val_ column, in words: on the data the val_ metrics were
    computed on, the chosen model scores better than on unseen data. checkpoint: the one
    evaluated ('best' counts best.npz's monitor; last.npz is chosen by early stopping only)."""
    out = []
    monitor = spec.callbacks.checkpoint.monitor or ""
    if checkpoint == "best" and monitor.startswith("val_"):
        out.append(f"best.npz is the epoch with the best {monitor}")
    stopping = spec.callbacks.early_stopping
    if stopping is not None and str(stopping.monitor or "").startswith("val_"):
        out.append(f"early stopping watches {stopping.monitor}")
    schedule = spec.schedule
    if schedule is not None and str(schedule.options.get("monitor") or "").startswith("val_"):
        out.append(f"schedule {schedule.name} follows {schedule.options['monitor']}")
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
