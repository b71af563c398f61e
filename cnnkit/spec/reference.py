"""The spec reference page (docs/reference/spec.md), generated from the spec's JSON Schema.

`cnnkit.spec.schema.build_schema()` is made from the option tables the validator uses, so a
page made from it lists every section, layer, loss, optimizer, schedule, metric and callback
option with its type, default and valid values, and follows those tables by itself;
tests/spec/test_reference.py fails when the committed page is not the generated one.

    python -m cnnkit.spec.reference --out docs/reference/spec.md
"""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any

from cnnkit.io import generated_page_main
from cnnkit.nn.layers.base import GRAPH_OPTIONS
from cnnkit.spec.schema import Schema, build_schema

PAGE = "docs/reference/spec.md"
REGENERATE = f"python -m cnnkit.spec.reference --out {PAGE}"
# alternative spellings of numbers (1_000, 1/255), accepted by every number option: said once
NUMBER_SPELLINGS = ("underscored_int", "number_text")


def _code(value: Any) -> str:
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def _number_range(schema: Schema) -> str:
    low = [f"≥ {schema['minimum']}"] if "minimum" in schema else []
    low += [f"> {schema['exclusiveMinimum']}"] if "exclusiveMinimum" in schema else []
    high = [f"≤ {schema['maximum']}"] if "maximum" in schema else []
    high += [f"< {schema['exclusiveMaximum']}"] if "exclusiveMaximum" in schema else []
    return ", ".join(low + high)


def _scalar_type(kind: str, schema: Schema) -> str:
    if kind in ("integer", "number"):
        bounds = _number_range(schema)
        return f"{kind} {bounds}" if bounds else kind
    if kind == "array":
        items = type_text(schema.get("items", {})) or "value"
        if schema.get("minItems") == schema.get("maxItems") == 2:
            return f"[{items}, {items}]"
        if "minItems" in schema and schema.get("minItems") == schema.get("maxItems"):
            return f"list of {schema['minItems']} {items}"
        return f"list of {items}"
    return {"object": "mapping", "boolean": "true or false", "null": "null"}.get(kind, kind)


def type_text(schema: Schema) -> str:
    """What a value may be, in a few words: `integer ≥ 1`, `one of a, b`, `[integer, integer]`."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return "" if name in NUMBER_SPELLINGS else f"a {name} layer"
    if "const" in schema:
        return _code(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(_code(v) for v in schema["enum"])
    if "anyOf" in schema:
        parts = [type_text(s) for s in schema["anyOf"]]
        return " or ".join(dict.fromkeys(p for p in parts if p))
    kinds = schema.get("type")
    if kinds is None:
        return ""
    kinds = kinds if isinstance(kinds, list) else [kinds]
    return " or ".join(_scalar_type(k, schema) for k in kinds)


def _default_text(schema: Schema) -> str:
    if "default" not in schema:
        return "`null`" if "null" in type_text(schema) else "—"
    value = schema["default"]
    if isinstance(value, float) and 0 < value < 1 and len(repr(value)) > 8:
        fraction = Fraction(value).limit_denominator(10_000)
        if fraction.numerator == 1 and float(fraction) == value:  # data.rescale: 1/255
            return f"`{fraction}`"
    return _code(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def options_table(section: Schema, kinds: dict[str, tuple[str, Schema]] | None = None) -> list[str]:
    """One row per key of an options mapping: key, type, default, description. An option of a
    shared kind (`kinds`: initializers, regularizers) links to the kind's section."""
    kinds = kinds or {}
    required = set(section.get("required", []))
    rows = ["| key | value | default | what |", "|---|---|---|---|"]
    for key, schema in section.get("properties", {}).items():
        if key == "name" and "const" in schema:
            continue  # a named section's name: the heading says it
        default = "required" if key in required else _default_text(schema)
        if _bare(schema) in kinds:
            name = kinds[_bare(schema)][0]
            kind = f"{'an' if name[0] in 'aeiou' else 'a'} [{name}](#{name})"
        else:
            kind = _cell(type_text(schema))
        rows.append(f"| `{key}` | {kind} | {default} | {_cell(schema.get('description', ''))} |")
    if len(rows) == 2:
        return ["No options.", ""]
    return [*rows, ""]


