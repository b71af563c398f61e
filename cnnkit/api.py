"""train / evaluate / predict / summarize as plain functions: everything the CLI does.

Errors a user can cause surface as CnnkitError; the CLI turns them into exit code 2.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.config import Spec, load_spec
from cnnkit.data.augment import Preprocessor
from cnnkit.data.batches import Split, make_splits
from cnnkit.data.images import collect_images, prepare_image
from cnnkit.data.sources import SOURCES, Dataset
from cnnkit.display import render_text, summary_table
from cnnkit.errors import CheckpointError, DataError
from cnnkit.metrics import MetricSet, per_class_report
from cnnkit.model import Sequential, SummaryRow
from cnnkit.registry import LOSSES, OPTIMIZERS
from cnnkit.runs import (
    atomic_write_text,
    create_run_dir,
    load_checkpoint,
    load_run_spec,
    resolve_checkpoint,
    write_json,
)
from cnnkit.threads import configure_threads
from cnnkit.training import Reporter, SilentReporter, evaluate_split, fit


@dataclass
class ModelSummary:
    title: str
    rows: list[SummaryRow]
    totals: dict[str, int]


def summarize(spec: Spec) -> ModelSummary:
    """Layers, output shapes, parameters and MACs, from the spec alone (no data, no weights)."""
    model = Sequential.from_spec(spec)
    rows = model.summary_rows()
    # as Keras: BatchNormalization's moving statistics are non-trainable params
    non_trainable = sum(r.non_trainable for r in rows)
    total = sum(r.params for r in rows)
    totals = {
        "trainable": total - non_trainable,
        "non_trainable": non_trainable,
        "total": total,
        "bytes": total * 4,  # float32
        "macs": sum(r.macs for r in rows),
    }
    return ModelSummary(f'Model: "{spec.name}"', rows, totals)


def spec_from_spec_or_run(path: str | Path) -> Spec:
    """`summary` accepts a spec file or a run directory (its config.yaml)."""
    path = Path(path)
    return load_run_spec(path) if path.is_dir() else load_spec(path)


def load_dataset(spec: Spec) -> Dataset:
    return SOURCES[spec.data["source"]].load(spec)


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]]


def train(
    spec: Spec,
    out: Path = Path("runs"),
    reporter: Reporter | None = None,
    on_run_dir=None,
    on_note=None,
    threads: int | None = None,
) -> TrainResult:
    """Load data, build the model from the seed, train, and write the run directory.
    threads: Numba threads (None: CNNKIT_NUM_THREADS, else all cores; BLAS stays at one)."""
    configure_threads(threads)
    dataset = load_dataset(spec)  # before the run dir exists: a data error leaves nothing
    splits = make_splits(dataset, spec.data)
    preprocessor = Preprocessor.from_spec(spec, splits.train)  # featurewise stats: train split
    model = Sequential.from_spec(spec).build(spec.seed)
    if spec.model.get("weights"):
        load_initial_weights(model, spec)
    loss_fn = LOSSES[spec.loss["name"]].from_spec(spec)
    optimizer = OPTIMIZERS[spec.optimizer["name"]](**_options(spec.optimizer))

    run_dir = create_run_dir(Path(out), spec.name)
    if on_run_dir:
        on_run_dir(run_dir)
    notes = list(dataset.notes)
    if dataset.skipped:
        atomic_write_text(run_dir / "skipped_images.txt", "\n".join(dataset.skipped) + "\n")
        notes.append(
            f"{len(dataset.skipped)} unreadable images skipped (data.skip_bad_images); "
            f"listed in {run_dir / 'skipped_images.txt'}"
        )
    for note in notes if on_note else ():
        on_note(note)
    atomic_write_text(run_dir / "config.yaml", spec.to_yaml())
    preprocessor.save(run_dir)  # normalization.json: featurewise statistics, if any
    info = summarize(spec)
    table = summary_table(info.title, info.rows, info.totals)
    atomic_write_text(run_dir / "summary.txt", render_text(table))
    history = fit(
        model,
        loss_fn,
        optimizer,
        splits,
        spec,
        run_dir,
        reporter or SilentReporter(),
        on_note,
        preprocessor,
    )
    return TrainResult(run_dir, history)


def load_initial_weights(model: Sequential, spec: Spec) -> Path:
    """model.weights: start from a checkpoint (fine-tuning). A run directory means its best.npz.

    Every layer's arrays must match the model's shapes; a mismatch names the layer and both
    shapes (loading only some layers silently would hide a wrong spec)."""
    given = Path(spec.model["weights"]).expanduser()
    candidates = [given] if given.is_absolute() else [Path.cwd() / given]
    if spec.file is not None and not given.is_absolute():
        candidates.append(spec.file.parent / given)
    found = next((c for c in candidates if c.exists()), candidates[0])
    path = resolve_checkpoint(found, "best") if found.is_dir() else found
    if not path.is_file():
        raise CheckpointError(
            "model.weights: checkpoint not found",
            where=str(path),
            hint="Give an .npz checkpoint or a run directory (its best.npz is used).",
        )
    arrays, _ = load_checkpoint(path)
    model.load_params(arrays, f"{path} (model.weights)")
    return path


def _options(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "name"}


def load_model(run_dir: Path, checkpoint: str = "best") -> tuple[Spec, Sequential, Path, dict]:
    """The run's spec and its model with the chosen checkpoint's weights."""
    configure_threads()
    spec = load_run_spec(run_dir)
    path = resolve_checkpoint(run_dir, checkpoint)
    arrays, meta = load_checkpoint(path)
    if meta.get("spec_hash") not in (None, spec.hash()):
        raise CheckpointError(
            "checkpoint was written for a different model or data spec than this run's config.yaml",
            where=str(path),
        )
    model = Sequential.from_spec(spec).build(spec.seed)
    model.load_params(arrays, str(path))
    return spec, model, path, meta


def evaluate(run_dir: Path, checkpoint: str = "best", batch_size: int | None = None) -> dict:
    """Test-set loss, accuracy, per-class report and confusion matrix; writes evaluation.json."""
    run_dir = Path(run_dir)
    spec, model, path, meta = load_model(run_dir, checkpoint)
    splits = make_splits(load_dataset(spec), spec.data)
    loss_fn = LOSSES[spec.loss["name"]].from_spec(spec)
    test: Split | None = splits.test
    evaluated = "test"
    if test is None:  # e.g. an image folder without test/: say so instead of failing
        test, evaluated = splits.validation, "validation"
    if test is None:
        raise DataError(
            "the data has no test or validation split to evaluate on",
            where=str(spec.data.get("path") or spec.data["source"]),
            hint="Add a test/ folder, or set data.validation_split.",
        )
    batch_size = batch_size or spec.train["eval_batch_size"]
    metric_set = MetricSet.from_spec(spec)
    preprocessor = Preprocessor.from_spec(spec, run_dir=run_dir)  # the run's normalisation
    result = evaluate_split(model, loss_fn, test, preprocessor, batch_size, metric_set)
    matrix = metric_set.confusion  # the predictions the metrics counted (one sigmoid: p > 0.5)
    report = {
        "run": str(run_dir),
        "checkpoint": str(path),
        "epoch": meta.get("epoch"),
        "split": evaluated,
        "samples": len(test),
        "loss": result.loss,
        "accuracy": result.accuracy,
        # the spec's metrics (macro precision/recall/f1; exact ROC auc, null if one class only)
        "metrics": result.metrics,
        "class_names": splits.class_names,
        "per_class": per_class_report(matrix, splits.class_names),
        "confusion_matrix": matrix.tolist(),
    }
    write_json(run_dir / "evaluation.json", report)
    return report


def predict(
    images: list[str | Path],
    run_dir: Path,
    checkpoint: str = "best",
    top_k: int = 3,
    invert: bool | None = None,
) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file (folders are expanded)."""
    spec, model, path, meta = load_model(Path(run_dir), checkpoint)
    source = SOURCES[spec.data["source"]]
    files = collect_images(images)
    shape = tuple(spec.model["input_shape"])
    prepared = [
        prepare_image(f, shape, source.background, source.centre_digits, invert) for f in files
    ]
    x = Preprocessor.from_spec(spec, run_dir=Path(run_dir))(np.stack([p.array for p in prepared]))
    # through the loss: one sigmoid unit p gives the two classes [1 - p, p]
    loss_fn = LOSSES[spec.loss["name"]].from_spec(spec)
    probs = loss_fn.class_probabilities(model.forward(x, training=False))
    names = meta.get("class_names") or [str(i) for i in range(probs.shape[1])]
    k = max(1, min(top_k, probs.shape[1]))
    results = []
    for file, p, row in zip(files, prepared, probs, strict=True):
        order = np.argsort(-row, kind="stable")[:k]
        results.append(
            {
                "image": str(file),
                "inverted": p.inverted,
                "top": [{"class": names[i], "probability": float(row[i])} for i in order],
            }
        )
    return results


