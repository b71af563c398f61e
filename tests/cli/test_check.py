"""`cnnkit check` and the memory plan of `cnnkit summary`."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from cnnkit import api
from cnnkit.nn.memory import available_memory, check_memory, optimizer_slots, plan
from cnnkit.nn.model import Sequential
from cnnkit.nn.registry import OPTIMIZERS
from cnnkit.spec.build import build_model
from cnnkit.spec.config import parse_spec
from tests.clitools import run_subprocess

ROOT = Path(__file__).resolve().parents[2]
cnnkit = partial(run_subprocess, columns=160, timeout=120)


def test_check_ok_prints_summary_and_ok():
    result = cnnkit("check", "configs/mnist.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "conv2d_1 (Conv2D)" in result.stdout
    assert "training step:" in result.stdout


def test_check_reports_every_error_and_exits_2(tmp_path):
    spec = tmp_path / "bad.yaml"
    text = (ROOT / "configs" / "mnist.yaml").read_text()
    spec.write_text(text.replace("epochs: 6", "epochs: 0").replace("units: 10,", "unit: 10,"))
    result = cnnkit("check", str(spec), "--set", "train.batch_size=-1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "3 errors in the spec" in result.stderr
    assert "--set train.batch_size=-1" in result.stderr
    assert f"{spec.name}:" in result.stderr and "did you mean 'units'" in result.stderr


def test_check_path_imports_no_numba():
    """Checking a spec builds layers but must not import numba (0.3 s) or compile kernels."""
    code = (
        "import sys; from cnnkit import api, cli; api.check('configs/alexnet.yaml'); "
        "print('numba' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert result.stdout.strip() == "False", result.stderr


SPEC = """\
data: {source: synthetic, num_classes: 3}
model:
  input_shape: [12, 10, 2]
  layers:
    - Conv2D: {filters: 4, kernel_size: 3, activation: relu, padding: same}
    - BatchNormalization: {}
    - LeakyReLU: {}
    - MaxPooling2D: {pool_size: 2}
    - Conv2D: {filters: 5, kernel_size: 3}
    - SpatialDropout2D: {rate: 0.3}
    - AveragePooling2D: {pool_size: 2}
    - Activation: tanh
    - Flatten: {}
    - Dropout: {rate: 0.5}
    - Dense: {units: 6}
    - Activation: relu
    - Dense: {units: 3, activation: softmax}
