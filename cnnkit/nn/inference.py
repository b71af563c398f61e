"""The fused inference path: what Model.forward(x, training=False) runs.

In inference nothing calls backward and the weights do not move, so the layers can be grouped
into fewer, larger steps (an InferencePlan, built once per weights version):

- BatchNormalization folded into the Conv2D or Dense before it, when that layer is linear and
  the normalization is its only reader (in a graph another layer may read the convolution's
  output: then it is not folded): w' = w * s, b' = (b - moving_mean) * s + beta with
  s = gamma / sqrt(moving_variance + epsilon), per output channel, computed in float64;
- relu (the layer's own, or an Activation layer after it) fused into the convolution kernel or
  applied in place after Dense; a BatchNormalization that cannot be folded becomes one scale
  and shift pass with its relu, and Add followed by relu one pass;
- MaxPooling2D after a convolution run in the same step, from a buffer the step keeps, and
  without the argmax that only backward reads;
- Dropout skipped, Flatten a view;
- every intermediate output written into a buffer reused from batch to batch: a buffer goes
  back to the pool after its last reader, so a later step reuses it (the model's output is a
  fresh array, which the caller may keep).

The fused path computes the same function: outputs equal the layer-by-layer path
(Model.forward(..., fused=False)) bit for bit where nothing is folded, within float32
rounding where a BatchNormalization is (tests/nn/test_inference.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cnnkit.kernels.nojit import lazy
from cnnkit.nn.activations import ACTIVATIONS
from cnnkit.nn.build import reader_counts, unused_layers
from cnnkit.nn.layers.base import Layer
from cnnkit.nn.layers.conv import Conv2D
from cnnkit.nn.layers.core import Activation, Dense, Dropout, Flatten
from cnnkit.nn.layers.merging import Add
from cnnkit.nn.layers.normalization import BatchNormalization
from cnnkit.nn.layers.pooling import MaxPooling2D

(conv2d_forward,) = lazy("cnnkit.kernels.conv", "conv2d_forward")
(grouped_conv2d_forward,) = lazy("cnnkit.kernels.grouped", "grouped_conv2d_forward")
(dense,) = lazy("cnnkit.kernels.dense", "dense")
add_relu, maxpool2d_infer, scale_shift = lazy(
    "cnnkit.kernels.fused", "add_relu", "maxpool2d_infer", "scale_shift"
)


class Step:
    """One step of a plan: reads `sources` (slots: layer positions, -1 the model's input),
    writes slot `slot` (the last layer it covers). `shape`: the per-image shape of the buffer
    it writes into (None: it makes its own array, or a view)."""

    shape: tuple[int, ...] | None = None

    def __init__(self, layers: list[Layer], sources: tuple[int, ...]):
        self.layers = layers
        self.sources = sources
        self.slot = layers[-1].index

    def run(self, xs: list[np.ndarray], out: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def _out(self, out: np.ndarray | None, n: int, dtype) -> np.ndarray:
        return np.empty((n, *self.shape), dtype) if out is None else out


class LayerStep(Step):
    """A layer as the layer-by-layer path runs it."""

    def run(self, xs, out):
        layer = self.layers[0]
        y = layer.forward(xs if layer.merges else xs[0], False)
        layer.release_cache()
        return y


class ViewStep(Step):
    """Dropout (its input) and Flatten (a view of its input)."""

    def run(self, xs, out):
        layer = self.layers[0]
        return xs[0].reshape(xs[0].shape[0], -1) if isinstance(layer, Flatten) else xs[0]


def _activation(layer) -> Callable[[np.ndarray], np.ndarray] | None:
    """The activation function a Conv2D/Dense applies after its kernel (not relu, which the
    steps fuse; None when linear or a logits head)."""
    name = layer._activation_name()
    if layer.returns_logits or name == "linear":
        return None
    forward, kwargs = ACTIVATIONS[name][0], layer._activation_kwargs()
    return lambda z: forward(z, **kwargs)


class KernelStep(Step):
    """Conv2D or Dense, with what it absorbed: a folded BatchNormalization, relu, max pooling
    (convolutions), Dropout and a final Flatten."""

    def __init__(self, layers, sources, kernel, bias, relu, post, pool, flatten):
        super().__init__(layers, sources)
        self.kernel, self.bias, self.relu, self.post = kernel, bias, relu, post
        self.pool, self.flatten = pool, flatten
        head = layers[0]
        self.conv = isinstance(head, Conv2D)
        self.shape = (pool or head).output_shape
        self.scratch: np.ndarray | None = None

    def run(self, xs, out):
        x = np.ascontiguousarray(xs[0])
        y = self._out(out, x.shape[0], x.dtype)
        if not self.conv:
            dense(x, self.kernel, self.bias, y, self.relu)
        elif self.pool is None:
            self._convolve(x, y)
        else:
            self._convolve_pool(x, y)
        if self.post is not None:
            y = self.post(y)
        return y.reshape(y.shape[0], -1) if self.flatten else y

    def _convolve(self, x, y) -> None:
        head = self.layers[0]
        groups = head.options["groups"]
        if groups == 1:
            conv2d_forward(x, self.kernel, self.bias, *head._window(), y, self.relu)
        else:
            grouped_conv2d_forward(x, self.kernel, self.bias, groups, *head._window(), y, self.relu)

    def _convolve_pool(self, x, y) -> None:
        """The convolution into the step's own buffer (kept from batch to batch), then the
        pooling without argmax. Pooling each chunk of a few images right after its
        convolution, while the chunk is in L2, measured no faster on the mnist_basic and
        mnist_lenet layers (2 cores): the whole batch at once it is."""
        head, pool = self.layers[0], self.pool
        n = x.shape[0]
        if self.scratch is None or self.scratch.shape[0] < n or self.scratch.dtype != x.dtype:
            self.scratch = np.empty((n, *head.output_shape), x.dtype)
        z = self.scratch[:n]
        self._convolve(x, z)
        (ph, pw), (sh, sw) = pool.options["pool_size"], pool.strides
        maxpool2d_infer(z, ph, pw, sh, sw, pool.pad_top, pool.pad_left, y)


class PoolStep(Step):
    """MaxPooling2D alone: no argmax."""

    def __init__(self, layers, sources):
        super().__init__(layers, sources)
        self.shape = layers[0].output_shape

    def run(self, xs, out):
        pool, x = self.layers[0], np.ascontiguousarray(xs[0])
        y = self._out(out, x.shape[0], x.dtype)
        (ph, pw), (sh, sw) = pool.options["pool_size"], pool.strides
        maxpool2d_infer(x, ph, pw, sh, sw, pool.pad_top, pool.pad_left, y)
        return y


class ScaleShiftStep(Step):
    """BatchNormalization with moving statistics as y = x * scale + shift, then its relu."""

    def __init__(self, layers, sources, relu):
        super().__init__(layers, sources)
        bn = layers[0]
        self.shape, self.relu = bn.output_shape, relu
        self.scale, self.shift = _bn_scale_shift(bn)

    def run(self, xs, out):
        x = np.ascontiguousarray(xs[0])
        y = self._out(out, x.shape[0], x.dtype)
        c = x.shape[-1]
        scale, shift = self.scale.astype(x.dtype), self.shift.astype(x.dtype)
        scale_shift(x.reshape(-1, c), scale, shift, self.relu, y.reshape(-1, c))
        return y


class AddStep(Step):
    """Add of two arrays of its output's shape, then its relu."""

    def __init__(self, layers, sources, relu):
        super().__init__(layers, sources)
        self.shape, self.relu = layers[0].output_shape, relu

    def run(self, xs, out):
        a, b = (np.ascontiguousarray(x) for x in xs)
        y = self._out(out, a.shape[0], a.dtype)
        add_relu(a.reshape(-1), b.reshape(-1), self.relu, y.reshape(-1))
        return y


def plan_kernels(layers: list[Layer]) -> list[str]:
    """The kernels of cnnkit.kernels.fused an inference plan of these layers may call (the
    warm-up's compile estimate; the layers' own kernels it finds on their classes)."""
    kinds = {
        maxpool2d_infer: MaxPooling2D,
        scale_shift: BatchNormalization,
        add_relu: Add,
    }
    return [k.kernel for k, cls in kinds.items() if any(isinstance(la, cls) for la in layers)]


def _bn_scale_shift(bn: BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """(s, beta - moving_mean * s), s = gamma / sqrt(moving_variance + epsilon), in float64."""
    c = bn.input_shape[-1]
    gamma = bn.params.get("gamma", np.ones(c)).astype(np.float64)
    beta = bn.params.get("beta", np.zeros(c)).astype(np.float64)
    mean = bn.state["moving_mean"].astype(np.float64)
    var = bn.state["moving_variance"].astype(np.float64)
    scale = gamma / np.sqrt(var + bn.options["epsilon"])
    return scale, beta - mean * scale


def _is_relu(layer: Layer) -> bool:
    return (
        isinstance(layer, Activation)
        and layer.options["activation"] == "relu"
        and not layer.returns_logits
    )


class InferencePlan:
    """The steps of a model's inference and the buffers they write into.

    `key` identifies the weights version it was built from (Model.forward rebuilds the plan
    when a training pass ran, a checkpoint was loaded, or a weight array was replaced)."""

    def __init__(self, layers: list[Layer], key: Any = None):
        self.key = key
        skipped = {layer.index for layer in unused_layers(layers)}
        self.layers = [layer for layer in layers if layer.index not in skipped]
        self.readers = reader_counts(layers)
        self.reader_of: dict[int, Layer] = {}  # an output's only reader
        for layer in self.layers:
            for s in layer.sources:
                if s >= 0 and self.readers[s] == 1:
                    self.reader_of[s] = layer
        self.last = layers[-1].index
        self.steps = self._group()
        self.free: dict[tuple, list[np.ndarray]] = {}  # buffers by (per-image shape, dtype)
        self.pooled: list[np.ndarray] = []  # every buffer made

    # -- grouping --------------------------------------------------------------------------
    def _next(self, tail: Layer) -> Layer | None:
        """The layer that can join tail's step: tail's only reader, reading only tail."""
        if tail.index == self.last:
            return None
        nxt = self.reader_of.get(tail.index)
        return nxt if nxt is not None and nxt.sources == (tail.index,) else None

    def _group(self) -> list[Step]:
        taken: set[int] = set()
        steps = []
        for layer in self.layers:
            if layer.index in taken:
                continue
            step = self._step(layer)
            taken.update(covered.index for covered in step.layers)
            steps.append(step)
        return steps

    def _step(self, head: Layer) -> Step:
        sources = head.sources
        if isinstance(head, Conv2D | Dense):
            return self._kernel_step(head, sources)
        if isinstance(head, Dropout | Flatten):
            return ViewStep([head], sources)
        if isinstance(head, MaxPooling2D):
            return PoolStep([head], sources)
        fusable_add = (
            isinstance(head, Add)
            and len(sources) == 2
            and all(tuple(s) == head.output_shape for s in head.input_shapes)
        )
        if isinstance(head, BatchNormalization) or fusable_add:
            nxt = self._next(head)
            layers = [head, nxt] if nxt is not None and _is_relu(nxt) else [head]
            cls = ScaleShiftStep if isinstance(head, BatchNormalization) else AddStep
            return cls(layers, sources, len(layers) == 2)
        return LayerStep([head], sources)

    def _kernel_step(self, head: Conv2D | Dense, sources) -> KernelStep:
        kernel = head.params["kernel"]
        bias = head.params.get("bias")
        bias = np.zeros(kernel.shape[-1], kernel.dtype) if bias is None else bias
        name = head._activation_name()
        relu = name == "relu" and not head.returns_logits
        post = None if relu else _activation(head)
        linear = not relu and post is None and not head.returns_logits
        layers: list[Layer] = [head]
        pool = None
        flatten = False
        while (nxt := self._next(layers[-1])) is not None:
            if isinstance(nxt, Dropout):
                pass
            elif isinstance(nxt, BatchNormalization) and linear and pool is None:
                kernel, bias = _fold(kernel, bias, nxt)
            elif _is_relu(nxt) and linear and pool is None:
                relu, linear = True, False
            elif isinstance(nxt, MaxPooling2D) and isinstance(head, Conv2D) and post is None:
                if pool is not None:
                    break
                pool, linear = nxt, False
            elif isinstance(nxt, Flatten):
                layers.append(nxt)
                flatten = True
                break
            else:
                break
            layers.append(nxt)
        return KernelStep(layers, sources, kernel, bias, relu, post, pool, flatten)

    # -- running ---------------------------------------------------------------------------
    def _take(self, shape: tuple[int, ...], n: int, dtype) -> np.ndarray:
        free = self.free.setdefault((shape, np.dtype(dtype).str), [])
        for i, buf in enumerate(free):
            if buf.shape[0] >= n:
                return free.pop(i)[:n]
        buf = np.empty((n, *shape), dtype)
        self.pooled.append(buf)
        return buf

    def forward(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        values: dict[int, np.ndarray] = {-1: x}
        owner: dict[int, np.ndarray] = {}  # slot -> the pooled buffer it was written into
        waiting = list(self.readers)
        for step in self.steps:
            buf = None
            if step.shape is not None and step.slot != self.last:
                buf = self._take(step.shape, n, x.dtype)
                owner[step.slot] = buf
            values[step.slot] = step.run([values[s] for s in step.sources], buf)
            for s in step.sources:
                if s >= 0:
                    waiting[s] -= 1
                    if waiting[s] == 0:
                        self._release(values, owner, s)
        y = values[self.last]
        # a last step that hands on a view (a Flatten or Dropout last): never a pooled buffer
        return y.copy() if any(np.may_share_memory(y, b) for b in self.pooled) else y

    def _release(self, values: dict, owner: dict, slot: int) -> None:
        values.pop(slot, None)
        buf = owner.pop(slot, None)
        if buf is not None:
            full = buf if buf.base is None else buf.base
            self.free[(full.shape[1:], full.dtype.str)].append(full)


def _fold(kernel: np.ndarray, bias: np.ndarray, bn: BatchNormalization):
    """The kernel and bias of a linear layer followed by `bn` in inference (float64 math)."""
    scale, shift = _bn_scale_shift(bn)
    k = (kernel.astype(np.float64) * scale).astype(kernel.dtype)
    b = (bias.astype(np.float64) * scale + shift).astype(kernel.dtype)
    return np.ascontiguousarray(k), b
