"""The library API (cnnkit.api) in-process: what `check` finds on disk without reading an image,
class names that select and order a folder's classes, the split that selects the model, and
model.weights (fine-tuning)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cnnkit import api
from cnnkit.errors import CheckpointError
from cnnkit.spec.build import build_model
from cnnkit.spec.config import parse_spec
from tests.clitools import MNIST, ROOT
from tests.specs import conv_spec_text

# -- what check finds on disk without reading an image ------------------------------------


@pytest.fixture
def no_image_opened(monkeypatch):
    """check must find everything from folder listings: opening an image fails the test."""
    import PIL.Image

    def refuse(*args, **kwargs):
        raise AssertionError("check opened an image")

    monkeypatch.setattr(PIL.Image, "open", refuse)


def _check_errors(spec: Path, overrides=None) -> list:
    from cnnkit.errors import SpecError, SpecErrors

    with pytest.raises(SpecError) as info:
        api.check(spec, overrides)
    return info.value.errors if isinstance(info.value, SpecErrors) else [info.value]


def test_check_passes_a_folder_without_opening_an_image(
    tmp_path, no_image_opened, image_folder, folder_spec
):
    image_folder(tmp_path / "d")
    report = api.check(folder_spec(str(tmp_path / "d"), "\n  classes: [emu, cat]", 2))
    assert report.spec.data.classes == ("emu", "cat")


def test_check_finds_a_missing_data_folder_and_suggests_the_near_one(
    tmp_path, monkeypatch, no_image_opened, image_folder, folder_spec
):
    image_folder(tmp_path / "shapes")
    monkeypatch.chdir(tmp_path)
    (error,) = _check_errors(folder_spec("shape"))
    assert error.where == f"{tmp_path / 'spec.yaml'}:3:3 data.path"
    assert "image folder not found: shape" in error.message
    assert str(tmp_path / "shape") in error.message  # where it looked
    assert "did you mean 'shapes'?" in error.hint
    assert "path: shape" in error.context


def test_check_finds_a_missing_split_folder(tmp_path, no_image_opened, image_folder, folder_spec):
    image_folder(tmp_path / "d", splits=("train",))
    (error,) = _check_errors(folder_spec(str(tmp_path / "d")))
    assert error.where.endswith("data.validation")
    assert f"needs a test/ (or val/) folder, but {tmp_path / 'd'} holds train/ only" in (
        error.message
    )
    assert "validation_split: 0.2" in error.hint and "validation: none" in error.hint
    # what would be valid is valid
    api.check(folder_spec(str(tmp_path / "d"), "\n  validation: none"))
    api.check(folder_spec(str(tmp_path / "d"), "\n  validation_split: 0.25"))


def test_check_finds_split_folders_that_differ(
    tmp_path, no_image_opened, image_folder, folder_spec
):
    image_folder(tmp_path / "d")
    (tmp_path / "d" / "test" / "dog").rename(tmp_path / "d" / "test" / "dgo")
    (error,) = _check_errors(folder_spec(str(tmp_path / "d")))
    assert error.where.endswith("data.path") and str(tmp_path / "d" / "test") in error.message
    assert "missing dog; extra dgo" in error.message and "cat, dog, emu" in error.hint


def test_check_finds_a_class_list_that_does_not_match_the_folders(
    tmp_path, no_image_opened, image_folder, folder_spec
):
    image_folder(tmp_path / "d")
    spec = folder_spec(str(tmp_path / "d"), "\n  classes: [cat, dgo]", units=2)
    (error,) = _check_errors(spec)
    assert error.where == f"{spec}:5:18 data.classes[1]"  # under dgo
    assert f"no class 'dgo' among the class folders of {tmp_path / 'd' / 'train'}" in error.message
    assert "did you mean 'dog'?" in error.hint and "cat, dog, emu" in error.hint
    (error,) = _check_errors(spec, ["data.classes=[0, 3]"])
    assert error.where == "--set data.classes=[0, 3] data.classes[1]"
    assert "class 3 does not exist" in error.message and "(0 cat, 1 dog, 2 emu)" in error.message


def test_check_finds_missing_npz_and_idx_files(tmp_path, no_image_opened):
    spec = tmp_path / "npz.yaml"
    spec.write_text(
        f"data: {{source: npz, path: {tmp_path / 'd.npz'}}}\nmodel:\n  input_shape: [4, 4, 1]\n"
        "  layers: [Flatten: {}, Dense: {units: 2, activation: softmax}]\n"
    )
    (error,) = _check_errors(spec)
    assert error.where.endswith("data.path") and ".npz file not found" in error.message
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 4, 4, 1), np.uint8), y=np.array([0, 1, 0, 1]))
    api.check(spec)
    (error,) = _check_errors(spec, ["data.classes=[0, 2]"])
    assert error.where.endswith("data.classes[1]") and "class 2 does not exist" in error.message
    (tmp_path / "mnist").mkdir()
    (error,) = _check_errors(ROOT / "configs" / "mnist.yaml", [f"data.path={tmp_path / 'mnist'}"])
    assert error.where.endswith("data.path") and "lacks train-images-idx3-ubyte.gz" in error.message


def test_class_names_select_and_order_the_folder_classes(
    tmp_path, monkeypatch, image_folder, folder_spec
):
    """data.classes: [emu, cat] (Keras' classes=[...]): those folders only, emu label 0."""
    from cnnkit.data.batches import make_splits
    from cnnkit.errors import DataError
    from cnnkit.spec.config import load_spec

    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "cache"))
    image_folder(tmp_path / "d")
    spec = load_spec(folder_spec(str(tmp_path / "d"), "\n  classes: [emu, cat]", 2))
    dataset = api.load_dataset(spec)
    splits = make_splits(dataset, spec.data, spec.seed)
    assert splits.class_names == ["emu", "cat"]
    emu, cat = dataset.class_names.index("emu"), dataset.class_names.index("cat")
    # each image's label is its folder's place in data.classes: emu 0, cat 1 (not sorted order)
    train = splits.train
    assert sorted(train.y.tolist()) == [0, 1]
    emu_image = dataset.x_train[dataset.y_train == emu][0]
    assert np.array_equal(train.x[train.y == 0][0], emu_image)
    for split in (splits.validation, splits.test):
        labels = {Path(f).parent.name: int(y) for f, y in zip(split.files, split.y, strict=True)}
        assert labels == {"emu": 0, "cat": 1}, labels
    by_index = make_splits(dataset, replace(spec.data, classes=(emu, cat)), spec.seed)
    np.testing.assert_array_equal(by_index.train.x, splits.train.x)
    np.testing.assert_array_equal(by_index.train.y, splits.train.y)
    with pytest.raises(DataError) as info:  # the folder changed after the spec was checked
        make_splits(dataset, replace(spec.data, classes=("emu", "yak")), spec.seed)
    assert info.value.where == "data.classes[1]" and "cat, dog, emu" in info.value.hint


