"""Memory plan of a model for a batch, from the spec alone (no arrays are allocated).

What the arrays of a forward or training step need, layer by layer, as each layer declares
them (Layer.saved_arrays; tests/nn/layers/test_base.py and tests/cli/test_check.py check the
declarations against the arrays a real step leaves on the layers):

- forward: the arrays a layer's forward pass allocates and keeps until the next batch (its
  output, and e.g. MaxPooling2D's argmax, BatchNormalization's normalised input);
- training: the same in training mode (plus Dropout's masks), which backward reads, plus the
  gradients backward keeps from step to step (Layer.kept_gradients: input gradients, relu's
  gradient; and the summed gradient of an output several layers read), plus the layer's
  weight gradients and the optimizer's state for its weights.

Totals add the input batch, the weights, and the largest transient of the backward pass (a
layer's output gradient, its activation's gradient and its input gradient, alive together).
Python, numpy and Numba overheads and the dataset in memory come on top. Weights and
activations are float32 (4 bytes); a layer may declare other arrays (MaxPooling2D's int64
argmax).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.nn.build import reader_counts
from cnnkit.nn.layers.base import Layer

FLOAT = 4  # float32 weights, gradients and optimizer state


@dataclass
class LayerMemory:
    forward: int  # bytes kept by forward(training=False) for the batch
    training: int  # bytes kept by forward(training=True) + gradients + optimizer state


@dataclass
class MemoryPlan:
    batch_size: int
    layers: list[LayerMemory]
    input: int  # the batch itself
    weights: int  # parameters and non-trainable state
    gradients: int
    optimizer_state: int
    backward_peak: int  # largest transient of the backward pass
    forward_total: int  # input + weights + every layer's forward arrays
    training_total: int  # everything a training step holds at its peak

    @property
    def activations_training(self) -> int:
        return self.training_total - self.weights - self.gradients - self.optimizer_state


def _numel(shape) -> int:
    return math.prod(shape) if shape else 0


def kept_bytes(layer: Layer, training: bool, is_last: bool) -> int:
    """Bytes per image that `layer` keeps after its forward, as it declares them."""
    return sum(
        _numel(a.shape) * np.dtype(a.dtype).itemsize
        for a in layer.saved_arrays(training, last=is_last)
    )


def gradient_bytes(layer: Layer, is_last: bool, readers: int) -> int:
    """Bytes per image of the gradients a training step keeps for `layer` from step to step:
    what its backward writes into workspaces (Layer.kept_gradients), and the sum of its
    output's gradients where several layers read it (Model._gradient_sum)."""
    kept = sum(_numel(a.shape) * np.dtype(a.dtype).itemsize for a in layer.kept_gradients(is_last))
    return kept + (_numel(layer.output_shape) * FLOAT if readers > 1 else 0)


def optimizer_slots(name: str, options: Mapping[str, Any]) -> int:
    """Arrays of the optimizer's state per trainable weight (Adam: m and v)."""
    if name == "sgd":
        return 1 if options.get("momentum") else 0
    if name == "rmsprop":
        return 1 + bool(options.get("centered")) + bool(options.get("momentum"))
    if name in ("adam", "adamw"):
        return 2 + bool(options.get("amsgrad"))
    if name in ("adadelta", "nadam"):
        return 2
    return 1  # adagrad and anything new: one accumulator


