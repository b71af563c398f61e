"""Layers from the spec's `model.layers` list: each `- Name: {options}` entry checked against
its layer's options, instantiated, and every output shape inferred (no arrays allocated)."""

from __future__ import annotations

from typing import Any

from cnnkit.errors import SpecError
from cnnkit.nn.layers.base import Layer
from cnnkit.nn.registry import canonical_layer, layer_names
from cnnkit.options import ErrorList, did_you_mean, join_path, resolve_options


def build_layers(raw_layers: Any, input_shape: tuple[int, ...] | None) -> list[Layer]:
    """Instantiate layers from the spec list and infer every shape (no arrays yet).

    Every layer's options are checked even after an earlier layer failed (its errors are
    collected); shapes are inferred up to the first layer whose shape fails. Without an
    input_shape (a broken data section), only the options are checked."""
    if not isinstance(raw_layers, list) or not raw_layers:
        raise SpecError(
            "expected a non-empty list of layers",
            where="model.layers",
            hint="Example:\n  layers:\n    - Conv2D: {filters: 32, kernel_size: 3}\n"
            "    - Flatten: {}\n    - Dense: {units: 10, activation: softmax}",
        )
    errors = ErrorList()
    layers: list[Layer] = []
    shape = tuple(input_shape) if input_shape is not None else None
    for i, entry in enumerate(raw_layers):
        layer = None
        with errors.collect():
            layer, misspelt = _layer(entry, i)
            if misspelt is not None:
                errors.add(misspelt)
        if layer is None:
            shape = None  # the shapes after an unknown layer are unknown
            continue
        layers.append(layer)
        if shape is not None:
            try:
                shape = layer.infer_shape(shape)
            except SpecError as error:
                errors.add(error)
                shape = None
    errors.raise_if_any()
    return layers


def _layer(entry: Any, i: int) -> tuple[Layer, SpecError | None]:
    """The layer of one `- Name: {options}` entry, and the error of its misspelt options."""
    path = f"model.layers[{i}]"
    if not isinstance(entry, dict) or len(entry) != 1:
        raise SpecError(
            f"expected one layer written as `- LayerName: {{options}}`, found {entry!r}",
            where=path,
            hint=f"Valid layers: {', '.join(layer_names())}.",
        )
    ((type_name, options),) = entry.items()
    cls = canonical_layer(str(type_name))
    if cls is None:
        raise SpecError(
            f"unknown layer '{type_name}'",
            where=path,
            hint=f"{did_you_mean(type_name, layer_names())}"
            f"Valid layers: {', '.join(layer_names())}.",
        )
    if cls.keras_name == "Activation" and isinstance(options, str):
        options = {"activation": options}  # `- Activation: relu` shorthand
    layer_path = join_path(path, str(type_name))
    what = f"{cls.keras_name} option"
    try:
        resolved = resolve_options(options, cls.OPTIONS, layer_path, what=what)
    except SpecError as error:
        # a misspelt option alone: build the layer without it so the shapes after it are
        # still inferred and checked; the error is reported all the same
        known = {k: v for k, v in options.items() if k in cls.OPTIONS}
        if not isinstance(options, dict) or known == options:
            raise
        try:
            resolved = resolve_options(known, cls.OPTIONS, layer_path, what=what)
        except SpecError:
            raise error from None
        return cls(resolved, i, where=layer_path), error
    return cls(resolved, i, where=layer_path), None
