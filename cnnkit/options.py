"""Declarative option checking shared by the spec sections and the layers.

A section (or a layer) declares its options as a dict of `Option`s; `resolve_options` checks a
user mapping against it and returns a new dict with every default filled in. Every error names
the YAML path, says what was found and what would be valid, and suggests the closest key.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import yaml

from cnnkit.errors import SpecError, SpecErrors

REQUIRED = object()  # sentinel: the option has no default

# -- numbers as people write them ----------------------------------------------------------

# YAML 1.2's floats (PyYAML resolves YAML 1.1, where 1e-3 and 5E-4 are strings): an exponent
# needs no dot and no sign. 1.1's other forms (1.5, .5, 1_000.5, .inf, .nan, 1:30.5) stay.
_FLOAT = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_FLOAT_TAG = "tag:yaml.org,2002:float"


class SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader with YAML 1.2 floats: `learning_rate: 1e-3` is a number, as in every
    YAML 1.2 reader (and editors), not the string YAML 1.1 makes of it. Booleans, integers
    (1_000, 0x1f, 010) and null resolve exactly as with SafeLoader."""


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """yaml.safe_load with SpecLoader: the spec file, a --set value."""
    return yaml.load(text, Loader=SpecLoader)  # a SafeLoader subclass: no code runs


def compose_yaml(text: str) -> Any:
    """yaml.compose with SpecLoader: the node tree, for line and column of every key."""
    return yaml.compose(text, Loader=SpecLoader)


# one number as the spec may write it (the schema's number_text is built from it too)
NUMBER_PATTERN = r"[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
# `rescale: 1/255` (Keras: rescale=1./255): a string of two numbers and a slash
FRACTION = re.compile(rf"^\s*({NUMBER_PATTERN})\s*/\s*({NUMBER_PATTERN})\s*$")
NUMBER_FORMS = "Numbers: 0.001, 1e-3, 5E-4, .5, 1_000, or a fraction such as 1/255."


def fraction(value: Any, path: str) -> Any:
    """A fraction string 'a/b' as a float; anything else unchanged (the checker judges it)."""
    if not isinstance(value, str):
        return value
    match = FRACTION.match(value)
    if match is None:
        return value
    numerator, denominator = (float(g.replace("_", "")) for g in match.groups())
    if denominator == 0:
        raise SpecError(f"{value!r} divides by zero", where=path, hint=NUMBER_FORMS)
    return numerator / denominator


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), f"a {type(value).__name__}"
    )


