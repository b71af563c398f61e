"""Whole models as ONNX (cnnkit.export.onnx), built from spec text with random weights and run
by onnxruntime next to cnnkit's inference path (predict_probabilities, what evaluate and
predict run): graphs (a residual block, Concatenate on channels and on rows, a broadcast
channel gate, every merge), the preprocessing inside the graph (rescale, samplewise and
featurewise normalisation), the heads (softmax, one sigmoid unit as two columns, a linear
one, softmax after a layer without activation), the metadata, the checker, the opsets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import helper as onnx_helper  # noqa: E402

from cnnkit import __version__  # noqa: E402
from cnnkit.data.augment import Preprocessor  # noqa: E402
from cnnkit.data.batches import Split  # noqa: E402
from cnnkit.errors import CnnkitError, VerificationError  # noqa: E402
from cnnkit.export.graph import Graph  # noqa: E402
from cnnkit.export.onnx import (  # noqa: E402
    DEFAULT_OPSET,
    INPUT,
    OUTPUT,
    check,
    check_opset,
    metadata,
    preprocess,
    save,
    to_onnx,
)
from cnnkit.export.verify import run_onnx, session  # noqa: E402
from cnnkit.spec.build import build_loss, build_model  # noqa: E402
from cnnkit.spec.config import parse_spec  # noqa: E402
from cnnkit.train.trainer import predict_probabilities  # noqa: E402
from tests.export.test_layers import TOL  # noqa: E402

GRAPH = """
name: exported_graph
seed: 4
data: {source: synthetic, num_classes: 4}
augmentation: {featurewise_center: true, featurewise_std_normalization: true}
model:
  input_shape: [10, 9, 3]
  layers:
    - Rescaling: {scale: 2.0, offset: -1.0}
    - Conv2D: {filters: 6, kernel_size: 3, padding: same, activation: relu, name: stem}
    - Conv2D: {filters: 6, kernel_size: 3, strides: 2, padding: same, use_bias: false}
    - BatchNormalization: {name: main}
    - Conv2D: {filters: 6, kernel_size: 1, strides: 2, inputs: [stem], name: shortcut}
    - Add: {inputs: [main, shortcut], name: residual}
    - Activation: {activation: relu, name: block}
    - GlobalAveragePooling2D: {keepdims: true}
    - Conv2D: {filters: 6, kernel_size: 1, activation: sigmoid, name: gate}
    - Multiply: {inputs: [block, gate], name: gated}
    - DepthwiseConv2D: {kernel_size: 3, padding: same, inputs: [gated], name: dw}
    - SeparableConv2D: {filters: 4, kernel_size: 3, padding: same, inputs: [gated], name: side}
    - Concatenate: {inputs: [dw, side], name: channels}
    - ZeroPadding2D: {padding: [[1, 0], [0, 1]], inputs: [gated], name: padded}
    - Conv2D: {filters: 10, kernel_size: 2, inputs: [padded], name: rows_conv}
    - Concatenate: {axis: 1, inputs: [channels, rows_conv], name: rows}
    - SpatialDropout2D: {rate: 0.3}
    - MaxPooling2D: {pool_size: 2, padding: same, name: pooled}
    - AveragePooling2D: {pool_size: 2, padding: same, inputs: [rows], name: averaged}
    - Subtract: {inputs: [pooled, averaged], name: difference}
    - Maximum: {inputs: [pooled, averaged, difference], name: top}
    - Minimum: {inputs: [pooled, averaged], name: bottom}
    - Average: {inputs: [top, bottom, difference], name: mean}
    - GlobalMaxPooling2D: {}
    - Dropout: {rate: 0.5}
    - Dense: {units: 8, activation: gelu}
    - LeakyReLU: {negative_slope: 0.1}
    - Dense: {units: 4, activation: softmax}
loss: sparse_categorical_crossentropy
"""


def pixels(n: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.uint8)


def randomized(spec, seed: int = 1):
    """The spec's model with random weights and BatchNormalization statistics."""
    model = build_model(spec).build(spec.seed)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for array in layer.params.values():
            array[...] += rng.standard_normal(array.shape).astype(np.float32) * 0.1
        for name, array in layer.state.items():
            array[...] = rng.uniform(0.3, 2.0, array.shape) if "variance" in name else 0.2
    return model


def parity(text: str, n: int = 6, opset: int = DEFAULT_OPSET, train=None):
    """(onnxruntime's, cnnkit's) probabilities of n random images, and the ONNX model."""
    spec = parse_spec(text)
    model = randomized(spec)
    loss_fn = build_loss(spec)
    shape = spec.model.input_shape
    train = train if train is not None else Split(pixels(32, shape, 9), np.zeros(32, np.int64))
    pre = Preprocessor.from_spec(spec, train)
    proto = to_onnx(model, loss_fn, pre, opset=opset)
    check(proto)
    x = pixels(n, shape)
    ours = predict_probabilities(model, loss_fn, x, pre, 4)
    return run_onnx(proto.SerializeToString(), x), ours, proto


def test_a_graph_of_every_merge_and_branch_matches_cnnkit():
    theirs, ours, proto = parity(GRAPH)
    assert theirs.shape == (6, 4)
    np.testing.assert_allclose(theirs, ours, rtol=TOL, atol=TOL)
    ops = {node.op_type for node in proto.graph.node}
    assert {"Add", "Mul", "Concat", "Sub", "Max", "Min", "Pad", "BatchNormalization"} <= ops


def test_the_graph_has_one_image_input_and_one_probabilities_output():
    _, _, proto = parity(GRAPH, n=1)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert (inp.name, dims(inp)) == (INPUT, ["N", 10, 9, 3])
    assert (out.name, dims(out)) == (OUTPUT, ["N", 4])
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


