"""End to end through the real CLI (subprocesses): train a tiny spec on 512 MNIST images, then
evaluate, predict and summarize its run directory; bad input exits 2 without a traceback."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnkit.data.idx import read_idx
from tests.clitools import MNIST, ROOT
from tests.clitools import run_subprocess as cnnkit

TINY = """\
name: tiny
seed: 3
data:
  source: mnist
  path: {mnist}
  validation: test
  max_train_samples: 512
  max_test_samples: 256
model:
  input_shape: [28, 28, 1]
  layers:
    - Conv2D: {{filters: 4, kernel_size: 3, strides: 2, activation: relu}}
    - MaxPooling2D: {{pool_size: 2}}
    - Flatten: {{}}
    - Dropout: {{rate: 0.2}}
    - Dense: {{units: 10, activation: softmax}}
loss: sparse_categorical_crossentropy
optimizer: {{name: adam, learning_rate: 0.01}}
train: {{epochs: 2, batch_size: 64}}
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cli")
    (work / "tiny.yaml").write_text(TINY.format(mnist=MNIST))
    return work


@pytest.fixture(scope="module")
def run_dir(workdir: Path) -> Path:
    result = cnnkit("train", "tiny.yaml", "--out", "runs", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runs/tiny" in result.stdout
    return workdir / "runs" / "tiny"


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_train_writes_the_run_directory(run_dir: Path):
    for name in (
        "config.yaml",
        "metrics.csv",
        "summary.txt",
        "checkpoints/last.npz",
        "checkpoints/last.json",
        "checkpoints/best.npz",
        "checkpoints/best.json",
    ):
        assert (run_dir / name).is_file(), name
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == [
        "epoch",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "seconds",
        "lr",
    ]
    assert float(rows[-1]["val_accuracy"]) > 0.5  # 2 epochs on 512 images: clearly learning
    assert "Total params" in (run_dir / "summary.txt").read_text()
    # written like any other file of the user's (umask applies), not mkstemp's private 0o600
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.yaml", "metrics.csv", "checkpoints/last.npz"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_checkpoint_format(run_dir: Path):
    with np.load(run_dir / "checkpoints" / "last.npz", allow_pickle=False) as ckpt:
        shapes = {k: ckpt[k].shape for k in ckpt.files}
    assert shapes == {
        "layers.0.kernel": (3, 3, 1, 4),
        "layers.0.bias": (4,),
        "layers.4.kernel": (6 * 6 * 4, 10),
        "layers.4.bias": (10,),
    }
    meta = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert meta["format_version"] == 1 and meta["class_names"] == [str(i) for i in range(10)]
    assert meta["epoch"] in (1, 2) and "val_accuracy" in meta["metrics"] and meta["spec_hash"]


def test_evaluate_json_and_evaluation_file(run_dir: Path, workdir: Path):
    result = cnnkit("evaluate", str(run_dir), "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 256
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 256
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / 256)
    assert json.loads((run_dir / "evaluation.json").read_text())["accuracy"] == report["accuracy"]
    # the best checkpoint's val_accuracy was measured on the same 256 test images
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert report["accuracy"] == pytest.approx(best["metrics"]["val_accuracy"])


def test_evaluate_prints_report_and_matrix(run_dir: Path, workdir: Path):
    result = cnnkit("evaluate", str(run_dir), "--checkpoint", "last", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "precision" in result.stdout and "Confusion matrix" in result.stdout


def test_predict_images_and_folders(run_dir: Path, workdir: Path):
    images = read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:3]
    folder = workdir / "digits"
    folder.mkdir(exist_ok=True)
    # PNG, JPEG and BMP; grayscale, RGB and RGBA (transparent background, as paint programs save)
    Image.fromarray(images[0]).save(folder / "digit0.png")
    Image.fromarray(images[1]).convert("RGB").save(folder / "digit1.jpg", quality=95)
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = images[2]  # black strokes, alpha = ink: composited on white -> inverted
    Image.fromarray(rgba, "RGBA").save(folder / "digit2.png")
    Image.fromarray(images[0]).save(folder / "digit3.bmp")
    (folder / "notes.txt").write_text("not an image: ignored inside folders")
    # dark on light and larger, as drawn in a paint program: must be inverted
    Image.fromarray(255 - images[0]).resize((112, 112)).save(workdir / "drawn.png")
    result = cnnkit(
        "predict",
        "drawn.png",
        "digits",
        "--run",
        str(run_dir),
        "--top-k",
        "3",
        "--json",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert [Path(p["image"]).name for p in predictions] == [
        "drawn.png",
        "digit0.png",
        "digit1.jpg",
        "digit2.png",
        "digit3.bmp",
    ]
    assert [p["inverted"] for p in predictions] == [True, False, False, True, False]
    # the same digit as PNG and BMP gives the same classes and probabilities (up to BLAS
    # rounding, which depends on the row's position in the batch)
    same = zip(predictions[1]["top"], predictions[4]["top"], strict=True)
    for a, b in same:
        assert a["class"] == b["class"] and a["probability"] == pytest.approx(b["probability"])
    for p in predictions:
        probs = [t["probability"] for t in p["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    table = cnnkit("predict", "drawn.png", "--run", str(run_dir), cwd=workdir)
    assert table.returncode == 0 and "drawn.png" in table.stdout


def test_summary_of_run_dir_and_spec(run_dir: Path, workdir: Path):
    for target in (str(run_dir), str(ROOT / "configs" / "mnist_basic.yaml")):
        result = cnnkit("summary", target, cwd=workdir)
        assert result.returncode == 0, result.stderr
        assert "Total params" in result.stdout
    assert "693,962" in result.stdout


def test_same_spec_and_seed_give_identical_metrics_and_weights(run_dir: Path, workdir: Path):
    again = cnnkit("train", "tiny.yaml", "--out", "runs", cwd=workdir)
    assert again.returncode == 0, again.stderr
    second = workdir / "runs" / "tiny-2"  # the first run is never overwritten
    assert second.is_dir() and (run_dir / "metrics.csv").is_file()
    first_rows, second_rows = (
        read_metrics(run_dir / "metrics.csv"),
        read_metrics(second / "metrics.csv"),
    )
    for a, b in zip(first_rows, second_rows, strict=True):
        a.pop("seconds"), b.pop("seconds")
        assert a == b
    with (
        np.load(run_dir / "checkpoints" / "last.npz") as x,
        np.load(second / "checkpoints" / "last.npz") as y,
    ):
        for key in x.files:
            assert np.array_equal(x[key], y[key]), key


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "missing.yaml"], "spec file not found"),
        (["evaluate", "no_such_run"], "run directory not found"),
        (["summary", "bad.yaml"], "did you mean 'filters'"),
        (["train", "bad.yaml"], "model.layers[0].Conv2D.filter"),
    ],
)
def test_user_errors_exit_2_with_one_message(workdir: Path, args, expected):
    (workdir / "bad.yaml").write_text(
        "data: {source: mnist}\nmodel:\n  layers:\n    - Conv2D: {filter: 3, kernel_size: 3}\n"
    )
    result = cnnkit(*args, cwd=workdir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    assert len(result.stderr.splitlines()) < 25
    assert not (workdir / "runs" / "bad").exists()


def test_predict_bad_image_exits_2(run_dir: Path, workdir: Path):
    (workdir / "not_an_image.png").write_text("hello")
    result = cnnkit("predict", "not_an_image.png", "--run", str(run_dir), cwd=workdir)
    assert result.returncode == 2
    assert "not_an_image.png" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_mnist_file_is_caught_by_md5(workdir: Path, tmp_path: Path):
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for f in MNIST.iterdir():
        (mnist / f.name).write_bytes(f.read_bytes())
    labels = mnist / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10  # one wrong label in a well-formed file: only md5 can tell
    labels.write_bytes(gzip.compress(bytes(raw)))
    (workdir / "corrupt.yaml").write_text(
        TINY.format(mnist=mnist).replace("name: tiny", "name: corrupt")
    )
    result = cnnkit("train", "corrupt.yaml", "--out", "runs", cwd=workdir)
    assert result.returncode == 2
    assert "checksum mismatch" in result.stderr and "t10k-labels" in result.stderr
    assert not (workdir / "runs" / "corrupt").exists()  # nothing written before data loads
