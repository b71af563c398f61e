"""What a run leaves to look at (issue 7): curves.png, the evaluation's confusion_matrix.png,
misclassified.png/.csv and most-confused pairs, report.md, run.json states, `cnnkit runs`,
`cnnkit compare`, TensorBoard event files, and plain output without escape codes.

The run directories are made once per module, in-process, with a tiny spec (256 MNIST images,
a tiny model, 2 epochs): a finished run (evaluated), an interrupted one and a failed one."""

from __future__ import annotations

import csv
import io
import json
import re
import struct
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnnkit import api
from cnnkit.cli.app import app
from cnnkit.errors import SpecError
from cnnkit.runs.layout import RunDir
from cnnkit.runs.plots import plot_confusion, plot_curves
from cnnkit.runs.state import read_state
from cnnkit.spec.build import build_loss
from cnnkit.spec.config import parse_spec
from cnnkit.train.trainer import SilentReporter
from tests.clitools import run_subprocess

ROOT = Path(__file__).resolve().parents[2]
# no COLUMNS: what a pipe gets (Rich: 80)
cnnkit = partial(run_subprocess, columns=80)

TINY = """\
name: {name}
seed: 3
data:
  source: mnist
  path: {mnist}
  validation: test
  max_train_samples: 256
  max_test_samples: 128
model:
  input_shape: [28, 28, 1]
  layers:
    - Conv2D: {{filters: 4, kernel_size: 3, strides: 2, activation: relu}}
    - MaxPooling2D: {{pool_size: 2}}
    - Flatten: {{}}
    - Dense: {{units: 10, activation: softmax}}
loss: sparse_categorical_crossentropy
optimizer: {{name: adam, learning_rate: {lr}}}
metrics: [accuracy, f1]
train: {{epochs: 2, batch_size: 32}}
logging: {{tensorboard: {tensorboard}, every_steps: 3}}
"""


def tiny_text(name: str = "tiny", lr: float = 0.01, tensorboard: bool = False) -> str:
    mnist = ROOT / "cnnkit" / "data" / "mnist"
    return TINY.format(name=name, mnist=mnist, lr=lr, tensorboard=str(tensorboard).lower())


class StopAt(SilentReporter):
    """Raises `error` when epoch `epoch` begins (a Ctrl+C or a crash mid-training)."""

    def __init__(self, epoch: int, error: BaseException):
        self.epoch, self.error = epoch, error

    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None:
        if epoch == self.epoch:
            raise self.error


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reports") / "runs"
    # made in this order; listed newest first (not alphabetically): stopped, crashed, tiny
    finished = api.train(parse_spec(tiny_text("tiny", tensorboard=True)), out=root).run_dir
    api.evaluate(finished)
    made = {"root": root, "finished": finished}
    for kind, name, error in (
        ("interrupted", "stopped", KeyboardInterrupt()),
        ("failed", "crashed", RuntimeError("boom")),
    ):
        spec = parse_spec(tiny_text(name, lr=0.003))
        with pytest.raises(type(error)):
            api.train(spec, out=root, reporter=StopAt(2, error))
        made[kind] = root / name
    return made


