"""Image-folder source: layouts, class order, colour modes, bad files, stratified validation,
the decode cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnkit import api
from cnnkit.data import folder
from cnnkit.data.batches import make_splits
from cnnkit.errors import DataError, SpecError
from cnnkit.spec.config import parse_spec
from tests.clitools import run_subprocess

FORMATS = ("png", "jpg", "bmp", "gif", "tif", "webp")


pytestmark = pytest.mark.usefixtures("private_cache")  # tests/conftest.py


def write_image(path: Path, value: int, mode: str = "RGB", size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"L": value, "RGB": (value, 0, 255 - value), "RGBA": (value, value, value, 255)}
    if mode == "P":
        Image.new("RGB", size, (value, 0, 0)).convert("P").save(path)
    else:
        Image.new(mode, size, colour[mode]).save(path)


def make_split_folder(root: Path, splits=("train", "val", "test"), per_class=4) -> None:
    # classes written out of order: the source must sort them ("ant" < "bee" < "cat")
    for split in splits:
        for value, name in ((200, "cat"), (10, "ant"), (100, "bee")):
            for i in range(per_class):
                fmt = FORMATS[i % len(FORMATS)]
                write_image(root / split / name / f"{i}.{fmt}", value + i)


def spec_for(root: Path, extra: str = "", layers_in: str = "[10, 12, 3]", units: int = 3):
    return parse_spec(
        f"""
seed: 1
data: {{source: folder, path: {root}{extra}}}
model:
  input_shape: {layers_in}
  layers:
    - Conv2D: {{filters: 2, kernel_size: 3}}
    - Flatten: {{}}
    - Dense: {{units: {units}, activation: softmax}}
