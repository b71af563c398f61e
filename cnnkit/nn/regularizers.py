"""Weight penalties (Keras' L1, L2, L1L2): value added to the loss, gradient to the parameter's.

In a spec: `kernel_regularizer: {l2: 0.01}`, `{l1: 0.01}`, `{l1_l2: {l1: 0.01, l2: 0.01}}`, or
the string shorthands `l1`, `l2`, `l1_l2` (each factor 0.01). Resolved to `{l1: a, l2: b}`,
both factors present, so config.yaml shows exactly what is applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cnnkit.errors import SpecError
from cnnkit.options import Option, checker, did_you_mean, join_path, resolve_options

DEFAULT_FACTOR = 0.01  # Keras' L1() and L2() default
NAMES = ("l1", "l2", "l1_l2")
_FACTOR = Option("float", minimum=0.0)
_HINT = (
    "Valid: null, l1, l2, l1_l2 (factor 0.01), {l1: 0.01}, {l2: 0.01}, "
    "{l1_l2: {l1: 0.01, l2: 0.01}}."
)


_FACTORS = {
    "type": "object",
    "properties": {"l1": {"type": "number", "minimum": 0}, "l2": {"type": "number", "minimum": 0}},
    "additionalProperties": False,
}


@checker(
    {
        "anyOf": [
            {"type": "null"},
            {"type": "string", "enum": list(NAMES)},
            {**_FACTORS, "minProperties": 1},
            {
                "type": "object",
                "properties": {"l1_l2": {**_FACTORS, "type": ["object", "null"]}},
                "required": ["l1_l2"],
                "additionalProperties": False,
            },
        ]
    }
)
def check_regularizer(value: Any, path: str) -> dict[str, float] | None:
    """Option checker: null or a resolved {l1: factor, l2: factor}."""
    if value is None:
        return None
    if isinstance(value, str):
        name = Option("str", choices=NAMES).check(value, path)
        return {
            "l1": DEFAULT_FACTOR if "l1" in name else 0.0,
            "l2": DEFAULT_FACTOR if "l2" in name else 0.0,
        }
    if not isinstance(value, Mapping) or not value:
        raise SpecError(f"expected a regularizer, found {value!r}", where=path, hint=_HINT)
    if set(value) <= {"l1", "l2"}:  # {l1: 0.01}, {l2: 0.01} or both (the resolved form)
        return {k: _FACTOR.check(value.get(k, 0.0), join_path(path, k)) for k in ("l1", "l2")}
    if len(value) == 1 and "l1_l2" in value:
        inner = value["l1_l2"]
        if inner is None or isinstance(inner, Mapping):
            # Keras L1L2(l1=0.0, l2=0.0): a factor left out is 0
            options = {k: Option("float", default=0.0, minimum=0.0) for k in ("l1", "l2")}
            return resolve_options(inner, options, join_path(path, "l1_l2"), "l1_l2 option")
    bad = next((k for k in value if k not in NAMES), None)
    raise SpecError(
        f"unknown regularizer '{bad}'" if bad else f"expected one regularizer, found {value!r}",
        where=path,
        hint=(did_you_mean(str(bad), NAMES) if bad else "") + _HINT,
    )


def penalty(reg: Mapping[str, float] | None, w: np.ndarray) -> float:
    """Keras' formula: l1 * sum|w| + l2 * sum w^2."""
    if not reg:
        return 0.0
    value = 0.0
    if reg["l1"]:
        value += reg["l1"] * float(np.abs(w).sum(dtype=np.float64))
    if reg["l2"]:
        value += reg["l2"] * float(np.square(w).sum(dtype=np.float64))
    return value


def penalty_grad(reg: Mapping[str, float] | None, w: np.ndarray) -> np.ndarray | None:
    """d penalty / dw = l1 sign(w) + 2 l2 w (sign(0) = 0, as TF's gradient of abs)."""
    if not reg or not (reg["l1"] or reg["l2"]):
        return None
    t = w.dtype.type
    grad = np.zeros_like(w)
    if reg["l1"]:
        grad += t(reg["l1"]) * np.sign(w)
    if reg["l2"]:
        grad += t(2 * reg["l2"]) * w
    return grad
