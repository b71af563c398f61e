"""The ONNX graph being built: nodes, initializers and unique tensor names (onnx.helper)."""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import NodeProto, TensorProto, numpy_helper
from onnx import helper as onnx_helper


class Graph:
    """Nodes in the order they are added (a topological order: every input exists before
    the node that reads it) and the weights as initializers. Every tensor name is unique:
    a base name (a layer's name) gets _1, _2, ... on reuse."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._taken: set[str] = set()

    def name(self, base: str) -> str:
        """A tensor or node name not used yet, from base."""
        name, n = base, 0
        while name in self._taken:
            n += 1
            name = f"{base}_{n}"
        self._taken.add(name)
        return name

    def reserve(self, name: str) -> str:
        """Take a name exactly (the graph's input and output)."""
        if name in self._taken:
            raise ValueError(f"tensor name {name!r} is taken")
        self._taken.add(name)
        return name

    def const(self, base: str, array: Any, dtype=np.float32) -> str:
        """An initializer holding array (float32 unless told: int64 for shapes and pads)."""
        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, output: str | None = None, **attrs):
        """Add one node with one output (named from base, or `output` exactly); returns the
        output's name."""
        out = output if output is not None else self.name(base)
        node = self.name(f"{base}/{op_type}")
        self.nodes.append(onnx_helper.make_node(op_type, inputs, [out], name=node, **attrs))
        return out

    def reduce_mean(self, x: str, axes: list[int], base: str) -> str:
        """ReduceMean keeping the reduced axes: axes are an attribute before opset 18, an
        input from 18 on."""
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const(f"{base}/axes", axes, np.int64)], base)
        return self.op("ReduceMean", [x], base, axes=axes, keepdims=1)