optimizer: {name: adam, amsgrad: true}
"""


def kept_bytes(model: Sequential, x: np.ndarray, training: bool) -> list[int]:
    """Bytes of the distinct arrays each layer keeps after a forward pass (its output and
    its attributes), not counting its input: what the memory plan claims."""
    kept = []
    for layer in model.layers:
        y = layer.forward(x, training)
        arrays = [a for a in (y, *vars(layer).values()) if isinstance(a, np.ndarray)]
        counted: list[np.ndarray] = [x]
        total = 0
        for array in arrays:
            if any(np.shares_memory(array, other) for other in counted):
                continue
            counted.append(array)
            total += array.nbytes
        kept.append(total)
        x = y
    return kept


@pytest.mark.parametrize(
    "spec_text", [SPEC, (ROOT / "configs" / "mnist.yaml").read_text()], ids=["layers", "mnist"]
)
def test_memory_plan_matches_the_arrays_layers_keep(spec_text):
    spec = parse_spec(spec_text)
    model = build_model(spec).build(0)
    shape = tuple(spec.model.input_shape)
    rng = np.random.default_rng(0)
    per_image = {}
    for training in (False, True):
        # the difference of two batch sizes: arrays that do not scale with the batch cancel
        small = kept_bytes(model, rng.random((2, *shape), dtype=np.float32), training)
        large = kept_bytes(model, rng.random((5, *shape), dtype=np.float32), training)
        per_image[training] = [(b - a) // 3 for a, b in zip(small, large, strict=True)]
    one, two = plan(spec, 1), plan(spec, 2)
    forward = [b.forward - a.forward for a, b in zip(one.layers, two.layers, strict=True)]
    training = [b.training - a.training for a, b in zip(one.layers, two.layers, strict=True)]
    assert forward == per_image[False]
    assert training == per_image[True]
    # the fixed part of the training column: gradients and optimizer state of the weights
    fixed = [2 * a.training - b.training for a, b in zip(one.layers, two.layers, strict=True)]
    slots = optimizer_slots(spec.optimizer.name, spec.optimizer.options)
    assert fixed == [
        4 * (1 + slots) * sum(int(np.prod(s)) for s in layer.param_shapes().values())
        for layer in model.layers
    ]


@pytest.mark.parametrize(
    "section",
    [
        {"name": "sgd", "momentum": 0.0},
        {"name": "sgd", "momentum": 0.9},
        {"name": "rmsprop", "momentum": 0.9, "centered": True},
        {"name": "rmsprop"},
        {"name": "adam"},
        {"name": "adam", "amsgrad": True},
        {"name": "adamw"},
        {"name": "adagrad"},
        {"name": "adadelta"},
        {"name": "nadam"},
    ],
)
def test_optimizer_slots_match_the_optimizer_state(section):
    optimizer = OPTIMIZERS[section["name"]](**{k: v for k, v in section.items() if k != "name"})
    p, g = np.ones(3, np.float32), np.full(3, 0.1, np.float32)
    optimizer.step({"w": p}, {"w": g})
    assert len(optimizer.state) == optimizer_slots(section["name"], optimizer.options)


def test_memory_warning_and_largest_batch_that_fits():
    spec = parse_spec((ROOT / "configs" / "mnist.yaml").read_text())
    need = plan(spec).training_total
    evaluation = plan(spec, spec.train.eval_batch_size).forward_total
    assert check_memory(spec, available=2 * max(need, evaluation)) == []  # 50%: fine
    warnings = check_memory(spec, available=need)  # training needs 100% > 80%
    (warning,) = [w for w in warnings if w.what == "training"]
    assert warning.option == "train.batch_size" and warning.batch_size == 128
    budget = int(need * 0.8)
    assert plan(spec, warning.fits).training_total <= budget
    assert plan(spec, warning.fits + 1).training_total > budget
    assert check_memory(spec, available=None) == []


def test_available_memory_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable:    2048 kB\n")
    assert available_memory(meminfo) == 2048 * 1024
    fallback = available_memory(tmp_path / "missing")  # sysconf, or None: never an exception
    assert fallback is None or fallback > 0


def test_summary_batch_size_option():
    result = cnnkit("summary", "configs/mnist.yaml", "--batch-size", "7")
    assert result.returncode == 0, result.stderr
    assert "Memory for a batch of 7" in result.stdout
    info = api.summarize(api.spec_from_spec_or_run(ROOT / "configs" / "mnist.yaml"), 7)
    assert info.memory.batch_size == 7


def test_check_warns_when_training_would_not_fit_in_memory():
    # ~0.6 MB per image for mnist.yaml: ten million images need terabytes
    result = cnnkit("check", "configs/mnist.yaml", "--set", "train.batch_size=10000000")
    assert result.returncode == 0, result.stderr
    assert "Warning: training at train.batch_size 10,000,000" in result.stdout
    assert "The largest batch size that fits" in result.stdout
    assert "--set train.batch_size=" in result.stdout


# -- what check finds on disk without reading an image ------------------------------------

FOLDER_SPEC = """\
data:
  source: folder
  path: {path}
  target_size: [8, 8]{extra}
model:
  layers:
    - Flatten: {{}}
    - Dense: {{units: {units}, activation: softmax}}
