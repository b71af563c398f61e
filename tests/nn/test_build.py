"""The graph a spec wires (cnnkit.nn.build): `name:` and `inputs:` on any layer, and every
wiring error with file:line:column of the offending value, the closest name suggested, and all
of one spec's errors in one pass; a layer whose output nothing reads is a warning (spec.notes)
and is skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnkit.nn.layers.merging import Add, Concatenate
from cnnkit.spec.build import build_model
from cnnkit.spec.config import parse_spec
from tests.specs import errors_of, position

HEAD = """\
name: g
data: {source: synthetic, num_classes: 3}
model:
  input_shape: [8, 8, 2]
  layers:
"""
LOSS = "loss: sparse_categorical_crossentropy\n"
HEAD_OUT = "    - Flatten: {}\n    - Dense: {units: 3, activation: softmax}\n"

RESIDUAL = """\
    - Conv2D: {filters: 4, kernel_size: 3, padding: same, name: main}
    - Conv2D: {filters: 4, kernel_size: 1, inputs: [input], name: shortcut}
    - Add: {inputs: [main, shortcut]}
"""


def spec_of(layers: str, tail: str = HEAD_OUT) -> str:
    """The layers, then (by default) a Flatten and a 3-unit softmax head."""
    return HEAD + layers + tail + LOSS


def test_a_residual_graph_is_wired_by_name():
    spec = parse_spec(spec_of(RESIDUAL), Path("g.yaml"))
    layers = spec.model.layers
    assert [layer.sources for layer in layers] == [(-1,), (-1,), (0, 1), (2,), (3,)]
    assert isinstance(layers[2], Add) and layers[2].output_shape == (8, 8, 4)
    assert spec.notes == ()
    config = spec.model.to_dict()["layers"]
    assert config[1]["Conv2D"]["inputs"] == ["input"] and config[2] == {
        "Add": {"inputs": ["main", "shortcut"]}
    }


def test_inputs_may_be_one_name_without_a_list():
    text = spec_of(RESIDUAL.replace("inputs: [input]", "inputs: input"))
    assert parse_spec(text).model.layers[1].sources == (-1,)


def test_an_unknown_name_suggests_the_closest_and_points_at_it():
    text = spec_of(RESIDUAL.replace("[main, shortcut]", "[main, shortcat]"))
    (error,) = errors_of(text)
    assert error.message == "unknown layer name 'shortcat' in inputs"
    assert error.hint.startswith("did you mean 'shortcut'? ")
    assert "Names defined before this layer: main, shortcut, input." in error.hint
    where = position(text, "- Add:", "shortcat")
    assert error.where == f"{where} model.layers[2].Add.inputs[1]"
    assert "Add: {inputs: [main, shortcat]}" in error.context


def test_a_reference_to_a_later_layer():
    text = spec_of(
        RESIDUAL.replace(
            "padding: same, name: main", "padding: same, inputs: [shortcut], name: main"
        )
    )
    (error,) = errors_of(text)
    assert error.message == (
        "'shortcut' is defined later (model.layers[1]): a layer's inputs must come before it "
        "in the list"
    )
    assert "Move this layer after it" in error.hint
    where = position(text, "name: main", "shortcut")
    assert error.where == f"{where} model.layers[0].Conv2D.inputs[0]"


def test_a_duplicate_name_points_at_the_second():
    text = spec_of(RESIDUAL.replace("name: shortcut", "name: main").replace("shortcut]", "input]"))
    errors = errors_of(text)
    duplicate = errors[0]
    assert duplicate.message == "duplicate layer name 'main' (first at model.layers[0])"
    assert duplicate.hint == "Every name: must be unique in the model."
    where = position(text, "inputs: [input], name: main", "name: main")
    assert duplicate.where == f"{where} model.layers[1].Conv2D.name"
    # the Add reads the first main (8x8x4) and the input (8x8x2): a second, separate error
    assert [e.where.split(" ")[1] for e in errors] == [
        "model.layers[1].Conv2D.name",
        "model.layers[2].Add",
    ]


def test_a_layer_taking_its_own_output():
    text = spec_of(
        RESIDUAL.replace("inputs: [input], name: shortcut", "inputs: [shortcut], name: shortcut")
    )
    (error,) = errors_of(text)
    assert error.message == "layer 'shortcut' cannot take its own output as input"
    assert "inputs: names earlier layers" in error.hint
    where = position(text, "name: shortcut", "shortcut]")
    assert error.where == f"{where} model.layers[1].Conv2D.inputs[0]"


def test_merge_inputs_of_different_shapes_name_both():
    text = spec_of(
        RESIDUAL.replace("padding: same, name: main", "strides: 2, padding: same, name: main")
    )
    (error,) = errors_of(text)
    assert error.message == (
        "Add needs inputs of the same shape (or axes of size 1, broadcast) "
        "(inputs: main (None, 4, 4, 4), shortcut (None, 8, 8, 4))"
    )
    assert "1x1 Conv2D with the same strides" in error.hint
    assert error.where == f"{position(text, '- Add:', 'Add')} model.layers[2].Add"


def test_concatenate_inputs_that_differ_off_the_axis_name_both():
    text = spec_of(
        RESIDUAL.replace(
            "padding: same, name: main", "strides: 2, padding: same, name: main"
        ).replace("- Add: {inputs", "- Concatenate: {inputs")
    )
    (error,) = errors_of(text)
    assert error.message == (
        "Concatenate requires inputs with matching shapes except for the concatenation axis "
        "(inputs: main (None, 4, 4, 4), shortcut (None, 8, 8, 4))"
    )
    assert error.where.endswith(" model.layers[2].Concatenate")


def test_concatenate_joins_the_channels():
    text = spec_of(RESIDUAL.replace("- Add: {inputs", "- Concatenate: {inputs"))
    layer = parse_spec(text).model.layers[2]
    assert isinstance(layer, Concatenate) and layer.output_shape == (8, 8, 8)


def test_a_merge_without_inputs():
    text = spec_of("    - Conv2D: {filters: 4, kernel_size: 3, name: main}\n    - Add: {}\n")
    (error,) = errors_of(text)
    assert error.message == "Add merges several layers: say which with inputs:"
    assert "inputs: [main, shortcut]" in error.hint
    assert error.where == f"{position(text, '- Add:', 'Add')} model.layers[1].Add"


def test_a_merge_of_one_input():
    text = spec_of(RESIDUAL.replace("[main, shortcut]", "[main]"))
    (error,) = errors_of(text)
    assert error.message == "Add needs at least 2 inputs, got 1 (inputs: main (None, 8, 8, 4))"
    assert "Received: inputs=['main']" in error.hint


def test_a_one_input_layer_given_two():
    text = spec_of(RESIDUAL.replace("inputs: [input]", "inputs: [main, input]"))
    (error,) = errors_of(text)  # the Add reading it is not checked: its input is unknown
    assert error.message == "Conv2D takes one input, but inputs names 2"
    assert "merge layer: Add, Concatenate" in error.hint
    where = position(text, "inputs: [main, input]", "inputs")
    assert error.where == f"{where} model.layers[1].Conv2D.inputs"


@pytest.mark.parametrize(
    ("name", "message", "hint"),
    [
        ("1main", "invalid layer name '1main'", "A name starts with a letter or _"),
        ("my-conv", "invalid layer name 'my-conv'", "only letters, digits and _"),
        ("input", "'input' is reserved: in inputs: it means the model's input", "e.g. stem"),
    ],
)
def test_an_invalid_or_reserved_name(name, message, hint):
    text = spec_of(f"    - Conv2D: {{filters: 4, kernel_size: 3, name: {name}}}\n")
    (error,) = errors_of(text)
    assert error.message == message and hint in error.hint
    where = position(text, "Conv2D", "name")
    assert error.where == f"{where} model.layers[0].Conv2D.name"


def test_every_wiring_error_of_a_spec_in_one_pass():
    text = spec_of(
        "    - Conv2D: {filters: 4, kernel_size: 3, padding: same, name: main, inputs: [later]}\n"
        "    - Conv2D: {filters: 4, kernel_size: 1, inputs: [input], name: main}\n"
        "    - Conv2D: {filters: 4, kernel_size: 1, inputs: [mian], name: later}\n"
        "    - Conv2D: {filters: 4, kernel_size: 1, name: input}\n"
        "    - Add: {inputs: [main, later, kernel]}\n"
    )
    errors = errors_of(text)
    assert [(e.where.split(" ")[1], e.message.split(" (")[0]) for e in errors] == [
        (
            "model.layers[3].Conv2D.name",
            "'input' is reserved: in inputs: it means the model's input",
        ),
        ("model.layers[0].Conv2D.inputs[0]", "'later' is defined later"),
        ("model.layers[1].Conv2D.name", "duplicate layer name 'main'"),
        ("model.layers[2].Conv2D.inputs[0]", "unknown layer name 'mian' in inputs"),
        ("model.layers[4].Add.inputs[2]", "unknown layer name 'kernel' in inputs"),
    ]
    assert all(e.where.startswith("g.yaml:") and e.context for e in errors)


def test_a_layer_whose_options_failed_is_not_also_an_unknown_name():
    """main's own error is reported; the Add that reads it is not told 'main' is unknown."""
    text = spec_of(RESIDUAL.replace("filters: 4, kernel_size: 3", "filters: -4, kernel_size: 3"))
    (error,) = errors_of(text)
    assert error.where.endswith(" model.layers[0].Conv2D.filters")


