"""Weight initializers with Keras' names and formulas (fan_in/fan_out as Keras computes them).

In a spec an initializer is a name (`he_normal`) or, for the ones with options, a one-key
mapping `{constant: {value: 0.5}}` (shorthand `{constant: 0.5}`), `{random_normal: {mean: 0,
stddev: 0.1}}`, `{random_uniform: {minval: -0.1, maxval: 0.1}}`, `{truncated_normal: {...}}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cnnkit.errors import SpecError
from cnnkit.options import (
    Option,
    Schema,
    checker,
    did_you_mean,
    fraction,
    join_path,
    options_schema,
    resolve_options,
)


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) as Keras computes them.

    bias (n,) -> (n, n); Dense (in, out) -> (in, out);
    Conv (kh, kw, cin, f) -> (kh*kw*cin, kh*kw*f).
    """
    if len(shape) == 1:  # biases
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    # Keras' truncated normal: redraw values beyond two standard deviations
    out = rng.normal(0.0, std, size=shape)
    bad = np.abs(out) > 2 * std
    while bad.any():
        out[bad] = rng.normal(0.0, std, size=int(bad.sum()))
        bad = np.abs(out) > 2 * std
    return out


# Keras scales the truncated normal's std by this so that the variance matches the target.
_TRUNC_STD = 0.87962566103423978


def initialize(
    name: str | Mapping[str, Any], shape: tuple[int, ...], rng: np.random.Generator, dtype
) -> np.ndarray:
    """Draw an array; `name` is a resolved initializer (a name or {name: {options}})."""
    if isinstance(name, Mapping):
        ((name, given),) = name.items()
    else:
        given = {}
    opts = {k: opt.default for k, opt in INITIALIZER_OPTIONS.get(name, {}).items()}
    opts.update(given)
    fan_in, fan_out = fans(shape)
    if name == "zeros":
        return np.zeros(shape, dtype)
    if name == "ones":
        return np.ones(shape, dtype)
    if name == "constant":  # Keras Constant(value=0.0)
        return np.full(shape, opts["value"], dtype)
    if name == "random_normal":  # Keras default: mean 0, stddev 0.05
        return rng.normal(opts["mean"], opts["stddev"], size=shape).astype(dtype)
    if name == "random_uniform":  # Keras default: [-0.05, 0.05]
        return rng.uniform(opts["minval"], opts["maxval"], size=shape).astype(dtype)
    if name == "truncated_normal":  # Keras: redraw beyond 2 stddev (no variance rescaling)
        return (opts["mean"] + _truncated_normal(rng, shape, opts["stddev"])).astype(dtype)
    scale_fan = {
        "glorot": (fan_in + fan_out) / 2.0,
        "he": fan_in / 2.0,
        "lecun": float(fan_in),
    }
    family, dist = name.split("_")
    variance = 1.0 / max(1.0, scale_fan[family])
    if dist == "uniform":
        limit = np.sqrt(3.0 * variance)
        return rng.uniform(-limit, limit, size=shape).astype(dtype)
    return _truncated_normal(rng, shape, np.sqrt(variance) / _TRUNC_STD).astype(dtype)


# Initializers that draw random numbers (or are fixed) and need no option.
INITIALIZERS = (
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "zeros",
    "ones",
)
# Every accepted name: `constant` alone means value 0.0 (Keras' default).
INITIALIZER_NAMES = (*INITIALIZERS, "constant")

# Keras' options and defaults of the initializers that have any.
INITIALIZER_OPTIONS: dict[str, dict[str, Option]] = {
    "constant": {"value": Option("float", default=0.0)},
    "random_normal": {
        "mean": Option("float", default=0.0),
        "stddev": Option("float", default=0.05, minimum=0.0),
    },
    "random_uniform": {
        "minval": Option("float", default=-0.05),
        "maxval": Option("float", default=0.05),
    },
    "truncated_normal": {
        "mean": Option("float", default=0.0),
        "stddev": Option("float", default=0.05, minimum=0.0),
    },
}

_HINT = (
    "Valid: a name ({names}), or {{constant: {{value: 0.5}}}}, "
    "{{random_normal: {{mean: 0.0, stddev: 0.05}}}}, {{random_uniform: {{minval: -0.05, "
    "maxval: 0.05}}}}, {{truncated_normal: {{mean: 0.0, stddev: 0.05}}}}."
)


def _initializer_schema() -> Schema:
    """A name, or {name: {options}} ({constant: 0.5} as shorthand)."""
    with_options = {
        name: {**options_schema(options), "type": ["object", "null", "number"]}
        if name == "constant"
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


@checker(_initializer_schema)
def check_initializer(value: Any, path: str) -> str | dict[str, dict[str, float]]:
    """Option checker: a name stays a name; a mapping resolves to {name: {every option}}."""
    hint = _HINT.format(names=", ".join(INITIALIZER_NAMES))
    if isinstance(value, str):
        return Option("str", choices=INITIALIZER_NAMES).check(value, path)
    if not isinstance(value, Mapping) or len(value) != 1:
        raise SpecError(f"expected an initializer, found {value!r}", where=path, hint=hint)
    ((name, given),) = value.items()
    if name in INITIALIZER_NAMES and name not in INITIALIZER_OPTIONS and not given:
        return name  # {he_normal: {}} or {he_normal: null}: just the name
    if name not in INITIALIZER_OPTIONS:
        raise SpecError(
            f"'{name}' is not an initializer with options",
            where=join_path(path, str(name)),
            hint=did_you_mean(str(name), list(INITIALIZER_OPTIONS)) + hint,
        )
    given = fraction(given, join_path(path, name)) if name == "constant" else given
    if name == "constant" and isinstance(given, (int, float)) and not isinstance(given, bool):
        given = {"value": given}  # {constant: 0.5} shorthand
    options = resolve_options(
        given, INITIALIZER_OPTIONS[name], join_path(path, name), what=f"{name} option"
    )
    return {name: options}
