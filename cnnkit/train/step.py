"""One training step, the same for `cnnkit train` and `cnnkit bench`: forward, loss,
backward, optimizer step, metrics."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cnnkit.nn.losses import Loss
from cnnkit.nn.metrics import MetricSet
from cnnkit.nn.model import Model
from cnnkit.nn.optimizers import Optimizer


class TrainStep:
    def __init__(self, model: Model, loss_fn: Loss, optimizer: Optimizer, metrics: MetricSet):
        self.model, self.loss_fn, self.optimizer, self.metrics = model, loss_fn, optimizer, metrics
        self.params = model.named_params()  # arrays updated in place by the optimizer

    def __call__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        before_update: Callable[[float, dict[str, np.ndarray]], None] | None = None,
    ) -> float:
        """Train on one batch; its loss as Keras reports it (data loss + penalties).
        before_update(loss, grads) runs before the optimizer applies them (it may raise)."""
        logits = self.model.forward(x, training=True)
        loss, dlogits = self.loss_fn(logits, y)
        self.model.backward(dlogits)
        grads = self.model.named_grads()
        if before_update is not None:
            before_update(loss, grads)
        self.optimizer.step(self.params, grads)
        loss += self.model.regularization_loss()
        self.metrics.update(logits, y)
        return loss