train: {{epochs: 1, batch_size: 4}}
"""
    )


def test_split_layout_classes_sorted_and_formats_read(tmp_path: Path):
    make_split_folder(tmp_path / "d")
    (tmp_path / "d" / "train" / "ant" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "d" / "train" / "ant" / "notes.txt").write_text("not an image")
    spec = spec_for(tmp_path / "d")
    dataset = api.load_dataset(spec)
    assert dataset.class_names == ["ant", "bee", "cat"]
    assert dataset.x_train.shape == (12, 10, 12, 3) and dataset.x_train.dtype == np.uint8
    assert dataset.x_val.shape[0] == 12 and dataset.x_test.shape[0] == 12
    assert list(dataset.y_train) == [0] * 4 + [1] * 4 + [2] * 4
    assert dataset.notes == [  # without a LoadProgress, the "Found" lines are notes
        "Found 12 images belonging to 3 classes for training (train/).",
        "Found 12 images belonging to 3 classes for validation (val/).",
        "Found 12 images belonging to 3 classes for test (test/).",
        f"2 hidden or non-image files ignored in {tmp_path / 'd'}",
    ]
    # the red channel carries the class's value: ant's first image (png, lossless) is 10
    assert dataset.x_train[0, 0, 0, 0] == 10
    splits = make_splits(dataset, spec.data, spec.seed)
    assert splits.validation is not None and len(splits.validation) == 12  # val/ is used


def test_validation_folder_aliases(tmp_path: Path):
    make_split_folder(tmp_path / "d", splits=("train", "validation"))
    dataset = api.load_dataset(spec_for(tmp_path / "d"))
    assert dataset.x_val.shape[0] == 12 and dataset.x_test is None


class Recorder:
    def __init__(self):
        self.found: list[str] = []
        self.decoding: list[tuple[str, int, int]] = []

    def progress(self) -> folder.LoadProgress:
        return folder.LoadProgress(
            found=self.found.append, decoding=lambda *event: self.decoding.append(event)
        )


def test_found_lines_per_split_and_decoding_progress_only_when_decoding(tmp_path: Path):
    make_split_folder(tmp_path / "d", splits=("train", "valid", "test"), per_class=3)
    (tmp_path / "d" / "test" / "cat" / "3.png").write_bytes(b"")  # test/ holds 10 files
    spec = spec_for(tmp_path / "d", ", skip_bad_images: true")
    first = Recorder()
    dataset = api.load_dataset(spec, first.progress())
    assert first.found == [
        "Found 9 images belonging to 3 classes for training (train/).",
        "Found 9 images belonging to 3 classes for validation (valid/).",
        "Found 10 images belonging to 3 classes for test (test/).",
    ]
    assert dataset.notes == []  # the lines went to the caller, not into notes as well
    for label, total in (("train/", 9), ("valid/", 9), ("test/", 10)):
        events = [e for e in first.decoding if e[0] == label]
        assert events == [(label, done, total) for done in range(total + 1)]
    second = Recorder()
    api.load_dataset(spec, second.progress())  # the cache: nothing decoded, no progress
    assert second.found == first.found and second.decoding == []


def test_found_lines_with_validation_split_say_what_is_held_out(tmp_path: Path):
    for name, count in (("a", 10), ("b", 20)):
        for i in range(count):
            write_image(tmp_path / "d" / "train" / name / f"{i}.png", i)
    spec = spec_for(tmp_path / "d", ", validation_split: 0.2", units=2)
    recorder = Recorder()
    dataset = api.load_dataset(spec, recorder.progress())
    assert recorder.found == [
        "Found 24 images belonging to 2 classes for training (train/ less validation_split 0.2).",
        "Found 6 images belonging to 2 classes for validation (validation_split 0.2 of train/).",
    ]
    # train/ without val/: held out from every class, as for a folder of classes
    assert np.bincount(dataset.y_val).tolist() == [2, 4]
    assert np.bincount(dataset.y_train).tolist() == [8, 16]


@pytest.mark.e2e
def test_train_in_a_pipe_prints_found_lines_and_one_decoding_line(tmp_path: Path):
    make_split_folder(tmp_path / "d", splits=("train", "val"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""name: pipe
data: {{source: folder, path: {tmp_path / "d"}}}
model:
  input_shape: [10, 12, 3]
  layers: [Flatten: {{}}, Dense: {{units: 3, activation: softmax}}]
train: {{epochs: 1, batch_size: 4}}
"""
    )
    env = {"CNNKIT_CACHE_DIR": str(tmp_path / "cache")}
    args = ("train", str(spec), "--out", str(tmp_path / "runs"))
    first = run_subprocess(*args, env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert lines[:2] == [
        "Found 12 images belonging to 3 classes for training (train/).",
        "Found 12 images belonging to 3 classes for validation (val/).",
    ]
    assert sum("Decoding" in line for line in lines) == 1 and "\x1b" not in first.stdout
    second = run_subprocess(*args, env=env, timeout=120)
    assert second.returncode == 0 and "Decoding" not in second.stdout  # read from the cache
    assert second.stdout.splitlines()[:2] == lines[:2]


def test_single_folder_stratified_seeded_validation(tmp_path: Path):
    for name, count in (("a", 10), ("b", 20)):
        for i in range(count):
            write_image(tmp_path / "d" / name / f"{i}.png", i)
    spec = spec_for(tmp_path / "d", ", validation_split: 0.2", units=2)
    first = api.load_dataset(spec)
    assert np.bincount(first.y_val).tolist() == [2, 4]  # 20% of each class
    assert np.bincount(first.y_train).tolist() == [8, 16]
    second = api.load_dataset(spec)
    assert np.array_equal(first.x_val, second.x_val)  # the same split every run


@pytest.mark.parametrize(("mode", "channels"), [("grayscale", 1), ("rgb", 3), ("rgba", 4)])
def test_color_modes_and_conversions(tmp_path: Path, mode: str, channels: int):
    write_image(tmp_path / "d" / "a" / "rgba.png", 50, "RGBA")
    write_image(tmp_path / "d" / "a" / "palette.png", 60, "P")
    write_image(tmp_path / "d" / "b" / "gray.png", 70, "L")
    extra = f", color_mode: {mode}, target_size: [5, 6], interpolation: bilinear"
    spec = spec_for(tmp_path / "d", extra, layers_in=f"[5, 6, {channels}]", units=2)
    dataset = api.load_dataset(spec)
    assert dataset.x_train.shape == (3, 5, 6, channels)


def test_input_shape_from_target_size_and_color_mode(tmp_path: Path):
    text = f"""
data: {{source: folder, path: {tmp_path}, target_size: [16, 20], color_mode: grayscale}}
model:
  layers: [Flatten: {{}}, Dense: {{units: 2, activation: softmax}}]
"""
    assert parse_spec(text).model.input_shape == (16, 20, 1)
    with pytest.raises(SpecError, match="1 channel"):
        parse_spec(text.replace("model:", "model:\n  input_shape: [16, 20, 3]"))


def test_folder_options_belong_to_the_folder_source():
    with pytest.raises(SpecError) as info:
        parse_spec("data: {source: mnist, color_mode: rgb}\nmodel: {layers: [Flatten: {}]}")
    assert info.value.where.endswith("data.color_mode") and "folder" in info.value.message


def test_class_count_is_checked_against_the_folder(tmp_path: Path):
    make_split_folder(tmp_path / "d")
    with pytest.raises(SpecError, match="3 classes"):
        spec_for(tmp_path / "d", units=5)


def test_differing_class_folders_name_the_folder(tmp_path: Path):
    make_split_folder(tmp_path / "d")
    write_image(tmp_path / "d" / "test" / "dog" / "0.png", 1)
    with pytest.raises(DataError) as info:
        api.load_dataset(spec_for(tmp_path / "d"))
    assert info.value.where == str(tmp_path / "d" / "test") and "extra dog" in info.value.message


def test_empty_class_names_the_folder(tmp_path: Path):
    make_split_folder(tmp_path / "d", splits=("train",))
    for f in (tmp_path / "d" / "train" / "bee").iterdir():
        f.unlink()
    with pytest.raises(DataError) as info:
        api.load_dataset(spec_for(tmp_path / "d"))
    assert info.value.where == str(tmp_path / "d" / "train" / "bee")


def test_unreadable_image_is_an_error_or_skipped(tmp_path: Path):
    make_split_folder(tmp_path / "d", splits=("train",))
    broken = tmp_path / "d" / "train" / "bee" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError) as info:
        api.load_dataset(spec_for(tmp_path / "d"))
    assert info.value.where == str(broken)
    dataset = api.load_dataset(spec_for(tmp_path / "d", ", skip_bad_images: true"))
    assert dataset.skipped == [str(broken)] and dataset.x_train.shape[0] == 12


