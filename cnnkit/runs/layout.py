"""The run directory's layout: the one module that names its files and reads its sidecars.

    runs/<name>/
      config.yaml            resolved spec (every default filled in)
      summary.txt            the model summary table
      metrics.csv            one row per epoch
      checkpoints/last.npz   + last.json   (after every epoch, every train.save_every_steps
                                            steps, and when Ctrl-C/SIGTERM stops training)
      checkpoints/last.optimizer.npz       (the optimizer's moments; its scalars in last.json)
      checkpoints/last.state.npz           (resume state arrays; the rest in last.json:
                                            cnnkit.train.resume)
      checkpoints/best.npz   + best.json   (best epoch by callbacks.checkpoint.monitor)
      run.json               the run's state (cnnkit.runs.state)
      curves.png, report.md  the training curves and the run's Markdown report
      normalization.json     featurewise statistics of the training split, when the spec uses them
      model.onnx             written by `cnnkit export` (its default --out), with model.verify.json
      skipped_images.txt     unreadable images skipped (data.skip_bad_images)
      tensorboard/           TensorBoard events (logging.tensorboard: true)
      evaluation.json        written by `cnnkit evaluate`, with confusion_matrix.png,
                             misclassified.png, misclassified.csv and predictions.csv; another
                             split's are named after it (evaluation_validation.json, ...)

This layout is a file format: runs written by earlier versions must still evaluate, predict and
resume, so a name here never changes.

Every sidecar (the JSON files) is read by `read_sidecar`, with one tolerance rule: a missing file
reads as None (runs stopped early, or written by an older cnnkit, lack some); a file that exists
but is not a readable JSON object is a CheckpointError naming it, except for readers that only
inform (`lenient`: runs, compare, the report, the curves' best epoch), where it reads as None too,
so that one damaged file never hides the rest of a run.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnnkit import CHECKPOINT_FORMAT_VERSION, __version__
from cnnkit.errors import CheckpointError

# the splits `cnnkit evaluate --split` takes; evaluation.json (and its companions) hold the
# test split's evaluation, another split's are named after it (RunDir.evaluation_file)
EVALUATION_SPLITS = ("test", "validation", "train")
CHECKPOINT_KINDS = ("best", "last")

EVALUATION = "evaluation.json"
CONFUSION_PNG = "confusion_matrix.png"
MISCLASSIFIED_PNG = "misclassified.png"
MISCLASSIFIED_CSV = "misclassified.csv"
PREDICTIONS_CSV = "predictions.csv"
# what `cnnkit evaluate` writes for a split, in the order evaluation.json lists them
EVALUATION_FILES = (
    EVALUATION,
    CONFUSION_PNG,
    MISCLASSIFIED_PNG,
    MISCLASSIFIED_CSV,
    PREDICTIONS_CSV,
)


def split_file(name: str, split: str) -> str:
    """The name of one of evaluate's files for a split: evaluation.json, confusion_matrix.png,
    ... for the test split; evaluation_validation.json, confusion_matrix_train.png, ... for
    another, so that evaluating another split never overwrites the test evaluation."""
    if split == "test":
        return name
    stem, _, suffix = name.rpartition(".")
    return f"{stem}_{split}.{suffix}"


@dataclass(frozen=True)
class CheckpointFiles:
    """The files of one checkpoint set, from its stem (checkpoints/last) or its .npz file: any
    path the user names (--checkpoint PATH, model.weights) works, inside a run or not."""

    stem: Path

    @property
    def weights(self) -> Path:
        return Path(self.stem).with_suffix(".npz")

    @property
    def sidecar(self) -> Path:
        return Path(self.stem).with_suffix(".json")

    @property
    def optimizer(self) -> Path:
        return Path(self.stem).with_suffix(".optimizer.npz")

    @property
    def state(self) -> Path:
        return Path(self.stem).with_suffix(".state.npz")


@dataclass(frozen=True)
class RunDir:
    """One run directory: a path per file, and the readers of what is in them."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.txt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def state(self) -> Path:
        return self.root / "run.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def normalization(self) -> Path:
        return self.root / "normalization.json"

    @property
    def exported_model(self) -> Path:
        """`cnnkit export`'s default file (its figures: model.verify.json beside it)."""
        return self.root / "model.onnx"

    @property
    def skipped_images(self) -> Path:
        return self.root / "skipped_images.txt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, kind: str) -> CheckpointFiles:
        """checkpoints/best or checkpoints/last (CHECKPOINT_KINDS)."""
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"checkpoint kind {kind!r}, not one of {CHECKPOINT_KINDS}")
        return CheckpointFiles(self.checkpoints / kind)

    def evaluation_file(self, name: str, split: str = "test") -> Path:
        """One of EVALUATION_FILES for a split (split_file)."""
        return self.root / split_file(name, split)

    # -- readers ------------------------------------------------------------------------

    def is_run(self) -> bool:
        return self.config.is_file()

    def read_config(self) -> dict[str, Any]:
        """config.yaml as plain YAML, not validated (a run written by an older cnnkit still
        reads); {} when missing or unreadable."""
        try:
            config = yaml.safe_load(self.config.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return {}
        return config if isinstance(config, dict) else {}

    def read_text(self, path: Path) -> str:
        """A text file of the run (config.yaml, summary.txt); "" when missing or unreadable."""
        try:
            return Path(path).read_text()
        except (OSError, UnicodeDecodeError):
            return ""

    def read_metrics(self) -> list[dict[str, str]]:
        """metrics.csv's rows as written (strings); [] when there is none."""
        try:
            with open(self.metrics, newline="") as f:
                return list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError):
            return []

    def read_state(self) -> dict[str, Any] | None:
        """run.json as written (cnnkit.runs.state interprets it); lenient."""
        return read_sidecar(self.state, "run state", lenient=True)

    def read_evaluation(self, split: str = "test") -> dict[str, Any] | None:
        return read_sidecar(self.evaluation_file(EVALUATION, split), "evaluation", lenient=True)

    def read_checkpoint_meta(self, kind: str) -> dict[str, Any] | None:
        """best.json or last.json, for what only informs (the best epoch, a hint); loading a
        checkpoint reads its sidecar with read_checkpoint_sidecar."""
        return read_sidecar(self.checkpoint(kind).sidecar, "checkpoint metadata", lenient=True)

    def read_normalization(self) -> dict[str, Any]:
        """normalization.json, which evaluate and predict need when the spec normalises
        featurewise."""
        saved = read_sidecar(self.normalization, "normalisation statistics")
        if saved is None:
            raise CheckpointError(
                "the run's spec uses featurewise normalisation but its statistics are missing",
                where=str(self.normalization),
                hint=f"{self.normalization.name} is written by `cnnkit train`; train the run "
                "again.",
            )
        return saved


