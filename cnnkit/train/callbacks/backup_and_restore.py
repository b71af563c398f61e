"""checkpoints/last: everything a resume needs (Keras' BackupAndRestore, mid-epoch included).

Saved after every epoch, every train.save_every_steps optimizer steps, and when a signal stops
training; restored when training begins from a resume state (cnnkit.train.resume). The set:
last.npz (weights), last.optimizer.npz (the optimizer's moments), last.state.npz (the arrays
of the trainer's and the callbacks' state) and last.json, whose "resume" entry holds the
trainer's state (position, random streams, running totals, history) beside each callback's,
under its name."""

from __future__ import annotations

from typing import Any

from cnnkit.interrupts import Interrupted
from cnnkit.runs.rundir import save_checkpoint
from cnnkit.train.callbacks.base import Callback


class BackupAndRestore(Callback):
    def __init__(self, save_every_steps: int | None = None, resume: Any = None, save: bool = True):
        """resume: a cnnkit.train.resume.ResumeState to continue from (None: a new run).
        save=False: restore only (a data-parallel rank other than 0 writes nothing)."""
        self.every = save_every_steps
        self.writes = save
        self.resume = resume
        self.saved_at: tuple[int, int] | None = None

    def on_train_begin(self) -> None:
        if self.resume is not None:
            self.resume.restore(self.trainer)

    def on_train_batch_end(self, step: int, logs: dict[str, float]) -> None:
        trainer = self.trainer
        every, iterations = self.every, trainer.optimizer.iterations
        due = every and iterations % every == 0 and step < trainer.steps
        if trainer.stop.requested or due:
            self.save_partial()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        meta = self.trainer.checkpoint_meta(epoch, logs)
        restored = self.trainer.restored_best_weights_from_epoch
        self.save({**meta, "epoch_complete": True, "restored_best_weights_from_epoch": restored})

    def on_exception(self, error: BaseException) -> None:
        """A signal seen after this step's check (it can arrive at any moment) still saves."""
        trainer = self.trainer
        unsaved = self.saved_at != (trainer.epoch, trainer.step)
        if isinstance(error, Interrupted) and not trainer.epoch_complete and unsaved:
            self.save_partial()

    def save_partial(self) -> None:
        totals = self.trainer.totals
        partial = {"loss": totals.mean_loss(), **totals.metrics.running()}
        self.save({"epoch": self.trainer.epoch, "epoch_complete": False, "metrics": partial})

    def save(self, meta: dict[str, Any]) -> None:
        if not self.writes:
            return
        trainer = self.trainer
        info, arrays = trainer.state_dict()
        entries, callback_arrays = trainer.callbacks.state_dict()
        last_meta = {
            **trainer.model_meta(),
            **meta,
            "kind": "last",
            "step": trainer.step,
            "steps_per_epoch": trainer.steps,
            "callbacks": entries,
            "resume": {**info, **entries},
        }
        save_checkpoint(
            trainer.checkpoints / "last",
            trainer.model.named_weights(),
            last_meta,
            trainer.optimizer.state_dict(),
            {**arrays, **callback_arrays},
        )
        self.saved_at = (trainer.epoch, trainer.step)
