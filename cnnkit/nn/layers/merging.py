"""Merge layers, Keras' names and rules: Add, Subtract, Multiply, Average, Maximum, Minimum
(element-wise, with broadcasting of size-1 axes) and Concatenate (along an axis).

Each takes the outputs of the layers its `inputs:` names (cnnkit.nn.build wires them) and has
no weights; backward returns one gradient per input.
"""

from __future__ import annotations

from functools import reduce
from typing import Any

import numpy as np

from cnnkit.kernels.nojit import lazy
from cnnkit.nn.layers.base import Layer, SavedArray, Shape, format_shape
from cnnkit.options import Option

(add_into,) = lazy("cnnkit.kernels.activations", "add_into")  # numba on the first call


def _unbroadcast(grad: np.ndarray, shape: Shape) -> np.ndarray:
    """The gradient of an input of `shape` (no batch axis) broadcast to grad's shape: summed
    over the axes it was stretched along."""
    axes = tuple(
        i + 1
        for i, (g, s) in enumerate(zip(grad.shape[1:], shape, strict=True))
        if s == 1 and g != 1
    )
    return grad.sum(axis=axes, keepdims=True) if axes else grad


def _one_float_dtype(xs: list[np.ndarray]) -> bool:
    """Whether the arrays are C-contiguous floats of one dtype (cnnkit.kernels.activations'
    add_into takes them)."""
    dtype = xs[0].dtype
    return dtype in (np.float32, np.float64) and all(
        x.dtype == dtype and x.flags.c_contiguous for x in xs
    )


