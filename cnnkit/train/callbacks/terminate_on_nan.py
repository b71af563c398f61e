"""A NaN or infinite loss or gradient stops training with a DivergenceError (exit 3) before
the optimizer applies the bad step (Keras' TerminateOnNaN stops after it): nothing is saved
after it, and the error says which checkpoint keeps the last good weights."""

from __future__ import annotations

import math

import numpy as np

from cnnkit.errors import DivergenceError
from cnnkit.runs.layout import RunDir
from cnnkit.train.callbacks.base import Callback


class TerminateOnNaN(Callback):
    def on_before_optimizer_step(self, loss: float, grads: dict[str, np.ndarray]) -> None:
        what = None
        if not math.isfinite(loss):
            what = f"the loss is {loss}"
        else:
            for key, grad in grads.items():
                total = float(np.sum(grad, dtype=np.float64))
                if not math.isfinite(total):
                    kind = "NaN" if math.isnan(total) else "inf"
                    what = f"the gradient of {key} contains {kind}"
                    break
        if what is not None:
            raise self._divergence(what)

    def _divergence(self, what: str) -> DivergenceError:
        trainer = self.trainer
        spec, lr = trainer.spec, trainer.optimizer.lr
        rescale = spec.data.rescale
        causes = [
            f"the learning rate is too high (this step's: {lr:g}; try 10x lower, or "
            "optimizer.clipnorm: 1.0)",
        ]
        if not callable(rescale) and rescale is not None and float(rescale) >= 0.5:
            causes.insert(
                0,
                f"the pixels are not rescaled (data.rescale is {rescale:g}, so inputs reach "
                "255; the usual value is 1/255 = 0.00392156862745098)",
            )
        else:
            causes.append("inputs not rescaled to [0, 1] (data.rescale; Keras' rescale=1./255)")
        return DivergenceError(
            f"training diverged at epoch {trainer.epoch}, step {trainer.step}/{trainer.steps}: "
            f"{what}",
            where=str(spec.file) if spec.file else spec.name,
            hint="Likely causes: " + "; ".join(causes) + ".",
        )

    def on_exception(self, error: BaseException) -> None:
        if not isinstance(error, DivergenceError):
            return
        run = RunDir(self.trainer.run_dir)
        saved = run.read_checkpoint_meta("last")
        if saved is not None:
            error.hint += (
                f" The bad step was not applied and nothing was saved after it: "
                f"{run.checkpoint('last').weights} keeps the last good weights (epoch "
                f"{saved.get('epoch')}, step {saved.get('step')}), metrics.csv the "
                "finished epochs."
            )
        else:
            error.hint += " No checkpoint had been saved yet."
