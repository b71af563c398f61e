"""The graph builder (cnnkit.export.graph): unique names, typed constants, ReduceMean's two
forms (axes an attribute before opset 18, an input from 18)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

from onnx import numpy_helper  # noqa: E402

from cnnkit.export.graph import Graph  # noqa: E402


def test_names_are_unique_and_reserved_names_exact():
    g = Graph(17)
    assert g.reserve("image") == "image"
    assert [g.name("conv"), g.name("conv"), g.name("conv")] == ["conv", "conv_1", "conv_2"]
    assert g.name("image") == "image_1"
    with pytest.raises(ValueError, match="taken"):
        g.reserve("conv")


def test_constants_are_float32_unless_told():
    g = Graph(17)
    g.const("w", [1.5, 2.0])
    g.const("pads", [0, 1], np.int64)
    arrays = [numpy_helper.to_array(t) for t in g.initializers]
    assert [a.dtype for a in arrays] == [np.float32, np.int64]
    np.testing.assert_array_equal(arrays[0], [1.5, 2.0])


def test_op_names_its_output_and_node():
    g = Graph(17)
    out = g.op("Relu", ["x"], "conv2d")
    assert out == "conv2d"
    assert (g.nodes[0].op_type, list(g.nodes[0].input), g.nodes[0].name) == (
        "Relu",
        ["x"],
        "conv2d/Relu",
    )
    assert g.op("Identity", [out], "head", output="probabilities") == "probabilities"


@pytest.mark.parametrize("opset, inputs", [(17, 1), (18, 2)])
def test_reduce_mean_follows_the_opset(opset, inputs):
    g = Graph(opset)
    g.reduce_mean("x", [1, 2, 3], "mean")
    (node,) = g.nodes
    assert node.op_type == "ReduceMean" and len(node.input) == inputs
    assert bool(node.attribute) == (opset < 18)
