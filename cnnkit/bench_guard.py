"""The correctness guard of `cnnkit bench --vs PEER`, shared by every peer's twin (PyTorch's in
cnnkit.bench_torch, Keras' in cnnkit.bench_keras).

Both sides, cnnkit and the peer, in float32, are judged against the peer's twin in float64 on the
same weights and batch: forward output, loss and every parameter's gradient. Only cnnkit being
off stops the benchmark (a benchmark of a wrong kernel is worthless); the peer's own float32
being off is reported and the benchmark runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit.errors import CnnkitError

# The guard's yardstick: for each array (forward output, loss, each parameter's gradient),
# e = max |x - reference| / max |reference|, the reference being the same network in float64
# on the same weights and batch. Scaling by the array's largest value makes e independent of
# the array's units and ignores the relative noise of entries that are nearly zero. float32
# rounding through sums of up to ~1e5 terms and a few layers stays near 1e-6 (cnnkit on
# mnist_basic: 5.9e-07); a wrong index, a missing term or a wrong formula shows as 1e-2 or more.
# 1e-4 sits between the two, with room for deeper networks and larger batches.
TOLERANCE = 1e-4
# ... unless the peer's float32 is off on the same array by at least 1/PEER_FACTOR as much
PEER_FACTOR = 3.0


def relative_error(value, reference, floor: float = 0.0) -> float:
    """max |value - reference| / max |reference| over the array (a scalar: |v - r| / |r|);
    the scale is at least `floor`."""
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    scale = max(float(np.abs(reference).max()), floor)
    diff = float(np.abs(value - reference).max())
    if not np.isfinite(diff):  # NaN or inf on either side
        return float("inf")
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def side_errors(side: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """One side's errors against the reference. Both are {"output": array, "loss": float or
    None, "gradients": {cnnkit key: array}} in the same layout; without a loss (dropout's
    random masks: not comparable) only the output is judged."""
    errors: dict[str, Any] = {"output": relative_error(side["output"], ref["output"])}
    errors["loss"] = None if ref.get("loss") is None else relative_error(side["loss"], ref["loss"])
    # a gradient that is zero in exact arithmetic (a bias before BatchNormalization) is only
    # rounding noise: measured against a thousandth of the largest gradient
    refs = ref.get("gradients") or {}
    floor = 1e-3 * max((float(np.abs(r).max()) for r in refs.values()), default=0.0)
    errors["gradients"] = {
        key: relative_error(side["gradients"][key], r, floor) for key, r in refs.items()
    }
    return errors


def judge(
    peer: str, label: str, reference: str, ours: dict, theirs: dict, ref: dict
) -> dict[str, Any]:
    """The guard's verdict on cnnkit (`ours`) and the peer named `peer` (`theirs`, shown as
    `label`) against `ref` (each as side_errors takes them). Raises only when cnnkit is off."""
    sides = {"cnnkit": side_errors(ours, ref), peer: side_errors(theirs, ref)}
    per_array = {}
    for name, side in sides.items():
        errors = {"output": side["output"], "loss": side["loss"]}
        errors.update({f"gradient of {k}": v for k, v in side["gradients"].items()})
        per_array[name] = {k: v for k, v in errors.items() if v is not None}
        worst = max(per_array[name].items(), key=lambda e: e[1])
        side["max"], side["worst"] = worst[1], worst[0]
        side["ok"] = worst[1] <= TOLERANCE
    mine, others = per_array["cnnkit"], per_array[peer]
    sides["cnnkit"]["ok"] = all(
        e <= TOLERANCE or e <= PEER_FACTOR * _peer_bound(k, others) for k, e in mine.items()
    )
    check: dict[str, Any] = {
        "peer": peer,
        "peer_label": label,
        "reference": reference,
        "measure": "max |x - reference| / max |reference|, per array",
        "tolerance": TOLERANCE,
        **sides,
        "ok": sides["cnnkit"]["ok"],
    }
    worst = sides["cnnkit"]
    if not worst["ok"]:
        raise CnnkitError(
            f"cnnkit's {worst['worst']} is off by {worst['max']:.2e} from a float64 reference "
            f"with the same weights and batch (tolerance {TOLERANCE:.0e}; {label} in float32 "
            f"is off by {sides[peer]['max']:.2e} at most)",
            hint=f"A bug in cnnkit's kernels, or in how the {label} twin (the reference) "
            "builds this spec: please report it with the spec.",
        )
    return check


def _peer_bound(key: str, peer_errors: dict[str, float]) -> float:
    """How far off the peer's own float32 shows that an array can be without being wrong.

    An array as far off as the peer's float32 on the same array is ill-conditioned (the gradient
    of a bias just before a BatchNormalization, zero in exact arithmetic). In a deep network a
    relu whose input is within rounding of zero flips its mask in either float32, and where
    that hits differs from side to side: on configs/resnet20.yaml at batch 128 PyTorch's worst
    kernel gradient was 2.5e-03 off on one layer and cnnkit's 3.7e-03 on another, each closer on
    the other's. So where the peer's float32 exceeds the tolerance on some gradient (the
    network is ill-conditioned in float32), a gradient may be as far off as the peer's worst.
    A wrong formula is off by 1e-2 or more, far beyond both."""
    own = peer_errors.get(key, 0.0)
    if not key.startswith("gradient of "):
        return own
    gradients = [e for k, e in peer_errors.items() if k.startswith("gradient of ")]
    worst = max(gradients, default=0.0)
    return max(own, worst) if worst > TOLERANCE else own


def cnnkit_side(ours, with_gradients: bool) -> dict[str, Any]:
    """cnnkit's float32 side of the guard (cnnkit.bench._CnnkitRunner `ours`): its inference
    output and, `with_gradients`, the loss (regularization included) and every parameter's
    gradient of one training batch, in cnnkit's layout. Neither the weights nor the moving
    statistics change (a training forward updates BatchNormalization's: they are put back, so
    that the next peer's guard sees the model its twin copied)."""
    side: dict[str, Any] = {"output": ours.infer(), "loss": None, "gradients": {}}
    if with_gradients:
        saved = [(layer.state, {k: v.copy() for k, v in layer.state.items()})
                 for layer in ours.model.layers]  # fmt: skip
        logits = ours.model.forward(ours.x, training=True)
        loss, dlogits = ours.loss_fn(logits, ours.y)
        ours.model.backward(dlogits)
        side["loss"] = loss + ours.model.regularization_loss()
        side["gradients"] = {k: g.copy() for k, g in ours.model.named_grads().items()}
        for state, arrays in saved:
            for key, array in arrays.items():
                np.copyto(state[key], array)
    return side
