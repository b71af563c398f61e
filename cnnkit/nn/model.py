"""Model: the layers of a spec, a stack or a graph, with forward, backward, parameters and
summary rows.

The layers are kept in the spec's order, which is a topological order of the graph (a layer's
inputs come before it, cnnkit.nn.build); each layer's `sources` are the positions of the
layers it reads (-1: the model's input). A Sequential spec is the graph whose every layer
reads the one before it. Checkpoint keys are layers.{position}.{weight}, whatever the names.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnkit.errors import CheckpointError
from cnnkit.kernels.nojit import lazy
from cnnkit.nn.build import build_layers, reader_counts, unused_layers
from cnnkit.nn.inference import InferencePlan
from cnnkit.nn.layers.base import ActivationMixin, Layer, Weight, format_shape
from cnnkit.nn.layers.core import Dropout
from cnnkit.nn.regularizers import penalty, penalty_grad
from cnnkit.seeding import random_stream

(add_into,) = lazy("cnnkit.kernels.activations", "add_into")  # numba on the first call


@dataclass
class SummaryRow:
    name: str  # the spec's name:, else Keras-style: conv2d, conv2d_1, dense, dense_1 ...
    type: str
    output_shape: str
    params: int  # all of the layer's parameters, as Keras' "Param #": trainable + non-trainable
    macs: int
    non_trainable: int = 0  # of params: BatchNormalization's moving statistics
    connected_to: tuple[str, ...] = ()  # the names of its inputs ("input_layer": the model's)


@dataclass
class LayerTimings:
    """Seconds spent in each layer's forward and backward (summed over calls), by position."""

    forward: list[float]
    backward: list[float]

    @classmethod
    def of(cls, model: Model) -> LayerTimings:
        return cls([0.0] * len(model.layers), [0.0] * len(model.layers))


INPUT_NAME = "input_layer"  # Keras' name of the model's input in a functional summary


