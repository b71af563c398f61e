"""Layers from the spec's `model.layers` list: each `- Name: {options}` entry checked against
its layer's options, instantiated, wired to the layers it takes (`name:` and `inputs:`, the
graph), and every output shape inferred (no arrays allocated)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cnnkit.errors import SpecError
from cnnkit.nn.layers.base import GRAPH_OPTIONS, MODEL_INPUT, Layer
from cnnkit.nn.registry import canonical_layer, layer_names
from cnnkit.options import ErrorList, did_you_mean, join_path, resolve_options


def build_layers(
    raw_layers: Any,
    input_shape: tuple[int, ...] | None,
    paths: Sequence[str] | None = None,
    contexts: Sequence[str | None] | None = None,
) -> list[Layer]:
    """Instantiate layers from the spec list, wire the graph and infer every shape (no
    arrays yet).

    paths: each entry's YAML path (default model.layers[i]; a layer from a block has the
    path of its definition); contexts: a line added to the hint of each entry's errors
    (which use of a block it came from). Every layer's options are checked even after an
    earlier layer failed (its errors are collected); shapes are inferred except those that
    depend on a layer whose shape failed. Without an input_shape (a broken data section),
    only the options and the wiring are checked."""
    if not isinstance(raw_layers, list) or not raw_layers:
        raise SpecError(
            "expected a non-empty list of layers",
            where="model.layers",
            hint="Example:\n  layers:\n    - Conv2D: {filters: 32, kernel_size: 3}\n"
            "    - Flatten: {}\n    - Dense: {units: 10, activation: softmax}",
        )
    paths = (
        list(paths) if paths is not None else [f"model.layers[{i}]" for i in range(len(raw_layers))]
    )
    contexts = list(contexts) if contexts is not None else [None] * len(raw_layers)
    errors = ErrorList()
    layers: list[Layer | None] = []
    for i, entry in enumerate(raw_layers):
        layer = None
        with errors.collect(), _in_context(contexts[i]):
            layer, misspelt = _layer(entry, i, paths[i])
            if misspelt is not None:
                errors.add(misspelt)
        layers.append(layer)
    miswired = _wire(layers, list(raw_layers), paths, errors, contexts)
    if input_shape is not None:
        wired = [None if i in miswired else layer for i, layer in enumerate(layers)]
        _infer_shapes(wired, tuple(input_shape), errors, contexts)
    errors.raise_if_any()
    return [layer for layer in layers if layer is not None]


class _in_context:
    """Adds a block's use to the hint of an error raised inside it."""

    def __init__(self, context: str | None):
        self.context = context

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, SpecError):
            add_context(error, self.context)
        return False


def add_context(error: SpecError, context: str | None) -> None:
    if context and context not in (error.hint or ""):
        error.hint = f"{error.hint}\n{context}" if error.hint else context


def _wire(
    layers: list[Layer | None], entries: list, paths: list[str], errors: ErrorList, contexts: list
) -> set[int]:
    """Each layer's sources (positions of the layers it reads, -1 the model input) from its
    `inputs:` names: refused when a name is unknown, defined later, or given twice. Returns
    the positions of the layers that could not be wired (their shapes are not inferred),
    also those reading a layer whose own options failed (reported already: not again here)."""
    miswired: set[int] = set()
    names = _Names(paths, {i for i, layer in enumerate(layers) if layer is None})
    for i, entry in enumerate(entries):
        name = layers[i].name if layers[i] is not None else _entry_name(entry)
        if name is not None:
            names.first.setdefault(name, i)
    for i, layer in enumerate(layers):
        if layer is None:
            continue
        found = len(errors.found)
        with errors.collect(), _in_context(contexts[i]):
            if layer.name is not None and names.first[layer.name] != i:
                first = names.first[layer.name]
                raise SpecError(
                    f"duplicate layer name '{layer.name}' (first at {paths[first]})",
                    where=join_path(layer.where, "name"),
                    hint="Every name: must be unique in the model.",
                )
            if layer.inputs is not None:
                sources = [_source(layer, k, names, i) for k in range(len(layer.inputs))]
                layer.sources = tuple(s for s in sources if s is not None)
                if None in sources:
                    miswired.add(i)
            _check_arity(layer)
        if len(errors.found) > found:
            miswired.add(i)
    return miswired


def _entry_name(entry: Any) -> str | None:
    """The name: of a `- Name: {options}` entry whose layer could not be made."""
    options = next(iter(entry.values())) if isinstance(entry, dict) and len(entry) == 1 else None
    name = options.get("name") if isinstance(options, dict) else None
    return name if isinstance(name, str) else None


@dataclass
class _Names:
    """The names of a layer list, for wiring: each name's first position (a failed layer's
    too), the entries' YAML paths and the positions of the layers that failed."""

    paths: list[str]
    failed: set[int]
    first: dict[str, int] = field(default_factory=dict)