def plan(spec, batch_size: int | None = None) -> MemoryPlan:
    """The memory plan of the spec's model for `batch_size` images (default the spec's)."""
    batch = batch_size or spec.train.batch_size
    slots = optimizer_slots(spec.optimizer.name, spec.optimizer.options)
    layers = spec.model.layers
    rows: list[LayerMemory] = []
    weights = gradients = state = 0
    readers = reader_counts(layers)
    for i, layer in enumerate(layers):
        is_last = i == len(layers) - 1
        if all(s < 0 for s in layer.sources):  # as Model.from_configs: no dLoss/dImage
            layer.needs_input_grad = False
        trainable = sum(_numel(s) for s in layer.param_shapes().values())
        fixed = sum(_numel(s) for s in layer.state_shapes().values())
        weights += (trainable + fixed) * FLOAT
        gradients += trainable * FLOAT
        state += trainable * slots * FLOAT
        rows.append(
            LayerMemory(
                forward=batch * kept_bytes(layer, training=False, is_last=is_last),
                training=batch * kept_bytes(layer, training=True, is_last=is_last)
                + batch * gradient_bytes(layer, is_last, readers[i])
                + trainable * (1 + slots) * FLOAT,
            )
        )
    image = batch * _numel(spec.model.input_shape) * FLOAT
    # the loss keeps the batch's probabilities and hands back their gradient
    head = 2 * batch * _numel(layers[-1].output_shape) * FLOAT
    backward_peak = batch * _backward_peak(layers)
    forward_total = image + weights + _inference_peak(layers, rows, batch)
    training_total = image + weights + sum(r.training for r in rows) + head + backward_peak
    return MemoryPlan(
        batch_size=batch,
        layers=rows,
        input=image,
        weights=weights,
        gradients=gradients,
        optimizer_state=state,
        backward_peak=backward_peak,
        forward_total=forward_total,
        training_total=training_total,
    )


def _inference_peak(layers, rows: list[LayerMemory], batch: int) -> int:
    """The most bytes of activations alive at once in inference (Model.forward): the outputs
    still waiting for a reader, plus what the running layer allocates. Each layer lets go of
    what it kept for backward once it has run; an output lives until its last reader ran."""
    waiting = reader_counts(layers)
    alive: dict[int, int] = {}  # layer -> bytes of its output still held
    peak = 0
    for i, layer in enumerate(layers):
        peak = max(peak, sum(alive.values()) + rows[i].forward)
        output = min(rows[i].forward, batch * _numel(layer.output_shape) * FLOAT)
        if waiting[i] or i == len(layers) - 1:
            alive[i] = output  # (a view of its input, as Flatten's, is 0)
        for s in layer.sources:
            if s >= 0:
                waiting[s] -= 1
                if waiting[s] == 0:
                    alive.pop(s, None)
    return peak


def _backward_peak(layers) -> int:
    """Per image, the largest transient of the backward pass (Model.backward): the running
    layer's output gradient, its activation's gradient and its inputs' gradients, plus the
    gradients already summed for outputs whose layers have not run backward yet."""
    pending: dict[int, int] = {len(layers) - 1: _numel(layers[-1].output_shape)}
    peak = 0
    for layer in reversed(layers):
        own = pending.pop(layer.index, 0)
        if not own:
            continue  # nothing reads it: skipped
        inputs = sum(_numel(shape) for shape in layer.input_shapes)
        peak = max(peak, (sum(pending.values()) + 2 * own + inputs) * FLOAT)
        for s in layer.sources:
            if s >= 0:
                pending[s] = _numel(layers[s].output_shape)
    return peak


def available_memory(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Bytes of memory available to a new process: MemAvailable from /proc/meminfo (Linux),
    else free physical pages (sysconf); None when neither can be read."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class MemoryWarning:
    """A step that needs more than `share` of the available memory, and what would fit."""

    what: str  # "training" (a step at train.batch_size) or "evaluation" (eval_batch_size)
    option: str  # the spec key to change: train.batch_size or train.eval_batch_size
    batch_size: int
    planned: int  # bytes
    available: int  # bytes
    share: float
    fits: int  # the largest batch size that fits (0: not even 1)


def check_memory(spec, available: int | None, share: float = 0.8) -> list[MemoryWarning]:
    """Warnings when a training step (batch_size) or an evaluation pass (eval_batch_size)
    needs more than `share` of the available memory, with the largest batch size that fits."""
    if available is None:
        return []
    budget = int(available * share)
    warnings: list[MemoryWarning] = []
    for what, option, batch, total in (
        ("training", "train.batch_size", spec.train.batch_size, "training_total"),
        ("evaluation", "train.eval_batch_size", spec.train.eval_batch_size, "forward_total"),
    ):
        planned = getattr(plan(spec, batch), total)
        if planned > budget:
            one, two = (getattr(plan(spec, b), total) for b in (1, 2))
            per_image, fixed = two - one, 2 * one - two  # affine in the batch size
            fits = max(0, (budget - fixed) // per_image) if per_image > 0 else 0
            warnings.append(
                MemoryWarning(what, option, batch, planned, available, share, min(fits, batch))
            )
    return warnings
