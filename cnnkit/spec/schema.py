"""JSON Schema of the spec, generated from the definitions the validator uses.

Every section, layer, loss, optimizer, schedule, metric, initializer and regularizer declares
its options as `cnnkit.options.Option`s, and every option kind describes the values it accepts
(`Option.json_schema`: a built-in kind from its range and choices, a `@checker` function from
the schema written beside it). This module only walks those tables into a JSON Schema (draft
2020-12), so that an editor with a YAML language server completes and checks keys as you type.
Nothing is listed twice: a new layer or option appears in the schema by itself.

The schema is a little more lenient or strict than the validator in places it cannot
express: names are matched exactly (the validator also accepts `Valid` for `valid`, and any
case of layer names), options of another data source are not refused, and a monitor is any
string. `cnnkit check` remains the authority.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cnnkit.data.augment import AUGMENT_OPTIONS
from cnnkit.nn.layers import ALL_LAYERS
from cnnkit.nn.layers.base import GRAPH_OPTIONS
from cnnkit.nn.metrics import METRIC_ALIASES, METRIC_OPTIONS
from cnnkit.nn.registry import LOSSES, OPTIMIZERS
from cnnkit.nn.schedules import SCHEDULES
from cnnkit.options import NUMBER_DEFS, Schema, options_schema
from cnnkit.spec import config
from cnnkit.spec.callbacks import CALLBACK_SECTIONS

# package data (installed with cnnkit, for `cnnkit init`'s specs); the configs point here
SCHEMA_FILE = Path(__file__).resolve().with_name("cnnkit-spec.schema.json")
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _named_section(table: Mapping[str, Any], what: str) -> Schema:
    """loss / optimizer / schedule: a bare name, or {name: ..., options of that name}."""
    variants = []
    for name, cls in table.items():
        variant = options_schema(cls.OPTIONS)
        variant["type"] = "object"
        variant["properties"] = {"name": {"const": name}, **variant["properties"]}
        variant["required"] = ["name", *variant.get("required", [])]
        variants.append(variant)
    return {
        "description": f"a {what} name, or a mapping with name: and its options",
        "anyOf": [{"type": "string", "enum": list(table)}, *variants],
    }


def _layers_schema(defs: Schema) -> Schema:
    names: dict[str, Schema] = {}
    for key, option in GRAPH_OPTIONS.items():  # every layer's: defined once
        defs[f"layer_{key}"] = option.json_schema()
    for cls in ALL_LAYERS:
        options = options_schema(cls.OPTIONS, title=cls.keras_name)
        options["properties"].update({k: {"$ref": f"#/$defs/layer_{k}"} for k in GRAPH_OPTIONS})
        if cls.keras_name == "Activation":  # `- Activation: relu` shorthand
            options = {"anyOf": [options["properties"]["activation"], options]}
        defs[cls.keras_name] = options
        for spelling in (cls.keras_name, cls.type_name, *cls.aliases):
            names[spelling] = {"$ref": f"#/$defs/{cls.keras_name}"}
    layer = {
        "type": "object",
        "properties": names,
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
    }
    # a block's use, `- residual: {filters: 32}`: any other one-key mapping (cnnkit check
    # knows the blocks and reports a name that is neither)
    use = {
        "type": "object",
        "propertyNames": {"not": {"enum": list(names)}},
        "additionalProperties": {"type": ["object", "null"]},
        "minProperties": 1,
        "maxProperties": 1,
    }
    defs["layer_entry"] = layer
    return {
        "type": "array",
        "minItems": 1,
        "description": "the layers, first to last: - LayerName: {options} (or - BlockName: "
        "{params}); each reads the previous one unless its inputs: names others",
        "items": {"anyOf": [{"$ref": "#/$defs/layer_entry"}, use]},
    }


def _blocks_schema() -> Schema:
    block = {
        "type": "object",
        "properties": {
            "params": {
                "description": "the parameters ($name in the layers) and their defaults, or "
                "a list of names without defaults",
                "anyOf": [{"type": "object"}, {"type": "array", "items": {"type": "string"}}],
            },
            # layers whose values may be $parameters: checked by cnnkit check, not here
            "layers": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "minProperties": 1, "maxProperties": 1},
            },
        },
        "required": ["layers"],
        "additionalProperties": False,
    }
    return {
        "type": ["object", "null"],
        "description": "groups of layers written once, with parameters, used in layers: like "
        "a layer",
        "additionalProperties": block,
    }


def _metrics_schema() -> Schema:
    names = {**{n: n for n in METRIC_OPTIONS}, **METRIC_ALIASES}
    entry = {
        "anyOf": [
            {"type": "string", "enum": list(names)},
            {
                "type": "object",
                "properties": {
                    name: options_schema(METRIC_OPTIONS[canonical])
                    for name, canonical in names.items()
                },
                "additionalProperties": False,
                "minProperties": 1,
                "maxProperties": 1,
            },
        ]
    }
    return {"anyOf": [{"type": "array", "items": entry}, entry, {"type": "null"}]}


def _callbacks_schema() -> Schema:
    properties = {}
    for key, options in CALLBACK_SECTIONS.items():
        section = options_schema(options)
        # absent or false: off (early_stopping); present, even empty: on
        properties[key] = {"anyOf": [section, {"const": False}]} if key != "checkpoint" else section
    return {"type": ["object", "null"], "properties": properties, "additionalProperties": False}


def build_schema() -> Schema:
    """The JSON Schema of a spec file (a dict, ready for json.dumps)."""
    defs: Schema = dict(NUMBER_DEFS)
    model = options_schema(config.MODEL_OPTIONS)
    model["properties"]["layers"] = _layers_schema(defs)
    model["properties"]["blocks"] = _blocks_schema()
    # without blocks, every entry is a layer (an unknown name is flagged as you type)
    model["if"] = {"not": {"required": ["blocks"]}}
    model["then"] = {"properties": {"layers": {"items": {"$ref": "#/$defs/layer_entry"}}}}
    model["type"] = "object"
    data = options_schema(config.DATA_OPTIONS)
    properties = {
        **{key: opt.json_schema() for key, opt in config.TOP_OPTIONS.items()},
        "data": data,
        "model": model,
        "loss": _named_section(LOSSES, "loss"),
        "optimizer": _named_section(OPTIMIZERS, "optimizer"),
        "metrics": _metrics_schema(),
        "train": options_schema(config.TRAIN_OPTIONS),
        "schedule": {"anyOf": [_named_section(SCHEDULES, "schedule"), {"type": "null"}]},
        "callbacks": _callbacks_schema(),
        "augmentation": options_schema(AUGMENT_OPTIONS),
        "logging": options_schema(config.LOGGING_OPTIONS),
    }
    missing = set(config.TOP_LEVEL) ^ set(properties)
    if missing:  # a new top-level section must be described here
        raise TypeError(f"top-level keys without a schema (or not in TOP_LEVEL): {missing}")
    return {
        "$schema": DIALECT,
        "title": "cnnkit spec",
        "description": "A cnnkit training spec (generated by `cnnkit schema`; do not edit).",
        "type": "object",
        "properties": {key: properties[key] for key in config.TOP_LEVEL},
        "required": ["data", "model"],
        "additionalProperties": False,
        "$defs": defs,
    }


def schema_text() -> str:
    """The schema as committed in the repository: 2-space JSON, keys in definition order."""
    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"