def mapping_variant(schema: Schema) -> Schema | None:
    """The `{key: ...}` form of an option that is also written otherwise (null, false, a name)."""
    if "properties" in schema:
        return schema
    for variant in schema.get("anyOf", []):
        if "properties" in variant:
            return variant
    return None


def named_variants(schema: Schema) -> dict[str, Schema]:
    """loss / optimizer / schedule: each name with its options mapping."""
    found: dict[str, Schema] = {}
    for variant in schema.get("anyOf", []):
        name = variant.get("properties", {}).get("name", {}).get("const")
        if name is not None:
            found[name] = variant
        elif "anyOf" in variant:
            found.update(named_variants(variant))
    return found


def _heading(level: int, title: str, anchor: str) -> list[str]:
    return [f"{'#' * level} {title} {{#{anchor}}}", ""]


def _named_section(key: str, schema: Schema, level: int) -> list[str]:
    variants = named_variants(schema)
    names = ", ".join(f"[`{name}`](#{key}-{name})" for name in variants)
    lines = [
        f"A name, or a mapping with `name:` and that name's options, e.g. "
        f"`{key}: {{name: {next(iter(variants))}, ...}}`. Names: {names}.",
        "",
    ]
    if any(variant == {"type": "null"} for variant in schema.get("anyOf", [])):
        lines += ["`null` (the default): none.", ""]
    for name, variant in variants.items():
        lines += _heading(level, f"`{name}`", f"{key}-{name}")
        lines += options_table(variant)
    return lines


def _keyed_entries(key: str, schema: Schema, level: int) -> list[str]:
    """metrics: names, and one-key mappings {name: {options}} for the names with options."""
    names: list[str] = []
    options: dict[str, Schema] = {}
    for variant in _flatten(schema):
        names += variant.get("enum", [])
        for name, entry in variant.get("properties", {}).items():
            if entry.get("properties"):
                options[name] = entry
    names = list(dict.fromkeys(names))
    lines = [
        f"A list of names (or one name): {', '.join(_code(n) for n in names)}. "
        "A name with options is written as a one-key mapping, e.g. "
        f"`{{{next(iter(options), 'name')}: {{...}}}}`.",
        "",
    ]
    for name, entry in options.items():
        lines += _heading(level, f"`{name}`", f"{key}-{name}")
        lines += options_table(entry)
    return lines


def _flatten(schema: Schema) -> list[Schema]:
    """Every alternative of nested anyOf / array items, leaves only."""
    if "anyOf" in schema:
        return [leaf for variant in schema["anyOf"] for leaf in _flatten(variant)]
    if schema.get("type") == "array":
        return _flatten(schema.get("items", {}))
    return [schema]


def section_lines(key: str, schema: Schema, level: int) -> list[str]:
    """A top-level section: its options, and sub-sections for its mappings of options."""
    lines = _heading(level, f"`{key}`", key)
    if named_variants(schema):
        return lines + _named_section(key, schema, level + 1)
    if schema.get("description"):
        lines += [_cell(schema["description"][0].upper() + schema["description"][1:]) + ".", ""]
    section = mapping_variant(schema)
    if section is None:
        if any("properties" in leaf for leaf in _flatten(schema)):
            return lines + _keyed_entries(key, schema, level + 1)
        return lines + [f"Value: {_cell(type_text(schema))}. Default: {_default_text(schema)}.", ""]
    lines += options_table(section)
    for sub_key, sub in section["properties"].items():
        sub_section = mapping_variant(sub)
        if sub_section is not None and sub_section.get("properties"):
            lines += _heading(level + 1, f"`{key}.{sub_key}`", f"{key}-{sub_key}")
            others = [type_text(v) for v in sub.get("anyOf", []) if v is not sub_section]
            if others:
                lines += [f"Also written: {_cell(' or '.join(others))}.", ""]
            lines += options_table(sub_section)
    return lines


def _bare(schema: Schema) -> str:
    """An option's value schema without its description and default: what options share."""
    return json.dumps({k: v for k, v in schema.items() if k not in ("description", "default")})