class Model:
    def __init__(self, layers: list[Layer], input_shape: tuple[int, ...]):
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.skipped = {layer.index for layer in unused_layers(layers)}
        self.readers = reader_counts(layers)
        self._plan: InferencePlan | None = None  # the fused inference path (cnnkit.nn.inference)
        self._grad_sums: dict[int, np.ndarray] = {}  # see _gradient_sum

    @property
    def is_graph(self) -> bool:
        """Whether any layer reads another than the one before it (or several)."""
        return any(layer.sources != (layer.index - 1,) for layer in self.layers)

    @classmethod
    def from_configs(
        cls, entries: Sequence[Mapping[str, Any]], input_shape: Sequence[int]
    ) -> Model:
        """Fresh layer objects from resolved `- Name: {config}` entries (shapes inferred,
        nothing allocated)."""
        layers = build_layers(list(entries), tuple(input_shape))
        model = cls(layers, tuple(input_shape))
        for layer in layers:  # nobody needs dLoss/dImage: Conv2D skips a whole convolution
            if all(s < 0 for s in layer.sources):
                layer.needs_input_grad = False
        # check_head guaranteed the last layer ends in an activation its loss accepts (or is
        # linear with from_logits); the layer hands logits on and the loss applies the head
        # (Loss.class_probabilities), fused with itself for numerical stability.
        last = layers[-1]
        if isinstance(last, ActivationMixin) and last.fuses_head():
            last.returns_logits = True
        return model

    # -- parameters ----------------------------------------------------------------------
    def build(self, seed: int, dtype=np.float32) -> Model:
        """Allocate weights from `seed`; dropout masks draw from their own seeded stream."""
        init_rng = random_stream(seed, "init")
        self.dropout_rng = random_stream(seed, "dropout")
        for layer in self.layers:
            layer.create_weights(init_rng, np.dtype(dtype))
            if isinstance(layer, Dropout):
                layer.rng = self.dropout_rng
        return self

    def named_params(self) -> dict[str, np.ndarray]:
        """Trainable arrays (what the optimizer updates), keys layers.{i}.{param}."""
        return {
            f"layers.{layer.index}.{name}": array
            for layer in self.layers
            for name, array in layer.params.items()
        }

    def named_grads(self) -> dict[str, np.ndarray]:
        return {
            f"layers.{layer.index}.{name}": array
            for layer in self.layers
            for name, array in layer.grads.items()
        }

    def named_state(self) -> dict[str, np.ndarray]:
        """Non-trainable arrays (moving_mean, moving_variance), keys layers.{i}.{name}."""
        return {
            f"layers.{layer.index}.{name}": array
            for layer in self.layers
            for name, array in layer.state.items()
        }

    def named_weights(self) -> dict[str, np.ndarray]:
        """Trainable parameters and state: everything a checkpoint must hold. The arrays are
        the layers' own (updated in place by the optimizer and by BatchNormalization)."""
        return {**self.named_params(), **self.named_state()}

    def regularization_loss(self) -> float:
        """Sum of the penalties of every weight declared with a regularizer (Keras' formulas,
        cnnkit.nn.regularizers): the training loop adds it to the data loss; backward adds
        their gradients."""
        return float(
            sum(
                sum(penalty(w.regularizer, layer.params[w.name]) for w in _regularized(layer))
                for layer in self.layers
            )
        )

    def load_params(self, arrays: dict[str, np.ndarray], source: str) -> None:
        """Copy checkpoint arrays (named_weights: parameters and state) into the layers,
        checking every key and shape."""
        expected = {
            f"layers.{layer.index}.{name}": (layer, store, name, shape)
            for layer in self.layers
            for store, shapes in (
                (layer.params, layer.param_shapes()),
                (layer.state, layer.state_shapes()),
            )
            for name, shape in shapes.items()
        }
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        if missing or extra:
            raise CheckpointError(
                "checkpoint does not fit the model: "
                + (f"missing {', '.join(missing)}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unexpected {', '.join(extra)}" if extra else ""),
                where=source,
            )
        for key, (layer, store, name, shape) in expected.items():
            array = arrays[key]
            if tuple(array.shape) != tuple(shape):
                raise CheckpointError(
                    f"{key} ({layer.keras_name}, layer {layer.index}) has shape "
                    f"{tuple(array.shape)} in the checkpoint, the model needs {tuple(shape)}",
                    where=source,
                )
            dtype = store[name].dtype if name in store else np.float32
            store[name] = np.array(array, dtype=dtype)
        self.invalidate_plan()

    # -- computation ---------------------------------------------------------------------
    def forward(
        self,
        x: np.ndarray,
        training: bool = False,
        timings: LayerTimings | None = None,
        fused: bool = True,
    ) -> np.ndarray:
        """Outputs of the last layer before its fused head activation (logits). timings:
        add each layer's seconds to it (cnnkit bench's per-layer table).

        Inference (training False) runs the fused inference plan (cnnkit.nn.inference:
        BatchNormalization folded, relu and pooling fused, buffers reused from batch to
        batch), built once per weights version; `fused=False` or timings run it layer by
        layer. A training pass may change the weights (the optimizer step after it, the
        moving statistics in it): it drops the plan, as backward and loading weights do."""
        if not training and timings is None and fused:
            return self.inference_plan().forward(x)
        if training:
            self._plan = None
        return self._forward_layers(x, training, timings)

    def inference_plan(self) -> InferencePlan:
        """The plan for the current weights: rebuilt after a training pass or load_params, or
        when a weight array was replaced (an in-place edit from outside, other than the
        optimizer's, must call invalidate_plan)."""
        key = tuple(
            id(a) for layer in self.layers for a in (*layer.params.values(), *layer.state.values())
        )
        if self._plan is None or self._plan.key != key:
            self._plan = InferencePlan(self.layers, key)
        return self._plan

    def invalidate_plan(self) -> None:
        """Forget the inference plan: the next inference builds it from the weights as they are."""
        self._plan = None

    def _forward_layers(
        self, x: np.ndarray, training: bool, timings: LayerTimings | None
    ) -> np.ndarray:
        """The layer-by-layer path. In inference nothing will call backward: each layer lets
        go of what it kept for it as soon as it has run, and an output is let go after its
        last reader, which keeps evaluate's peak memory to the outputs still waiting for a
        reader."""
        outputs: list[np.ndarray | None] = [None] * len(self.layers)
        waiting = list(self.readers)
        for layer in self.layers:
            if layer.index in self.skipped:
                continue
            inputs = [x if s < 0 else outputs[s] for s in layer.sources]
            start = time.perf_counter() if timings is not None else 0.0
            outputs[layer.index] = layer.forward(inputs if layer.merges else inputs[0], training)
            if timings is not None:
                timings.forward[layer.index] += time.perf_counter() - start
            if not training:
                layer.release_cache()
                for s in layer.sources:
                    if s >= 0:
                        waiting[s] -= 1
                        if waiting[s] == 0:
                            outputs[s] = None
        return outputs[-1]

    def backward(
        self, dlogits: np.ndarray, timings: LayerTimings | None = None, regularize: bool = True
    ) -> None:
        """Every trainable weight's gradient of the loss plus regularization_loss: the layers'
        backward give the data part (a layer read by several gets the sum of their
        gradients), the declared regularizers' gradients are added here (regularize=False:
        the data part only, as data-parallel ranks sum it before adding the penalties'). An
        optimizer step follows: the inference plan is dropped (as by a training forward)."""
        self._plan = None
        grads: list[np.ndarray | None] = [None] * len(self.layers)
        grads[-1] = dlogits
        for layer in reversed(self.layers):
            if layer.index in self.skipped:  # no effect on the loss: zero gradients, made once
                if layer.grads.keys() != layer.params.keys():
                    layer.grads = {k: np.zeros_like(v) for k, v in layer.params.items()}
                continue
            start = time.perf_counter() if timings is not None else 0.0
            dx = layer.backward(grads[layer.index])
            grads[layer.index] = None
            for s, g in zip(layer.sources, dx if layer.merges else [dx], strict=True):
                if s >= 0 and g is not None:
                    grads[s] = g if grads[s] is None else self._gradient_sum(s, grads[s], g)
            if timings is not None:
                timings.backward[layer.index] += time.perf_counter() - start
        if not regularize:
            return
        for layer in self.layers:
            for weight in _regularized(layer):
                extra = penalty_grad(weight.regularizer, layer.params[weight.name])
                if extra is not None:
                    layer.grads[weight.name] = layer.grads[weight.name] + extra

    def _gradient_sum(self, s: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a + b, the gradient of layer s's output read by several layers: not in a or b (a
        layer's workspace, or reaching several layers) but in an array the model keeps per
        layer from step to step, over the threads (a fresh one page-faulted each step: 4-8 MB
        a residual block on resnet20); the same sums as numpy's."""
        if not (
            a.shape == b.shape
            and a.dtype == b.dtype
            and a.dtype.kind == "f"
            and a.flags.c_contiguous
            and b.flags.c_contiguous
        ):
            return a + b
        out = self._grad_sums.get(s)
        if (
            out is None
            or out.shape[1:] != a.shape[1:]
            or out.shape[0] < a.shape[0]
            or out.dtype != a.dtype
        ):
            out = self._grad_sums[s] = np.empty_like(a)
        out = out[: a.shape[0]]  # an epoch's smaller last batch: the first rows, as workspaces
        add_into(a.reshape(-1), b.reshape(-1), out.reshape(-1))
        return out

    def regularization_grads(self) -> dict[str, np.ndarray]:
        """The declared regularizers' gradients, keyed as named_grads (what backward adds)."""
        grads = {}
        for layer in self.layers:
            for weight in _regularized(layer):
                extra = penalty_grad(weight.regularizer, layer.params[weight.name])
                if extra is not None:
                    grads[f"layers.{layer.index}.{weight.name}"] = extra
        return grads

    # -- description ---------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        """Each layer's name: the spec's, else Keras' (type_name, then type_name_1, ... over
        the unnamed layers of that type, skipping the names the spec took)."""
        taken = {layer.name for layer in self.layers if layer.name}
        counts: dict[str, int] = {}
        names = []
        for layer in self.layers:
            name = layer.name
            while name is None or (layer.name is None and name in taken):
                n = counts.get(layer.type_name, 0)
                counts[layer.type_name] = n + 1
                name = layer.type_name if n == 0 else f"{layer.type_name}_{n}"
            names.append(name)
        return names

    def layer_records(self) -> list[dict[str, Any]]:
        """Each checkpoint key prefix with its layer's name, type and inputs (for sidecars:
        the keys go by position in the spec's list, the names are what a person reads)."""
        names = self.layer_names()
        return [
            {
                "key": f"layers.{layer.index}",
                "name": names[layer.index],
                "type": layer.keras_name,
                "inputs": [INPUT_NAME if s < 0 else names[s] for s in layer.sources],
            }
            for layer in self.layers
        ]

    def summary_rows(self) -> list[SummaryRow]:
        names = self.layer_names()
        rows = []
        for layer, name in zip(self.layers, names, strict=True):
            trainable = sum(int(np.prod(s)) for s in layer.param_shapes().values())
            non_trainable = sum(int(np.prod(s)) for s in layer.state_shapes().values())
            rows.append(
                SummaryRow(
                    name=name,
                    type=layer.keras_name,
                    output_shape=format_shape(layer.output_shape),
                    params=trainable + non_trainable,
                    macs=layer.macs(),
                    non_trainable=non_trainable,
                    connected_to=tuple(INPUT_NAME if s < 0 else names[s] for s in layer.sources),
                )
            )
        return rows


def _regularized(layer: Layer) -> list[Weight]:
    return [w for w in layer.weights.values() if w.trainable and w.regularizer is not None]
