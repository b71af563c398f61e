"""Declarative option checking shared by the spec sections and the layers.

A section (or a layer) declares its options as a dict of `Option`s; `resolve_options` checks a
user mapping against it and returns a new dict with every default filled in. Every error names
the YAML path, says what was found and what would be valid, and suggests the closest key.
"""

from __future__ import annotations

import difflib
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


@dataclass(frozen=True)
class Option:
    """One option: its kind, its default and, for strings, the valid choices.

    kind is one of: int, float, bool, str, int_or_pair, float_or_null, int_or_null, list_of_str,
    or a callable (value, path) -> value for anything special.
    """

    kind: str | Callable[[Any, str], Any]
    default: Any = REQUIRED
    choices: tuple[str, ...] | None = None
    minimum: float | None = None  # inclusive
    maximum: float | None = None  # inclusive
    exclusive_min: bool = False
    exclusive_max: bool = False
    doc: str = ""

    def check(self, value: Any, path: str) -> Any:
        if callable(self.kind):
            return self.kind(value, path)
        checker = _CHECKERS[self.kind]
        value = checker(self, value, path)
        return value

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


_CHECKERS: dict[str, Callable[[Option, Any, str], Any]] = {
    "int": _check_int,
    "float": _check_float,
    "bool": _check_bool,
    "str": _check_str,
    "int_or_pair": _check_int_or_pair,
    "float_or_null": _check_float_or_null,
    "int_or_null": _check_int_or_null,
    "list_of_str": _check_list_of_str,
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