def shared_kinds(layers: dict[str, Schema]) -> dict[str, tuple[str, Schema]]:
    """Values written the same way by several layer options (initializers, regularizers): each
    gets one section, named by the options' last word, that the option tables link to."""
    seen: dict[str, list[str]] = {}
    for layer in layers.values():
        for key, schema in (mapping_variant(layer) or {}).get("properties", {}).items():
            if len(schema.get("enum", [])) > 8 or any(
                "properties" in leaf or len(leaf.get("enum", [])) > 8 for leaf in _flatten(schema)
            ):
                seen.setdefault(_bare(schema), []).append(key)
    return {
        bare: (keys[0].rsplit("_", 1)[-1], json.loads(bare))
        for bare, keys in seen.items()
        if len(keys) > 1
    }


def layers_lines(schema: Schema, kinds: dict[str, tuple[str, Schema]]) -> list[str]:
    """Every layer: the spellings accepted, the bare-value shorthand if any, its options."""
    spellings: dict[str, list[str]] = {}
    layer_items = schema["$defs"]["layer_entry"]
    for spelling, ref in layer_items["properties"].items():
        spellings.setdefault(ref["$ref"].rsplit("/", 1)[-1], []).append(spelling)
    lines = _heading(2, "Layers", "layers")
    lines += [
        "Each item of `model.layers` is a one-key mapping, `- LayerName: {options}`, "
        "first layer to last. Every layer also takes "
        + "; ".join(f"`{key}`: {opt.doc}" for key, opt in GRAPH_OPTIONS.items())
        + " (a graph: see [Graph specs](../graphs.md)).",
        "",
    ]
    for name, written in spellings.items():
        layer = schema["$defs"][name]
        lines += _heading(3, f"`{name}`", f"layer-{name.lower()}")
        others = [s for s in written if s != name]
        if others:
            lines += [f"Also written: {', '.join(_code(s) for s in others)}.", ""]
        options = mapping_variant(layer) or {}
        shorthand = [type_text(v) for v in layer.get("anyOf", []) if v is not options]
        if shorthand:
            lines += [f"Shorthand: `- {name}: VALUE`, VALUE {_cell(' or '.join(shorthand))}.", ""]
        lines += options_table(options, kinds)
    return lines


def kind_lines(name: str, schema: Schema) -> list[str]:
    """A shared kind (initializer, regularizer): its names and each mapping form's options."""
    lines = _heading(2, f"{name.capitalize()}s", name)
    lines += [f"Written as: {_cell(type_text(schema))}.", ""]
    for variant in _flatten(schema):
        entries = variant.get("properties", {})
        if entries and not any(entry.get("properties") for entry in entries.values()):
            lines += ["A mapping of:", "", *options_table(variant)]
        for key, entry in entries.items():
            if entry.get("properties"):
                lines += _heading(3, f"`{key}`", f"{name}-{key}")
                lines += [f"`{{{key}: {{...}}}}` with:", ""]
                lines += options_table(entry)
    return lines


def _without_graph_options(schema: Schema) -> Schema:
    """The schema with name: and inputs: left out of each layer's table (said once)."""
    schema = json.loads(json.dumps(schema))
    for layer in schema["$defs"].values():
        options = mapping_variant(layer) or {}
        for key in GRAPH_OPTIONS:
            options.get("properties", {}).pop(key, None)
    return schema


def spec_reference(schema: Schema | None = None) -> str:
    """The page, as committed: every top-level key in spec order, then layers and kinds."""
    schema = _without_graph_options(schema or build_schema())
    layers = {
        name: layer
        for name, layer in schema["$defs"].items()
        if name not in NUMBER_SPELLINGS and name != "layer_entry"
    }
    kinds = shared_kinds(layers)
    lines = [
        "# Spec reference",
        "",
        f"<!-- generated from cnnkit's option tables; do not edit: regenerate with `{REGENERATE}` "
        "-->",
        "",
        "Every key a spec file may hold, with its default and valid values, generated from the "
        "option tables `cnnkit check` validates with (the same that `cnnkit schema` prints). "
        "A number may also be written `1_000`, `1e-3` or as a fraction, `1/255`. "
        "`cnnkit check` has the last word: it also accepts any case of layer names and of "
        "choices (`Valid` for `valid`).",
        "",
        "Required at the top level: " + ", ".join(_code(k) for k in schema["required"]) + ".",
        "",
    ]
    for key, section in schema["properties"].items():
        lines += section_lines(key, section, 2)
    lines += layers_lines(schema, kinds)
    for name, kind in kinds.values():
        lines += kind_lines(name, kind)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> None:
    generated_page_main(argv, "spec reference", PAGE, spec_reference)


if __name__ == "__main__":
    main()