class _Merge(Layer):
    """The element-wise merges: inputs of one shape, or shapes whose axes are equal or 1
    (broadcast, as Keras' merge layers)."""

    merges = True
    min_inputs = 2
    max_inputs: int | None = None

    def describe_inputs(self, shapes: list[Shape]) -> str:
        names = self.inputs or ()
        return ", ".join(
            f"{name} {format_shape(shape)}"
            for name, shape in zip((*names, *["?"] * len(shapes)), shapes, strict=False)
        )

    def check_count(self, shapes: list[Shape]) -> None:
        n = len(shapes)
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            wanted = (
                f"exactly {self.max_inputs}"
                if self.max_inputs == self.min_inputs
                else f"at least {self.min_inputs}"
            )
            raise self.shape_error_of(
                shapes,
                f"needs {wanted} inputs, got {n}",
                hint=f"Name them: inputs: [a, b] (layers given name: a, name: b). Received: "
                f"inputs={list(self.inputs or [])}",
            )

    def shape_error_of(self, shapes: list[Shape], message: str, hint: str | None = None):
        error = self.shape_error(shapes[0] if shapes else (), message, hint)
        error.message = f"{self.keras_name} {message} (inputs: {self.describe_inputs(shapes)})"
        return error

    def compute_output_shape(self, input_shape: list[Shape]) -> Shape:
        self.check_count(input_shape)
        ranks = {len(s) for s in input_shape}
        out = list(input_shape[0])
        fits = len(ranks) == 1
        for shape in input_shape[1:]:
            for axis, size in enumerate(shape if fits else ()):
                if size != out[axis] and 1 not in (size, out[axis]):
                    fits = False
                out[axis] = max(out[axis], size) if fits else out[axis]
        if not fits:
            raise self.shape_error_of(
                input_shape,
                "needs inputs of the same shape (or axes of size 1, broadcast)",
                hint="Make the branches agree: e.g. a 1x1 Conv2D with the same strides and "
                "filters on the shortcut (a projection).",
            )
        return tuple(out)

    def forward(self, xs: list[np.ndarray], training: bool) -> np.ndarray:
        self._xs = xs
        self._training = training
        return self.combine(xs)

    def _combined_into(self, ufunc, xs: list[np.ndarray]) -> np.ndarray:
        """ufunc over the inputs in order, ((x0 op x1) op x2) ..., as reduce does; in
        training into an array kept from step to step (a fresh one page-faults each step:
        8 MB an Add on resnet20) where no input broadcasts."""
        if not (self._training and all(x.shape == xs[0].shape for x in xs)):
            return reduce(ufunc, xs)
        out = self.workspace("out", xs[0].shape, np.result_type(*xs))
        if ufunc is np.add and _one_float_dtype(xs):  # over the threads (same sums)
            flat = out.reshape(-1)
            add_into(xs[0].reshape(-1), xs[1].reshape(-1), flat)
            for x in xs[2:]:
                add_into(flat, x.reshape(-1), flat)
            return out
        ufunc(xs[0], xs[1], out=out)
        for x in xs[2:]:
            ufunc(out, x, out=out)
        return out

    def backward(self, dy: np.ndarray) -> list[np.ndarray]:
        return [
            _unbroadcast(g, shape)
            for g, shape in zip(self.input_grads(dy), self.input_shapes, strict=True)
        ]

    def release_cache(self) -> None:
        super().release_cache()
        self._xs = None

    def combine(self, xs: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def input_grads(self, dy: np.ndarray) -> list[np.ndarray]:
        """dLoss/dInput for each input, at the output's (broadcast) shape."""
        raise NotImplementedError

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        return [SavedArray(self.output_shape)]

    def torch_twin(self, twin: Any) -> None:
        twin.add(twin.merge(self))


class Add(_Merge):
    type_name = "add"
    keras_name = "Add"

    def combine(self, xs):
        return self._combined_into(np.add, xs)

    def input_grads(self, dy):
        return [dy] * len(self.input_shapes)  # not written into (the Layer contract)


class Subtract(_Merge):
    type_name = "subtract"
    keras_name = "Subtract"
    max_inputs = 2

    def combine(self, xs):
        return xs[0] - xs[1]

    def input_grads(self, dy):
        return [dy, -dy]


class Multiply(_Merge):
    type_name = "multiply"
    keras_name = "Multiply"

    def combine(self, xs):
        return self._combined_into(np.multiply, xs)

    def input_grads(self, dy):
        grads = []
        for i in range(len(self._xs)):
            g = dy
            for j, x in enumerate(self._xs):
                if j != i:
                    g = g * x
            grads.append(g)
        return grads

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        return [SavedArray(self.output_shape)]  # its inputs are the other layers' outputs


class Average(_Merge):
    type_name = "average"
    keras_name = "Average"

    def combine(self, xs):
        total = reduce(np.add, xs)
        return total * total.dtype.type(1.0 / len(xs))

    def input_grads(self, dy):
        g = dy * dy.dtype.type(1.0 / len(self.input_shapes))
        return [g] * len(self.input_shapes)


class _Extremum(_Merge):
    """Maximum and Minimum: the gradient goes to the first input holding the extremum (as
    TensorFlow's, whose ties go to the first argument)."""

    pick: Any = np.argmax

    def combine(self, xs):
        stacked = np.stack(np.broadcast_arrays(*xs))
        self._which = self.pick(stacked, axis=0).astype(np.int8)
        return np.take_along_axis(stacked, self._which[None].astype(np.intp), axis=0)[0]

    def input_grads(self, dy):
        return [dy * (self._which == i) for i in range(len(self.input_shapes))]

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        return [SavedArray(self.output_shape), SavedArray(self.output_shape, np.int8)]


class Maximum(_Extremum):
    type_name = "maximum"
    keras_name = "Maximum"
    pick = staticmethod(np.argmax)


class Minimum(_Extremum):
    type_name = "minimum"
    keras_name = "Minimum"
    pick = staticmethod(np.argmin)


class Concatenate(_Merge):
    """Joins its inputs along `axis` (Keras counts the batch axis: -1 or 3 is the channels of
    an image, 1 its rows); every other axis must agree."""

    type_name = "concatenate"
    keras_name = "Concatenate"
    OPTIONS = {"axis": Option("int", default=-1, doc="-1: the channels (the last axis)")}

    def _axis(self, rank: int, shapes: list[Shape]) -> int:
        """The axis within one sample's shape (0-based, batch excluded)."""
        axis = self.options["axis"]
        sample_axis = axis - 1 if axis > 0 else rank + axis
        if axis == 0 or not 0 <= sample_axis < rank:
            raise self.shape_error_of(
                shapes,
                f"cannot join along axis {axis}",
                hint=f"For inputs of {rank + 1} axes (batch first), axis is 1 to {rank} or "
                f"-1 to -{rank} (-1: the last, the channels). Received: axis={axis}",
            )
        return sample_axis

    def compute_output_shape(self, input_shape: list[Shape]) -> Shape:
        self.check_count(input_shape)
        ranks = {len(s) for s in input_shape}
        rank = len(input_shape[0])
        axis = self._axis(rank, input_shape)
        others = {tuple(s[:axis]) + tuple(s[axis + 1 :]) for s in input_shape}
        if len(ranks) != 1 or len(others) != 1:
            raise self.shape_error_of(
                input_shape,
                "requires inputs with matching shapes except for the concatenation axis",
                hint=f"Along axis {self.options['axis']} the sizes may differ; every other "
                "axis must be the same (pool or stride the larger branch to match).",
            )
        out = list(input_shape[0])
        out[axis] = sum(s[axis] for s in input_shape)
        return tuple(out)

    def forward(self, xs: list[np.ndarray], training: bool) -> np.ndarray:
        return np.concatenate(xs, axis=self._axis(len(self.output_shape), []) + 1)

    def backward(self, dy: np.ndarray) -> list[np.ndarray]:
        axis = self._axis(len(self.output_shape), [])
        edges = np.cumsum([s[axis] for s in self.input_shapes])[:-1]
        # contiguous: the kernels upstream read them as such
        return [np.ascontiguousarray(g) for g in np.split(dy, edges, axis=axis + 1)]