def png(path: Path) -> np.ndarray:
    """The decoded pixels; fails unless the file is a valid PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def sensible(pixels: np.ndarray, min_w: int = 300, min_h: int = 200) -> None:
    h, w, _ = pixels.shape
    assert min_w <= w <= 4000 and min_h <= h <= 4000, (w, h)
    assert pixels.std() > 5  # not a blank canvas


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- figures -------------------------------------------------------------------------------


@pytest.mark.e2e
def test_curves_png_after_every_epoch(runs):
    sensible(png(runs["finished"] / "curves.png"))
    # stopped in epoch 2: the PNG of epoch 1 is there (written at every epoch end)
    sensible(png(runs["interrupted"] / "curves.png"))
    assert len(read_csv(runs["interrupted"] / "metrics.csv")) == 1


@pytest.mark.e2e
def test_curves_change_when_the_data_changes(runs, tmp_path):
    rows = read_csv(runs["finished"] / "metrics.csv")
    history = [{k: float(v) for k, v in row.items()} for row in rows]
    plot_curves(history, tmp_path / "a.png", best_epoch=2, monitor="val_accuracy")
    plot_curves(history, tmp_path / "same.png", best_epoch=2, monitor="val_accuracy")
    changed = [dict(r) for r in history]
    changed[0]["val_loss"] *= 1.5
    plot_curves(changed, tmp_path / "b.png", best_epoch=2, monitor="val_accuracy")
    a, same, b = (png(tmp_path / n) for n in ("a.png", "same.png", "b.png"))
    assert np.array_equal(a, same)
    assert a.shape != b.shape or not np.array_equal(a, b)
    # the best-epoch marker is drawn: another best epoch gives another picture
    plot_curves(history, tmp_path / "c.png", best_epoch=1, monitor="val_accuracy")
    assert not np.array_equal(a, png(tmp_path / "c.png"))


def test_confusion_png_changes_with_the_matrix(tmp_path):
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    plot_confusion(matrix, ["cat", "dog", "fox"], tmp_path / "a.png")
    other = matrix.copy()
    other[0, 0], other[0, 2] = 1, 4
    plot_confusion(other, ["cat", "dog", "fox"], tmp_path / "b.png")
    a, b = png(tmp_path / "a.png"), png(tmp_path / "b.png")
    sensible(a, 500, 250)  # two panels side by side
    assert a.shape[1] > a.shape[0]
    assert not np.array_equal(a, b)


# -- evaluate's error analysis ---------------------------------------------------------------


@pytest.mark.e2e
def test_evaluate_writes_error_analysis(runs):
    run = runs["finished"]
    report = json.loads((run / "evaluation.json").read_text())
    sensible(png(run / "confusion_matrix.png"), 500, 250)
    sensible(png(run / "misclassified.png"), 100, 100)
    matrix = np.array(report["confusion_matrix"])
    rows = read_csv(run / "misclassified.csv")
    mistakes = int(matrix.sum() - np.trace(matrix))
    assert mistakes > 0  # a 2-epoch model on 256 images makes mistakes
    assert len(rows) == mistakes == report["misclassified"]
    assert list(rows[0]) == ["index", "file", "true", "predicted", "confidence", "top_k"]
    confidence = [float(r["confidence"]) for r in rows]
    assert confidence == sorted(confidence, reverse=True)
    for r in rows:
        assert r["true"] != r["predicted"]
        top = r["top_k"].split()
        name, shown = top[0].rsplit(":", 1)
        # confidence has 6 decimals, top_k 4: compare the values, not a second rounding
        assert len(top) == 3 and name == r["predicted"]
        assert abs(float(shown) - float(r["confidence"])) <= 5e-5 + 1e-9
    # each (true, predicted) pair of the CSV is counted in the matrix
    pairs: dict[tuple[int, int], int] = {}
    for r in rows:
        key = (int(r["true"]), int(r["predicted"]))
        pairs[key] = pairs.get(key, 0) + 1
    for (t, p), n in pairs.items():
        assert matrix[t, p] == n
    # most-confused pairs: the largest off-diagonal cells, largest first
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    confused = report["most_confused"]
    assert confused and confused[0]["count"] == off.max()
    assert [c["count"] for c in confused] == sorted((c["count"] for c in confused), reverse=True)
    first = confused[0]
    assert off[int(first["true"]), int(first["predicted"])] == first["count"]
    assert first["fraction_of_true"] == pytest.approx(
        first["count"] / matrix[int(first["true"])].sum()
    )


@pytest.mark.e2e
def test_report_md_has_the_final_metrics(runs):
    run = runs["finished"]
    text = (run / "report.md").read_text()
    evaluation = json.loads((run / "evaluation.json").read_text())
    last = read_csv(run / "metrics.csv")[-1]
    assert f"| accuracy | {evaluation['accuracy']:.4f} |" in text
    assert f"| loss | {evaluation['loss']:.4f} |" in text
    assert f"{float(last['val_accuracy']):.4f}" in text and f"{float(last['loss']):.4f}" in text
    for link in ("(curves.png)", "(confusion_matrix.png)", "(misclassified.png)"):
        assert link in text
    assert "| state | finished |" in text
    assert "```yaml" in text and "learning_rate: 0.01" in text  # the spec
    assert "Total params" in text  # the summary table
    assert "### Most-confused class pairs" in text
    interrupted = (runs["interrupted"] / "report.md").read_text()
    assert "| state | interrupted |" in interrupted and "| epochs done / planned | 1 / 2 |" in (
        interrupted
    )


# -- run state, runs, compare --------------------------------------------------------------


@pytest.mark.e2e
def test_run_json_states(runs):
    finished = read_state(runs["finished"])
    assert finished["state"] == "finished" and finished["epochs_done"] == 2
    assert finished["images_per_s"] > 0 and finished["ended"] >= finished["started"]
    interrupted = read_state(runs["interrupted"])
    assert interrupted["state"] == "interrupted" and interrupted["epochs_done"] == 1
    failed = read_state(runs["failed"])
    assert failed["state"] == "failed" and "RuntimeError: boom" in failed["error"]


@pytest.mark.e2e
def test_a_killed_run_reads_as_interrupted(runs, tmp_path):
    state = json.loads((runs["finished"] / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({**state, "state": "running", "pid": 2**22 + 7}))
    assert read_state(tmp_path)["state"] == "interrupted"


@pytest.mark.e2e
def test_list_runs_newest_first(runs):
    infos = api.list_runs(runs["root"])
    assert [i["name"] for i in infos] == ["crashed", "stopped", "tiny"]
    by_name = {i["name"]: i for i in infos}
    tiny = by_name["tiny"]
    rows = read_csv(runs["finished"] / "metrics.csv")
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    assert tiny["state"] == "finished" and tiny["epochs_done"] == 2 == tiny["epochs_planned"]
    assert tiny["best_val_accuracy"] == pytest.approx(float(best["val_accuracy"]))
    assert tiny["best_epoch"] == int(best["epoch"])
    evaluation = json.loads((runs["finished"] / "evaluation.json").read_text())
    assert tiny["test_accuracy"] == pytest.approx(evaluation["accuracy"])
    assert tiny["dataset"] == "mnist" and tiny["images_per_s"] > 0
    assert by_name["stopped"]["state"] == "interrupted"
    assert by_name["stopped"]["epochs_done"] == 1 and by_name["stopped"]["test_accuracy"] is None
    assert by_name["crashed"]["state"] == "failed"


@pytest.mark.e2e
def test_compare_marks_the_better_value(runs):
    result = api.compare_runs(runs["finished"], runs["interrupted"])
    diff = {d["key"]: (d["a"], d["b"]) for d in result["spec_diff"]}
    assert diff["optimizer.learning_rate"] == (0.01, 0.003)
    assert diff["name"] == ("tiny", "stopped")
    assert "train.epochs" not in diff  # equal keys are not listed
    metrics = {m["metric"]: m for m in result["metrics"]}
    for name, higher_is_better in (
        ("last epoch val_loss", False),
        ("last epoch val_accuracy", True),
        ("best val_accuracy", True),
    ):
        m = metrics[name]
        if m["a"] == m["b"]:
            assert m["better"] is None
        else:
            a_wins = (m["a"] > m["b"]) == higher_is_better
            assert m["better"] == ("a" if a_wins else "b"), m
    assert metrics["test accuracy"]["b"] is None and metrics["test accuracy"]["better"] is None


# -- TensorBoard ---------------------------------------------------------------------------


def read_events(folder: Path) -> list:
    """Every event of the TFRecord files in folder, CRCs checked (what TensorBoard reads)."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            header = data[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == masked_crc32c(header)
            body = data[pos + 12 : pos + 12 + length]
            assert struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] == (
                masked_crc32c(body)
            )
            events.append(Event.FromString(body))
            pos += 16 + length
    return events


