"""--set key.path=value: same validation as the file, errors name the --set argument."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cnnkit.errors import SpecError, SpecErrors
from cnnkit.spec.config import load_spec, parse_spec
from cnnkit.spec.overrides import command_line, parse_set, split_path

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "configs" / "mnist.yaml"


def errors_of(overrides, spec=MNIST) -> list[SpecError]:
    with pytest.raises(SpecError) as info:
        load_spec(spec, overrides)
    error = info.value
    return error.errors if isinstance(error, SpecErrors) else [error]


def test_split_path():
    assert split_path("model.layers[0].Conv2D.filters") == [
        "model",
        "layers",
        0,
        "Conv2D",
        "filters",
    ]
    assert split_path("train.epochs") == ["train", "epochs"]
    with pytest.raises(ValueError):
        split_path("[0].x")


def test_values_are_yaml():
    assert parse_set("train.epochs=3").value == 3
    assert parse_set("optimizer.learning_rate=1e-3").value == 0.001
    assert parse_set("model.layers[0].Conv2D.kernel_size=[5, 5]").value == [5, 5]
    assert parse_set("data.classes=null").value is None
    assert parse_set("name=my run").value == "my run"
    assert parse_set("optimizer={name: sgd, momentum: 0.9}").value == {
        "name": "sgd",
        "momentum": 0.9,
    }


def test_overrides_change_the_resolved_spec():
    spec = load_spec(
        MNIST,
        [
            "train.epochs=3",
            "model.layers[0].Conv2D.filters=16",
            "model.layers[0].conv2d.kernel_size=[5, 5]",  # any accepted spelling of the layer
            "optimizer.learning_rate=0.01",
            "loss.label_smoothing=0.1",  # `loss: name` becomes {name: ..., label_smoothing: ...}
            "data.max_train_samples=100",
        ],
    )
    assert spec.train.epochs == 3
    conv = spec.model.layers[0]
    assert conv.options["filters"] == 16 and conv.options["kernel_size"] == [5, 5]
    assert conv.output_shape == (24, 24, 16)  # shapes re-inferred
    assert spec.optimizer.options["learning_rate"] == 0.01
    assert spec.loss.options["label_smoothing"] == 0.1
    assert spec.data.max_train_samples == 100
    assert spec.overrides[0] == "--set train.epochs=3"
    # the file's own values where nothing was overridden
    assert spec.train.batch_size == load_spec(MNIST).train.batch_size


def test_a_later_override_wins_and_a_whole_layer_can_be_replaced():
    spec = load_spec(
        MNIST,
        ["train.epochs=3", "train.epochs=4", "model.layers[1]={AveragePooling2D: {pool_size: 2}}"],
    )
    assert spec.train.epochs == 4 and spec.model.layers[1].keras_name == "AveragePooling2D"


@pytest.mark.parametrize(
    ("arg", "where", "suggestion"),
    [
        ("train.epoch=3", "--set train.epoch=3 train.epoch", "did you mean 'epochs'"),
        ("trian.epochs=3", "--set trian.epochs=3 trian", "did you mean 'train'"),
        (
            "model.layers[0].Conv2D.filtres=8",
            "--set model.layers[0].Conv2D.filtres=8 model.layers[0].Conv2D.filtres",
            "did you mean 'filters'",
        ),
        (
            "optimizer.name=adamm",
            "--set optimizer.name=adamm optimizer.name",
            "did you mean 'adam'",
        ),
    ],
)
def test_unknown_path_suggests_the_closest(arg, where, suggestion):
    (error,) = errors_of([arg])
    assert error.where == where
    assert suggestion in error.hint
    assert f"--set {arg}" in error.context  # the argument, not a line of the file
    assert "mnist.yaml" not in error.where


def test_bad_value_names_the_argument_with_a_caret_under_the_value():
    (error,) = errors_of(["train.epochs=abc"])
    assert error.where == "--set train.epochs=abc train.epochs"
    arg_line, caret_line = error.context.splitlines()
    assert arg_line.index("abc") == caret_line.index("^")


@pytest.mark.parametrize(
    ("arg", "key"),
    [("train.epoch=3", "epoch"), ("model.layers[0].Conv2D.filtres=3", "filtres")],
)
def test_unknown_key_gets_the_caret_under_the_key(arg, key):
    (error,) = errors_of([arg])
    arg_line, caret_line = error.context.splitlines()
    assert arg_line.index(key) == caret_line.index("^")


def test_nested_override_error_position():
    (error,) = errors_of(["callbacks.early_stopping.patience=-1"])
    assert error.where.startswith("--set callbacks.early_stopping.patience=-1 ")
    assert error.where.endswith("callbacks.early_stopping.patience")


def test_path_errors_while_applying():
    errors = errors_of(
        ["model.layers[0].Dense.units=3", "model.layers[40].Conv2D.filters=3", "train.epochs.x=1"]
    )
    assert [e.where for e in errors] == [
        "--set model.layers[0].Dense.units=3",
        "--set model.layers[40].Conv2D.filters=3",
        "--set train.epochs.x=1",
    ]
    assert "is a Conv2D layer, not Dense" in errors[0].message
    assert "not [40]" in errors[1].message
    with pytest.raises(SpecError) as info:
        parse_set("train.epochs")
    assert "KEY.PATH=VALUE" in info.value.message


def test_shape_error_caused_by_an_override_names_it_and_the_layer_line():
    (error,) = errors_of(["model.layers[4].Conv2D.kernel_size=30"])
    assert error.where == "--set model.layers[4].Conv2D.kernel_size=30 model.layers[4].Conv2D"
    assert "mnist.yaml:" in error.context and "Conv2D: {filters: 64" in error.context


def test_file_errors_keep_their_line_and_mention_the_overrides(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(MNIST.read_text().replace("units: 10,", "units: 7,"))
    (error,) = errors_of(["train.epochs=2"], spec)
    assert error.where.startswith(f"{spec}:") and "(with --set train.epochs=2)" in error.hint


def test_resolved_yaml_records_overrides_and_command_and_loads(tmp_path):
    spec = load_spec(MNIST, ["train.epochs=2"])
    spec = replace(spec, command=command_line(["train", str(MNIST), "--set", "train.epochs=2"]))
    text = spec.to_yaml()
    assert text.startswith(f"# command: cnnkit train {MNIST} --set train.epochs=2\n")
    assert "# override: --set train.epochs=2\n" in text
    assert yaml.safe_load(text)["train"]["epochs"] == 2
    again = parse_spec(text)
    assert again.to_dict() == spec.to_dict()


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("1e-3", 0.001),
        ("5E-4", 0.0005),
        (".5", 0.5),
        ("1_000", 1000),
        ("1/255", 1 / 255),
        ("1./255", 1 / 255),
    ],
)
def test_numbers_in_set_are_read_as_in_the_file(written, value):
    spec = load_spec(MNIST, [f"optimizer.learning_rate={written}", f"data.rescale={written}"])
    assert spec.optimizer.options["learning_rate"] == value and spec.data.rescale == value
    assert parse_set(f"x=[{written}, 2]").value[0] == (written if "/" in written else value)
    assert parse_set("train.shuffle=yes").value is True  # YAML 1.1 booleans as before


def test_a_non_number_in_set_names_the_argument():
    (error,) = errors_of(["optimizer.learning_rate=1e-3x"])
    assert error.where == "--set optimizer.learning_rate=1e-3x optimizer.learning_rate"
    assert "expected a number, found a string ('1e-3x')" in error.message
    assert "1/255" in error.hint


def _suggested_paths(hint: str) -> list[str]:
    import re

    return [m.strip("'") for m in re.findall(r"--set '?([^=' ]+)=", hint)]


@pytest.mark.parametrize(
    "arg",
    [
        "model.layers[0].Dense.units=3",  # Dense is layer 10; Conv2D has no units
        "model.layers[0].Dense.unitz=3",
        "model.layers[0].filters=16",  # the layer's name left out
        "model.layers[0].Conv.filters=16",  # the layer's name misspelt
        "model.layers[3].Dropout.rate=0.1",
    ],
)
def test_layer_path_suggestions_are_paths_that_exist(arg):
    """Every --set path a hint proposes names a layer of that type and one of its options."""
    from cnnkit.nn.registry import canonical_layer

    (error,) = errors_of([arg])
    layers = load_spec(MNIST).model.layers
    paths = _suggested_paths(error.hint)
    assert paths, error.hint
    for path in paths:
        parts = split_path(path)
        assert parts[:2] == ["model", "layers"], path
        if len(parts) == 3:
            continue  # the whole layer replaced
        layer = layers[parts[2]]
        assert canonical_layer(parts[3]) is type(layer), path
        if len(parts) > 4:
            assert parts[4] in type(layer).OPTIONS, path


def test_layer_suggestion_points_at_the_layer_of_that_type():
    (error,) = errors_of(["model.layers[0].Dense.units=3"])
    assert "--set model.layers[13].Dense.units=..." in error.hint
    assert "Conv2D.units" not in error.hint
    (error,) = errors_of(["model.layers[0].filters=16"])
    assert "--set model.layers[0].Conv2D.filters=..." in error.hint


GRAPH = ROOT / "configs" / "resnet20.yaml"


def test_a_named_layer_is_addressed_by_its_name():
    """model.layers.NAME: the entry whose name: it is; in a block's definition, every use."""
    example = ROOT / "docs" / "examples" / "resnet_fashion_mnist.yaml"
    # `- conv_bn: {filters: 16, name: stem}`: a block's use, named
    spec = load_spec(example, ["model.layers.stem.kernel_size=5"])
    assert spec.model.layers[0].keras_name == "Conv2D"
    assert spec.model.layers[0].options["kernel_size"] == [5, 5]
    spec = load_spec(GRAPH, ["model.blocks.downsample.layers.shortcut.kernel_size=3"])
    shortcuts = [lay for lay in spec.model.layers if lay.name and lay.name.endswith("shortcut")]
    assert len(shortcuts) == 2 and all(s.options["kernel_size"] == [3, 3] for s in shortcuts)


def test_an_error_in_a_named_layer_names_the_set_and_an_unknown_name_the_names_there():
    errors = errors_of(["model.blocks.downsample.layers.shortcut.filters=0"], GRAPH)
    assert len(errors) == 2  # the block's two uses
    for error in errors:
        assert error.where.startswith("--set model.blocks.downsample.layers.shortcut.filters=0")
        assert "filters" in error.where and "downsample" in error.hint
    (error,) = errors_of(["model.blocks.downsample.layers.shortcutt.filters=8"], GRAPH)
    assert "has no layer named 'shortcutt'" in error.message
    assert "did you mean 'shortcut'?" in error.hint and "main" in error.hint