def test_an_unused_output_is_a_warning_and_skipped():
    text = spec_of(
        "    - Conv2D: {filters: 4, kernel_size: 3, padding: same, name: main}\n"
        "    - Conv2D: {filters: 4, kernel_size: 1, inputs: [input], name: side}\n"
        "    - Flatten: {inputs: [main]}\n"
        "    - Dense: {units: 3, activation: softmax}\n",
        tail="",
    )
    spec = parse_spec(text, Path("g.yaml"))
    (note,) = spec.notes
    assert note.startswith("warning: model.layers[1].Conv2D (side): no layer takes its output")
    assert "its weights are not trained" in note
    assert build_model(spec).skipped == {1}


def test_a_chain_that_only_feeds_an_unused_layer_is_unused_too():
    """side feeds only side2, whose output nothing reads: neither reaches the model's output,
    both are warned about and skipped (backward used to run side with no gradient and fail)."""
    text = spec_of(
        "    - Conv2D: {filters: 4, kernel_size: 3, padding: same, name: main}\n"
        "    - Conv2D: {filters: 4, kernel_size: 1, name: side}\n"
        "    - Conv2D: {filters: 4, kernel_size: 1, name: side2}\n"
        "    - Flatten: {inputs: [main]}\n"
        "    - Dense: {units: 3, activation: softmax}\n",
        tail="",
    )
    spec = parse_spec(text, Path("g.yaml"))
    assert [note.split(":")[1].strip() for note in spec.notes] == [
        "model.layers[1].Conv2D (side)",
        "model.layers[2].Conv2D (side2)",
    ]
    model = build_model(spec).build(0)
    assert model.skipped == {1, 2}
    x = np.random.default_rng(0).random((2, 8, 8, 2), dtype=np.float32)
    model.backward(np.ones_like(model.forward(x, training=True)))
    grads = model.named_grads()
    assert not grads["layers.1.kernel"].any() and grads["layers.0.kernel"].any()


def test_auto_names_skip_the_names_the_spec_took():
    """Keras-style names (conv2d, conv2d_1, ...) count the unnamed layers of a type and pass
    over a name the spec gave another layer."""
    text = spec_of(
        "    - Conv2D: {filters: 4, kernel_size: 1}\n"
        "    - Conv2D: {filters: 4, kernel_size: 1, name: conv2d_1}\n"
        "    - Conv2D: {filters: 4, kernel_size: 1}\n"
        "    - Conv2D: {filters: 4, kernel_size: 1, name: flatten}\n"
    )
    model = build_model(parse_spec(text))
    assert model.layer_names() == [
        "conv2d",
        "conv2d_1",
        "conv2d_2",
        "flatten",
        "flatten_1",
        "dense",
    ]
    assert model.summary_rows()[2].connected_to == ("conv2d_1",)
