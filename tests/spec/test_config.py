"""Spec validation: every error names its YAML path (and line) and says what would be valid."""

from __future__ import annotations

import textwrap

import pytest

from cnnkit.api import summarize
from cnnkit.data.sources import count_classes
from cnnkit.errors import SpecError
from cnnkit.spec.config import load_spec, parse_spec

BASIC = """\
name: basic
seed: 42
data:
  source: mnist
  validation: test
model:
  input_shape: [28, 28, 1]
  layers:
    - Conv2D: {filters: 32, kernel_size: 3, activation: relu}
    - MaxPooling2D: {pool_size: 2}
    - Flatten: {}
    - Dense: {units: 128, activation: relu}
    - Dense: {units: 10, activation: softmax}
loss: categorical_crossentropy
optimizer: {name: adam, learning_rate: 0.001}
metrics: [accuracy]
train: {epochs: 10, batch_size: 200, shuffle: true}
"""


def spec_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(textwrap.dedent(text))
    return info.value


def test_basic_spec_resolves_keras_defaults():
    spec = parse_spec(BASIC)
    conv, pool = spec.model.layers[0].get_config(), spec.model.layers[1].get_config()
    assert conv["strides"] == [1, 1] and conv["padding"] == "valid" and conv["use_bias"] is True
    assert conv["kernel_size"] == [3, 3] and conv["kernel_initializer"] == "glorot_uniform"
    assert pool["strides"] == [2, 2]  # Keras: strides default to pool_size
    assert [layer.output_shape for layer in spec.model.layers] == [
        (26, 26, 32),
        (13, 13, 32),
        (5408,),
        (128,),
        (10,),
    ]
    assert spec.to_dict()["optimizer"] == {
        "name": "adam",
        "learning_rate": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "amsgrad": False,
        "weight_decay": None,
        "clipnorm": None,
        "clipvalue": None,
        "global_clipnorm": None,
    }


def test_resolved_spec_round_trips_through_config_yaml():
    spec = parse_spec(BASIC)
    again = parse_spec(spec.to_yaml())
    assert again.to_dict() == spec.to_dict()
    assert again.hash() == spec.hash()


def test_summary_counts_parameters_as_keras():
    info = summarize(parse_spec(BASIC))
    assert info.totals["total"] == 693_962
    assert [r.params for r in info.rows] == [320, 0, 0, 692_352, 1_290]
    assert info.rows[0].macs == 26 * 26 * 32 * 9


def test_snake_case_and_keras_names_are_the_same_layers():
    snake = BASIC.replace("Conv2D", "conv2d").replace("MaxPooling2D", "max_pooling2d")
    snake = snake.replace("Flatten", "flatten").replace("Dense", "dense")
    assert parse_spec(snake).to_dict() == parse_spec(BASIC).to_dict()


def test_unknown_top_level_key_suggests_closest():
    err = spec_error(BASIC.replace("optimizer:", "optimiser:"))
    assert err.where == "spec:15:1 optimiser"  # file:line:column YAML-path
    assert err.context.splitlines()[
        0
    ] == "  15 | optimizer: {name: adam, learning_rate: 0.001}".replace("optimizer", "optimiser")
    assert "did you mean 'optimizer'" in err.hint


def test_unknown_layer_option_names_the_path_and_suggests():
    err = spec_error(BASIC.replace("filters: 32", "filter: 32"))
    assert err.where == "spec:9:16 model.layers[0].Conv2D.filter"
    # the caret stands under the offending key
    source, caret = err.context.splitlines()
    assert source[caret.index("^") :].startswith("filter: 32")
    assert "did you mean 'filters'" in err.hint


def test_unknown_layer_name_suggests_closest():
    err = spec_error(BASIC.replace("MaxPooling2D", "MaxPoling2D"))
    assert "model.layers[1]" in err.where
    assert "did you mean 'MaxPooling2D'" in err.hint


def test_wrong_type_names_path_and_expected_type():
    err = spec_error(BASIC.replace("filters: 32", "filters: '32'"))
    assert "model.layers[0].Conv2D.filters" in err.where
    assert "expected an integer" in err.message


