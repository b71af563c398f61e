"""Every spec error carries file:line:column of the offending node and shows that line; one
pass reports every independent error (cnnkit check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnkit.errors import SpecError, SpecErrors
from cnnkit.spec.config import load_spec, parse_spec

SPEC = """\
name: demo
data:
  source: mnist
  max_train_samples: 100
model:
  layers:
    - Conv2D: {filters: 8, kernel_size: 3, activation: relu}
    - MaxPooling2D: {pool_size: 2}
    - Conv2D:
        filters: 8
        kernel_size: 3
    - MaxPooling2D: {pool_size: 2}
    - Flatten: {}
    - Dense: {units: 10, activation: softmax}
optimizer:
  name: adam
  learning_rate: 0.001
callbacks:
  early_stopping:
    patience: 2
train: {epochs: 1, batch_size: 32}
"""


def errors_of(text: str, file: Path | None = None, overrides=None) -> list[SpecError]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, file, overrides)
    error = info.value
    return error.errors if isinstance(error, SpecErrors) else [error]


def line_of(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column of the first occurrence of needle."""
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number, line.index(needle) + 1
    raise AssertionError(needle)


def test_valid_spec_parses():
    assert [layer.output_shape for layer in parse_spec(SPEC).model.layers][-1] == (10,)


@pytest.mark.parametrize(
    ("old", "new", "path", "needle"),
    [
        # nested key two levels down (block style)
        ("    patience: 2", "    patiense: 2", "callbacks.early_stopping.patiense", "patiense"),
        # a value in a block-style layer's options
        (
            "        filters: 8",
            "        filters: -8",
            "model.layers[2].Conv2D.filters",
            "filters: -8",
        ),
        # an option of a flow-style layer
        (
            "pool_size: 2}\n    - Conv2D",
            "pool_sise: 2}\n    - Conv2D",
            "model.layers[1].MaxPooling2D.pool_sise",
            "pool_sise",
        ),
        # optimizer option
        (
            "  learning_rate: 0.001",
            "  learning_rate: fast",
            "optimizer.learning_rate",
            "learning_rate",
        ),
        # data option
        (
            "max_train_samples: 100",
            "max_train_samples: 0",
            "data.max_train_samples",
            "max_train_samples",
        ),
        # numbers as people write them keep their positions (the YAML 1.2 float resolver)
        (
            "  learning_rate: 0.001",
            "  learning_rate: 1e-3\n  beta_1: 1/0",
            "optimizer.beta_1",
            "beta_1",
        ),
        (
            "max_train_samples: 100",
            "max_train_samples: 100\n  rescale: -1/255",
            "data.rescale",
            "rescale",
        ),
    ],
)
def test_error_points_at_the_key(old, new, path, needle):
    text = SPEC.replace(old, new, 1)
    assert text != SPEC
    (error,) = errors_of(text, Path("my.yaml"))
    line, column = line_of(text, needle)
    assert error.where == f"my.yaml:{line}:{column} {path}"
    shown = text.splitlines()[line - 1]
    assert f"{line:>4} | {shown}" in error.context
    caret = error.context.splitlines()[1]
    assert caret.index("^") == len(f"{line:>4} | ") + column - 1


def test_shape_error_points_at_the_layer():
    # 28 -> 26 -> 13 -> 11 -> 5; a third pooling of 8 does not fit into 5x5
    text = SPEC.replace(
        "    - Flatten: {}", "    - MaxPooling2D: {pool_size: 8}\n    - Flatten: {}"
    )
    (error,) = errors_of(text, Path("my.yaml"))
    line, column = line_of(text, "MaxPooling2D: {pool_size: 8}")
    assert error.where == f"my.yaml:{line}:{column} model.layers[4].MaxPooling2D"
    assert "8×8" in error.message and "5×5" in error.message
    assert "MaxPooling2D: {pool_size: 8}" in error.context


def test_every_independent_error_is_reported():
    text = (
        SPEC.replace("max_train_samples: 100", "max_train_samples: -1")
        .replace("activation: relu}", "activaton: relu}")
        .replace("        kernel_size: 3", "        kernel_size: 30")  # 13x13 input: too big
        .replace("    patience: 2", "    patience: -2")
        .replace("{epochs: 1, batch_size: 32}", "{epochs: 0, batch_size: 32}")
    )
    errors = errors_of(text, Path("my.yaml"))
    paths = [e.where.split(" ", 1)[1] for e in errors]
    assert paths == [
        "data.max_train_samples",
        "model.layers[0].Conv2D.activaton",
        "model.layers[2].Conv2D",  # shapes still inferred past the misspelt option
        "train.epochs",
        "callbacks.early_stopping.patience",
    ]
    assert all(e.where.startswith("my.yaml:") and e.context for e in errors)


def test_misspelt_required_option_is_one_error():
    (error,) = errors_of(SPEC.replace("filters: 8, kernel", "filter: 8, kernel"))
    assert "filter'" in error.message and "did you mean 'filters'" in error.hint


def test_duplicate_key_is_an_error_at_the_second_one():
    text = SPEC + "train: {epochs: 3}\n"
    (error,) = errors_of(text, Path("my.yaml"))
    line = len(text.splitlines())
    assert error.where == f"my.yaml:{line}:1 train"
    assert "duplicate key 'train'" in error.message and "line 21" in error.message


def test_yaml_syntax_error_shows_the_line(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: x\ndata: {source: mnist\nmodel: {}\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert info.value.where.startswith(f"{spec}:3:")
    assert "model: {}" in info.value.context


def test_missing_section_points_at_the_start():
    (error,) = errors_of("name: x\ndata: {source: mnist}\n", Path("my.yaml"))
    assert error.where == "my.yaml:1:1" and "missing the 'model' section" in error.message
