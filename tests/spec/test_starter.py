"""`cnnkit init`: starter specs that validate and train as written; never overwrite."""

from __future__ import annotations

import sys

import pytest
import yaml
from typer.testing import CliRunner

from cnnkit.cli.app import app
from cnnkit.data.shapes import make_shapes
from cnnkit.errors import CnnkitError
from cnnkit.spec.config import load_spec
from cnnkit.spec.schema import SCHEMA_FILE
from cnnkit.spec.starter import TEMPLATES, write_starter


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_is_a_valid_commented_spec(template, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_starter(template, tmp_path / "specs" / f"{template}.yaml")
    text = path.read_text()
    schema = text.splitlines()[0].split("$schema=", 1)[1]
    assert (path.parent / schema).resolve() == SCHEMA_FILE
    assert text.count("\n#") >= 3 and "{file}" not in text and f"cnnkit train {path}" in text
    if template == "folder":  # the template reads datasets/shapes: make a small one
        make_shapes(tmp_path / "datasets" / "shapes", size=64, per_class=4, seed=0)
    spec = load_spec(path)
    assert spec.name == template and yaml.safe_load(text)["model"]["layers"]


def test_init_refuses_to_overwrite(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("mine\n")
    with pytest.raises(CnnkitError) as info:
        write_starter("mnist", path)
    assert "never overwrites" in info.value.message
    assert path.read_text() == "mine\n"
    result = CliRunner().invoke(app, ["init", str(path)])
    assert result.exit_code != 0 and path.read_text() == "mine\n"
    with pytest.raises(CnnkitError):
        write_starter("imagenet", tmp_path / "other.yaml")


def test_init_command_default_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init", "--template", "binary"])
    assert result.exit_code == 0, result.output
    assert load_spec(tmp_path / "binary.yaml").loss.name == "binary_crossentropy"


@pytest.mark.e2e
def test_mnist_template_trains_as_written(tmp_path, monkeypatch):
    """In-process: the template as written, on 256 images for one epoch (--set)."""
    monkeypatch.chdir(tmp_path)
    spec = write_starter("mnist")
    args = [
        "train",
        str(spec),
        "--set",
        "data.max_train_samples=256",
        "--set",
        "data.max_test_samples=128",
        "--set",
        "train.epochs=1",
        "--out",
        str(tmp_path / "runs"),
    ]
    monkeypatch.setattr(sys, "argv", ["cnnkit", *args])  # what command_line() records
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "mnist"
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 2  # header + one epoch
    config = (run / "config.yaml").read_text()
    assert config.startswith(
        f"# command: cnnkit train {spec} --set data.max_train_samples=256 --set "
        "data.max_test_samples=128 --set train.epochs=1 --out"
    )
    assert "# override: --set train.epochs=1\n" in config
    resolved = load_spec(run / "config.yaml")  # the resolved spec still loads
    assert resolved.train.epochs == 1 and resolved.data.max_train_samples == 256
