"""Float64 central finite-difference helpers, shared by the layer, model and loss tests.

Each layer check uses the scalar objective L = sum(forward(x) * R) for a fixed random R, so
that dL/dy = R: backward(R) must match the finite differences of L with respect to the
input and to every trainable weight.
"""

from __future__ import annotations

import numpy as np

from cnnkit.options import resolve_options
from tests import reference as ref

EPS = 1e-6


TOL = 1e-6


KINK_MARGIN = 1e-4  # relu pre-activations must be this far from 0 for FD to be well-defined


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1e-8, np.max(np.abs(a)) + np.max(np.abs(b))))


def numerical_gradient(f, array: np.ndarray, indices=None, eps: float = EPS) -> np.ndarray:
    """Central differences of the scalar f() with respect to `array`, perturbed in place.

    With `indices` (flat indices), only those entries are computed (the rest stay 0).
    """
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    assert np.shares_memory(flat, array)
    for i in range(flat.size) if indices is None else indices:
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def conv_preactivation(conv, x):
    """A Conv2D layer's output before its (fused) activation, from the reference."""
    (sh, sw), (dh, dw) = conv.options["strides"], conv.options["dilation_rate"]
    b = conv.params.get("bias", np.zeros(conv.options["filters"]))
    pad = (conv.pad_top, conv.pad_left)
    return ref.conv2d_forward(
        x, conv.params["kernel"], b, (sh, sw), (dh, dw), pad, conv.output_shape[:2]
    )


def make_layer(cls, user_options, input_shape, seed=0, randomize_params=True):
    """A standalone float64 layer: options resolved, shape inferred, parameters built.

    The parameters are redrawn from a normal distribution so that biases are not all zero.
    """
    options = resolve_options(user_options, cls.OPTIONS, "test")
    layer = cls(options, index=0)
    layer.infer_shape(tuple(input_shape))
    rng = np.random.default_rng(seed)
    layer.create_weights(rng, np.dtype(np.float64))
    if randomize_params:
        for array in layer.params.values():
            array[...] = rng.standard_normal(array.shape) * 0.5
    return layer


def check_layer_gradients(layer, x, training=False, before_forward=None, tol=TOL):
    """FD-check dL/dx and dL/dparam for L = sum(layer.forward(x) * R); return (y, dx).

    x may be a list (a merge layer's inputs): each input's gradient is checked. backward must
    leave R as it was (in a graph the same gradient array can reach several layers)."""
    many = isinstance(x, list)
    xs = [np.array(a, dtype=np.float64) for a in (x if many else [x])]  # own copies: perturbed

    def forward():
        if before_forward is not None:
            before_forward(layer)
        return layer.forward(xs if many else xs[0], training)

    # a copy: in training a layer may write its next forward into the same array (workspace)
    y = forward().copy()
    assert y.dtype == np.float64
    assert y.shape == (xs[0].shape[0], *layer.output_shape)
    r = np.random.default_rng(1234).standard_normal(y.shape)
    dy = r.copy()
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dy, r, err_msg="backward wrote into its dy")
    dxs = dx if many else [dx]
    assert len(dxs) == len(xs)
    for d, a in zip(dxs, xs, strict=True):
        assert d.shape == a.shape and d.dtype == np.float64
    grads = {name: g.copy() for name, g in layer.grads.items()}
    assert set(grads) == set(layer.params), "every parameter needs a gradient, and only those"
    for name, g in grads.items():
        assert g.shape == layer.params[name].shape, name
        assert g.dtype == np.float64, name

    def objective():
        return float(np.sum(forward() * r))

    for k, (d, a) in enumerate(zip(dxs, xs, strict=True)):
        err = rel_error(d, numerical_gradient(objective, a))
        assert err < tol, f"input {k} gradient: relative error {err:.3g}"
    for name, param in layer.params.items():
        err = rel_error(grads[name], numerical_gradient(objective, param))
        assert err < tol, f"{name} gradient: relative error {err:.3g}"
    return y, dx


def away_from_zero(rng, shape, margin=0.1):
    """Random values with |v| >= margin (no relu kink within FD reach)."""
    v = rng.standard_normal(shape)
    return np.sign(v) * (margin + np.abs(v))


def distinct_values(rng, shape, spacing=0.01):
    """A random permutation of distinct, well-separated values (no max-pooling ties)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) - n / 2).reshape(shape) * spacing


def reseed(layer):
    """The same dropout mask for every evaluation of an objective."""
    layer.rng = np.random.default_rng(0)


def spec_text(layers: str, input_shape=(6, 6, 2), classes=3, seed=3) -> str:
    return f"""
name: t
seed: {seed}
data: {{source: synthetic, num_classes: {classes}}}
model:
  input_shape: {list(input_shape)}
  layers:
{layers}
loss: sparse_categorical_crossentropy
"""