def read_sidecar(path: Path, what: str, lenient: bool = False) -> dict[str, Any] | None:
    """The JSON object in path, by the module's tolerance rule: None when the file does not
    exist; a CheckpointError naming it when it is not a readable JSON object (None if lenient)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if lenient:
            return None
        raise CheckpointError(
            f"unreadable {what} (truncated or corrupt JSON): {exc}", where=str(path)
        ) from None
    if isinstance(data, dict):
        return data
    if lenient:
        return None
    raise CheckpointError(f"{what} is not a JSON object", where=str(path))


def read_checkpoint_sidecar(files: CheckpointFiles, required: bool) -> dict[str, Any]:
    """A checkpoint's sidecar for loading it: {} when absent and not required (an .npz copied
    without it still loads), an error when newer than this cnnkit's format."""
    meta = read_sidecar(files.sidecar, "checkpoint metadata")
    if meta is None:
        if required:
            raise CheckpointError("checkpoint metadata not found", where=str(files.sidecar))
        return {}
    version = meta.get("format_version", CHECKPOINT_FORMAT_VERSION)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {version} is newer than this cnnkit "
            f"{__version__} understands (version {CHECKPOINT_FORMAT_VERSION})",
            where=str(files.sidecar),
            hint="Upgrade cnnkit to load it.",
        )
    return meta
