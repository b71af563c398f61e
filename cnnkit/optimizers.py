"""Optimizers with Keras' update rules and defaults, updating parameters in place.

State (moments, step count) lives in `state` as named arrays so a checkpoint can save it.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from cnnkit.options import Option


class Optimizer:
    name: ClassVar[str] = "optimizer"
    OPTIONS: ClassVar[dict[str, Option]] = {}

    def __init__(self, **options):
        self.options = options
        self.learning_rate = float(options["learning_rate"])
        self.iterations = 0
        self.state: dict[str, np.ndarray] = {}

    def _slot(self, kind: str, key: str, like: np.ndarray) -> np.ndarray:
        slot = self.state.get(f"{kind}.{key}")
        if slot is None:
            slot = self.state[f"{kind}.{key}"] = np.zeros_like(like)
        return slot

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Apply one update to every parameter (keys like 'layers.0.kernel')."""
        self.iterations += 1
        for key, p in params.items():
            self.update(key, p, grads[key])

    def update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Keras SGD: v = momentum*v - lr*g; w += v (nesterov: w += momentum*v - lr*g)."""

    name = "sgd"
    OPTIONS = {
        "learning_rate": Option("float", default=0.01, minimum=0.0, exclusive_min=True),
        "momentum": Option("float", default=0.0, minimum=0.0, maximum=1.0),
        "nesterov": Option("bool", default=False),
    }

    def update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        lr, momentum = p.dtype.type(self.learning_rate), p.dtype.type(self.options["momentum"])
        if momentum == 0:
            p -= lr * g
            return
        v = self._slot("momentum", key, p)
        v *= momentum
        v -= lr * g
        if self.options["nesterov"]:
            p += momentum * v - lr * g
        else:
            p += v


class Adam(Optimizer):
    """Keras Adam: bias correction folded into the step size, epsilon outside the sqrt."""

    name = "adam"
    OPTIONS = {
        "learning_rate": Option("float", default=0.001, minimum=0.0, exclusive_min=True),
        "beta_1": Option("float", default=0.9, minimum=0.0, maximum=1.0, exclusive_max=True),
        "beta_2": Option("float", default=0.999, minimum=0.0, maximum=1.0, exclusive_max=True),
        "epsilon": Option("float", default=1e-7, minimum=0.0),
    }

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.iterations += 1
        t = self.iterations
        b1, b2 = self.options["beta_1"], self.options["beta_2"]
        self._alpha = self.learning_rate * math.sqrt(1 - b2**t) / (1 - b1**t)
        for key, p in params.items():
            self.update(key, p, grads[key])

    def update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        dt = p.dtype.type
        b1, b2 = dt(self.options["beta_1"]), dt(self.options["beta_2"])
        m, v = self._slot("m", key, p), self._slot("v", key, p)
        m += (g - m) * (1 - b1)
        v += (g * g - v) * (1 - b2)
        p -= dt(self._alpha) * m / (np.sqrt(v) + dt(self.options["epsilon"]))