@pytest.mark.e2e
def test_tensorboard_event_files(runs):
    pytest.importorskip("tensorboardX")
    events = read_events(runs["finished"] / "tensorboard")
    scalars: dict[str, dict[int, float]] = {}
    kinds: dict[str, str] = {}
    for event in events:
        for value in event.summary.value:
            kinds[value.tag] = value.WhichOneof("value") or ""
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    rows = read_csv(runs["finished"] / "metrics.csv")
    for column in ("loss", "val_loss", "accuracy", "val_accuracy", "f1", "lr"):
        assert sorted(scalars[f"epoch/{column}"]) == [1, 2]
        for row in rows:
            assert scalars[f"epoch/{column}"][int(row["epoch"])] == pytest.approx(
                float(row[column]), rel=1e-4, abs=1e-6
            )
    # 256 images / batch 32 = 8 steps an epoch, every_steps 3: steps 3, 6, 8 of each epoch
    assert sorted(scalars["step/loss"]) == [3, 6, 8, 11, 14, 16]
    assert kinds["data/training_samples"] == "image"
    assert any("summary" in tag for tag in kinds)


def test_tensorboard_missing_package_is_a_spec_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    with pytest.raises(SpecError, match="tensorboardX"):
        api.train(parse_spec(tiny_text("tb", tensorboard=True)), out=tmp_path)
    assert not (tmp_path / "tb").exists()  # refused before the run directory exists


