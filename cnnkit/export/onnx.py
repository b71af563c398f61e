"""A cnnkit model as one ONNX model: raw pixels in, class probabilities out (the contract in
cnnkit.export), built with onnx.helper and checked with onnx.checker.

The graph: image (N, H, W, C) 0-255 -> the run's Preprocessor (rescale, samplewise and
featurewise normalisation, in its order and float32 constants) -> NCHW -> every layer the
model uses, wired by `layer.sources` (cnnkit.export.layers) -> the loss's head (softmax,
sigmoid or none: Loss.class_probabilities, a one-unit output as [1 - p, p]) -> probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as onnx_helper

from cnnkit import __version__
from cnnkit.data.augment import EPSILON, Preprocessor
from cnnkit.errors import CnnkitError, VerificationError
from cnnkit.export.graph import Graph
from cnnkit.export.layers import NHWC_TO_NCHW, activation, convert_layer
from cnnkit.io import atomic_write_bytes, json_safe
from cnnkit.nn.losses import Loss
from cnnkit.nn.model import Model

INPUT = "image"
OUTPUT = "probabilities"
DEFAULT_OPSET = 17
MIN_OPSET = 13  # Softmax on one axis, Pad's pads as an input


def check_opset(opset: int) -> int:
    """The opsets this export writes: 13 to the newest the installed onnx knows."""
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise CnnkitError(
            f"opset {opset} is not supported",
            where="--opset",
            hint=f"Valid: {MIN_OPSET} to {newest} (onnx {onnx.__version__}); the default is "
            f"{DEFAULT_OPSET}.",
        )
    return opset


def preprocess(g: Graph, x: str, pre: Preprocessor) -> str:
    """Preprocessor.__call__ on raw pixels, in its order: rescale, samplewise centre and
    std, featurewise mean and std (x / (std + 1e-6), Keras' standardize()), on NHWC."""
    x = g.op("Mul", [x, g.const("rescale", np.float32(pre.rescale))], "rescaled")
    if pre.samplewise_center:
        x = g.op("Sub", [x, g.reduce_mean(x, [1, 2, 3], "sample_mean")], "sample_centered")
    if pre.samplewise_std_normalization:
        centred = g.op("Sub", [x, g.reduce_mean(x, [1, 2, 3], "sample_mean")], "sample_dev")
        variance = g.reduce_mean(g.op("Mul", [centred, centred], "sample_sq"), [1, 2, 3], "var")
        std = g.op("Sqrt", [variance], "sample_std")
        std = g.op("Add", [std, g.const("sample_epsilon", np.float32(EPSILON))], "sample_std")
        x = g.op("Div", [x, std], "sample_scaled")
    if pre.mean is not None:
        x = g.op("Sub", [x, g.const("featurewise_mean", pre.mean)], "featurewise_centered")
    if pre.std is not None:
        std = np.asarray(pre.std, np.float32) + np.float32(EPSILON)  # as Preprocessor computes it
        x = g.op("Div", [x, g.const("featurewise_std", std)], "featurewise_scaled")
    return x


def head(g: Graph, logits: str, loss_fn: Loss, units: int) -> str:
    """Loss.class_probabilities: the head activation, then [1 - p, p] for one unit."""
    p = activation(g, loss_fn.head, logits, "head")
    if units == 1:
        one_minus = g.op("Sub", [g.const("one", np.float32(1.0)), p], "head/negative")
        p = g.op("Concat", [one_minus, p], "head/two_classes", axis=1)
    return g.op("Identity", [p], "head", output=OUTPUT)


def model_graph(g: Graph, model: Model, x: str) -> str:
    """Every layer the model uses, each reading its sources' outputs (-1: x)."""
    names = model.layer_names()
    outputs: dict[int, str] = {-1: x}
    for layer in model.layers:
        if layer.index in model.skipped:
            continue
        xs = [outputs[s] for s in layer.sources]
        outputs[layer.index] = convert_layer(g, layer, xs, names[layer.index])
    return outputs[len(model.layers) - 1]


def to_onnx(
    model: Model,
    loss_fn: Loss,
    preprocessor: Preprocessor,
    metadata: dict[str, str] | None = None,
    opset: int = DEFAULT_OPSET,
    name: str = "cnnkit",
) -> onnx.ModelProto:
    """The ONNX model of a built cnnkit model (weights loaded), its preprocessing and head."""
    if len(model.input_shape) != 3:
        raise CnnkitError(
            f"the model's input shape {list(model.input_shape)} is not an image's (H, W, C)",
            where="model.input_shape",
        )
    g = Graph(check_opset(opset))
    image = g.reserve(INPUT)
    g.reserve(OUTPUT)
    x = preprocess(g, image, preprocessor)
    x = g.op("Transpose", [x], "to_nchw", perm=NHWC_TO_NCHW)
    logits = model_graph(g, model, x)
    units = model.layers[-1].output_shape[0]
    head(g, logits, loss_fn, units)
    classes = 2 if units == 1 else units
    graph = onnx_helper.make_graph(
        g.nodes,
        name,
        [onnx_helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", *model.input_shape])],
        [onnx_helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", classes])],
        g.initializers,
    )
    opsets = [onnx_helper.make_opsetid("", opset)]
    proto = onnx_helper.make_model(
        graph, opset_imports=opsets, producer_name="cnnkit", producer_version=__version__
    )
    proto.ir_version = onnx_helper.find_min_ir_version_for(opsets)  # what runtimes read
    proto.doc_string = (
        f"input {INPUT}: float32 (N, {', '.join(map(str, model.input_shape))}) raw pixels "
        f"0-255; output {OUTPUT}: float32 (N, {classes}) class probabilities"
    )
    onnx_helper.set_model_props(proto, metadata or {})
    return proto


def metadata(
    spec: Any, meta: dict[str, Any], checkpoint: Path, class_names: list[str]
) -> dict[str, str]:
    """metadata_props: what a deployment needs to read the input and the output (the
    classes, the input size, colour mode and resize interpolation) and where the model
    came from (cnnkit version, spec hash, checkpoint, its epoch and metrics)."""
    from cnnkit.data.images import ImageOptions
    from cnnkit.errors import ImageError

    height, width, channels = spec.model.input_shape
    try:
        image = ImageOptions.from_spec(spec)
        mode, interpolation = image.color_mode, image.interpolation
    except ImageError:  # neither grayscale, RGB nor RGBA: arrays only
        mode, interpolation = f"{channels} channels", "none"
    return {
        "classes": json.dumps(list(class_names)),
        "input_size": json.dumps([int(height), int(width)]),
        "color_mode": mode,
        "interpolation": interpolation,
        "input_range": "0-255",
        "model_name": spec.name,
        "cnnkit_version": __version__,
        "spec_hash": spec.hash(),
        "checkpoint": checkpoint.name,
        "epoch": json.dumps(meta.get("epoch")),
        "metrics": json.dumps(json_safe(meta.get("metrics") or {})),
    }


def check(proto: onnx.ModelProto) -> None:
    """onnx.checker with full_check (shape inference too); a failure is cnnkit's bug, said
    as a VerificationError (exit code 1)."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise VerificationError(
            f"onnx.checker rejects the exported model: {error}",
            hint="This is a bug in cnnkit's export: please report it with the run's config.yaml.",
        ) from None


def save(proto: onnx.ModelProto, path: Path) -> Path:
    """The model file, written atomically (an earlier file stays whole until replaced)."""
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path