def test_cache_is_used_and_invalidated_by_a_changed_file(tmp_path: Path, monkeypatch):
    make_split_folder(tmp_path / "d", splits=("train",))
    spec = spec_for(tmp_path / "d")
    first = api.load_dataset(spec)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although nothing changed")

    monkeypatch.setattr(folder, "_decode", no_decoding)
    assert np.array_equal(api.load_dataset(spec).x_train, first.x_train)
    monkeypatch.undo()
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "cache"))
    changed = tmp_path / "d" / "train" / "ant" / "0.png"
    write_image(changed, 99)
    os.utime(changed, ns=(1, 1))  # a different mtime even on coarse file systems
    assert api.load_dataset(spec).x_train[0, 0, 0, 0] == 99


@pytest.mark.e2e
def test_train_and_predict_with_class_names(tmp_path: Path):
    make_split_folder(tmp_path / "d")
    spec = spec_for(tmp_path / "d")
    run = api.train(spec, out=tmp_path / "runs").run_dir
    results = api.predict([tmp_path / "d" / "test" / "cat"], run, top_k=3)
    assert len(results) == 4
    assert {t["class"] for t in results[0]["top"]} == {"ant", "bee", "cat"}


def _two_class_folder(root: Path) -> None:
    for value, name in ((200, "ship"), (10, "no_ship")):
        for i in range(4):
            write_image(root / name / f"{i}.png", value + i)


def _head(loss: str, units: int, activation: str) -> str:
    return f"""
  layers:
    - Flatten: {{}}
    - Dense: {{units: {units}, activation: {activation}}}
loss: {loss}
"""


@pytest.mark.parametrize(
    ("loss", "units", "activation", "resolved"),
    [
        ("categorical_crossentropy", 2, "softmax", "categorical"),
        ("sparse_categorical_crossentropy", 2, "softmax", "sparse"),
        ("binary_crossentropy", 1, "sigmoid", "binary"),
    ],
)
def test_class_mode_follows_the_loss_when_left_out(tmp_path, loss, units, activation, resolved):
    _two_class_folder(tmp_path / "d")
    spec = parse_spec(
        f"data: {{source: folder, path: {tmp_path / 'd'}}}\nmodel:\n  input_shape: [10, 12, 3]"
        + _head(loss, units, activation)
    )
    assert spec.data.class_mode == resolved
    # classes sorted: no_ship = 0, ship = 1 -- binary labels are the class indices 0/1
    dataset = api.load_dataset(spec)
    assert dataset.class_names == ["no_ship", "ship"]
    assert sorted(set(dataset.y_train.tolist())) == [0, 1]


@pytest.mark.parametrize(
    ("mode", "loss", "units", "activation", "fits"),
    [
        ("binary", "binary_crossentropy", 1, "sigmoid", True),
        ("categorical", "categorical_crossentropy", 2, "softmax", True),
        ("sparse", "categorical_crossentropy", 2, "softmax", True),  # both take class indices
        ("categorical", "sparse_categorical_crossentropy", 2, "softmax", True),
        ("binary", "categorical_crossentropy", 2, "softmax", False),
        ("categorical", "binary_crossentropy", 1, "sigmoid", False),
        ("sparse", "binary_crossentropy", 1, "sigmoid", False),
    ],
)
def test_class_mode_must_fit_the_loss(tmp_path, mode, loss, units, activation, fits):
    _two_class_folder(tmp_path / "d")
    text = (
        f"data: {{source: folder, path: {tmp_path / 'd'}, class_mode: {mode}}}\n"
        "model:\n  input_shape: [10, 12, 3]" + _head(loss, units, activation)
    )
    if fits:
        assert parse_spec(text).data.class_mode == mode
    else:
        with pytest.raises(SpecError) as info:
            parse_spec(text)
        assert info.value.where.endswith("data.class_mode")
        assert mode in info.value.message and loss in info.value.message


def test_class_mode_binary_needs_two_classes(tmp_path: Path):
    make_split_folder(tmp_path / "d")  # three classes
    with pytest.raises(SpecError, match="two classes"):
        parse_spec(
            f"data: {{source: folder, path: {tmp_path / 'd'}, class_mode: binary}}\n"
            "model:\n  input_shape: [10, 12, 3]" + _head("binary_crossentropy", 1, "sigmoid")
        )