@dataclass
class AugmentPreview:
    path: Path
    images: int  # originals shown (columns)
    versions: int  # augmented rows under them
    augments: bool  # False: the spec's augmentation section changes nothing


def augment_preview(
    spec: Spec, n: int = 20, out: Path = Path("augment.png"), versions: int = 4
) -> AugmentPreview:
    """A PNG grid of n training images (first row) and `versions` augmented rows, without
    training. Only the first n training images are kept (data.max_train_samples)."""
    from PIL import Image

    from cnnkit.data.augment import Augmenter, augments, preview_grid
    from cnnkit.runs import atomic_write_bytes
    from cnnkit.seeding import random_stream

    limit = min(n, spec.data.get("max_train_samples") or n)
    data = {**spec.data, "max_train_samples": limit, "validation": "none"}
    spec = replace(spec, data=data)  # the synthetic source then makes only n images
    train = make_splits(load_dataset(spec), data).train
    x = train.x[:limit]
    grid = preview_grid(
        x, Augmenter(spec.augmentation), random_stream(spec.seed, "augment"), versions
    )
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(grid.shape[2])
    if mode is None:
        raise DataError(f"cannot show {grid.shape[2]}-channel images", where=str(out))
    image = Image.fromarray(grid[..., 0] if mode == "L" else grid, mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    out = Path(out)
    atomic_write_bytes(out, buffer.getvalue())
    return AugmentPreview(out, len(x), versions, augments(spec.augmentation))


def bench(spec: Spec, **options: Any):
    """`cnnkit bench`: throughput on synthetic data (see cnnkit.bench.run_bench)."""
    from cnnkit.bench import run_bench

    return run_bench(spec, **options)
