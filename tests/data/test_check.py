"""`cnnkit data check`: every finding and piece of information on a small image folder, array
sources through a spec, exit codes, and a summary that fits one screen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnnkit.api import check_data as check
from cnnkit.cli.app import app
from cnnkit.data.check import check_folder
from cnnkit.errors import DataError
from tests.clitools import run_subprocess

pytestmark = pytest.mark.usefixtures("private_cache")  # tests/conftest.py


def write_image(path: Path, value: int, size=(8, 6), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value, 0, 0) if mode == "RGB" else value).save(path)


def make_clean(root: Path, per_class: int = 5, splits=("train", "val", "test")) -> None:
    """Every image unique: its value comes from (split, class, index)."""
    for s, split in enumerate(splits):
        for c, name in enumerate(("cat", "dog")):
            for i in range(per_class):
                write_image(root / split / name / f"{i}.png", 60 * s + 20 * c + i)


def kinds(report: dict, key: str = "findings") -> list[str]:
    return [f["kind"] for f in report[key]]


def finding(report: dict, kind: str, key: str = "findings") -> dict:
    (found,) = [f for f in report[key] if f["kind"] == kind]
    return found


@pytest.mark.e2e
def test_clean_folder_exits_0_through_the_cli(tmp_path: Path):
    make_clean(tmp_path / "d")
    result = run_subprocess("data", "check", str(tmp_path / "d"), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Clean: no findings" in result.stdout and "Traceback" not in result.stderr


def test_clean_report_contents(tmp_path: Path):
    make_clean(tmp_path / "d")
    report = check(tmp_path / "d")
    assert report["clean"] and report["findings"] == [] and report["info"] == []
    assert report["source"] == "folder" and report["layout"] == "splits"
    assert report["classes"] == ["cat", "dog"]
    assert report["splits"]["val"] == {
        "folder": "val",
        "counts": {"cat": 5, "dog": 5},
        "images": 10,
    }
    assert report["images"] == 30 and report["ignored"] == 0
    assert report["sizes"] == {
        "distinct": 1,
        "width": [8, 8],
        "height": [6, 6],
        "common": [
            {
                "width": 8,
                "height": 6,
                "count": 30,
                "examples": ["train/cat/0.png", "train/cat/1.png", "train/cat/2.png"],
            }
        ],
        "histogram": [],
    }
    assert report["modes"] == [{"mode": "RGB", "channels": 3, "count": 30}]


def test_information_exits_0_and_findings_exit_1_with_json(tmp_path: Path):
    make_clean(tmp_path / "d")
    (tmp_path / "d" / "test" / "dog" / ".DS_Store").write_bytes(b"x")
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "d"), "--json"])
    assert result.exit_code == 0  # an ignored file is worth knowing, it harms nothing
    report = json.loads(result.stdout)
    assert kinds(report) == [] and kinds(report, "info") == ["ignored"] and report["clean"]
    (tmp_path / "d" / "test" / "dog" / "broken.png").write_bytes(b"not a png")
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "d"), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert kinds(report) == ["unreadable"] and report["clean"] is False


def test_imbalance(tmp_path: Path):
    for i in range(16):
        write_image(tmp_path / "d" / "many" / f"{i}.png", i)
    for i in range(5):
        write_image(tmp_path / "d" / "few" / f"{i}.png", 100 + i)
    report = check_folder(tmp_path / "d")
    assert report["layout"] == "flat" and report["splits"]["all"]["counts"] == {
        "few": 5,
        "many": 16,
    }
    assert finding(report, "imbalance") == {
        "kind": "imbalance",
        "severity": "warning",
        "message": "class imbalance above 3× (largest / smallest class): all: many 16 vs few 5 "
        "(3.2×)",
        "threshold": 3.0,
        "splits": [
            {
                "split": "all",
                "largest": "many",
                "largest_count": 16,
                "smallest": "few",
                "smallest_count": 5,
                "ratio": 3.2,
            }
        ],
    }
    assert kinds(report) == ["imbalance"]
    # exactly 3x is not flagged
    (tmp_path / "d" / "many" / "15.png").unlink()
    assert check_folder(tmp_path / "d")["findings"] == []


def test_tiny_training_classes_are_findings(tmp_path: Path):
    make_clean(tmp_path / "d", splits=("train", "test"))
    (tmp_path / "d" / "train" / "dog" / "4.png").unlink()  # 4 training dogs
    for i in range(3):  # a small test class is not a training problem
        (tmp_path / "d" / "test" / "cat" / f"{i}.png").unlink()
    report = check_folder(tmp_path / "d")
    assert finding(report, "tiny_classes") == {
        "kind": "tiny_classes",
        "severity": "warning",
        "message": "classes with fewer than 5 training images: train/dog/ (4)",
        "threshold": 5,
        "tiny": [{"split": "train", "class": "dog", "count": 4}],
    }
    assert kinds(report) == ["tiny_classes"]


def test_unreadable_files_are_named(tmp_path: Path):
    make_clean(tmp_path / "d", splits=("train",))
    (tmp_path / "d" / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "d" / "train" / "dog" / "empty.jpg").write_bytes(b"")
    report = check_folder(tmp_path / "d")
    error = "UnidentifiedImageError: not an image Pillow can read"
    assert finding(report, "unreadable") == {
        "kind": "unreadable",
        "severity": "error",
        "message": "2 unreadable image files",
        "files": [
            {"file": "train/cat/broken.png", "error": error},
            {"file": "train/dog/empty.jpg", "error": error},
        ],
    }
    assert kinds(report) == ["unreadable"]  # not counted in sizes, modes or duplicates
    assert report["splits"]["train"]["counts"] == {"cat": 6, "dog": 6}


def test_truncated_png_fails_verify(tmp_path: Path):
    make_clean(tmp_path / "d", splits=("train",))
    good = tmp_path / "d" / "train" / "cat" / "0.png"
    write_image(good, 1, size=(64, 64))
    data = good.read_bytes()
    good.write_bytes(data[:-20])  # header intact, IEND chunk cut off
    (f,) = finding(check_folder(tmp_path / "d"), "unreadable")["files"]
    assert f["file"] == "train/cat/0.png"


def test_mixed_sizes_and_modes_are_information(tmp_path: Path):
    make_clean(tmp_path / "d", splits=("train",))
    write_image(tmp_path / "d" / "train" / "cat" / "wide.png", 90, size=(16, 6))
    write_image(tmp_path / "d" / "train" / "dog" / "gray.png", 91, mode="L")
    write_image(tmp_path / "d" / "train" / "dog" / "gray2.png", 92, mode="L")
    report = check_folder(tmp_path / "d")
    assert report["sizes"]["common"] == [
        {
            "width": 8,
            "height": 6,
            "count": 12,
            "examples": ["train/cat/0.png", "train/cat/1.png", "train/cat/2.png"],
        },
        {"width": 16, "height": 6, "count": 1, "examples": ["train/cat/wide.png"]},
    ]
    assert report["sizes"]["histogram"] == []  # two sizes: listed one by one
    assert finding(report, "mixed_sizes", "info") == {
        "kind": "mixed_sizes",
        "severity": "info",
        "message": "2 image sizes (width×height 8–16 × 6–6); training resizes every image to "
        "data.target_size (default: model.input_shape)",
    }
    assert finding(report, "mixed_modes", "info") == {
        "kind": "mixed_modes",
        "severity": "info",
        "message": "2 image modes: RGB (11), L (2); training converts every image to color_mode",
        "modes": [
            {"mode": "RGB", "channels": 3, "count": 11, "examples": []},
            {
                "mode": "L",
                "channels": 1,
                "count": 2,
                "examples": ["train/dog/gray.png", "train/dog/gray2.png"],
            },
        ],
    }
    assert kinds(report) == [] and kinds(report, "info") == ["mixed_sizes", "mixed_modes"]


def test_duplicates_across_and_within_splits(tmp_path: Path):
    make_clean(tmp_path / "d")
    root = tmp_path / "d"
    cat1 = (root / "train" / "cat" / "1.png").read_bytes()
    (root / "test" / "dog" / "leak.png").write_bytes(cat1)
    (root / "val" / "cat" / "leak.png").write_bytes(cat1)
    (root / "train" / "dog" / "copy.png").write_bytes(
        (root / "train" / "dog" / "0.png").read_bytes()
    )
    report = check_folder(root)
    leakage = finding(report, "leakage")
    assert leakage["count"] == 3 and leakage["severity"] == "warning"
    assert leakage["pairs"] == [
        {"a": "train/cat/1.png", "b": "val/cat/leak.png", "a_class": "cat", "b_class": "cat"},
        {"a": "train/cat/1.png", "b": "test/dog/leak.png", "a_class": "cat", "b_class": "dog"},
        {"a": "val/cat/leak.png", "b": "test/dog/leak.png", "a_class": "cat", "b_class": "dog"},
    ]
    assert leakage["message"] == (
        "3 identical image pairs across splits (the same image in training and evaluation "
        "data); 2 of them with different classes"
    )
    assert finding(report, "duplicates", "info") == {  # same class: weighs double, harms little
        "kind": "duplicates",
        "severity": "info",
        "message": "1 duplicate image within a split (identical content)",
        "count": 1,
        "pairs": [
            {"a": "train/dog/0.png", "b": "train/dog/copy.png", "a_class": "dog", "b_class": "dog"}
        ],
    }
    assert kinds(report) == ["leakage"] and kinds(report, "info") == ["duplicates"]
    # a copy under another class contradicts its label: a finding
    (root / "train" / "cat" / "copy.png").write_bytes(
        (root / "train" / "dog" / "0.png").read_bytes()
    )
    duplicates = finding(check_folder(root), "duplicates")
    assert duplicates["severity"] == "warning" and duplicates["count"] == 2
    assert duplicates["message"].endswith("; 1 of these images under different classes")


def test_pairs_are_limited_but_counted(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("cnnkit.data.check.PAIR_LIMIT", 2)
    make_clean(tmp_path / "d", splits=("train", "test"))
    for i in range(3):
        src = tmp_path / "d" / "train" / "cat" / f"{i}.png"
        (tmp_path / "d" / "test" / "cat" / f"copy{i}.png").write_bytes(src.read_bytes())
    leakage = finding(check_folder(tmp_path / "d"), "leakage")
    assert leakage["count"] == 3 and len(leakage["pairs"]) == 2


def test_class_folder_missing_from_test_and_empty_class(tmp_path: Path):
    make_clean(tmp_path / "d")
    root = tmp_path / "d"
    for f in (root / "test" / "dog").iterdir():
        f.unlink()
    (root / "test" / "dog").rmdir()
    for i in range(2):  # 2 birds against 5 cats: no imbalance finding
        write_image(root / "val" / "bird" / f"{i}.png", 250 + i)
    (root / "train" / "cat" / "sub").mkdir()
    for f in (root / "val" / "dog").iterdir():
        f.unlink()
    report = check_folder(root)
    assert finding(report, "class_folders") == {
        "kind": "class_folders",
        "severity": "error",
        "message": "class folders differ from train/'s: val/ has extra bird; test/ lacks dog",
        "reference": "train",
        "splits": [
            {"split": "val", "missing": [], "extra": ["bird"]},
            {"split": "test", "missing": ["dog"], "extra": []},
        ],
    }
    assert finding(report, "empty_classes") == {
        "kind": "empty_classes",
        "severity": "error",
        "message": "class folders without images: val/dog/",
        "empty": [{"split": "val", "class": "dog"}],
    }
    assert report["classes"] == ["bird", "cat", "dog"]
    assert report["splits"]["test"]["counts"] == {"cat": 5}
    assert kinds(report) == ["class_folders", "empty_classes"]


def test_no_train_folder_is_a_finding(tmp_path: Path):
    make_clean(tmp_path / "d", splits=("valid", "test"))
    report = check_folder(tmp_path / "d")
    assert report["findings"][0]["message"] == "has valid/, test/ but no train/ folder"
    assert kinds(report) == ["layout"]


def test_hidden_and_non_image_files_are_counted(tmp_path: Path):
    make_clean(tmp_path / "d", splits=("train",))
    root = tmp_path / "d" / "train"
    (root / "cat" / ".DS_Store").write_bytes(b"x")
    write_image(root / "cat" / ".hidden" / "x.png", 1)
    (root / "dog" / "labels.csv").write_text("a,b")
    (root / "README.md").write_text("stray file outside the class folders")
    report = check_folder(tmp_path / "d")
    assert finding(report, "ignored", "info") == {
        "kind": "ignored",
        "severity": "info",
        "message": "4 hidden or non-image files ignored (2 hidden, 2 other)",
        "count": 4,
        "hidden": 2,
        "other": 2,
        "examples": [
            "train/cat/.DS_Store",
            "train/cat/.hidden/x.png",
            "train/README.md",
            "train/dog/labels.csv",
        ],
    }
    assert report["ignored"] == 4 and report["images"] == 10
    assert kinds(report) == [] and kinds(report, "info") == ["ignored"]


def test_bad_input_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError) as info:
        check(tmp_path / "missing")
    assert info.value.where == str(tmp_path / "missing") and info.value.exit_code == 2


NPZ_SPEC = """\
data: {{source: npz, path: {path}}}
model:
  input_shape: [4, 4, 1]
  layers: [Flatten: {{}}, Dense: {{units: 2, activation: softmax}}]
