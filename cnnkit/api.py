"""train / evaluate / predict / summarize as plain functions: everything the CLI does.

Errors a user can cause surface as CnnkitError; the CLI turns them into exit code 2.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.config import Spec, SpecOverrides, load_spec
from cnnkit.data.augment import Preprocessor
from cnnkit.data.batches import Split, make_splits
from cnnkit.data.images import collect_images, prepare_image
from cnnkit.data.sources import SOURCES, Dataset
from cnnkit.display import render_text, summary_table
from cnnkit.errors import CheckpointError, DataError, SpecError
from cnnkit.interrupts import CompileInterrupted, catch_signals
from cnnkit.memory import MemoryPlan, MemoryWarning, available_memory, check_memory, plan
from cnnkit.metrics import MetricSet, per_class_report
from cnnkit.model import Sequential, SummaryRow
from cnnkit.overrides import as_overrides
from cnnkit.registry import LOSSES, OPTIMIZERS
from cnnkit.report import write_report
from cnnkit.resume import load_resume_state, refuse_changes
from cnnkit.runs import (
    atomic_write_text,
    create_run_dir,
    csv_value,
    load_checkpoint,
    load_run_spec,
    resolve_checkpoint,
    write_json,
)
from cnnkit.runstate import mark_running, track_run_state
from cnnkit.threads import configure_threads
from cnnkit.tracking import RunTracker
from cnnkit.training import Reporter, SilentReporter, evaluate_split, fit


@dataclass
class ModelSummary:
    title: str
    rows: list[SummaryRow]
    totals: dict[str, int]
    memory: MemoryPlan | None = None  # per-layer and total memory for a batch (cnnkit.memory)


def summarize(spec: Spec, batch_size: int | None = None) -> ModelSummary:
    """Layers, output shapes, parameters, MACs and the memory plan for a batch (default the
    spec's batch_size), from the spec alone (no data, no weights)."""
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
    return ModelSummary(f'Model: "{spec.name}"', rows, totals, plan(spec, batch_size))


@dataclass
class CheckReport:
    spec: Spec
    summary: ModelSummary
    available: int | None  # bytes of memory available now (None: unknown)
    warnings: list[MemoryWarning]


def check(path: str | Path, overrides=None, available: int | None = None) -> CheckReport:
    """`cnnkit check`: validate the spec (every error, with its place), infer every shape and
    plan the memory of a training step, without loading data or compiling kernels.

    Raises SpecError / SpecErrors; memory beyond 80% of the available memory is a warning."""
    spec = load_spec(path, overrides)
    available = available_memory() if available is None else available
    return CheckReport(spec, summarize(spec), available, check_memory(spec, available))


def init_spec(template: str = "mnist", path: str | Path | None = None) -> Path:
    """`cnnkit init`: write a starter spec (cnnkit.starter); refuses to overwrite a file."""
    from cnnkit.starter import write_starter

    return write_starter(template, Path(path) if path is not None else None)


def spec_schema() -> str:
    """The JSON Schema of a spec (cnnkit.schema), as the committed schema file holds it."""
    from cnnkit.schema import schema_text

    return schema_text()


def write_text(path: str | Path, text: str) -> Path:
    """Write a user-requested file atomically; an unwritable place is a user error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError as exc:
        raise DataError(f"cannot write the file: {exc.strerror or exc}", where=str(path)) from None
    return path


def spec_from_spec_or_run(path: str | Path, overrides=None) -> Spec:
    """`summary` accepts a spec file or a run directory (its config.yaml); overrides: --set."""
    path = Path(path)
    if path.is_dir():
        spec = load_run_spec(path)
        return load_spec(spec.file, overrides) if overrides else spec
    return load_spec(path, overrides)


def load_dataset(spec: Spec) -> Dataset:
    return SOURCES[spec.data["source"]].load(spec)


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    spec: Spec | None = None


@dataclass
class _Setup:
    splits: Any
    preprocessor: Preprocessor
    model: Sequential
    loss_fn: Any
    optimizer: Any
    notes: list[str]
    skipped: list[str]


def _setup(spec: Spec, threads: int | None = None) -> _Setup:
    """Data, model (weights from the seed), loss and optimizer of a spec; threads: as train's."""
    configure_threads(threads)
    dataset = load_dataset(spec)  # before the run dir exists: a data error leaves nothing
    splits = make_splits(dataset, spec.data)
    preprocessor = Preprocessor.from_spec(spec, splits.train)  # featurewise stats: train split
    model = Sequential.from_spec(spec).build(spec.seed)
    loss_fn = LOSSES[spec.loss["name"]].from_spec(spec)
    optimizer = OPTIMIZERS[spec.optimizer["name"]](**_options(spec.optimizer))
    return _Setup(
        splits, preprocessor, model, loss_fn, optimizer, list(dataset.notes), dataset.skipped
    )


def train(
    spec: Spec,
    out: Path = Path("runs"),
    reporter: Reporter | None = None,
    on_run_dir=None,
    on_note=None,
    threads: int | None = None,
) -> TrainResult:
    """Load data, build the model from the seed, train, and write the run directory.

    SIGINT/SIGTERM during training: the step finishes, last.npz is saved with its resume
    state and cnnkit.interrupts.Interrupted is raised (see `resume`).
    threads: Numba threads (None: CNNKIT_NUM_THREADS, else all cores; BLAS stays at one)."""
    setup = _setup(spec, threads)
    if spec.model.get("weights"):
        load_initial_weights(setup.model, spec)

    if spec.logging["tensorboard"]:
        from cnnkit.tblog import require_writer

        require_writer()  # a missing package is an error before the run directory exists

    _warm_up(setup, reporter)  # before the run directory: Ctrl-C while compiling leaves none
    run_dir = create_run_dir(Path(out), spec.name)
    mark_running(run_dir, spec.train["epochs"])
    if on_run_dir:
        on_run_dir(run_dir)
    notes = setup.notes
    if setup.skipped:
        atomic_write_text(run_dir / "skipped_images.txt", "\n".join(setup.skipped) + "\n")
        notes.append(
            f"{len(setup.skipped)} unreadable images skipped (data.skip_bad_images); "
            f"listed in {run_dir / 'skipped_images.txt'}"
        )
    for note in notes if on_note else ():
        on_note(note)
    atomic_write_text(run_dir / "config.yaml", spec.to_yaml())
    setup.preprocessor.save(run_dir)  # normalization.json: featurewise statistics, if any
    info = summarize(spec)
    table = summary_table(info.title, info.rows, info.totals)
    summary_text = render_text(table)
    atomic_write_text(run_dir / "summary.txt", summary_text)
    history = _tracked_fit(setup, spec, run_dir, reporter, on_note, summary_text)
    return TrainResult(run_dir, history, spec)


def _warm_up(setup: _Setup, reporter: Reporter | None, run_dir: Path | None = None) -> None:
    """Compile or load every kernel before the first (timed) step, saying so while it runs:
    reporter.kernels("loading" | "compiling" | "ready", seconds), when the reporter has it.
    Ctrl-C meanwhile: CompileInterrupted (run_dir: the resumed run, untouched)."""
    if not len(setup.splits.train):
        return
    from cnnkit.warmup import compiling_in_background, warm_up

    say = getattr(reporter, "kernels", None) or (lambda phase, seconds: None)
    say("loading", 0.0)
    try:
        done = warm_up(
            setup.model,
            setup.loss_fn,
            setup.preprocessor,
            setup.splits.train.x,
            setup.splits.train.y,
            on_compiling=lambda estimate: say("compiling", estimate),
        )
    except KeyboardInterrupt:  # the reporter's exit stops its spinner
        if not compiling_in_background():
            raise
        raise CompileInterrupted(run_dir) from None
    say("ready", done.seconds)


def _tracked_fit(
    setup: _Setup,
    spec: Spec,
    run_dir: Path,
    reporter: Reporter | None,
    on_note,
    summary_text: str = "",
    resume=None,
) -> list[dict[str, Any]]:
    """fit() with curves.png, run.json and TensorBoard kept current at every epoch end (the
    RunTracker), the run's state recorded however it ends (track_run_state), and SIGINT /
    SIGTERM turned into a clean stop after the current step (catch_signals)."""
    done = resume.history if resume is not None else []
    if resume is not None:  # a new run was marked running when its directory was made
        mark_running(run_dir, spec.train["epochs"], epochs_done=len(done))
    tracker = RunTracker(
        run_dir,
        spec,
        reporter or SilentReporter(),
        setup.splits.train.x[:32],
        summary_text,
        history=done,
    )
    with track_run_state(run_dir), catch_signals() as stop:
        try:
            return fit(
                setup.model,
                setup.loss_fn,
                setup.optimizer,
                setup.splits,
                spec,
                run_dir,
                tracker,
                on_note,
                setup.preprocessor,
                resume=resume,
                stop=stop,
            )
        finally:
            tracker.close()


def resume(
    run_dir: Path,
    epochs: int | None = None,
    spec_file: Path | None = None,
    overrides: SpecOverrides = None,
    reporter: Reporter | None = None,
    on_note=None,
    threads: int | None = None,
) -> TrainResult:
    """Continue the run in run_dir from its last checkpoint, mid-epoch included, with the
    spec in its config.yaml: the result is bit for bit the uninterrupted run's.

    epochs: train to this many epochs in all (extends a finished run). spec_file/overrides
    (an edited spec, --set-style dotted keys): refused with a diff if they change anything
    but train.epochs and train.save_every_steps."""
    run_dir = Path(run_dir)
    spec = load_run_spec(run_dir)
    overrides = as_overrides(overrides)
    if any(o.path == "model.weights" and o.value for o in overrides):
        raise SpecError(
            "--weights cannot be combined with --resume: a resumed run continues from its own "
            "checkpoints/last.npz",
            where=str(run_dir),
            hint="To fine-tune from this run instead: cnnkit train SPEC --weights RUN_DIR.",
        )
    if spec_file is not None or overrides:
        given = load_spec(spec_file or run_dir / "config.yaml", overrides)
        source = f"{spec_file}" if spec_file is not None else "options given"
        refuse_changes(spec, given, run_dir, source)
        spec.train["epochs"] = given.train["epochs"]
        spec.train["save_every_steps"] = given.train.get("save_every_steps")
    if epochs is not None:
        spec.train["epochs"] = int(epochs)
    state = load_resume_state(run_dir, spec)
    epoch, step = state.next_position()
    if state.info.get("stopped_early"):
        raise CheckpointError(
            f"nothing to resume: early stopping ended this run after epoch {state.epoch}",
            where=str(run_dir),
            hint="Start a new run with different callbacks.early_stopping settings.",
        )
    if epoch > spec.train["epochs"]:
        done = state.epoch
        raise CheckpointError(
            f"nothing to resume: the run has finished {done} of {spec.train['epochs']} "
            f"epoch{'s' * (spec.train['epochs'] != 1)}",
            where=str(run_dir),
            hint=f"Train further with --epochs N (N > {done}): "
            f"cnnkit train --resume {run_dir} --epochs {done + 5}",
        )
    setup = _setup(spec, threads)
    setup.model.load_params(state.weights, str(state.path.with_suffix(".npz")))
    if on_note:
        at = f"epoch {epoch}" + (f", step {step + 1}" if step else "")
        on_note(f"Resuming {run_dir} at {at} of {spec.train['epochs']}.")
    _warm_up(setup, reporter, run_dir)  # Ctrl-C while compiling leaves the run as it was
    config = run_dir / "config.yaml"
    if config.read_text() != spec.to_yaml():  # --epochs (or save_every_steps) changed
        atomic_write_text(config, spec.to_yaml())
    history = _tracked_fit(setup, spec, run_dir, reporter, on_note, resume=state)
    return TrainResult(run_dir, history, spec)


@dataclass
class Reproduction:
    original: Path
    run_dir: Path
    epochs: list[int]  # epochs compared
    differences: list[tuple[int, str, Any, Any]]  # (epoch, column, original, new)
    weights: bool | None  # last.npz identical; None: not comparable (different epochs)

    @property
    def match(self) -> bool:
        return bool(self.epochs) and not self.differences and self.weights is not False


def reproduce(
    run_dir: Path,
    epochs: int | None = None,
    reporter: Reporter | None = None,
    on_run_dir=None,
    on_note=None,
) -> Reproduction:
    """Train the run's saved spec again into a new run directory beside it, and compare the
    metrics of every epoch both have, at full precision (seconds and images/s aside), and
    the final weights when both stopped at the same epoch."""
    original = Path(run_dir)
    spec = load_run_spec(original)
    before = _full_history(original)
    if epochs is not None:
        spec.train["epochs"] = int(epochs)
    result = train(spec, original.parent, reporter, on_run_dir, on_note)
    after = {row["epoch"]: row for row in result.history}
    differences, compared = [], []
    for row in before:
        new = after.get(row["epoch"])
        if new is None:
            continue
        compared.append(row["epoch"])
        for key in row:
            if key in ("seconds", "images_per_s", "epoch"):
                continue
            a, b = row[key], new.get(key)
            if isinstance(a, str):  # from metrics.csv
                b = str(csv_value(b))
            same = (a == b) or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
            if not same:
                differences.append((row["epoch"], key, a, b))
    weights = None
    last_old, last_new = (d / "checkpoints" / "last" for d in (original, result.run_dir))
    old_meta = _sidecar(last_old)
    if old_meta.get("epoch_complete", True) and old_meta.get("epoch") == _sidecar(last_new).get(
        "epoch"
    ):
        a, _ = load_checkpoint(last_old)
        b, _ = load_checkpoint(last_new)
        weights = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return Reproduction(original, result.run_dir, compared, differences, weights)


def _sidecar(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def _full_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's finished epochs at full precision (last.json's resume state), else the
    values of metrics.csv."""
    from cnnkit.resume import decode_float

    info = _sidecar(run_dir / "checkpoints" / "last").get("resume")
    if info and info.get("history"):
        return [{k: decode_float(v) for k, v in row.items()} for row in info["history"]]
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise CheckpointError(
            "the run has no finished epoch to compare with (no metrics.csv)", where=str(run_dir)
        )
    with open(path) as f:  # 6 significant digits: compared as metrics.csv writes them
        return [{k: int(v) if k == "epoch" else v for k, v in r.items()} for r in csv.DictReader(f)]


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
    report.update(write_error_analysis(run_dir, test, result.probabilities, matrix, splits))
    write_json(run_dir / "evaluation.json", report)
    write_report(run_dir)
    return report


def write_error_analysis(
    run_dir: Path, split: Split, probabilities: np.ndarray, matrix: np.ndarray, splits
) -> dict[str, Any]:
    """confusion_matrix.png, misclassified.csv and misclassified.png; returns what
    evaluation.json adds: the most-confused pairs and the mistake count."""
    from cnnkit import analysis, plots

    names = splits.class_names
    rows = analysis.misclassified_rows(probabilities, split.y, names, split.files)
    analysis.write_misclassified_csv(run_dir / analysis.MISCLASSIFIED_CSV, rows)
    plots.plot_confusion(matrix, names, run_dir / analysis.CONFUSION_PNG)
    shown = rows[:32]
    plots.plot_misclassified(
        split.x[[r["index"] for r in shown]],
        [r["true"] for r in shown],
        [r["predicted"] for r in shown],
        [r["confidence"] for r in shown],
        run_dir / analysis.MISCLASSIFIED_PNG,
    )
    return {
        "most_confused": analysis.most_confused(matrix, names),
        "misclassified": len(rows),
    }


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
                "note": p.note,
                "top": [{"class": names[i], "probability": float(row[i])} for i in order],
            }
        )
    return results


def _round_robin_by_class(y: np.ndarray, n: int) -> np.ndarray:
    """Indices of up to n samples: the first of every class, then the second, ..."""
    per_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    rank = np.concatenate([np.arange(len(idx)) for idx in per_class])
    order = np.concatenate(per_class)
    # stable: within a rank, classes in order
    return order[np.argsort(rank, kind="stable")][:n]


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
    training. The n images are taken from every class in turn (the first of each class,
    then the second, ...), so that a dataset sorted by class does not show one class only."""
    from PIL import Image

    from cnnkit.data.augment import Augmenter, augments, preview_grid
    from cnnkit.runs import atomic_write_bytes
    from cnnkit.seeding import random_stream

    data = {**spec.data, "validation": "none"}
    if spec.data["source"] == "synthetic":  # made on demand: make only what is shown
        data["max_train_samples"] = min(n, spec.data.get("max_train_samples") or n)
    spec = replace(spec, data=data)
    train = make_splits(load_dataset(spec), data).train
    x = train.x[_round_robin_by_class(train.y, n)]
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


def list_runs(root: Path = Path("runs")) -> list[dict[str, Any]]:
    """`cnnkit runs`: every run directory under root, newest first (cnnkit.runinfo)."""
    from cnnkit.runinfo import list_runs as runs

    return runs(Path(root))


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """`cnnkit compare`: the spec keys that differ and the metrics, better value marked."""
    from cnnkit.runinfo import compare_runs as compare

    return compare(Path(a), Path(b))


def summary_dict(info: ModelSummary) -> dict[str, Any]:
    """`cnnkit summary --json`."""
    from dataclasses import asdict

    return {"title": info.title, "layers": [asdict(r) for r in info.rows], "totals": info.totals}


def bench(spec: Spec, **options: Any):
    """`cnnkit bench`: throughput on synthetic data (see cnnkit.bench.run_bench)."""
    from cnnkit.bench import run_bench

    return run_bench(spec, **options)