# what people coming from Keras 1/2 or PyTorch write for an option, and cnnkit's name for it
ALIASES = {
    "lr": "learning_rate",
    "eps": "epsilon",
    "stride": "strides",
    "p": "rate",
    "out_channels": "filters",
    "nb_filter": "filters",
    "out_features": "units",
    "output_dim": "units",
    "nb_epoch": "epochs",
    "nb_epochs": "epochs",
    "size": "pool_size",
}


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The valid name closest to a misspelt one (case-insensitive), or None. A known alias
    (lr for learning_rate) wins over spelling."""
    lowered = {c.lower(): c for c in choices}
    alias = ALIASES.get(str(word).lower())
    if alias is not None and alias in lowered:
        return lowered[alias]
    match = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[match[0]] if match else None


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    near = closest(word, choices)
    return f"did you mean '{near}'? " if near else ""


Schema = dict[str, Any]  # a JSON Schema (draft 2020-12) object

# what the validator reads as a number but a YAML 1.2 editor as a string (1_000, 1/255):
# defined once in the schema's $defs, referred to by every number option
NUMBER_DEFS: Schema = {
    "underscored_int": {"type": "string", "pattern": "^[-+]?[0-9]+(_[0-9]+)+$"},
    "number_text": {
        "type": "string",
        # the validator's own grammar: what the editor accepts, cnnkit reads
        "pattern": rf"^\s*{NUMBER_PATTERN}\s*(/\s*{NUMBER_PATTERN}\s*)?$",
        "description": "a fraction such as 1/255, or a number with _ (1_000.5)",
    },
}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


class Kind:
    """What an option accepts: `check` resolves a value (or raises SpecError at its path) and
    `json_schema` describes the same values for an editor (cnnkit.spec.schema)."""

    def check(self, opt: Option, value: Any, path: str) -> Any:
        raise NotImplementedError

    def json_schema(self, opt: Option) -> Schema:
        raise NotImplementedError


@dataclass(frozen=True)
class BuiltinKind(Kind):
    """A kind named by a string in Option("int", ...): range and choices come from the Option."""

    checker: Callable[[Option, Any, str], Any]
    schema: Callable[[Option], Schema]

    def check(self, opt: Option, value: Any, path: str) -> Any:
        return self.checker(opt, value, path)

    def json_schema(self, opt: Option) -> Schema:
        return self.schema(opt)


@dataclass(frozen=True)
class Checker(Kind):
    """A kind checked by a function of its own, (value, path) -> value, with the schema of what
    that function accepts. Made by the @checker decorator; still callable as the function."""

    function: Callable[[Any, str], Any]
    schema: Callable[[], Schema]

    def __call__(self, value: Any, path: str) -> Any:
        return self.function(value, path)

    def check(self, opt: Option, value: Any, path: str) -> Any:
        return self.function(value, path)

    def json_schema(self, opt: Option) -> Schema:
        return self.schema()


def checker(schema: Schema | Callable[[], Schema]) -> Callable[[Callable], Checker]:
    """@checker({...JSON Schema...}) on a (value, path) -> value function makes it an option
    kind; a callable schema is built when asked (when it needs tables defined later)."""
    build = schema if callable(schema) else (lambda: copy.deepcopy(schema))
    return lambda function: Checker(function, build)


@dataclass(frozen=True)
class Option:
    """One option: its kind, its default and, for strings, the valid choices.

    kind is a Kind (a @checker function, for anything special) or the name of a built-in one:
    int, float, bool, str, int_or_pair, float_or_null, int_or_null, list_of_str.
    """

    kind: str | Kind
    default: Any = REQUIRED
    choices: tuple[str, ...] | None = None
    minimum: float | None = None  # inclusive
    maximum: float | None = None  # inclusive
    exclusive_min: bool = False
    exclusive_max: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Kind) and self.kind not in KINDS:
            raise TypeError(
                f"option kind {self.kind!r}: use one of {', '.join(KINDS)}, or a Kind "
                "(a (value, path) checker decorated with @checker(its JSON Schema))"
            )

    @property
    def resolved_kind(self) -> Kind:
        return KINDS[self.kind] if isinstance(self.kind, str) else self.kind

    def check(self, value: Any, path: str) -> Any:
        return self.resolved_kind.check(self, value, path)

    def json_schema(self) -> Schema:
        """The schema of the values this option takes, with its doc and default."""
        schema = dict(self.resolved_kind.json_schema(self))
        if self.doc:
            schema["description"] = self.doc
        if self.default is not REQUIRED and _json_default(self.default) is not None:
            schema["default"] = self.default
        return schema

    def range_schema(self, schema: Schema) -> Schema:
        if self.minimum is not None:
            schema["exclusiveMinimum" if self.exclusive_min else "minimum"] = self.minimum
        if self.maximum is not None:
            schema["exclusiveMaximum" if self.exclusive_max else "maximum"] = self.maximum
        return schema

    def _range(self, value: float, path: str) -> None:
        lo, hi = self.minimum, self.maximum
        bad_lo = lo is not None and (value <= lo if self.exclusive_min else value < lo)
        bad_hi = hi is not None and (value >= hi if self.exclusive_max else value > hi)
        if bad_lo or bad_hi:
            left = "(" if self.exclusive_min else "["
            right = ")" if self.exclusive_max else "]"
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            raise SpecError(
                f"{value!r} is out of range",
                where=path,
                hint=f"Valid: {left}{lo_s}, {hi_s}{right}.",
            )


def _json_default(value: Any) -> Any:
    try:
        json.dumps(value)
    except TypeError:
        return None
    return value


def options_schema(options: Mapping[str, Option], title: str = "") -> Schema:
    """A mapping of options (a section, a layer's options): no other key is valid. An empty
    value (`- Flatten:`, `early_stopping:`) is null in YAML, valid when nothing is required."""
    required = [key for key, opt in options.items() if opt.default is REQUIRED]
    schema: Schema = {
        "type": "object" if required else ["object", "null"],
        "properties": {key: opt.json_schema() for key, opt in options.items()},
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    if title:
        schema["title"] = title
    return schema


def _check_int(opt: Option, value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"expected an integer, found {_type_name(value)} ({value!r})", where=path)
    opt._range(value, path)
    return value


def _check_float(opt: Option, value: Any, path: str) -> float:
    value = fraction(value, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(
            f"expected a number, found {_type_name(value)} ({value!r})",
            where=path,
            hint=NUMBER_FORMS,
        )
    opt._range(float(value), path)
    return float(value)


def _check_bool(opt: Option, value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(
            f"expected true or false, found {_type_name(value)} ({value!r})", where=path
        )
    return value


def _check_str(opt: Option, value: Any, path: str) -> str:
    if not isinstance(value, str):
        valid = f" Valid: {', '.join(opt.choices)}." if opt.choices else ""
        raise SpecError(
            f"expected a string, found {_type_name(value)} ({value!r})", where=path, hint=valid
        )
    if opt.choices is not None:
        canonical = {c.lower(): c for c in opt.choices}
        if value.lower() not in canonical:
            raise SpecError(
                f"'{value}' is not a valid value",
                where=path,
                hint=f"{did_you_mean(value, opt.choices)}Valid: {', '.join(opt.choices)}.",
            )
        return canonical[value.lower()]
    return value


def _check_int_or_pair(opt: Option, value: Any, path: str) -> list[int]:
    """Keras accepts `3` or `[3, 3]` (or `(3, 3)`) for sizes and strides."""
    items = value if isinstance(value, (list, tuple)) else [value, value]
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise SpecError(
            f"expected an integer or a pair of integers, found {value!r}",
            where=path,
            hint="Valid: 3 or [3, 3] (height, width).",
        )
    for v in items:
        opt._range(v, path)
    return [int(items[0]), int(items[1])]


def _check_float_or_null(opt: Option, value: Any, path: str) -> float | None:
    return None if value is None else _check_float(opt, value, path)


def _check_int_or_null(opt: Option, value: Any, path: str) -> int | None:
    return None if value is None else _check_int(opt, value, path)


def _check_list_of_str(opt: Option, value: Any, path: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise SpecError(f"expected a list, found {_type_name(value)} ({value!r})", where=path)
    return [_check_str(opt, v, f"{path}[{i}]") for i, v in enumerate(value)]


def _number(schema: Schema, text: str) -> Schema:
    return {"anyOf": [schema, {"$ref": f"#/$defs/{text}"}]}


def _str_schema(opt: Option) -> Schema:
    return {"type": "string", "enum": list(opt.choices)} if opt.choices else {"type": "string"}


def _pair_schema(opt: Option) -> Schema:
    one = opt.range_schema({"type": "integer"})
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 2, "maxItems": 2}]}


def _list_of_str_schema(opt: Option) -> Schema:
    one = _str_schema(opt)
    return {"anyOf": [one, {"type": "array", "items": one}]}


KINDS: dict[str, Kind] = {
    "int": BuiltinKind(
        _check_int, lambda o: _number(o.range_schema({"type": "integer"}), "underscored_int")
    ),
    "float": BuiltinKind(
        _check_float, lambda o: _number(o.range_schema({"type": "number"}), "number_text")
    ),
    "bool": BuiltinKind(_check_bool, lambda o: {"type": "boolean"}),
    "str": BuiltinKind(_check_str, _str_schema),
    "int_or_pair": BuiltinKind(_check_int_or_pair, _pair_schema),
    "float_or_null": BuiltinKind(
        _check_float_or_null,
        lambda o: _number(o.range_schema({"type": ["number", "null"]}), "number_text"),
    ),
    "int_or_null": BuiltinKind(
        _check_int_or_null,
        lambda o: _number(o.range_schema({"type": ["integer", "null"]}), "underscored_int"),
    ),
    "list_of_str": BuiltinKind(_check_list_of_str, _list_of_str_schema),
}


def require_mapping(value: Any, path: str, what: str = "a mapping of options") -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(
            f"expected {what} (key: value), found {_type_name(value)} ({value!r})", where=path
        )
    return value


def resolve_options(
    given: Any, options: Mapping[str, Option], path: str, what: str = "option"
) -> dict[str, Any]:
    """Check `given` against `options`; return every option with defaults filled in.

    Every unknown key, bad value and missing option of the mapping is reported (SpecErrors
    when there are several), not only the first."""
    given = require_mapping(given, path)
    errors = ErrorList()
    suggested = set()  # a misspelt required key is one error, not also a missing one
    for key in given:
        if key not in options:
            suggested.add(closest(key, list(options)))
            errors.add(
                SpecError(
                    f"unknown {what} '{key}'",
                    where=join_path(path, key),
                    hint=f"{did_you_mean(key, list(options))}Valid: {', '.join(options)}.",
                )
            )
    resolved: dict[str, Any] = {}
    for key, opt in options.items():
        if key in given:
            with errors.collect():
                resolved[key] = opt.check(given[key], join_path(path, key))
        elif opt.default is REQUIRED and key not in suggested:
            errors.add(
                SpecError(
                    f"missing required {what} '{key}'",
                    where=path or "the spec",
                    hint=f"Add `{key}: ...`{' (' + opt.doc + ')' if opt.doc else ''}.",
                )
            )
        else:
            resolved[key] = opt.default
    errors.raise_if_any()
    return resolved


class ErrorList:
    """Collects SpecErrors so that one pass over a spec reports every independent mistake.

    errors = ErrorList()
    with errors.collect():
        data = check_data(...)      # on an error, data keeps its previous value
    errors.raise_if_any()           # one error as itself, several as SpecErrors
    """

    def __init__(self) -> None:
        self.found: list[SpecError] = []

    def add(self, error: SpecError) -> None:
        self.found.extend(error.errors if isinstance(error, SpecErrors) else [error])

    @contextmanager
    def collect(self) -> Iterator[None]:
        try:
            yield
        except SpecError as error:
            self.add(error)

    def attempt(self, check: Callable[..., Any], *args: Any) -> Any:
        """check(*args), or None after collecting its SpecError (a later check that needs
        the value is then skipped)."""
        with self.collect():
            return check(*args)
        return None

    def __bool__(self) -> bool:
        return bool(self.found)

    def raise_if_any(self) -> None:
        if len(self.found) == 1:
            raise self.found[0]
        if self.found:
            raise SpecErrors(self.found)


def join_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)