def test_wrong_value_lists_valid_values():
    err = spec_error(BASIC.replace("activation: relu}", "activation: relux}", 1))
    assert "model.layers[0].Conv2D.activation" in err.where
    assert "did you mean 'relu'" in err.hint and "sigmoid" in err.hint
    err = spec_error(BASIC.replace("{pool_size: 2}", "{pool_size: 2, padding: full}"))
    assert "valid, same" in err.hint


def test_out_of_range_value():
    err = spec_error(BASIC.replace("epochs: 10", "epochs: 0"))
    assert err.where == "spec:17:9 train.epochs"
    assert "out of range" in err.message


def test_kernel_bigger_than_input_names_layer_and_shapes():
    text = BASIC.replace(
        "- Flatten: {}",
        "- Conv2D: {filters: 8, kernel_size: 5}\n    - MaxPooling2D: {pool_size: 2}\n"
        "    - Conv2D: {filters: 8, kernel_size: 5}\n    - Flatten: {}",
    )
    err = spec_error(text)  # 28 -conv3-> 26 -pool-> 13 -conv5-> 9 -pool-> 4 -conv5-> too small
    assert "model.layers[4].Conv2D" in err.where
    assert "5×5" in err.message and "4×4" in err.message
    assert "(None, 4, 4, 8)" in err.message


def test_dense_on_image_input_says_add_flatten():
    err = spec_error(BASIC.replace("    - Flatten: {}\n", ""))
    assert "model.layers[2].Dense" in err.where
    assert "Flatten" in err.hint


def test_class_count_mismatch_names_both():
    err = spec_error(BASIC.replace("units: 10", "units: 7"))
    assert "7 outputs" in err.message and "10 classes" in err.message


def test_cross_entropy_needs_softmax_head():
    err = spec_error(BASIC.replace("units: 10, activation: softmax", "units: 10, activation: relu"))
    assert "softmax" in err.hint


def test_yaml_syntax_error_has_line():
    err = spec_error("name: x\nmodel: {layers: [\n")
    # file:line:column, like every other spec error (line 3: where the stream ends)
    assert "not valid YAML" in err.message and err.where == "spec:3:1"


def test_validation_and_split_conflict():
    err = spec_error(BASIC.replace("validation: test", "validation: test\n  validation_split: 0.1"))
    assert "data.validation" in err.where


def test_validation_split_alone_is_resolved():
    spec = parse_spec(BASIC.replace("validation: test", "validation_split: 0.1"))
    assert spec.data.validation == "split" and spec.data.validation_split == 0.1


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert "not found" in info.value.message and "nope.yaml" in info.value.where


def test_overrides_apply_before_validation():
    spec = parse_spec(BASIC, overrides={"train.epochs": 3, "seed": 7})
    assert spec.train.epochs == 3 and spec.seed == 7


# -- numbers as people write them ---------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("1e-3", 0.001),
        ("5E-4", 0.0005),
        (".5", 0.5),
        ("1_000", 1000.0),
        ("2.5e-1", 0.25),
        ("1/255", 1 / 255),
        ("1./255", 1 / 255),
        ("1 / 4", 0.25),
    ],
)
def test_numbers_in_the_file(written, value):
    """PyYAML alone reads 1e-3 and 5E-4 as strings (YAML 1.1); the spec reads them as YAML 1.2
    does, and a fraction wherever a number goes."""
    text = BASIC.replace("learning_rate: 0.001", f"learning_rate: {written}")
    text = text.replace("  validation: test", f"  validation: test\n  rescale: {written}")
    spec = parse_spec(text)
    assert spec.optimizer.options["learning_rate"] == value and spec.data.rescale == value
    assert isinstance(spec.data.rescale, float)


def test_numbers_elsewhere_in_the_file():
    spec = parse_spec(
        BASIC.replace(
            "train: {", "augmentation: {zoom_range: 1/10, width_shift_range: 1e-1}\ntrain: {"
        )
        .replace("epochs: 10", "epochs: 1_0")
        .replace("batch_size: 200", "batch_size: 2_00")
        .replace("{units: 128,", "{units: 128, kernel_regularizer: {l2: 5E-4},")
    )
    assert spec.train.epochs == 10 and spec.train.batch_size == 200
    assert spec.augmentation.zoom_range == (0.9, 1.1)
    assert spec.augmentation.width_shift_range == 0.1
    assert spec.model.layers[3].options["kernel_regularizer"]["l2"] == 0.0005


