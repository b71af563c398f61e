"""`cnnkit export` on a trained run (issue 15, lines 1, 2, 4 and 6): a tiny graph model trained
one epoch on PNG files (featurewise normalisation, BatchNormalization, a residual Add), then
the command end to end with --verify-on, the docs' onnxruntime lines on the same PNG files
giving `cnnkit predict`'s probabilities, a forced mismatch (exit 1, no model file), and the
missing extra (exit 2)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
import onnxruntime  # noqa: E402
from PIL import Image  # noqa: E402

from cnnkit import api  # noqa: E402
from cnnkit.data.shapes import CLASSES, make_shapes  # noqa: E402
from cnnkit.export import layers as export_layers  # noqa: E402
from cnnkit.runs.layout import RunDir  # noqa: E402
from cnnkit.spec.config import load_spec  # noqa: E402
from tests.clitools import ROOT, flat, run_cli  # noqa: E402

SPEC = """\
name: shapes_folder
seed: 3
data:
  source: folder
  path: {path}
  target_size: [32, 32]
  color_mode: rgb
  interpolation: bilinear
augmentation: {{featurewise_center: true, featurewise_std_normalization: true}}
model:
  input_shape: [32, 32, 3]
  layers:
    - Conv2D: {{filters: 4, kernel_size: 3, padding: same, activation: relu}}
    - MaxPooling2D: {{pool_size: 2, name: pooled}}
    - Conv2D: {{filters: 4, kernel_size: 3, padding: same, use_bias: false}}
    - BatchNormalization: {{name: main}}
    - Add: {{inputs: [main, pooled]}}
    - GlobalAveragePooling2D: {{}}
    - Dense: {{units: 3, activation: softmax}}
train: {{epochs: 1, batch_size: 16}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("export")
    make_shapes(work / "shapes", size=64, per_class=16)  # 48 train, 12 val, 12 test PNGs
    (work / "spec.yaml").write_text(SPEC.format(path=work / "shapes"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNKIT_CACHE_DIR", str(work / "cache"))
        return api.train(load_spec(work / "spec.yaml"), out=work / "runs").run_dir


@pytest.fixture(autouse=True)
def private_cache(run, monkeypatch):
    """Decoded images cached beside the run, not in the user's cache folder."""
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(run.parent.parent / "cache"))


def test_export_writes_the_model_and_its_figures(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "shapes.onnx"
    code, stdout, err = run_cli(
        "export", str(run), "--verify-on", "5", "--out", str(out), monkeypatch=monkeypatch,
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "onnx.checker (full check): passed" in stdout
    assert re.search(r"on 5 images of the test split: argmax agrees on 100\.00%", stdout)
    report = json.loads((tmp_path / "shapes.verify.json").read_text())
    v = report["verification"]
    assert (v["images"], v["split"], v["passed"]) == (5, "test", True)
    assert v["max_abs_difference"] <= 1e-4 and v["argmax_agreement"] == 1.0
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    best = RunDir(run).read_checkpoint_meta("best")
    assert json.loads(props["classes"]) == list(CLASSES)
    assert (props["color_mode"], props["interpolation"]) == ("rgb", "bilinear")
    assert json.loads(props["input_size"]) == [32, 32]
    assert json.loads(props["metrics"]) == best["metrics"]
    assert props["spec_hash"] == best["spec_hash"]


def docs_snippet() -> str:
    """The Python lines of docs/deploying.md (its first python block)."""
    text = (ROOT / "docs" / "deploying.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_docs_lines_on_png_files_give_predicts_probabilities(run, monkeypatch, capsys):
    """Raw pixels as Pillow reads them into the exported model (its default file in the run):
    predict's probabilities for the same files, its rescale and normalisation inside."""
    code, _, err = run_cli("export", str(run), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    model = RunDir(run).exported_model
    files = sorted((run.parent.parent / "shapes" / "test").rglob("*.png"))[::2]
    predicted = api.predict(files, run, top_k=3)
    snippet = docs_snippet().replace("runs/shapes_folder/model.onnx", str(model))
    for file, expected in zip(files, predicted, strict=True):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(snippet.replace("my_shape.png", str(file)), {})
        name, probability = printed.getvalue().split()
        assert name == expected["top"][0]["class"]
        assert float(probability) == pytest.approx(expected["top"][0]["probability"], abs=1e-5)
    # every class's probability, the images as one batch
    bilinear = Image.Resampling.BILINEAR
    x = np.stack(
        [np.asarray(Image.open(f).convert("RGB").resize((32, 32), bilinear)) for f in files]
    )
    session = onnxruntime.InferenceSession(str(model))
    (probabilities,) = session.run(None, {"image": x.astype(np.float32)})
    for row, expected in zip(probabilities, predicted, strict=True):
        by_class = {t["class"]: t["probability"] for t in expected["top"]}
        np.testing.assert_allclose(row, [by_class[n] for n in CLASSES], atol=1e-5)


def test_a_mismatch_exits_1_and_writes_no_model_file(run, tmp_path, monkeypatch, capsys):
    """A Dense converter that doubles the logits: the figures are written, the model not."""
    original = export_layers.CONVERTERS[export_layers.Dense]

    def doubled(g, layer, xs, base):
        out = original(g, layer, xs, base)
        return g.op("Mul", [out, g.const(f"{base}/broken", 2.0)], base)

    monkeypatch.setitem(export_layers.CONVERTERS, export_layers.Dense, doubled)
    out = tmp_path / "broken.onnx"
    code, _, err = run_cli(
        "export", str(run), "--verify-on", "6", "--out", str(out), monkeypatch=monkeypatch,
        capsys=capsys,
    )  # fmt: skip
    assert code == 1, err
    assert "disagrees with cnnkit on 6 test images" in flat(err)
    assert not out.exists()
    report = json.loads((tmp_path / "broken.verify.json").read_text())
    assert report["verification"]["passed"] is False
    assert report["verification"]["max_abs_difference"] > 1e-4


@pytest.mark.parametrize("package", ["onnx", "onnxruntime"])
def test_without_the_extra_export_says_which_to_install(
    package, run, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, package, None)  # import onnx... raises ImportError
    out = tmp_path / "m.onnx"
    code, _, err = run_cli(
        "export", str(run), "--out", str(out), monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2
    assert f"needs the {package} package" in flat(err)
    assert 'pip install "cnnkit[onnx]"' in flat(err)
    assert not out.exists() and not (tmp_path / "m.verify.json").exists()


def test_an_unsupported_opset_exits_2(run, monkeypatch, capsys):
    code, _, err = run_cli(
        "export", str(run), "--opset", "9", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2
    assert "opset 9 is not supported" in flat(err) and "Valid: 13 to" in flat(err)
