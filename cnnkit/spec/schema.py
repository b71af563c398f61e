"""JSON Schema of the spec, generated from the definitions the validator uses.

Every section, layer, loss, optimizer, schedule, metric, initializer and regularizer declares
its options as `cnnkit.options.Option`s; this module turns those same tables into a JSON
Schema (draft 2020-12), so that an editor with a YAML language server completes and checks
keys as you type. Nothing is listed twice: a new layer or option appears in the schema by
itself. The few options checked by a function of their own (input_shape, zoom_range, ...)
have their schema next to each other here, in `_custom`; a new one without it fails
`build_schema` (and tests/test_schema.py).

The schema is a little more lenient or strict than the validator in places it cannot
express: names are matched exactly (the validator also accepts `Valid` for `valid`, and any
case of layer names), options of another data source are not refused, and a monitor is any
string. `cnnkit check` remains the authority.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from cnnkit.options import NUMBER_PATTERN

SCHEMA_FILE = "schema/cnnkit-spec.schema.json"  # in the repository (the configs point there)
DIALECT = "https://json-schema.org/draft/2020-12/schema"

Schema = dict[str, Any]


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _json_default(value: Any) -> Any:
    try:
        json.dumps(value)
    except TypeError:
        return None
    return value


def _range(opt, schema: Schema) -> Schema:
    if opt.minimum is not None:
        schema["exclusiveMinimum" if opt.exclusive_min else "minimum"] = opt.minimum
    if opt.maximum is not None:
        schema["exclusiveMaximum" if opt.exclusive_max else "maximum"] = opt.maximum
    return schema


# what the validator reads as a number but a YAML 1.2 editor as a string (1_000, 1/255):
# defined once in $defs, referred to by every number option
NUMBER_DEFS: Schema = {
    "underscored_int": {"type": "string", "pattern": "^[-+]?[0-9]+(_[0-9]+)+$"},
    "number_text": {
        "type": "string",
        # the validator's own grammar: what the editor accepts, cnnkit reads
        "pattern": rf"^\s*{NUMBER_PATTERN}\s*(/\s*{NUMBER_PATTERN}\s*)?$",
        "description": "a fraction such as 1/255, or a number with _ (1_000.5)",
    },
}


def _number(schema: Schema, text: str) -> Schema:
    return {"anyOf": [schema, {"$ref": f"#/$defs/{text}"}]}


def option_schema(opt, key: str = "") -> Schema:
    """The schema of one Option: its kind, range, choices, default and doc."""
    from cnnkit.options import REQUIRED

    kind = opt.kind
    if callable(kind):
        schema = _custom(kind, key)
    elif kind == "int":
        schema = _number(_range(opt, {"type": "integer"}), "underscored_int")
    elif kind == "float":
        schema = _number(_range(opt, {"type": "number"}), "number_text")
    elif kind == "bool":
        schema = {"type": "boolean"}
    elif kind == "str":
        schema = {"type": "string"}
        if opt.choices:
            schema["enum"] = list(opt.choices)
    elif kind == "int_or_pair":
        one = _range(opt, {"type": "integer"})
        schema = {"anyOf": [one, {"type": "array", "items": one, "minItems": 2, "maxItems": 2}]}
    elif kind == "float_or_null":
        schema = _number(_range(opt, {"type": ["number", "null"]}), "number_text")
    elif kind == "int_or_null":
        schema = _number(_range(opt, {"type": ["integer", "null"]}), "underscored_int")
    elif kind == "list_of_str":
        one = {"type": "string", "enum": list(opt.choices)} if opt.choices else {"type": "string"}
        schema = {"anyOf": [one, {"type": "array", "items": one}]}
    else:
        raise TypeError(f"no JSON schema for option kind {kind!r} ({key})")
    schema = dict(schema)
    if opt.doc:
        schema["description"] = opt.doc
    if opt.default is not REQUIRED and _json_default(opt.default) is not None:
        schema["default"] = opt.default
    return schema


def options_schema(options: Mapping[str, Any], title: str = "") -> Schema:
    """A mapping of options (a section, a layer's options): no other key is valid. An empty
    value (`- Flatten:`, `early_stopping:`) is null in YAML, valid when nothing is required."""
    from cnnkit.options import REQUIRED

    required = [key for key, opt in options.items() if opt.default is REQUIRED]
    schema: Schema = {
        "type": "object" if required else ["object", "null"],
        "properties": {key: option_schema(opt, key) for key, opt in options.items()},
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    if title:
        schema["title"] = title
    return schema


def _custom(kind: Callable, key: str) -> Schema:
    """Options checked by a function of their own: what that function accepts."""
    from cnnkit.data import augment
    from cnnkit.nn import initializers, regularizers
    from cnnkit.nn.layers import normalization, pooling
    from cnnkit.options import Option
    from cnnkit.spec import config

    positive_pair = option_schema(Option("int_or_pair", minimum=1))
    number_pair = {
        "type": "array",
        "items": {"type": "number", "minimum": 0},
        "minItems": 2,
        "maxItems": 2,
    }
    table: dict[Callable, Callable[[], Schema]] = {
        config._name: lambda: {"type": "string", "pattern": "^[^./][^/]*$"},
        config._path_or_null: lambda: {"type": ["string", "null"]},
        config._weights_path: lambda: {"type": ["string", "null"], "minLength": 1},
        config._input_shape: lambda: {
            "type": "array",
            "items": {"type": "integer", "minimum": 1},
            "minItems": 3,
            "maxItems": 3,
            "description": "[height, width, channels]",
        },
        config._pair_or_null: lambda: nullable(positive_pair),
        config._class_mode: lambda: nullable({"type": "string", "enum": list(config.CLASS_MODES)}),
        config._class_subset: lambda: nullable(
            {
                "anyOf": [
                    {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    {"type": "array", "items": {"type": "string", "minLength": 1}},
                ],
                "minItems": 2,
                "uniqueItems": True,
                "description": "class indices [3, 8], or class names [cat, dog]",
            }
        ),
        pooling._strides_or_null: lambda: nullable(positive_pair),
        normalization._axis: lambda: {"const": -1},
        initializers.check_initializer: _initializer_schema,
        regularizers.check_regularizer: _regularizer_schema,
        augment._shift_range: lambda: {"type": "number", "minimum": 0},
        augment._zoom_range: lambda: {
            "anyOf": [{"type": "number", "minimum": 0, "exclusiveMaximum": 1}, number_pair]
        },
        augment._brightness_range: lambda: nullable(number_pair),
    }
    if kind in table:
        return table[kind]()
    if key == "layers":  # model.layers: the layer table, filled in by build_schema
        return {}
    if key == "monitor":  # callbacks and reduce_on_plateau: a metrics column, or null
        return {"type": ["string", "null"], "description": "a metrics.csv column, e.g. val_loss"}
    raise TypeError(
        f"no JSON schema for the option checker {kind!r} ({key}): "
        "add it to cnnkit.spec.schema._custom"
    )


def _initializer_schema() -> Schema:
    from cnnkit.nn.initializers import INITIALIZER_NAMES, INITIALIZER_OPTIONS

    with_options = {
        name: {**options_schema(options), "type": ["object", "null", "number"]}
        if name == "constant"  # {constant: 0.5} shorthand
        else options_schema(options)
        for name, options in INITIALIZER_OPTIONS.items()
    }
    return {
        "anyOf": [
            {"type": "string", "enum": list(INITIALIZER_NAMES)},
            {
                "type": "object",
                "properties": with_options,
                "additionalProperties": False,
                "minProperties": 1,
                "maxProperties": 1,
            },
        ]
    }


def _regularizer_schema() -> Schema:
    from cnnkit.nn.regularizers import NAMES

    factor = {"type": "number", "minimum": 0}
    factors = {
        "type": "object",
        "properties": {"l1": factor, "l2": factor},
        "additionalProperties": False,
    }
    return {
        "anyOf": [
            {"type": "null"},
            {"type": "string", "enum": list(NAMES)},
            {**factors, "minProperties": 1},
            {
                "type": "object",
                "properties": {"l1_l2": {**factors, "type": ["object", "null"]}},
                "required": ["l1_l2"],
                "additionalProperties": False,
            },
        ]
    }


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
    from cnnkit.nn.layers import ALL_LAYERS

    names: dict[str, Schema] = {}
    for cls in ALL_LAYERS:
        options = options_schema(cls.OPTIONS, title=cls.keras_name)
        if cls.keras_name == "Activation":  # `- Activation: relu` shorthand
            options = {"anyOf": [options["properties"]["activation"], options]}
        defs[cls.keras_name] = options
        for spelling in (cls.keras_name, cls.type_name, *cls.aliases):
            names[spelling] = {"$ref": f"#/$defs/{cls.keras_name}"}
    return {
        "type": "array",
        "minItems": 1,
        "description": "the Sequential stack, first to last: - LayerName: {options}",
        "items": {
            "type": "object",
            "properties": names,
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
        },
    }


def _metrics_schema() -> Schema:
    from cnnkit.nn.metrics import METRIC_ALIASES, METRIC_OPTIONS

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
    from cnnkit.spec.callbacks import CALLBACK_SECTIONS

    properties = {}
    for key, options in CALLBACK_SECTIONS.items():
        section = options_schema(options)
        # absent or false: off (early_stopping); present, even empty: on
        properties[key] = {"anyOf": [section, {"const": False}]} if key != "checkpoint" else section
    return {"type": ["object", "null"], "properties": properties, "additionalProperties": False}


def build_schema() -> Schema:
    """The JSON Schema of a spec file (a dict, ready for json.dumps)."""
    from cnnkit.data.augment import AUGMENT_OPTIONS
    from cnnkit.nn.registry import LOSSES, OPTIMIZERS
    from cnnkit.nn.schedules import SCHEDULES
    from cnnkit.spec import config

    defs: Schema = dict(NUMBER_DEFS)
    model = options_schema(config.MODEL_OPTIONS)
    model["properties"]["layers"] = _layers_schema(defs)
    model["type"] = "object"
    data = options_schema(config.DATA_OPTIONS)
    properties = {
        **{key: option_schema(opt, key) for key, opt in config.TOP_OPTIONS.items()},
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
