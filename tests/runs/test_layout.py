"""cnnkit.runs.layout: the one owner of the run directory's file names and sidecar readers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cnnkit.errors import CheckpointError
from cnnkit.runs.layout import (
    EVALUATION_FILES,
    CheckpointFiles,
    RunDir,
    read_checkpoint_sidecar,
    read_sidecar,
)

PACKAGE = Path(__file__).resolve().parents[2] / "cnnkit"

# the layout on disk is a file format: runs written by earlier versions must keep working
LAYOUT = {
    "config": "config.yaml",
    "summary": "summary.txt",
    "metrics": "metrics.csv",
    "state": "run.json",
    "report": "report.md",
    "curves": "curves.png",
    "normalization": "normalization.json",
    "skipped_images": "skipped_images.txt",
    "tensorboard": "tensorboard",
    "checkpoints": "checkpoints",
}
CHECKPOINT_FILES = {
    "weights": "last.npz",
    "sidecar": "last.json",
    "optimizer": "last.optimizer.npz",
    "state": "last.state.npz",
}
EVALUATION_NAMES = (
    "evaluation.json",
    "confusion_matrix.png",
    "misclassified.png",
    "misclassified.csv",
    "predictions.csv",
)


def test_the_layout_on_disk_is_unchanged(tmp_path: Path):
    run = RunDir(tmp_path)
    for attribute, name in LAYOUT.items():
        assert getattr(run, attribute) == tmp_path / name
    for attribute, name in CHECKPOINT_FILES.items():
        assert getattr(run.checkpoint("last"), attribute) == tmp_path / "checkpoints" / name
    assert run.checkpoint("best").weights == tmp_path / "checkpoints" / "best.npz"
    assert EVALUATION_FILES == EVALUATION_NAMES
    assert [run.evaluation_file(n).name for n in EVALUATION_FILES] == list(EVALUATION_NAMES)
    assert run.evaluation_file("confusion_matrix.png", "train").name == (
        "confusion_matrix_train.png"
    )
    assert run.evaluation_file("evaluation.json", "validation").name == (
        "evaluation_validation.json"
    )
    with pytest.raises(ValueError, match="checkpoint kind"):
        run.checkpoint("middle")


def test_a_checkpoint_named_by_its_npz_file_or_its_stem_has_the_same_files(tmp_path: Path):
    by_file, by_stem = CheckpointFiles(tmp_path / "m.npz"), CheckpointFiles(tmp_path / "m")
    assert by_file.sidecar == by_stem.sidecar == tmp_path / "m.json"
    assert by_file.state == tmp_path / "m.state.npz"


def _spelled_names() -> set[str]:
    """Every name the run directory holds, as a module would spell it in a path."""
    names = set(LAYOUT.values()) - {"tensorboard"}  # also a spec key (logging.tensorboard)
    names |= set(EVALUATION_NAMES)
    for kind in ("best", "last"):
        names |= {n.replace("last", kind) for n in CHECKPOINT_FILES.values()}
    names |= {"checkpoints/best.npz", "checkpoints/last.npz"}
    return names | {".optimizer.npz", ".state.npz"}


def test_no_other_module_spells_a_run_directory_file_name():
    """Only cnnkit/runs/layout.py names the files: a string constant equal to one of the names
    anywhere else (prose that mentions one is fine) is a second owner."""
    names = _spelled_names()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "runs" / "layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value!r}")
    assert found == []


def test_the_tolerance_rule(tmp_path: Path):
    missing, corrupt, listed = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    corrupt.write_text('{"epoch": 3')
    listed.write_text("[1, 2]")
    assert read_sidecar(missing, "run state") is None  # missing: None, lenient or not
    assert read_sidecar(missing, "run state", lenient=True) is None
    for path in (corrupt, listed):
        assert read_sidecar(path, "run state", lenient=True) is None
    with pytest.raises(CheckpointError, match="unreadable run state") as error:
        read_sidecar(corrupt, "run state")
    assert error.value.where == str(corrupt)
    with pytest.raises(CheckpointError, match="run state is not a JSON object"):
        read_sidecar(listed, "run state")


def test_informing_readers_are_lenient_and_loading_readers_are_strict(tmp_path: Path):
    run = RunDir(tmp_path)
    run.checkpoints.mkdir()
    for path in (run.state, run.evaluation_file("evaluation.json"), run.normalization):
        path.write_text("{not json")
    run.checkpoint("best").sidecar.write_text("{not json")
    run.metrics.write_bytes(b"\xff\xfe")
    assert run.read_state() is None and run.read_evaluation() is None
    assert run.read_checkpoint_meta("best") is None and run.read_metrics() == []
    assert run.read_config() == {} and run.read_text(run.summary) == ""
    with pytest.raises(CheckpointError, match="unreadable checkpoint metadata"):
        read_checkpoint_sidecar(run.checkpoint("best"), required=False)
    with pytest.raises(CheckpointError, match="unreadable normalisation statistics"):
        run.read_normalization()
    run.normalization.unlink()
    with pytest.raises(CheckpointError, match="statistics are missing"):
        run.read_normalization()
    assert read_checkpoint_sidecar(run.checkpoint("last"), required=False) == {}
    with pytest.raises(CheckpointError, match="checkpoint metadata not found"):
        read_checkpoint_sidecar(run.checkpoint("last"), required=True)