"""


def _image_folder(root: Path, splits=("train", "val", "test"), classes=("cat", "dog", "emu")):
    from PIL import Image

    for split in splits:
        for i, name in enumerate(classes):  # a colour per class: labels can be told apart
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10 + 40 * i, 20, 30)).save(root / split / name / "0.png")


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


def _write_spec(tmp_path: Path, path: str, extra: str = "", units: int = 3) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(FOLDER_SPEC.format(path=path, extra=extra, units=units))
    return spec


def test_check_passes_a_folder_without_opening_an_image(tmp_path, no_image_opened):
    _image_folder(tmp_path / "d")
    report = api.check(_write_spec(tmp_path, str(tmp_path / "d"), "\n  classes: [emu, cat]", 2))
    assert report.spec.data.classes == ("emu", "cat")


def test_check_finds_a_missing_data_folder_and_suggests_the_near_one(
    tmp_path, monkeypatch, no_image_opened
):
    _image_folder(tmp_path / "shapes")
    monkeypatch.chdir(tmp_path)
    (error,) = _check_errors(_write_spec(tmp_path, "shape"))
    assert error.where == f"{tmp_path / 'spec.yaml'}:3:3 data.path"
    assert "image folder not found: shape" in error.message
    assert str(tmp_path / "shape") in error.message  # where it looked
    assert "did you mean 'shapes'?" in error.hint
    assert "path: shape" in error.context


def test_check_finds_a_missing_split_folder(tmp_path, no_image_opened):
    _image_folder(tmp_path / "d", splits=("train",))
    (error,) = _check_errors(_write_spec(tmp_path, str(tmp_path / "d")))
    assert error.where.endswith("data.validation")
    assert f"needs a test/ (or val/) folder, but {tmp_path / 'd'} holds train/ only" in (
        error.message
    )
    assert "validation_split: 0.2" in error.hint and "validation: none" in error.hint
    # what would be valid is valid
    api.check(_write_spec(tmp_path, str(tmp_path / "d"), "\n  validation: none"))
    api.check(_write_spec(tmp_path, str(tmp_path / "d"), "\n  validation_split: 0.25"))


def test_check_finds_split_folders_that_differ(tmp_path, no_image_opened):
    _image_folder(tmp_path / "d")
    (tmp_path / "d" / "test" / "dog").rename(tmp_path / "d" / "test" / "dgo")
    (error,) = _check_errors(_write_spec(tmp_path, str(tmp_path / "d")))
    assert error.where.endswith("data.path") and str(tmp_path / "d" / "test") in error.message
    assert "missing dog; extra dgo" in error.message and "cat, dog, emu" in error.hint


def test_check_finds_a_class_list_that_does_not_match_the_folders(tmp_path, no_image_opened):
    _image_folder(tmp_path / "d")
    spec = _write_spec(tmp_path, str(tmp_path / "d"), "\n  classes: [cat, dgo]", units=2)
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


def test_cli_check_exits_2_and_train_refuses_before_creating_a_run(tmp_path, monkeypatch, capsys):
    from tests.clitools import flat, run_cli

    _image_folder(tmp_path / "d", splits=("train",))
    spec = _write_spec(tmp_path, str(tmp_path / "d"), "\n  classes: [cat, dgo]", units=2)
    code, out, err = run_cli("check", str(spec), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "Traceback" not in err
    assert "2 errors in the spec" in flat(err)
    assert "data.validation" in flat(err) and "data.classes[1]" in flat(err)
    out_dir = tmp_path / "runs"
    code, out, err = run_cli(
        "train", str(spec), "--out", str(out_dir), monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "data.classes[1]" in flat(err) and not out_dir.exists()


def test_class_names_select_and_order_the_folder_classes(tmp_path, monkeypatch):
    """data.classes: [emu, cat] (Keras' classes=[...]): those folders only, emu label 0."""
    from cnnkit.data.batches import make_splits
    from cnnkit.errors import DataError
    from cnnkit.spec.config import load_spec

    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "cache"))
    _image_folder(tmp_path / "d")
    spec = load_spec(_write_spec(tmp_path, str(tmp_path / "d"), "\n  classes: [emu, cat]", 2))
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


def test_disk_problems_are_listed_beside_the_specs_other_errors(tmp_path, no_image_opened):
    """A head that does not fit (3 units, 2 classes named) used to hide the misspelt class
    name behind it; now both come in one pass, each once."""
    _image_folder(tmp_path / "d")
    spec = _write_spec(tmp_path, str(tmp_path / "d"), "\n  classes: [emu, kat]", 3)
    errors = _check_errors(spec)
    where = [e.where for e in errors]
    assert any("Dense" in w for w in where), where  # the head: 3 units for 2 classes
    assert sum("data.classes[1]" in w for w in where) == 1, where
    (misspelt,) = [e for e in errors if "data.classes[1]" in e.where]
    assert "kat" in misspelt.message and "cat" in (misspelt.hint or ""), misspelt