PRE = """
seed: 2
data: {source: synthetic, num_classes: 3, rescale: 0.00392156862745098}
augmentation: {AUG}
model:
  input_shape: [6, 5, 3]
  layers:
    - Flatten: {}
    - Dense: {units: 3, activation: softmax}
"""


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize(
    "augmentation",
    [
        "{}",
        "{featurewise_center: true, featurewise_std_normalization: true}",
        "{samplewise_center: true, samplewise_std_normalization: true}",
        "{samplewise_std_normalization: true, featurewise_center: true}",
    ],
    ids=["rescale", "featurewise", "samplewise", "mixed"],
)
def test_the_preprocessing_inside_the_graph_is_the_runs(augmentation, opset):
    """Raw pixels in: the graph's first part gives what the run's Preprocessor gives."""
    spec = parse_spec(PRE.replace("{AUG}", augmentation))
    train = Split(pixels(40, (6, 5, 3), 3), np.zeros(40, np.int64))
    pre = Preprocessor.from_spec(spec, train)
    g = Graph(opset)
    out = preprocess(g, g.reserve("image"), pre)
    g.op("Identity", [out], "y", output=g.reserve("y"))
    value = lambda name: onnx_helper.make_tensor_value_info(name, 1, None)  # noqa: E731
    graph = onnx_helper.make_graph(g.nodes, "pre", [value("image")], [value("y")], g.initializers)
    proto = onnx_helper.make_model(graph, opset_imports=[onnx_helper.make_opsetid("", opset)])
    proto.ir_version = 8
    x = pixels(5, (6, 5, 3))
    (y,) = session(proto.SerializeToString()).run(None, {"image": x.astype(np.float32)})
    np.testing.assert_allclose(y, pre(x), rtol=1e-5, atol=1e-5)
    theirs, ours, _ = parity(PRE.replace("{AUG}", augmentation), opset=opset, train=train)
    np.testing.assert_allclose(theirs, ours, rtol=TOL, atol=TOL)


HEADS = """
seed: 3
data: {source: synthetic, num_classes: CLASSES}
model:
  input_shape: [6, 6, 1]
  layers:
    - Conv2D: {filters: 4, kernel_size: 3}
LAST
loss: LOSS
"""


@pytest.mark.parametrize(
    "classes, last, loss, columns",
    [
        (
            2,
            "    - Flatten: {}\n    - Dense: {units: 1, activation: sigmoid}",
            "binary_crossentropy",
            2,
        ),
        (3, "    - Flatten: {}\n    - Dense: {units: 3}", "mean_squared_error", 3),
        (
            4,
            "    - GlobalAveragePooling2D: {}",
            "{name: categorical_crossentropy, from_logits: true}",
            4,
        ),
    ],
    ids=["one-sigmoid-unit", "linear-mse", "softmax-after-pooling"],
)
def test_the_head_is_class_probabilities(classes, last, loss, columns):
    """One sigmoid unit p: two columns [1 - p, p], as predict and evaluate report; a linear
    head: the raw outputs; a last layer without activation: the loss's softmax after it."""
    text = HEADS.replace("CLASSES", str(classes)).replace("LAST", last).replace("LOSS", loss)
    text = text.replace("filters: 4", f"filters: {4 if columns == 4 else 2}")
    theirs, ours, _ = parity(text)
    assert theirs.shape == (6, columns)
    np.testing.assert_allclose(theirs, ours, rtol=TOL, atol=TOL)
    if columns == 2:
        np.testing.assert_allclose(theirs.sum(axis=1), 1.0, rtol=1e-6)


def test_metadata_names_the_classes_input_and_origin():
    spec = parse_spec(GRAPH)
    meta = {"epoch": 3, "metrics": {"val_accuracy": 0.75, "val_auc": float("nan")}}
    props = metadata(spec, meta, Path("runs/x/checkpoints/best.npz"), ["a", "b", "c", "d"])
    model = to_onnx(randomized(spec), build_loss(spec), Preprocessor(1.0), props)
    found = {p.key: p.value for p in model.metadata_props}
    assert json.loads(found["classes"]) == ["a", "b", "c", "d"]
    assert json.loads(found["input_size"]) == [10, 9]
    assert (found["color_mode"], found["input_range"]) == ("rgb", "0-255")
    assert found["spec_hash"] == spec.hash() and found["checkpoint"] == "best.npz"
    assert json.loads(found["metrics"]) == {"val_accuracy": 0.75, "val_auc": None}
    assert json.loads(found["epoch"]) == 3
    assert found["cnnkit_version"] == model.producer_version == __version__


def test_the_checker_passes_the_export_and_rejects_a_broken_graph():
    _, _, proto = parity(GRAPH, n=1)
    onnx.checker.check_model(proto, full_check=True)
    broken = onnx.ModelProto()
    broken.CopyFrom(proto)
    broken.graph.node[3].input[0] = "no_such_tensor"
    with pytest.raises(VerificationError, match="onnx.checker rejects") as caught:
        check(broken)
    assert caught.value.exit_code == 1


@pytest.mark.parametrize("opset", [12, 999])
def test_an_opset_out_of_range_says_which_are_valid(opset):
    with pytest.raises(CnnkitError, match=f"opset {opset} is not supported") as caught:
        check_opset(opset)
    assert caught.value.where == "--opset" and "Valid: 13 to" in caught.value.hint
    assert caught.value.exit_code == 2


def test_save_writes_a_loadable_file_in_place_of_the_old(tmp_path):
    _, _, proto = parity(GRAPH, n=1)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an older export")
    save(proto, path)
    assert onnx.load(str(path)) == proto
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left behind