def test_disk_problems_are_listed_beside_the_specs_other_errors(
    tmp_path, no_image_opened, image_folder, folder_spec
):
    """A head that does not fit (3 units, 2 classes named) used to hide the misspelt class
    name behind it; now both come in one pass, each once."""
    image_folder(tmp_path / "d")
    spec = folder_spec(str(tmp_path / "d"), "\n  classes: [emu, kat]", 3)
    errors = _check_errors(spec)
    where = [e.where for e in errors]
    assert any("Dense" in w for w in where), where  # the head: 3 units for 2 classes
    assert sum("data.classes[1]" in w for w in where) == 1, where
    (misspelt,) = [e for e in errors if "data.classes[1]" in e.where]
    assert "kat" in misspelt.message and "cat" in (misspelt.hint or ""), misspelt


def test_configs_mnist_selects_on_a_validation_split():
    from cnnkit.spec.config import load_spec

    spec = load_spec(ROOT / "configs" / "mnist.yaml")
    assert spec.data.validation == "split" and not api.validation_is_test(spec)
    # Fashion-MNIST too: its best.npz is chosen on held-out training images, not on the test
    # split its accuracy is reported on (spec only: the data need not be installed)
    fashion = load_spec(ROOT / "configs" / "fashion_mnist.yaml")
    assert fashion.data.validation == "split" and fashion.data.validation_split == 0.1
    assert not api.validation_is_test(fashion)
    assert not [
        n for n in api.check(ROOT / "configs" / "mnist.yaml").spec.notes if "optimistic" in n
    ]
    # the tutorial replicas keep validation: test, and check says what that means
    assert [
        n for n in api.check(ROOT / "configs" / "mnist_basic.yaml").spec.notes if "optimistic" in n
    ]


# -- model.weights: initial weights from a run or a checkpoint ----------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    data = f"{{source: mnist, path: {MNIST}, max_train_samples: 256, max_test_samples: 64}}"
    spec = parse_spec(conv_spec_text(data, extra="train: {epochs: 1, batch_size: 64}\n"))
    return api.train(spec, out=tmp_path_factory.mktemp("runs")).run_dir


@pytest.mark.e2e
def test_model_weights_initialises_from_a_run(trained_run: Path):
    data = f"{{source: mnist, path: {MNIST}}}"
    extra = "train: {epochs: 1}\n"
    spec = parse_spec(
        conv_spec_text(data, extra=extra).replace("model:", f"model:\n  weights: {trained_run}")
    )
    model = build_model(spec).build(seed=999)
    path = api.load_initial_weights(model, spec)
    assert path == trained_run / "checkpoints" / "best.npz"
    with np.load(path) as ckpt:
        for key, value in model.named_params().items():
            assert np.array_equal(value, ckpt[key]), key


@pytest.mark.e2e
def test_model_weights_shape_mismatch_names_layer_and_shapes(trained_run: Path):
    data = f"{{source: mnist, path: {MNIST}, classes: [3, 8]}}"
    text = conv_spec_text(data, units=2).replace("model:", f"model:\n  weights: {trained_run}")
    spec = parse_spec(text)
    model = build_model(spec).build(seed=0)
    with pytest.raises(CheckpointError) as info:
        api.load_initial_weights(model, spec)
    message = str(info.value)
    assert "layers.2.kernel" in message and "Dense" in message
    assert "(676, 10)" in message and "(676, 2)" in message  # 13*13*4 inputs


def test_model_weights_missing_file(tmp_path: Path):
    spec = parse_spec(
        conv_spec_text("{source: mnist}").replace(
            "model:", f"model:\n  weights: {tmp_path}/nope.npz"
        )
    )
    with pytest.raises(CheckpointError, match="not found"):
        api.load_initial_weights(build_model(spec).build(0), spec)
