"""train / evaluate / predict / summarize as plain functions: everything the CLI does.

Errors a user can cause surface as CnnkitError; the CLI turns them into exit code 2.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.data.augment import Preprocessor
from cnnkit.data.batches import Split, make_splits
from cnnkit.data.check import ARRAY_SOURCES, check_arrays, check_folder
from cnnkit.data.folder import LoadProgress
from cnnkit.data.images import (
    ImageBytes,
    ImageOptions,
    PreparedImage,
    collect_images,
    prepare_image,
)
from cnnkit.data.sources import SOURCES, Dataset, resolve_data_dir, spec_dir
from cnnkit.distributed import Communicator
from cnnkit.distributed import start as start_distributed
from cnnkit.errors import CheckpointError, CnnkitError, DataError, ImageError, SpecError
from cnnkit.interrupts import catch_signals
from cnnkit.io import atomic_write_text, write_json
from cnnkit.nn.layers.base import format_shape
from cnnkit.nn.memory import MemoryPlan, MemoryWarning, available_memory, check_memory, plan
from cnnkit.nn.metrics import per_class_report
from cnnkit.nn.model import Model, SummaryRow
from cnnkit.runs.layout import (
    CONFUSION_PNG,
    EVALUATION,
    EVALUATION_FILES,
    EVALUATION_SPLITS,
    MISCLASSIFIED_CSV,
    MISCLASSIFIED_PNG,
    PREDICTIONS_CSV,
    CheckpointFiles,
    RunDir,
)
from cnnkit.runs.report import write_report
from cnnkit.runs.rundir import (
    create_run_dir,
    csv_value,
    load_checkpoint,
    load_run_spec,
    resolve_checkpoint,
)
from cnnkit.runs.state import mark_running
from cnnkit.runs.summary import render_text, summary_table
from cnnkit.spec.build import build_loss, build_metrics, build_model, build_optimizer
from cnnkit.spec.config import Spec, SpecOverrides, load_spec
from cnnkit.spec.overrides import as_overrides
from cnnkit.threads import configure_threads
from cnnkit.train.callbacks import Callback, training_callbacks
from cnnkit.train.resume import load_resume_state, refuse_changes, refuse_other_workers
from cnnkit.train.trainer import (
    Reporter,
    Trainer,
    evaluate_split,
    predict_probabilities,
    steps_per_epoch,
)


@dataclass
class ModelSummary:
    title: str
    rows: list[SummaryRow]
    totals: dict[str, int]
    memory: MemoryPlan | None = None  # per-layer and total memory for a batch (cnnkit.nn.memory)
    input_shape: str | None = None  # "(None, 28, 28, 1)": a graph's table has an InputLayer row


def summarize(spec: Spec, batch_size: int | None = None) -> ModelSummary:
    """Layers, output shapes, parameters, MACs and the memory plan for a batch (default the
    spec's batch_size), from the spec alone (no data, no weights)."""
    model = build_model(spec)
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
    return ModelSummary(
        f'Model: "{spec.name}"',
        rows,
        totals,
        plan(spec, batch_size),
        format_shape(model.input_shape),
    )


@dataclass
class CheckReport:
    spec: Spec
    summary: ModelSummary
    available: int | None  # bytes of memory available now (None: unknown)
    warnings: list[MemoryWarning]


def check(path: str | Path, overrides=None, available: int | None = None) -> CheckReport:
    """`cnnkit check`: validate the spec (every error, with its place), infer every shape,
    check what the data on disk can tell without reading an image (the data path, the split
    folders, data.classes) and plan the memory of a training step, without loading data or
    compiling kernels.

    Raises SpecError / SpecErrors; memory beyond 80% of the available memory is a warning."""
    spec = load_spec(path, overrides, check_data=True)
    available = available_memory() if available is None else available
    if validation_is_test(spec):
        from cnnkit.spec.callbacks import optimistic_test_notes

        spec = replace(spec, notes=(*spec.notes, *optimistic_test_notes(spec)))
    return CheckReport(spec, summarize(spec), available, check_memory(spec, available))


def validation_is_test(spec: Spec) -> bool:
    """Will the val_ metrics be computed on the test split (data.validation: test, and the data
    brings no validation split of its own)? From the spec and a look at the folder or npz
    file, without loading data; make_splits decides the same way when it loads it."""
    from cnnkit.data.folder import SPLIT_NAMES
    from cnnkit.data.sources import resolve_data_dir, resolve_data_file, spec_dir

    data = spec.data
    if data.validation != "test":
        return False
    if data.source == "folder":  # val/ is used when it exists; no test/: no validation
        root = resolve_data_dir(data.path, spec_dir(spec))
        has = lambda split: any((root / n).is_dir() for n in SPLIT_NAMES[split])  # noqa: E731
        return has("test") and not has("val")
    if data.source == "npz":  # x_test is optional
        try:
            with np.load(resolve_data_file(data.path, spec_dir(spec))) as arrays:
                return "x_test" in arrays.files
        except (OSError, ValueError):
            return False
    return True


def init_spec(template: str = "mnist", path: str | Path | None = None) -> Path:
    """`cnnkit init`: write a starter spec (cnnkit.spec.starter); refuses to overwrite a file."""
    from cnnkit.spec.starter import write_starter

    return write_starter(template, Path(path) if path is not None else None)


def spec_schema() -> str:
    """The JSON Schema of a spec (cnnkit.spec.schema), as the committed schema file holds it."""
    from cnnkit.spec.schema import schema_text

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


def load_dataset(spec: Spec, progress: LoadProgress | None = None) -> Dataset:
    """progress: an image folder's "Found N images" lines and decoding progress go there
    (cnnkit.cli.display.load_progress); without it the lines are the dataset's notes."""
    source = SOURCES[spec.data.source]
    if progress is not None and source.reports_progress:
        return source.load(spec, progress=progress)
    return source.load(spec)


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    spec: Spec | None = None


@dataclass
class _Setup:
    splits: Any
    preprocessor: Preprocessor
    model: Model
    loss_fn: Any
    optimizer: Any
    notes: list[str]
    skipped: list[str]


def _setup(spec: Spec, threads: int | None = None, progress: LoadProgress | None = None) -> _Setup:
    """Data, model (weights from the seed), loss and optimizer of a spec; threads: as train's."""
    configure_threads(threads)
    dataset = load_dataset(spec, progress)  # before the run dir exists: a data error leaves nothing
    splits = make_splits(dataset, spec.data, spec.seed)
    preprocessor = Preprocessor.from_spec(spec, splits.train)  # featurewise stats: train split
    model = build_model(spec).build(spec.seed)
    loss_fn = build_loss(spec)
    optimizer = build_optimizer(spec)
    return _Setup(
        splits,
        preprocessor,
        model,
        loss_fn,
        optimizer,
        [*dataset.notes, *splits.notes],
        dataset.skipped,
    )


def train(
    spec: Spec,
    out: Path = Path("runs"),
    reporter: Reporter | None = None,
    on_run_dir=None,
    on_note=None,
    threads: int | None = None,
    progress: LoadProgress | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Load data, build the model from the seed, train, and write the run directory.

    SIGINT/SIGTERM during training: the step finishes, last.npz is saved with its resume
    state and cnnkit.interrupts.Interrupted is raised (see `resume`).
    threads: Numba threads (None: CNNKIT_NUM_THREADS, else all cores; BLAS stays at one).
    progress: what loading an image folder reports (load_dataset).
    callbacks: more cnnkit.train.callbacks.Callback, called before the run's own (so a stop
    one asks for at a step is saved at that step).

    Under an MPI launcher with more than one rank (cnnkit.distributed), every rank calls this:
    each trains on its slice of every batch, rank 0 alone writes the run directory."""
    comm = start_distributed()
    setup = _setup(spec, threads, progress)
    if spec.model.weights:
        load_initial_weights(setup.model, spec)

    if spec.logging.tensorboard:
        from cnnkit.train.tensorboard import require_writer

        require_writer()  # a missing package is an error before the run directory exists

    _warm_up(setup, reporter)  # before the run directory: Ctrl-C while compiling leaves none
    if not comm.is_root:
        run_dir = _root_run_dir(comm, None)
        history = _tracked_fit(setup, spec, run_dir, reporter, on_note, "", callbacks, comm=comm)
        return TrainResult(run_dir, history, spec)
    try:
        run_dir = _write_run_start(setup, spec, Path(out), on_run_dir, on_note, comm)
    except BaseException:
        _root_run_dir(comm, None)  # the other ranks stop too
        raise
    _root_run_dir(comm, run_dir)
    summary_text = RunDir(run_dir).summary.read_text()
    history = _tracked_fit(setup, spec, run_dir, reporter, on_note, summary_text, callbacks)
    return TrainResult(run_dir, history, spec)


def _root_run_dir(comm: Communicator, run_dir: Path | None) -> Path:
    """Rank 0's run directory on every rank (None from rank 0: it failed, its error says why)."""
    shared = comm.broadcast(None if run_dir is None else str(run_dir), "the run directory", False)
    if shared is None:
        raise CnnkitError(
            f"rank 0 could not start the run (rank {comm.rank} of {comm.size} stops)",
            hint="Rank 0's message says why.",
        )
    return Path(shared)


def _write_run_start(
    setup: _Setup, spec: Spec, out: Path, on_run_dir, on_note, comm: Communicator
) -> Path:
    """The new run directory with what a run holds before its first step: run.json (with the
    number of workers), config.yaml, normalization.json, summary.txt; the notes said."""
    run_dir = create_run_dir(out, spec.name)
    run = RunDir(run_dir)
    mark_running(run_dir, spec.train.epochs, workers=comm.size)
    if on_run_dir:
        on_run_dir(run_dir)
    notes = setup.notes
    if setup.skipped:
        atomic_write_text(run.skipped_images, "\n".join(setup.skipped) + "\n")
        notes.append(
            f"{len(setup.skipped)} unreadable images skipped (data.skip_bad_images); "
            f"listed in {run.skipped_images}"
        )
    if setup.splits.validation is not None and setup.splits.validation is setup.splits.test:
        from cnnkit.spec.callbacks import optimistic_test_notes

        notes += optimistic_test_notes(spec)
    for note in [*notes, *spec.notes] if on_note else ():
        on_note(note)
    atomic_write_text(run.config, spec.to_yaml())
    statistics = setup.preprocessor.statistics()  # featurewise, if the spec uses them
    if statistics is not None:
        write_json(run.normalization, statistics)
    info = summarize(spec)
    table = summary_table(info.title, info.rows, info.totals, input_shape=info.input_shape)
    atomic_write_text(run.summary, render_text(table))
    return run_dir


def _warm_up(setup: _Setup, reporter: Reporter | None, run_dir: Path | None = None) -> None:
    """Compile or load every kernel before the first (timed) step, saying so while it runs:
    reporter.kernels(phase, seconds), when the reporter has it: "loading" (0), "compiling"
    (the estimate) only when Numba compiles, then "compiled" or "loaded" (the time taken).
    Ctrl-C meanwhile: CompileInterrupted (run_dir: the resumed run, untouched)."""
    if not len(setup.splits.train):
        return
    from cnnkit.train.warmup import warm_up

    say = getattr(reporter, "kernels", None) or (lambda phase, seconds: None)
    say("loading", 0.0)
    done = warm_up(  # CompileInterrupted: the reporter's exit stops its spinner
        setup.model,
        setup.loss_fn,
        setup.preprocessor,
        setup.splits.train.x,
        setup.splits.train.y,
        on_compiling=lambda estimate: say("compiling", estimate),
        run_dir=run_dir,
        optimizer=setup.optimizer,
    )
    say("compiled" if done.compiled else "loaded", done.seconds)


def _tracked_fit(
    setup: _Setup,
    spec: Spec,
    run_dir: Path,
    reporter: Reporter | None,
    on_note,
    summary_text: str = "",
    extra: Sequence[Callback] = (),
    resume=None,
    comm: Communicator | None = None,
) -> list[dict[str, Any]]:
    """The Trainer with the run's callbacks (curves.png, run.json and TensorBoard kept
    current, the run's ending recorded however it comes), SIGINT / SIGTERM turned into a
    clean stop after the current step (catch_signals). comm: a data-parallel rank other than
    0 (it writes nothing: only the callbacks that steer training)."""
    root = comm is None or comm.is_root
    if resume is not None and root:  # a new run was marked running when its directory was made
        mark_running(run_dir, spec.train.epochs, epochs_done=len(resume.history))
    tensorboard = None
    if spec.logging.tensorboard and root:
        from cnnkit.train.callbacks.tensorboard import TensorBoard

        tensorboard = TensorBoard(run_dir, spec, summary_text, setup.splits.train.x[:32])
    steps = steps_per_epoch(spec, setup.splits.train)
    callbacks = training_callbacks(
        spec, setup.optimizer.learning_rate, steps, reporter, extra, resume, tensorboard, root
    )
    with catch_signals() as stop:
        trainer = Trainer(
            setup.model,
            setup.loss_fn,
            setup.optimizer,
            setup.splits,
            spec,
            run_dir,
            callbacks,
            setup.preprocessor,
            stop,
            on_note,
        )
        return trainer.fit()


def resume(
    run_dir: Path,
    epochs: int | None = None,
    spec_file: Path | None = None,
    overrides: SpecOverrides = None,
    reporter: Reporter | None = None,
    on_note=None,
    threads: int | None = None,
    progress: LoadProgress | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Continue the run in run_dir from its last checkpoint, mid-epoch included, with the
    spec in its config.yaml: the result is bit for bit the uninterrupted run's.

    epochs: train to this many epochs in all (extends a finished run). spec_file/overrides
    (an edited spec, --set-style dotted keys): refused with a diff if they change anything
    but train.epochs and train.save_every_steps. callbacks: as train's. Under MPI: every
    rank calls it; the number of workers must be the saved run's (refused otherwise)."""
    comm = start_distributed()
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
        given = load_spec(spec_file or RunDir(run_dir).config, overrides)
        source = f"{spec_file}" if spec_file is not None else "options given"
        refuse_changes(spec, given, run_dir, source)
        train = replace(
            spec.train,
            epochs=given.train.epochs,
            save_every_steps=given.train.save_every_steps,
        )
        spec = replace(spec, train=train)
    if epochs is not None:
        spec = replace(spec, train=replace(spec.train, epochs=int(epochs)))
    state = load_resume_state(run_dir, spec)
    refuse_other_workers(state.info, comm.size, run_dir)
    epoch, step = state.next_position()
    if state.info.get("stopped_early"):
        raise CheckpointError(
            f"nothing to resume: early stopping ended this run after epoch {state.epoch}",
            where=str(run_dir),
            hint="Start a new run with different callbacks.early_stopping settings.",
        )
    if epoch > spec.train.epochs:
        done = state.epoch
        raise CheckpointError(
            f"nothing to resume: the run has finished {done} of {spec.train.epochs} "
            f"epoch{'s' * (spec.train.epochs != 1)}",
            where=str(run_dir),
            hint=f"Train further with --epochs N (N > {done}): "
            f"cnnkit train --resume {run_dir} --epochs {done + 5}",
        )
    setup = _setup(spec, threads, progress)
    setup.model.load_params(state.weights, str(CheckpointFiles(state.path).weights))
    if on_note:
        at = f"epoch {epoch}" + (f", step {step + 1}" if step else "")
        on_note(f"Resuming {run_dir} at {at} of {spec.train.epochs}.")
    _warm_up(setup, reporter, run_dir)  # Ctrl-C while compiling leaves the run as it was
    config = RunDir(run_dir).config
    if comm.is_root and config.read_text() != spec.to_yaml():  # --epochs, save_every_steps
        atomic_write_text(config, spec.to_yaml())
    history = _tracked_fit(
        setup, spec, run_dir, reporter, on_note, extra=callbacks, resume=state, comm=comm
    )
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
    progress: LoadProgress | None = None,
) -> Reproduction:
    """Train the run's saved spec again into a new run directory beside it, and compare the
    metrics of every epoch both have, at full precision (seconds and images/s aside), and
    the final weights when both stopped at the same epoch."""
    original = Path(run_dir)
    spec = load_run_spec(original)
    before = _full_history(original)
    if epochs is not None:
        spec = replace(spec, train=replace(spec.train, epochs=int(epochs)))
    result = train(spec, original.parent, reporter, on_run_dir, on_note, progress=progress)
    if not start_distributed().is_root:  # rank 0 compares the files it wrote
        return Reproduction(original, result.run_dir, [], [], None)
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
    old, new = RunDir(original), RunDir(result.run_dir)
    old_meta = old.read_checkpoint_meta("last") or {}
    new_meta = new.read_checkpoint_meta("last") or {}
    if old_meta.get("epoch_complete", True) and old_meta.get("epoch") == new_meta.get("epoch"):
        a, _ = load_checkpoint(old.checkpoint("last").stem)
        b, _ = load_checkpoint(new.checkpoint("last").stem)
        weights = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return Reproduction(original, result.run_dir, compared, differences, weights)


def run_workers(run_dir: Path) -> int:
    """How many data-parallel workers trained the run (run.json; 1 for older runs)."""
    state = RunDir(Path(run_dir)).read_state() or {}
    workers = state.get("workers", 1)
    return workers if isinstance(workers, int) and workers > 0 else 1


def _full_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's finished epochs at full precision (last.json's resume state), else the
    values of metrics.csv."""
    from cnnkit.train.callbacks.base import decode_float

    run = RunDir(run_dir)
    info = (run.read_checkpoint_meta("last") or {}).get("resume")
    if info and info.get("history"):
        return [{k: decode_float(v) for k, v in row.items()} for row in info["history"]]
    if not run.metrics.is_file():
        raise CheckpointError(
            "the run has no finished epoch to compare with (no metrics.csv)", where=str(run_dir)
        )
    # 6 significant digits: compared as metrics.csv writes them
    return [{k: int(v) if k == "epoch" else v for k, v in r.items()} for r in run.read_metrics()]


def load_initial_weights(model: Model, spec: Spec) -> Path:
    """model.weights: start from a checkpoint (fine-tuning). A run directory means its best.npz.

    Every layer's arrays must match the model's shapes; a mismatch names the layer and both
    shapes (loading only some layers silently would hide a wrong spec)."""
    given = Path(spec.model.weights).expanduser()
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


def load_model(run_dir: Path, checkpoint: str = "best") -> tuple[Spec, Model, Path, dict]:
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
    model = build_model(spec).build(spec.seed)
    model.load_params(arrays, str(path))
    return spec, model, path, meta


def evaluate(
    run_dir: Path,
    checkpoint: str = "best",
    batch_size: int | None = None,
    split: str = "test",
    progress: LoadProgress | None = None,
) -> dict:
    """Loss, accuracy, the spec's metrics, per-class report and confusion matrix of one split:
    test (default), validation or train (as evaluation always is: no augmentation, inference
    mode). Writes evaluation.json for the test split, evaluation_<split>.json for another
    (analysis.split_file: the test evaluation is never overwritten), predictions.csv
    (predictions_<split>.csv: every sample's probabilities, as `cnnkit predict` gives them)
    and report.md.

    A split the data does not have is an error naming the splits it has: without a test
    split, the default refuses rather than report another split as a test score."""
    if split not in EVALUATION_SPLITS:
        raise DataError(
            f"unknown split '{split}'",
            where="split",
            hint=f"Valid: {', '.join(EVALUATION_SPLITS)}.",
        )
    run_dir = Path(run_dir)
    spec, model, path, meta = load_model(run_dir, checkpoint)
    splits = make_splits(load_dataset(spec, progress), spec.data, spec.seed)
    data: Split | None = {"test": splits.test, "validation": splits.validation}.get(
        split, splits.train
    )
    validation_is_test = splits.validation is not None and splits.validation is splits.test
    if data is None or len(data) == 0:
        raise _missing_split(split, spec, splits, run_dir)
    best = path.resolve() == resolve_checkpoint(run_dir, "best").resolve()
    notes, optimistic = _evaluation_notes(
        spec, split, "best" if best else "last", validation_is_test
    )
    batch_size = batch_size or spec.train.eval_batch_size
    metric_set = build_metrics(spec)
    # the run's normalisation
    preprocessor = Preprocessor.from_spec(spec, saved=RunDir(run_dir).read_normalization)
    loss_fn = build_loss(spec)
    result = evaluate_split(model, loss_fn, data, preprocessor, batch_size, metric_set)
    matrix = metric_set.confusion  # the predictions the metrics counted (one sigmoid: p > 0.5)
    report = {
        "run": str(run_dir),
        "checkpoint": str(path),
        "epoch": meta.get("epoch"),
        "split": split,
        "samples": len(data),
        "batch_size": batch_size,  # images per inference pass (train.eval_batch_size)
        "notes": notes,
        "optimistic": optimistic,  # selected on the split evaluated (notes say how)
        "loss": result.loss,
        "accuracy": result.accuracy,
        # the spec's metrics; precision/recall/f1: of positive_class when there is one (one
        # sigmoid unit, as Keras), else macro; exact ROC auc (null if one class only)
        "metrics": result.metrics,
        "positive_class": splits.class_names[1] if metric_set.binary else None,
        "class_names": splits.class_names,
        "per_class": per_class_report(matrix, splits.class_names),
        "confusion_matrix": matrix.tolist(),
    }
    report.update(write_error_analysis(run_dir, data, result.probabilities, matrix, splits, split))
    run = RunDir(run_dir)
    report["files"] = [run.evaluation_file(name, split).name for name in EVALUATION_FILES]
    report["files"].append(run.report.name)
    write_json(run.evaluation_file(EVALUATION, split), report)
    write_report(run_dir)
    return report


def _evaluation_notes(
    spec: Spec, split: str, checkpoint: str, validation_is_test: bool
) -> tuple[list[str], bool]:
    """What evaluate says about the split it used, and whether its score is optimistic: the
    model was selected on the very data evaluated (the val_ metrics were computed on it)."""
    from cnnkit.spec.callbacks import optimistic_test_note, validation_choices

    notes = []
    if split == "train":
        held_out = spec.data.validation == "split"
        notes.append(
            "the training split is evaluated as evaluation always is: without augmentation, "
            "in inference mode (no dropout; BatchNormalization's moving statistics)"
            + ("; the images held out for validation are not in it" if held_out else "")
        )
    if split == "validation" and validation_is_test:
        notes.append("the validation split is the test split here (data.validation: test)")
    choices = validation_choices(spec, checkpoint)
    if not choices or not (split == "validation" or (split == "test" and validation_is_test)):
        return notes, False
    if split == "test":
        notes.append(optimistic_test_note(choices))
    else:
        notes.append(
            f"this validation score is optimistic: {'; '.join(choices)}. The test split "
            "gives an unbiased score"
        )
    return notes, True


def _missing_split(split: str, spec: Spec, splits, run_dir: Path) -> DataError:
    """The error for a split the data does not have: names it and the splits there are."""
    parts = {"test": splits.test, "validation": splits.validation, "train": splits.train}
    have = [name for name, part in parts.items() if part is not None and len(part)]
    hint = f"This data has: {', '.join(have)}."
    if split == "test":
        other = next((name for name in have if name != "train"), "train")
        hint += (
            f" Evaluate on another split, named as such: cnnkit evaluate {run_dir} --split {other}"
        )
        if spec.data.source == "folder":
            hint += " (or add a test/ folder of class sub-folders)"
        hint += "."
    elif split == "validation":
        hint += (
            " A validation split comes from data.validation_split, an image folder's val/ "
            "folder, or data.validation: test."
        )
    where = str(spec.data.path or spec.data.source)
    return DataError(f"the data has no {split} split to evaluate", where=where, hint=hint)


def write_error_analysis(
    run_dir: Path,
    split: Split,
    probabilities: np.ndarray,
    matrix: np.ndarray,
    splits,
    name: str = "test",
) -> dict[str, Any]:
    """confusion_matrix.png, misclassified.csv, misclassified.png and predictions.csv (every
    sample's probabilities), named for the split evaluated (layout.split_file); returns what
    evaluation.json adds: the most-confused pairs and the mistake count."""
    from cnnkit.runs import evaluation as analysis
    from cnnkit.runs import plots

    names = splits.class_names
    rows = analysis.misclassified_rows(probabilities, split.y, names, split.files)
    run = RunDir(run_dir)
    file = lambda base: run.evaluation_file(base, name)  # noqa: E731
    analysis.write_misclassified_csv(file(MISCLASSIFIED_CSV), rows)
    analysis.write_predictions_csv(
        file(PREDICTIONS_CSV), probabilities, split.y, names, split.files
    )
    plots.plot_confusion(matrix, names, file(CONFUSION_PNG))
    shown = rows[:32]
    plots.plot_misclassified(
        split.x[[r["index"] for r in shown]],
        [r["true"] for r in shown],
        [r["predicted"] for r in shown],
        [r["confidence"] for r in shown],
        file(MISCLASSIFIED_PNG),
    )
    return {
        "most_confused": analysis.most_confused(matrix, names),
        "misclassified": len(rows),
    }


@dataclass
class Predictor:
    """A run's model loaded once with everything `predict` prepares images with: what
    `cnnkit predict` calls once and `cnnkit serve` keeps for every request.

    One preparation path: the run's data.* options (cnnkit.data.images.ImageOptions), the
    run's Preprocessor, batches of train.eval_batch_size, as evaluate. For an image folder
    that is all: predicting its test/ folder gives evaluate's probabilities (predictions.csv)
    bit for bit. Data that did not come from image files (MNIST, npz) is matched with
    predict-only adaptations: inversion, digit centring (prepare_image)."""

    run_dir: Path
    spec: Spec
    model: Model
    checkpoint: Path
    meta: dict[str, Any]
    options: ImageOptions
    preprocessor: Preprocessor
    loss_fn: Any

    @classmethod
    def load(cls, run_dir: Path, checkpoint: str = "best") -> Predictor:
        run_dir = Path(run_dir)
        spec, model, path, meta = load_model(run_dir, checkpoint)
        options = ImageOptions.from_spec(spec)
        preprocessor = Preprocessor.from_spec(spec, saved=RunDir(run_dir).read_normalization)
        # through the loss: one sigmoid unit p gives the two classes [1 - p, p]
        return cls(run_dir, spec, model, path, meta, options, preprocessor, build_loss(spec))

    def class_names(self, columns: int) -> list[str]:
        """The checkpoint's class names; without them, the probability columns' numbers."""
        return self.meta.get("class_names") or [str(i) for i in range(columns)]

    def read(self, file: Path | ImageBytes, invert: bool | None = None) -> PreparedImage:
        """One image file (or an upload's bytes) as the model's uint8 input. Raises
        ImageError. Pure: safe to call from several threads at once."""
        source = SOURCES[self.spec.data.source]
        adapt = self.spec.data.source != "folder"  # a folder's model reads files as trained
        return prepare_image(
            file, self.options, source.background, source.centre_digits, invert, adapt=adapt
        )

    def try_read(
        self, file: Path | ImageBytes, invert: bool | None = None
    ) -> PreparedImage | ImageError:
        """read(), an unreadable file's ImageError returned rather than raised."""
        try:
            return self.read(file, invert)
        except ImageError as error:
            return error

    def read_all(
        self, files: Sequence[Path | ImageBytes], invert: bool | None = None
    ) -> list[PreparedImage | ImageError]:
        """try_read() of every file, in order. Pillow releases the GIL while decoding and
        resizing, as in the folder decoder: a folder of photos decodes on every core; each
        file's result does not depend on the others."""
        workers = max(1, min(len(files), os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda file: self.try_read(file, invert), files))

    def probabilities(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """(N, classes) of uint8 images x, in batches of train.eval_batch_size (or
        batch_size). Not thread-safe (the model's buffers): one caller at a time."""
        batch_size = batch_size or self.spec.train.eval_batch_size
        return predict_probabilities(self.model, self.loss_fn, x, self.preprocessor, batch_size)

    def predict(
        self,
        files: Sequence[Path | ImageBytes],
        top_k: int = 3,
        invert: bool | None = None,
        batch_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """`predict`'s entries for these files (no folder expansion)."""
        read = self.read_all(files, invert)
        x = stack_readable(files, read)
        return self.entries(files, read, self.probabilities(x, batch_size), top_k)

    def entries(
        self,
        files: Sequence[Path | ImageBytes],
        read: Sequence[PreparedImage | ImageError],
        rows: np.ndarray,
        top_k: int,
    ) -> list[dict[str, Any]]:
        """Each file's entry: image, error (None when read), inverted, note, top (top_k
        classes, most probable first). rows: the probabilities of the readable files, in
        order."""
        names = self.class_names(rows.shape[1])
        k = max(1, min(top_k, rows.shape[1]))
        results, readable = [], iter(rows)
        for file, prepared in zip(files, read, strict=True):
            if isinstance(prepared, ImageError):
                entry = {"image": str(file), "error": prepared.message, "inverted": False}
                results.append({**entry, "note": None, "top": []})
                continue
            row = next(readable)
            order = np.argsort(-row, kind="stable")[:k]
            results.append(
                {
                    "image": str(file),
                    "error": None,
                    "inverted": prepared.inverted,
                    "note": prepared.note,
                    "top": [{"class": names[c], "probability": float(row[c])} for c in order],
                }
            )
        return results


def stack_readable(
    files: Sequence[Path | ImageBytes], read: Sequence[PreparedImage | ImageError]
) -> np.ndarray:
    """The readable images as one uint8 batch, in order; ImageError when none could be read
    (the file's own error for one file)."""
    arrays = [p.array for p in read if not isinstance(p, ImageError)]
    if arrays:
        return np.stack(arrays)
    first = read[0]
    if len(files) == 1:
        raise first
    raise ImageError(
        f"none of the {len(files)} images could be read; the first: {first.message}",
        where=first.where,
        hint=first.hint,
    )


def predict(
    images: list[str | Path],
    run_dir: Path,
    checkpoint: str = "best",
    top_k: int = 3,
    invert: bool | None = None,
    batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file (folders are expanded), in order:
    Predictor.predict of the run's model (its docstring: how images are prepared).

    Each entry: image, error (None when read), inverted, note, top. A file that cannot be read
    gets its error and an empty top; ImageError when no file could be read."""
    predictor = Predictor.load(Path(run_dir), checkpoint)
    return predictor.predict(collect_images(images), top_k, invert, batch_size)


EXPORT_FORMATS = ("onnx",)


@dataclass
class ExportResult:
    path: Path  # the model file (written only when the verification passed)
    report: Path  # FILE.verify.json: the verification's figures, written either way
    checkpoint: Path
    opset: int
    bytes: int
    verification: Any  # cnnkit.export.verify.Verification

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.path),
            "report": str(self.report),
            "checkpoint": str(self.checkpoint),
            "opset": self.opset,
            "bytes": self.bytes,
            "verification": self.verification.to_dict(),
        }


def export(
    run_dir: Path,
    checkpoint: str = "best",
    format: str = "onnx",
    out: Path | None = None,
    opset: int = 17,
    verify_on: int | None = None,
    progress: LoadProgress | None = None,
) -> ExportResult:
    """`cnnkit export`: the run's model as an ONNX file (default RUN_DIR/model.onnx) that
    takes raw pixels and gives class probabilities (the contract: cnnkit.export), checked by
    onnx.checker (full) and then by onnxruntime against cnnkit's own inference (evaluate's
    and predict's path) on the run's test split (verify_on: its first N images; no test
    split: validation, else train). The figures go to FILE.verify.json; beyond the
    tolerance (1e-4) the model file is not written and VerificationError (exit 1) is raised.
    Without the onnx extra: ExtraMissing (exit 2)."""
    if format not in EXPORT_FORMATS:
        raise DataError(
            f"unknown export format '{format}'",
            where="--format",
            hint=f"Valid: {', '.join(EXPORT_FORMATS)}.",
        )
    from cnnkit.export import require_onnx

    require_onnx()
    from cnnkit.export import onnx as onnx_export
    from cnnkit.export import verify

    run_dir = Path(run_dir)
    onnx_export.check_opset(opset)
    spec, model, path, meta = load_model(run_dir, checkpoint)
    preprocessor = Preprocessor.from_spec(spec, saved=RunDir(run_dir).read_normalization)
    loss_fn = build_loss(spec)
    split_name, data, class_names = _verification_images(spec, progress)
    names = meta.get("class_names") or class_names
    proto = onnx_export.to_onnx(
        model,
        loss_fn,
        preprocessor,
        onnx_export.metadata(spec, meta, path, names),
        opset,
        spec.name,
    )
    onnx_export.check(proto)
    model_bytes = proto.SerializeToString()
    x = data.x[:verify_on] if verify_on else data.x
    batch_size = spec.train.eval_batch_size
    ours = predict_probabilities(model, loss_fn, x, preprocessor, batch_size)
    theirs = verify.run_onnx(model_bytes, x, batch_size)
    verification = verify.compare(theirs, ours, split_name)
    out = Path(out) if out is not None else RunDir(run_dir).exported_model
    report = verify.verification_file(out)
    result = ExportResult(out, report, path, opset, len(model_bytes), verification)
    write_json(report, result.to_dict())
    if not verification.passed:
        raise verify.mismatch_error(verification, report)
    onnx_export.save(proto, out)
    return result


def _verification_images(spec: Spec, progress: LoadProgress | None) -> tuple[str, Split, list]:
    """(split name, split, class names): the test split, else validation, else train."""
    splits = make_splits(load_dataset(spec, progress), spec.data, spec.seed)
    for name, split in (
        ("test", splits.test),
        ("validation", splits.validation),
        ("train", splits.train),
    ):
        if split is not None and len(split):
            return name, split, splits.class_names
    raise DataError("the run's data has no images to verify the export on", where=spec.data.path)


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
    spec: Spec,
    n: int = 20,
    out: Path = Path("augment.png"),
    versions: int = 4,
    progress: LoadProgress | None = None,
) -> AugmentPreview:
    """A PNG grid of n training images (first row) and `versions` augmented rows, without
    training. The n images are taken from every class in turn (the first of each class,
    then the second, ...), so that a dataset sorted by class does not show one class only."""
    from PIL import Image

    from cnnkit.data.augment import Augmenter, augments, preview_grid
    from cnnkit.io import atomic_write_bytes
    from cnnkit.seeding import random_stream

    data = replace(spec.data, validation="none")
    if data.source == "synthetic":  # made on demand: make only what is shown
        data = replace(data, max_train_samples=min(n, data.max_train_samples or n))
    spec = replace(spec, data=data)
    train = make_splits(load_dataset(spec, progress), data, spec.seed).train
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
    """`cnnkit runs`: every run directory under root, newest first (cnnkit.runs.catalog)."""
    from cnnkit.runs.catalog import list_runs as runs

    return runs(Path(root))


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """`cnnkit compare`: the spec keys that differ and the metrics, better value marked."""
    from cnnkit.runs.catalog import compare_runs as compare

    return compare(Path(a), Path(b))


def summary_dict(info: ModelSummary) -> dict[str, Any]:
    """`cnnkit summary --json`."""
    from dataclasses import asdict

    return {"title": info.title, "layers": [asdict(r) for r in info.rows], "totals": info.totals}


def bench(spec: Spec, **options: Any):
    """`cnnkit bench`: throughput on synthetic data (see cnnkit.bench.run_bench)."""
    from cnnkit.bench import run_bench

    return run_bench(spec, **options)


def check_data(target: str | Path) -> dict[str, Any]:
    """`cnnkit data check`: an image folder's or a spec file's data-quality report (see
    cnnkit.data.check), without training."""
    started = time.perf_counter()
    target = Path(target)
    if target.is_dir():
        report = check_folder(target)
    elif target.is_file():
        report = _check_spec_data(target)
    else:
        raise DataError(
            "no such file or folder",
            where=str(target),
            hint="Give an image folder (train/, val/, test/ with class sub-folders, or class "
            "sub-folders directly) or a YAML spec.",
        )
    seconds = round(time.perf_counter() - started, 3)
    return {"input": str(target), "source": report.pop("source"), **report, "seconds": seconds}


def _check_spec_data(path: Path) -> dict[str, Any]:
    """A spec file: its image folder (source: folder) or its arrays."""
    spec = load_spec(path)
    source = spec.data.source
    if source == "folder":
        size = spec.data.target_size or spec.model.input_shape[:2]
        report = check_folder(resolve_data_dir(spec.data.path, spec_dir(spec)), list(size))
    elif source in ARRAY_SOURCES:
        splits = make_splits(load_dataset(spec), spec.data, spec.seed)
        arrays = {"train": splits.train}
        if splits.validation is not None and splits.validation is not splits.test:
            arrays["val"] = splits.validation
        if splits.test is not None:
            arrays["test"] = splits.test
        report = check_arrays({k: (s.x, s.y) for k, s in arrays.items()}, splits.class_names)
        report["path"] = spec.data.path
    else:
        raise DataError(
            f"the {source} source has no data to check",
            where=str(path),
            hint=f"data check reads image folders and the {', '.join(ARRAY_SOURCES)} sources.",
        )
    report["source"] = source
    return report