"""


def test_npz_spec_reports_counts_and_duplicates_between_x_and_x_test(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10, 4, 4), dtype=np.uint8)
    y = np.array([0, 1] * 5)
    x_test = rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    x_test[1] = x[2]
    np.savez(
        tmp_path / "d.npz", x=x, y=y, x_test=x_test, y_test=np.array([0, 0, 1]),
        class_names=np.array(["no", "yes"]),
    )  # fmt: skip
    (tmp_path / "spec.yaml").write_text(NPZ_SPEC.format(path=tmp_path / "d.npz"))
    report = check(tmp_path / "spec.yaml")
    assert report["source"] == "npz" and report["file_checks"] is False
    assert report["splits"] == {
        "train": {"counts": {"no": 5, "yes": 5}, "images": 10},
        "test": {"counts": {"no": 2, "yes": 1}, "images": 3},
    }
    assert report["findings"] == [
        {
            "kind": "leakage",
            "severity": "warning",
            "message": "1 identical image pair across splits (the same image in training and "
            "evaluation data)",
            "count": 1,
            "pairs": [{"a": "train[2]", "b": "test[1]", "a_class": "no", "b_class": "no"}],
        }
    ]


def make_mixed_sizes(root: Path) -> None:
    """600 images of 2 classes in train/ valid/ test/, nearly every one of its own size (as in
    a cats-vs-dogs download): the summary must not list them one by one."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("valid", 50), ("test", 50)):
        for c, name in enumerate(("cats", "dogs")):
            for i in range(n):
                w, h = (int(v) for v in rng.integers(20, 300, 2))
                write_image(root / split / name / f"{name}.{i}.png", (7 * i + c) % 256, size=(w, h))


