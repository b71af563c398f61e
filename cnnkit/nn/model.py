"""Sequential: the layer stack of a spec, with forward, backward, parameters and summary rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnkit.errors import CheckpointError
from cnnkit.nn.build import build_layers
from cnnkit.nn.layers.base import ActivationMixin, Layer, Weight, format_shape
from cnnkit.nn.layers.core import Dropout
from cnnkit.nn.regularizers import penalty, penalty_grad
from cnnkit.seeding import random_stream


@dataclass
class SummaryRow:
    name: str  # Keras-style instance name: conv2d, conv2d_1, dense, dense_1 ...
    type: str
    output_shape: str
    params: int  # all of the layer's parameters, as Keras' "Param #": trainable + non-trainable
    macs: int
    non_trainable: int = 0  # of params: BatchNormalization's moving statistics


class Sequential:
    def __init__(self, layers: list[Layer], input_shape: tuple[int, ...]):
        self.layers = layers
        self.input_shape = tuple(input_shape)

    @classmethod
    def from_configs(
        cls, entries: Sequence[Mapping[str, Any]], input_shape: Sequence[int]
    ) -> Sequential:
        """Fresh layer objects from resolved `- Name: {config}` entries (shapes inferred,
        nothing allocated)."""
        layers = build_layers(list(entries), tuple(input_shape))
        model = cls(layers, tuple(input_shape))
        layers[0].needs_input_grad = False
        # check_head guaranteed the last layer ends in an activation its loss accepts (or is
        # linear with from_logits); the layer hands logits on and the loss applies the head
        # (Loss.class_probabilities), fused with itself for numerical stability.
        last = layers[-1]
        if isinstance(last, ActivationMixin) and last.fuses_head():
            last.returns_logits = True
        return model

    # -- parameters ----------------------------------------------------------------------
    def build(self, seed: int, dtype=np.float32) -> Sequential:
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

    # -- computation ---------------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Outputs of the last layer before its fused head activation (logits).

        In inference nothing will call backward: each layer lets go of what it kept for it as
        soon as it has run, which keeps evaluate's peak memory to about one layer's arrays."""
        for layer in self.layers:
            x = layer.forward(x, training)
            if not training:
                layer.release_cache()
        return x

    def backward(self, dlogits: np.ndarray) -> None:
        """Every trainable weight's gradient of the loss plus regularization_loss: the layers'
        backward give the data part, the declared regularizers' gradients are added here."""
        grad = dlogits
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        for layer in self.layers:
            for weight in _regularized(layer):
                extra = penalty_grad(weight.regularizer, layer.params[weight.name])
                if extra is not None:
                    layer.grads[weight.name] = layer.grads[weight.name] + extra

    # -- description ---------------------------------------------------------------------
    def summary_rows(self) -> list[SummaryRow]:
        counts: dict[str, int] = {}
        rows = []
        for layer in self.layers:
            n = counts.get(layer.type_name, 0)
            counts[layer.type_name] = n + 1
            trainable = sum(int(np.prod(s)) for s in layer.param_shapes().values())
            non_trainable = sum(int(np.prod(s)) for s in layer.state_shapes().values())
            rows.append(
                SummaryRow(
                    name=layer.type_name if n == 0 else f"{layer.type_name}_{n}",
                    type=layer.keras_name,
                    output_shape=format_shape(layer.output_shape),
                    params=trainable + non_trainable,
                    macs=layer.macs(),
                    non_trainable=non_trainable,
                )
            )
        return rows


def _regularized(layer: Layer) -> list[Weight]:
    return [w for w in layer.weights.values() if w.trainable and w.regularizer is not None]