def test_yaml_11_booleans_integers_and_strings_are_unchanged():
    """Only floats change: yes/on stay booleans, 010 stays 1.1's octal, 0x1f hex, 1e words
    stay strings; what SafeLoader read as a number is the same number."""
    import yaml

    from cnnkit.options import load_yaml

    for text in ("yes", "on", "off", "true", "010", "0x1f", "1_000", "1.5", ".inf", "1:30", "e5"):
        assert load_yaml(f"v: {text}") == yaml.safe_load(f"v: {text}"), text
    assert load_yaml("v: 1e-3") == {"v": 0.001} and yaml.safe_load("v: 1e-3") == {"v": "1e-3"}
    spec = parse_spec(BASIC.replace("shuffle: true", "shuffle: yes"))
    assert spec.train.shuffle is True


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("fast", "expected a number, found a string ('fast')"),
        ("1/0", "'1/0' divides by zero"),
        ("1//255", "expected a number, found a string ('1//255')"),
        ("true", "expected a number, found a boolean"),
    ],
)
def test_a_non_number_names_the_path_and_the_forms(written, message):
    error = spec_error(BASIC.replace("learning_rate: 0.001", f"learning_rate: {written}"))
    assert error.where.endswith("optimizer.learning_rate") and error.where.startswith("spec:")
    assert message in error.message
    assert "1e-3" in error.hint and "1/255" in error.hint


def test_config_yaml_of_written_numbers_round_trips():
    text = BASIC.replace("learning_rate: 0.001", "learning_rate: 5E-4").replace(
        "  validation: test", "  validation: test\n  rescale: 1./255"
    )
    spec = parse_spec(text)
    again = parse_spec(spec.to_yaml())
    assert again.to_dict() == spec.to_dict() and again.hash() == spec.hash()
    assert again.data.rescale == 1 / 255 and again.optimizer.options["learning_rate"] == 0.0005


# -- newcomers' habits --------------------------------------------------------------------


def test_channels_first_input_shape_suggests_channels_last():
    error = spec_error(
        BASIC.replace("source: mnist", "source: synthetic\n  num_classes: 10").replace(
            "[28, 28, 1]", "[3, 80, 80]"
        )
    )
    assert error.where.endswith("model.input_shape") and "channels-first" in error.message
    assert "input_shape: [80, 80, 3]" in error.hint
    # a small channels-last image is not mistaken for one
    text = BASIC.replace("source: mnist", "source: synthetic\n  num_classes: 10")
    text = text.replace("[28, 28, 1]", "[4, 4, 1]").replace("kernel_size: 3", "kernel_size: 1")
    assert parse_spec(text).model.input_shape == (4, 4, 1)


def test_keras_alias_lr_suggests_learning_rate():
    error = spec_error(BASIC.replace("learning_rate: 0.001", "lr: 0.001"))
    assert error.message == "unknown adam option 'lr'"
    assert "did you mean 'learning_rate'" in error.hint
    error = spec_error(BASIC.replace("Dense: {units: 128", "Dense: {out_features: 128"))
    assert "did you mean 'units'" in error.hint


def test_class_names_select_and_order_classes():
    spec = parse_spec(
        BASIC.replace("  validation: test", "  validation: test\n  classes: ['8', '3']").replace(
            "units: 10", "units: 2"
        )
    )
    assert spec.data.classes == ("8", "3") and count_classes(spec.data, None) == 2
    assert parse_spec(spec.to_yaml()).hash() == spec.hash()
    error = spec_error(
        BASIC.replace("source: mnist", "source: cifar10")
        .replace("[28, 28, 1]", "[32, 32, 3]")
        .replace("  validation: test", "  validation: test\n  classes: [cat, dgo]")
        .replace("units: 10", "units: 2")
    )
    assert error.where.endswith("data.classes[1]") and "did you mean 'dog'" in error.hint
    error = spec_error(BASIC.replace("  validation: test", "  validation: test\n  classes: [3, b]"))
    assert "class indices, or of class names" in error.message