def _longest_list(value) -> int:
    if isinstance(value, dict):
        return max((_longest_list(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max([len(value), *(_longest_list(v) for v in value)])
    return 0


@pytest.mark.e2e
def test_600_images_of_many_sizes_fit_one_screen_and_json_stays_short(tmp_path: Path):
    make_mixed_sizes(tmp_path / "d")
    result = run_subprocess("data", "check", str(tmp_path / "d"), columns=80, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr  # sizes are information
    lines = result.stdout.splitlines()
    assert len(lines) <= 30, result.stdout  # was 803 lines: one size after another
    assert "Image sizes:" in result.stdout and "longer side" in result.stdout
    report = check(tmp_path / "d")
    sizes = report["sizes"]
    assert report["images"] == 600 and sizes["distinct"] > 500
    assert sum(b["count"] for b in sizes["histogram"]) == 600  # every image in a bin
    assert [b["longer_side"] for b in sizes["histogram"]][:2] == [[33, 48], [49, 64]]
    assert all(1 <= len(b["examples"]) <= 3 for b in sizes["histogram"])
    assert _longest_list(report) <= 20  # counts and examples, not a list of the files
    assert kinds(report) == [] and kinds(report, "info") == ["mixed_sizes"]


def test_a_spec_names_the_target_size_images_are_resized_to(tmp_path: Path):
    make_clean(tmp_path / "d", splits=("train",))
    write_image(tmp_path / "d" / "train" / "cat" / "wide.png", 90, size=(16, 6))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"data: {{source: folder, path: {tmp_path / 'd'}, target_size: [12, 10]}}\n"
        "model:\n  layers: [Flatten: {}, Dense: {units: 2, activation: softmax}]\n"
    )
    report = check(spec)
    assert report["target_size"] == [12, 10] and report["clean"]
    assert finding(report, "mixed_sizes", "info")["message"].endswith(
        "training resizes every image to 10×12 (target_size)"
    )
