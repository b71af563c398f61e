"""Blocks: a group of layers written once under `model.blocks`, with parameters, and used in
`model.layers` (or in another block) like a layer. Expanded here, before the layers are built,
into the flat list the model runs; the run's config.yaml holds that list.

    model:
      blocks:
        residual:
          params: {filters: 16, strides: 1}      # defaults; a list [filters] has none
          layers:
            - Conv2D: {filters: $filters, kernel_size: 3, strides: $strides, padding: same}
            - BatchNormalization: {name: main}
            - Add: {inputs: [main, input]}        # input: the block's input
      layers:
        - residual: {filters: 32, name: stage2}   # its layers: stage2_main, ...

`$name` (a whole value, also inside lists) is the use's parameter. Names inside a block are
its own: each use prefixes them with its name (default: the block's name, then name_1, ...
over the unnamed uses in the same list), and the use's name refers to the block's last layer.
A use takes the previous layer (first in a block: that block's input), or the one its
`inputs:` names. Every use's errors are collected, so one pass reports them all.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cnnkit.errors import SpecError
from cnnkit.nn.build import add_context
from cnnkit.nn.layers.base import GRAPH_OPTIONS, MODEL_INPUT, NAME_PATTERN
from cnnkit.nn.registry import canonical_layer, layer_names
from cnnkit.options import (
    ErrorList,
    did_you_mean,
    join_path,
    require_mapping,
    resolve_options,
)


@dataclass(frozen=True)
class Block:
    name: str
    params: dict[str, Any]  # name -> default (REQUIRED: none)
    layers: list[Any]
    path: str  # model.blocks.<name>


REQUIRED = object()


@dataclass
class Expanded:
    """The flat layer list, with each entry's YAML path and, for a block's layers, which use
    it comes from (added to its errors' hints)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    contexts: list[str | None] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # a use's name -> its last layer's
    errors: ErrorList = field(default_factory=ErrorList)


@dataclass
class _Scope:
    """Where entries are being expanded: the top-level list, or one use of a block."""

    in_block: bool = False
    prefix: str = ""  # prepended to the names inside a block use
    params: Mapping[str, Any] = field(default_factory=dict)
    # the block's input: a name, or None for the layer at input_index (named when needed)
    block_input: str | None = None
    input_index: int = -1  # -1: the model's input
    local: set[str] = field(default_factory=set)  # the names the block defines
    context: str | None = None  # which use, for the hints of its errors
    using: tuple[str, ...] = ()  # the blocks being expanded, outermost first
    start: int = 0  # the position of the scope's first entry in the flat list
    uses: dict[str, int] = field(default_factory=dict)  # unnamed uses so far of each block

    def scoped(self, name: str) -> str:
        return f"{self.prefix}_{name}" if self.prefix else name

    def default_name(self, block: str) -> str:
        n = self.uses.get(block, 0)
        self.uses[block] = n + 1
        return block if n == 0 else f"{block}_{n}"


def parse_blocks(raw: Any) -> dict[str, Block]:
    """The blocks of `model.blocks` (a mapping name -> {params, layers}), checked; every
    broken block is reported."""
    if raw is None:
        return {}
    blocks = require_mapping(raw, "model.blocks", "a mapping of block names to {params, layers}")
    errors = ErrorList()
    parsed = {}
    for name, body in blocks.items():
        with errors.collect():
            parsed[str(name)] = _block(str(name), body)
    errors.raise_if_any()
    return parsed


def _block(name: str, body: Any) -> Block:
    path = join_path("model.blocks", name)
    if canonical_layer(name) is not None:
        raise SpecError(
            f"a block cannot be named like the layer {name}",
            where=path,
            hint="Choose another name, e.g. residual, conv_bn.",
        )
    if not NAME_PATTERN.fullmatch(name) or name == MODEL_INPUT:
        raise SpecError(
            f"invalid block name {name!r}"
            + (f": '{MODEL_INPUT}' means the model's input" if name == MODEL_INPUT else ""),
            where=path,
            hint="A block's name prefixes the names of its layers: it starts with a letter or _ "
            "and has only letters, digits and _ (e.g. residual, conv_bn).",
        )
    body = require_mapping(body, path, "a mapping with params: and layers:")
    unknown = [k for k in body if k not in ("params", "layers")]
    if unknown:
        raise SpecError(
            f"unknown key '{unknown[0]}' in block {name}",
            where=join_path(path, unknown[0]),
            hint=f"{did_you_mean(unknown[0], ['params', 'layers'])}A block has params: "
            "(its parameters and defaults) and layers: (its list of layers).",
        )
    layers = body.get("layers")
    if not isinstance(layers, list) or not layers:
        raise SpecError(
            "a block needs a non-empty list of layers",
            where=join_path(path, "layers"),
            hint="e.g. layers: [{Conv2D: {filters: $filters, kernel_size: 3}}]",
        )
    return Block(name, _params(body.get("params"), path), layers, path)


def _params(raw: Any, path: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, list) and all(isinstance(p, str) for p in raw):
        return dict.fromkeys(raw, REQUIRED)
    if isinstance(raw, dict):
        return {str(k): v for k, v in raw.items()}
    raise SpecError(
        f"expected the block's parameters as a mapping of defaults or a list of names, "
        f"found {raw!r}",
        where=join_path(path, "params"),
        hint="e.g. params: {filters: 16, strides: 1}, or params: [filters] (no default).",
    )


def expand_blocks(raw_layers: Any, raw_blocks: Any) -> Expanded:
    """The flat layer list of `model.layers` with every block use replaced by its layers;
    every use's errors are raised together."""
    blocks = parse_blocks(raw_blocks)
    out = Expanded()
    if not isinstance(raw_layers, list) or not blocks:
        if isinstance(raw_layers, list):
            out.entries = list(raw_layers)
            out.paths = [f"model.layers[{i}]" for i in range(len(raw_layers))]
            out.contexts = [None] * len(raw_layers)
        else:
            out.entries = raw_layers  # build_layers reports what is wrong with it
        return out
    _expand_list(raw_layers, "model.layers", blocks, _Scope(), out)
    out.errors.raise_if_any()
    return out


def _single(entry: Any) -> tuple[Any, Any]:
    """(key, value) of a `- Key: value` entry; (None, None) for anything else."""
    if isinstance(entry, dict) and len(entry) == 1:
        return next(iter(entry.items()))
    return None, None


def _expand_list(entries: list, base: str, blocks: dict, scope: _Scope, out: Expanded) -> None:
    for k, entry in enumerate(entries):
        path = f"{base}[{k}]"
        key, value = _single(entry)
        try:
            if isinstance(key, str) and key in blocks:
                _expand_use(blocks[key], value, path, blocks, scope, out)
                continue
            if isinstance(key, str) and canonical_layer(key) is None:
                raise SpecError(
                    f"unknown layer or block '{key}'",
                    where=path,
                    hint=f"{did_you_mean(key, [*layer_names(), *blocks])}Blocks: "
                    f"{', '.join(blocks)}; layers: {', '.join(layer_names())}.",
                )
            out.entries.append(_layer_entry(entry, path, scope, out))
            out.paths.append(path)
            out.contexts.append(scope.context)
        except SpecError as error:  # the next entries are still expanded and checked
            add_context(error, scope.context)
            out.errors.add(error)


def _layer_entry(entry: Any, path: str, scope: _Scope, out: Expanded) -> Any:
    """A layer's entry with the use's parameters put in and its names scoped."""
    type_name, options = _single(entry)
    if type_name is None:
        return entry  # build_layers reports it
    if not isinstance(options, dict):
        return {type_name: _substitute(options, path, scope)}
    options = {
        k: _substitute(v, join_path(join_path(path, type_name), k), scope)
        for k, v in options.items()
    }
    if scope.in_block and isinstance(options.get("name"), str):
        options["name"] = scope.scoped(options["name"])
    if "inputs" in options:
        names = options["inputs"]
        names = [names] if isinstance(names, str) else names
        if isinstance(names, list):
            options["inputs"] = [_reference(n, scope, out) for n in names]
    return {type_name: options}


def _reference(name: Any, scope: _Scope, out: Expanded) -> Any:
    """What an `inputs:` name refers to after expansion."""
    if not isinstance(name, str):
        return name
    if scope.in_block:
        if name == MODEL_INPUT:
            if scope.block_input is None:  # the layer before the use: give it a name
                scope.block_input = _name_of(out, scope.input_index, f"{scope.prefix}_in")
            return scope.block_input
        if name in scope.local:
            name = scope.scoped(name)
    return out.aliases.get(name, name)


def _name_of(out: Expanded, index: int, fallback: str) -> str:
    """The name of the expanded layer at `index`, naming it `fallback` if it has none (-1:
    the model's input)."""
    if index < 0:
        return MODEL_INPUT
    type_name, options = _single(out.entries[index])
    if type_name is None:
        return fallback  # a broken entry: build_layers reports it
    if isinstance(options, str):  # `- Activation: relu`
        options = {"activation": options}
    options = dict(options) if isinstance(options, dict) else {}
    if not isinstance(options.get("name"), str):
        options["name"] = fallback
    out.entries[index] = {type_name: options}
    return options["name"]


def _substitute(value: Any, path: str, scope: _Scope) -> Any:
    """`$param` values replaced by the use's parameters (also inside lists and mappings)."""
    if isinstance(value, str) and value.startswith("$") and scope.in_block:
        name = value[1:]
        if name not in scope.params:
            raise SpecError(
                f"unknown block parameter {value}",
                where=path,
                hint=f"{did_you_mean(name, list(scope.params))}The block's parameters: "
                f"{', '.join('$' + p for p in scope.params) or '(none)'}; declare it in "
                "params:.",
            )
        return copy.deepcopy(scope.params[name])
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", scope) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, join_path(path, str(k)), scope) for k, v in value.items()}
    return value


def _expand_use(
    block: Block, given: Any, path: str, blocks: dict, scope: _Scope, out: Expanded
) -> None:
    """One use of a block: its layers with the use's parameters, names and input."""
    use_path = join_path(path, block.name)
    inner = _use_scope(block, given, use_path, blocks, scope, out)
    start, named_input = len(out.entries), inner.block_input
    _expand_list(block.layers, join_path(block.path, "layers"), blocks, inner, out)
    if named_input is not None and len(out.entries) > start:
        _give_first_input(out, start, named_input)
    # the use's name refers to the block's last layer
    if len(out.entries) > start:
        out.aliases[inner.prefix] = _name_of(out, len(out.entries) - 1, inner.prefix)


def _use_scope(
    block: Block, given: Any, use_path: str, blocks: dict, scope: _Scope, out: Expanded
) -> _Scope:
    """The scope a use's layers are expanded in: its parameters, prefix and input."""
    if block.name in scope.using:
        cycle = " -> ".join((*scope.using[scope.using.index(block.name) :], block.name))
        raise SpecError(
            f"block {block.name} uses itself ({cycle})",
            where=use_path,
            hint="A block may use other blocks, but not itself.",
        )
    given = require_mapping(given, use_path, f"the parameters of block {block.name}")
    given = _substitute(dict(given), use_path, scope)
    graph = resolve_options(
        {k: v for k, v in given.items() if k in GRAPH_OPTIONS}, GRAPH_OPTIONS, use_path
    )
    if graph["inputs"] is not None and len(graph["inputs"]) != 1:
        raise SpecError(
            f"a block takes one input, but inputs names {len(graph['inputs'])}",
            where=join_path(use_path, "inputs"),
            hint="Give one name: inputs: [stem].",
        )
    params = _use_params(block, given, use_path)
    prefix = scope.scoped(graph["name"] or scope.default_name(block.name))
    context = f"(in block {block.name}, used at {use_path} as {prefix})"
    inner = _Scope(
        in_block=True,
        prefix=prefix,
        params=params,
        input_index=len(out.entries) - 1,
        local=_own_names(block.layers, blocks),
        context=f"{context}\n{scope.context}" if scope.context else context,
        using=(*scope.using, block.name),
        start=len(out.entries),
    )
    if graph["inputs"] is not None:
        inner.block_input = _reference(graph["inputs"][0], scope, out)
    elif scope.in_block and len(out.entries) == scope.start:  # first in its block
        inner.block_input, inner.input_index = scope.block_input, scope.input_index
    return inner


def _own_names(entries: list, blocks: dict) -> set[str]:
    """The names a block's entries define (its layers' name:, its uses' names), known before
    its layers are expanded, so that a reference to a later one is scoped too."""
    names: set[str] = set()
    counter = _Scope()
    for entry in entries:
        key, options = _single(entry)
        name = options.get("name") if isinstance(options, dict) else None
        if isinstance(key, str) and key in blocks and not isinstance(name, str):
            name = counter.default_name(key)
        if isinstance(name, str):
            names.add(name)
    return names


def _give_first_input(out: Expanded, start: int, name: str) -> None:
    """A use with inputs: its first layer reads that layer (unless it names its own)."""
    type_name, options = _single(out.entries[start])
    if type_name is not None:
        if isinstance(options, str):
            options = {"activation": options}
        options = dict(options or {})
        options.setdefault("inputs", [name])
        out.entries[start] = {type_name: options}


def _use_params(block: Block, given: Mapping[str, Any], path: str) -> dict[str, Any]:
    params = {}
    for key, value in given.items():
        if key in GRAPH_OPTIONS:
            continue
        if key not in block.params:
            raise SpecError(
                f"unknown parameter '{key}' of block {block.name}",
                where=join_path(path, key),
                hint=f"{did_you_mean(key, list(block.params))}Its parameters: "
                f"{', '.join(block.params) or '(none)'}; name: and inputs: are also taken.",
            )
        params[key] = value
    for key, default in block.params.items():
        if key not in params:
            if default is REQUIRED:
                raise SpecError(
                    f"block {block.name} needs its parameter '{key}'",
                    where=path,
                    hint=f"e.g. - {block.name}: {{{key}: ...}}",
                )
            params[key] = default
    return params