def _source(layer: Layer, k: int, names: _Names, i: int) -> int | None:
    """The position of the layer that inputs[k] names; None: a layer that failed itself."""
    name = layer.inputs[k]
    where = join_path(join_path(layer.where, "inputs"), k)
    if name == MODEL_INPUT:
        return -1
    at = names.first.get(name)
    if at is not None and at < i:
        return None if at in names.failed else at
    if at == i:
        raise SpecError(
            f"layer '{name}' cannot take its own output as input",
            where=where,
            hint="inputs: names earlier layers (or `input`, the model's input).",
        )
    if at is not None:
        raise SpecError(
            f"'{name}' is defined later ({names.paths[at]}): a layer's inputs "
            "must come before it in the list",
            where=where,
            hint="Move this layer after it, or take another input.",
        )
    known = [*(n for n, at in names.first.items() if at < i), MODEL_INPUT]
    raise SpecError(
        f"unknown layer name '{name}' in inputs",
        where=where,
        hint=f"{did_you_mean(name, known)}Names defined before this layer: {', '.join(known)}. "
        "A layer is referred to by the name: it is given (not by the names `cnnkit summary` "
        "makes up for unnamed layers, such as conv2d_1).",
    )


def _check_arity(layer: Layer) -> None:
    if not layer.merges and layer.inputs is not None and len(layer.inputs) != 1:
        raise SpecError(
            f"{layer.keras_name} takes one input, but inputs names {len(layer.inputs)}",
            where=join_path(layer.where, "inputs"),
            hint="To combine several layers use a merge layer: Add, Concatenate, Multiply, "
            "Average, Maximum, Minimum, Subtract.",
        )
    if layer.merges and layer.inputs is None:
        raise SpecError(
            f"{layer.keras_name} merges several layers: say which with inputs:",
            where=layer.where,
            hint=f"e.g. - {layer.keras_name}: {{inputs: [main, shortcut]}} (layers given "
            "name: main and name: shortcut).",
        )


def _infer_shapes(
    layers: list[Layer | None], input_shape: tuple[int, ...], errors: ErrorList, contexts: list
) -> None:
    shapes: list[tuple[int, ...] | None] = []
    for i, layer in enumerate(layers):
        shape = None
        if layer is not None:
            inputs = [input_shape if s < 0 else shapes[s] for s in layer.sources]
            if all(s is not None for s in inputs):
                with errors.collect(), _in_context(contexts[i]):
                    shape = layer.infer_shape(inputs if layer.merges else inputs[0])
        shapes.append(shape)  # None: unknown after a broken layer, or failed itself


def unused_layers(layers: Sequence[Layer]) -> list[Layer]:
    """Layers the model's output (the last layer's) does not depend on: no layer takes their
    output, or only such layers do. They do not affect the model, so the model skips them
    and their weights never train."""
    needed = {len(layers) - 1}
    for i in range(len(layers) - 1, -1, -1):  # spec order is topological: readers come later
        if i in needed:
            needed.update(s for s in layers[i].sources if s >= 0)
    return [layer for i, layer in enumerate(layers) if i not in needed]


def reader_counts(layers: Sequence[Layer]) -> list[int]:
    """How many layers read each layer's output, the layers the model skips
    (unused_layers) not counted: inference lets an output go after its last reader, and the
    memory plan counts it alive until then."""
    skipped = {layer.index for layer in unused_layers(layers)}
    readers = [0] * len(layers)
    for layer in layers:
        if layer.index not in skipped:
            for s in layer.sources:
                if s >= 0:
                    readers[s] += 1
    return readers


def _layer(entry: Any, i: int, path: str) -> tuple[Layer, SpecError | None]:
    """The layer of one `- Name: {options}` entry, and the error of its misspelt options."""
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
    graph = _graph_options(options, layer_path)
    if isinstance(options, dict):
        options = {k: v for k, v in options.items() if k not in GRAPH_OPTIONS}
    layer, misspelt = _resolved_layer(cls, options, i, layer_path)
    layer.name, layer.inputs = graph["name"], graph["inputs"]
    return layer, misspelt


def _graph_options(options: Any, path: str) -> dict[str, Any]:
    given = (
        {k: v for k, v in options.items() if k in GRAPH_OPTIONS}
        if isinstance(options, dict)
        else {}
    )
    return resolve_options(given, GRAPH_OPTIONS, path)


def _resolved_layer(cls, options: Any, i: int, layer_path: str) -> tuple[Layer, SpecError | None]:
    what = f"{cls.keras_name} option"
    try:
        resolved = resolve_options(options, {**cls.OPTIONS}, layer_path, what=what)
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
