"""The committed JSON Schema is the generated one, and every ready spec validates against it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from cnnkit.cli.app import app
from cnnkit.errors import SpecError
from cnnkit.nn.layers import ALL_LAYERS
from cnnkit.nn.layers.base import GRAPH_OPTIONS
from cnnkit.options import Option, checker, options_schema
from cnnkit.spec.config import load_spec
from cnnkit.spec.schema import SCHEMA_FILE, build_schema, schema_text

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
HEADER = "# yaml-language-server: $schema=../cnnkit/spec/cnnkit-spec.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = build_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_the_generated_one():
    committed = SCHEMA_FILE.read_text()
    assert committed == schema_text(), (
        "run: cnnkit schema --out cnnkit/spec/cnnkit-spec.schema.json"
    )


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_points_at_the_schema_and_validates(config, validator):
    text = config.read_text()
    assert text.splitlines()[0] == HEADER
    assert (config.parent / HEADER.split("=", 1)[1]).resolve() == SCHEMA_FILE.resolve()
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(text))]
    assert errors == []
    load_spec(config)  # and cnnkit agrees


def test_schema_rejects_what_the_validator_rejects(validator):
    spec = yaml.safe_load((ROOT / "configs" / "mnist.yaml").read_text())
    for path, value in [
        (("train", "epoch"), 3),  # unknown key
        (("train", "epochs"), 0),  # out of range
        (("model", "layers", 0, "Conv2D", "padding"), "full"),  # not a choice
        (("model", "layers", 0, "Conv2D", "fliters"), 8),  # unknown layer option
        (("optimizer",), {"name": "adam", "momentum": 0.9}),  # an sgd option on adam
        (("data", "source"), "imagenet"),
    ]:
        bad = yaml.safe_load(yaml.safe_dump(spec))
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert not validator.is_valid(bad), path
    bad = yaml.safe_load(yaml.safe_dump(spec))
    bad["model"]["layers"].append({"Conv3D": {"filters": 3}})
    assert not validator.is_valid(bad)


def test_block_uses_are_accepted_only_in_a_spec_with_blocks():
    """The schema cannot know a spec's block names: with model.blocks any one-key entry that
    is not a layer is a use (cnnkit check reports an unknown one); without, only layers."""
    validator = jsonschema.Draft202012Validator(build_schema())
    spec = {
        "data": {"source": "mnist"},
        "model": {"layers": [{"residual": {"filters": 8}}, {"Dense": {"units": 10}}]},
    }
    assert not validator.is_valid(spec)
    spec["model"]["blocks"] = {"residual": {"params": {"filters": 4}, "layers": [{"Conv2D": {}}]}}
    assert validator.is_valid(spec)
    spec["model"]["layers"].append({"Dense": {"units": 10, "inputs": ["x"], "name": "out"}})
    assert validator.is_valid(spec)
    spec["model"]["layers"][-1]["Dense"]["name"] = "not a name"
    assert not validator.is_valid(spec)


def test_every_layer_and_option_is_in_the_schema():
    schema = build_schema()
    for cls in ALL_LAYERS:
        options = schema["$defs"][cls.keras_name]
        options = options.get("anyOf", [options])[-1]
        assert set(options["properties"]) == set(cls.OPTIONS) | set(GRAPH_OPTIONS)


def test_an_option_kind_checks_and_describes_itself():
    """A checker without a schema cannot be an option: the schema could not describe it."""
    with pytest.raises(TypeError, match="@checker"):
        Option(lambda value, path: value)
    with pytest.raises(TypeError, match="int_or_pair"):
        Option("pair")

    @checker({"type": "integer", "multipleOf": 2})
    def even(value, path):
        if value % 2:
            raise SpecError(f"{value} is odd", where=path)
        return value

    option = Option(even, default=2, doc="an even count")
    assert option.check(4, "n") == 4 and even(6, "n") == 6
    with pytest.raises(SpecError, match="odd"):
        option.check(3, "n")
    assert option.json_schema() == {
        "type": "integer",
        "multipleOf": 2,
        "description": "an even count",
        "default": 2,
    }
    table = {"n": option, "m": Option("int", minimum=1)}
    assert options_schema(table)["required"] == ["m"]
    assert options_schema(table)["properties"]["m"]["anyOf"][0] == {"type": "integer", "minimum": 1}


def test_schema_command(tmp_path):
    out = tmp_path / "s.json"
    result = CliRunner().invoke(app, ["schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == schema_text()
    printed = CliRunner().invoke(app, ["schema"])
    assert json.loads(printed.stdout) == build_schema()


@pytest.mark.parametrize(
    ("text", "valid"),
    [("1/255", True), ("1./255", True), ("1_000", True), (" .5 / 2 ", True)]
    + [("1.2.3", False), ("...", False), ("1e", False), ("1/", False), ("a/b", False)],
)
def test_number_text_in_the_schema_is_the_validators(validator, text, valid):
    """A number written as text (a fraction, underscores) is valid for the editor exactly
    when cnnkit reads it."""
    from cnnkit.errors import SpecError
    from cnnkit.spec.config import parse_spec

    spec = yaml.safe_load((ROOT / "configs" / "mnist.yaml").read_text())
    spec["data"]["rescale"] = text
    assert validator.is_valid(spec) == valid, text
    # unquoted, as a user writes it (quoted "..." only: unquoted it ends the YAML document)
    written = f"'{text}'" if text == "..." else text.strip()
    source = (ROOT / "configs" / "mnist.yaml").read_text()
    source = source.replace("rescale: 1/255", f"rescale: {written}")
    assert f"rescale: {written}" in source
    try:
        parse_spec(source)
        read = True
    except SpecError:
        read = False
    assert read == valid, text