def test_logging_keys_are_validated():
    text = tiny_text().replace("every_steps: 3", "every_step: 3")
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert "logging.every_step" in info.value.where and "every_steps" in info.value.hint
    with pytest.raises(SpecError, match="out of range"):
        parse_spec(tiny_text().replace("every_steps: 3", "every_steps: 0"))
    spec = parse_spec(tiny_text())
    assert spec.logging.to_dict() == {"tensorboard": False, "every_steps": 3}
    assert "logging" in spec.to_dict()


# -- terminal output -----------------------------------------------------------------------


def no_control_characters(text: str) -> None:
    bad = {c for c in text if (ord(c) < 32 and c not in "\n\t") or c == "\x7f"}
    assert not bad, sorted(bad)


@pytest.mark.e2e
def test_non_terminal_output_is_plain_lines(runs, tmp_path):
    (tmp_path / "tiny.yaml").write_text(tiny_text("piped"))
    result = cnnkit("train", "tiny.yaml", "--out", str(tmp_path / "p"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    no_control_characters(result.stdout + result.stderr)
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("Epoch ")] == ["1/2", "2/2"]
    steps = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[3] for line in steps] == ["3/8", "6/8"] * 2  # every_steps: 3
    for args in (
        ("runs", str(runs["root"])),
        ("compare", str(runs["finished"]), str(runs["failed"])),
    ):
        result = cnnkit(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        no_control_characters(result.stdout + result.stderr)
        assert "finished" in result.stdout or "★" in result.stdout


def invoke(*args: str) -> str:
    """The CLI in-process (stdout is not a terminal here either); its stdout."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


@pytest.mark.e2e
def test_quiet_prints_only_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(tiny_text("hush"))
    out = invoke("train", "tiny.yaml", "--out", "q", "--quiet")
    assert out.splitlines() == [str(Path("q") / "hush")]
    assert (tmp_path / "q" / "hush" / "curves.png").is_file()


@pytest.mark.e2e
def test_json_options_print_only_json(runs, tmp_path):
    listed = json.loads(invoke("runs", str(runs["root"]), "--json"))
    assert {r["name"]: r["state"] for r in listed}["stopped"] == "interrupted"
    (tmp_path / "tiny.yaml").write_text(tiny_text())
    summary = json.loads(invoke("summary", str(tmp_path / "tiny.yaml"), "--json"))
    assert summary["totals"]["total"] == 4 * 9 + 4 + 6 * 6 * 4 * 10 + 10
    assert [layer["type"] for layer in summary["layers"]][0] == "Conv2D"
    compared = json.loads(
        invoke("compare", str(runs["finished"]), str(runs["interrupted"]), "--json")
    )
    assert compared["spec_diff"]
    evaluated = json.loads(invoke("evaluate", str(runs["finished"]), "--json"))
    assert evaluated["most_confused"] and evaluated["misclassified"] > 0


# -- which split evaluate used (issue 12) ----------------------------------------------------

SPLIT_SPEC = """\
name: {name}
seed: 5
data: {{source: {source}, {data}}}
model:
  input_shape: [6, 6, 1]
  layers:
    - Flatten: {{}}
    - Dense: {{units: 3, activation: softmax}}
loss: sparse_categorical_crossentropy
train: {{epochs: 2, batch_size: 16}}
"""
SYNTHETIC = "num_classes: 3, max_train_samples: 80, max_test_samples: 24"


def split_run(tmp_path: Path, name: str, data: str, source: str = "synthetic", extra: str = ""):
    """A tiny run (80 random 6x6 images, one Dense layer: well under a second), with the notes
    training printed at its start."""
    file = tmp_path / f"{name}.yaml"
    file.write_text(SPLIT_SPEC.format(name=name, source=source, data=data) + extra)
    notes: list[str] = []
    spec = parse_spec(file.read_text(), file)
    return api.train(spec, out=tmp_path / "runs", on_note=notes.append).run_dir, notes, file


@pytest.mark.e2e
def test_evaluate_each_split_into_its_own_files(tmp_path: Path):
    from cnnkit.data.augment import Preprocessor
    from cnnkit.data.batches import make_splits
    from cnnkit.runs.catalog import list_runs
    from cnnkit.seeding import random_stream
    from cnnkit.train.trainer import evaluate_split

    augment = "augmentation: {horizontal_flip: true, width_shift_range: 2}\n"
    run, notes, _ = split_run(
        tmp_path, "held", f"{SYNTHETIC}, validation_split: 0.25", extra=augment
    )
    assert not [n for n in notes if "optimistic" in n]  # selected on a held-out split
    test = api.evaluate(run)
    assert (test["split"], test["samples"], test["optimistic"], test["notes"]) == (
        "test",
        24,
        False,
        [],
    )
    saved = (run / "evaluation.json").read_bytes()
    assert json.loads(saved)["split"] == "test"

    val = api.evaluate(run, split="validation")
    assert (val["split"], val["samples"], val["optimistic"]) == ("validation", 20, True)
    assert "optimistic" in val["notes"][0] and "best.npz" in val["notes"][0]
    # best.npz's val_accuracy was measured on these 20 images
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert val["accuracy"] == pytest.approx(best["metrics"]["val_accuracy"])
    assert json.loads((run / "evaluation_validation.json").read_text())["split"] == "validation"
    for name in ("confusion_matrix_validation.png", "misclassified_validation.png"):
        sensible(png(run / name), 100, 100)
    assert len(read_csv(run / "misclassified_validation.csv")) == val["misclassified"]
    assert (run / "evaluation.json").read_bytes() == saved  # the test evaluation is kept

    train = api.evaluate(run, split="train")
    assert train["samples"] == 60  # the 20 validation images are not in it
    assert "without augmentation" in train["notes"][0] and "held out" in train["notes"][0]
    # evaluated as evaluation always is: the plain preprocessor, not the augmenting one
    spec = api.load_run_spec(run)
    model = api.load_model(run)[1]
    split = make_splits(api.load_dataset(spec), spec.data, spec.seed).train
    plain = Preprocessor.from_spec(spec, saved=RunDir(run).read_normalization)
    loss_fn = build_loss(spec)
    assert evaluate_split(model, loss_fn, split, plain, 500).loss == train["loss"]
    augmented = plain.training(random_stream(spec.seed, "augment"))
    assert evaluate_split(model, loss_fn, split, augmented, 500).loss != train["loss"]

    report = (run / "report.md").read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ") and "split" in line]
    assert sections == [
        "## Final evaluation (test split)",
        "## Evaluation (validation split)",
        "## Evaluation (train split)",
    ]
    assert "![confusion matrix](confusion_matrix_validation.png)" in report
    assert f"| test accuracy | {test['accuracy']:.4f} |" in report
    mark = "(optimistic: selected on this split)"
    assert re.search(r"\| validation accuracy \| [\d.]+ \(optimistic: selected on this", report)
    test_row = next(line for line in report.splitlines() if line.startswith("| test accuracy |"))
    assert mark not in test_row, test_row
    # `cnnkit runs` shows the test evaluation's accuracy, whatever was evaluated last
    assert list_runs(tmp_path / "runs")[0]["test_accuracy"] == pytest.approx(test["accuracy"])


@pytest.mark.e2e
def test_selection_on_the_test_split_is_called_optimistic(tmp_path: Path):
    run, notes, file = split_run(tmp_path, "ontest", f"{SYNTHETIC}, validation: test")
    said = [n for n in notes if "optimistic" in n]
    assert len(said) == 1 and "best.npz is the epoch with the best val_accuracy" in said[0]
    assert "data.validation_split" in said[0]
    assert [n for n in api.check(file).spec.notes if "optimistic" in n] == said  # check says it too
    report = api.evaluate(run)
    assert report["split"] == "test" and report["optimistic"] is True
    assert "test score `cnnkit evaluate` reports is optimistic" in report["notes"][0]
    text = (run / "report.md").read_text()
    assert "(optimistic: selected on this split)" in text and "> **Note:** the val_ metrics" in text
    # last.npz was not chosen by val_accuracy (no early stopping): an honest test score
    last = api.evaluate(run, checkpoint="last")
    assert last["optimistic"] is False and last["notes"] == []
    same = api.evaluate(run, split="validation", checkpoint="last")
    assert same["notes"] == ["the validation split is the test split here (data.validation: test)"]
    assert same["loss"] == last["loss"]


@pytest.mark.e2e
def test_evaluate_refuses_a_split_the_data_does_not_have(tmp_path: Path, monkeypatch, capsys):
    from cnnkit.errors import DataError
    from tests.clitools import flat, run_cli

    rng = np.random.default_rng(0)
    npz = tmp_path / "notest.npz"  # x and y only: no test split
    np.savez(npz, x=rng.integers(0, 256, (48, 6, 6, 1), dtype=np.uint8), y=np.arange(48) % 3)
    run, notes, file = split_run(tmp_path, "notest", f"path: {npz}, validation_split: 0.25", "npz")
    assert not api.validation_is_test(parse_spec(file.read_text(), file))
    with pytest.raises(DataError) as info:
        api.evaluate(run)
    err = info.value
    assert err.message == "the data has no test split to evaluate" and err.where == str(npz)
    assert "This data has: validation, train." in err.hint and "--split validation" in err.hint
    assert not (run / "evaluation.json").exists()
    code, out, stderr = run_cli("evaluate", str(run), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "--split validation" in flat(stderr) and "Traceback" not in stderr
    code, out, _ = run_cli(
        "evaluate", str(run), "--split", "validation", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 0 and "Evaluation on the validation split" in out
    assert "Wrote evaluation_validation.json, confusion_matrix_validation.png" in out
    code, _, stderr = run_cli(
        "evaluate", str(run), "--split", "tests", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "'tests' is not one of" in flat(stderr)

    run, _, _ = split_run(tmp_path, "noval", f"path: {npz}, validation: none", "npz")
    with pytest.raises(DataError) as info:
        api.evaluate(run, split="validation")
    assert info.value.message == "the data has no validation split to evaluate"
    assert info.value.hint.startswith("This data has: train.")
    assert api.evaluate(run, split="train")["samples"] == 48


def test_check_looks_for_an_image_folders_val_folder(tmp_path: Path):
    # validation: test (the default) uses val/ when it exists: only without it is selection
    # on the test split, and check says so before any image is decoded
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / "pets" / split / name).mkdir(parents=True)
            Image.new("RGB", (6, 6)).save(tmp_path / "pets" / split / name / "a.png")
    file = tmp_path / "pets.yaml"
    text = SPLIT_SPEC.format(name="pets", source="folder", data=f"path: {tmp_path / 'pets'}")
    file.write_text(text.replace("[6, 6, 1]", "[6, 6, 3]").replace("units: 3", "units: 2"))
    assert [n for n in api.check(file).spec.notes if "optimistic" in n]
    for name in ("cat", "dog"):
        (tmp_path / "pets" / "valid" / name).mkdir(parents=True)
        Image.new("RGB", (6, 6)).save(tmp_path / "pets" / "valid" / name / "a.png")
    assert not [n for n in api.check(file).spec.notes if "optimistic" in n]
