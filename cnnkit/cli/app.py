"""Typer commands only: parse options, call cnnkit.api, print with cnnkit.cli.display.

A CnnkitError (bad spec, data, image or checkpoint) is printed as one panel, exit code 2.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cnnkit import api, distributed, launch
from cnnkit.cli import display
from cnnkit.errors import CnnkitError, SpecError
from cnnkit.interrupts import (
    CompileInterrupted,
    Interrupted,
    output_closed,
    stdout_was_closed,
    translate_forwarded_signals,
)
from cnnkit.io import json_safe
from cnnkit.runs.layout import EVALUATION_SPLITS
from cnnkit.spec.config import load_spec
from cnnkit.spec.overrides import command_line, option_override

# `evaluate --split` (cnnkit.runs.layout.EVALUATION_SPLITS): typer shows and checks the choices
EvalSplit = Enum("EvalSplit", {name: name for name in EVALUATION_SPLITS}, type=str)

app = typer.Typer(
    help="Train, evaluate and use convolutional networks on the CPU from one YAML spec.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    from cnnkit import __version__

    found = []
    for package in ("numpy", "numba", "rich", "typer"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    python = ".".join(str(n) for n in sys.version_info[:3])
    print(f"cnnkit {__version__} (Python {python}, {', '.join(found)})")
    raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = None,
) -> None:
    pass


CheckpointOpt = Annotated[
    str, typer.Option("--checkpoint", "-c", help="best, last, or a path to an .npz checkpoint.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress output; print the essentials only.")
]
# --set KEY.PATH=VALUE, repeatable: pass the list to load_spec(spec, overrides=...) (or to
# api.check / api.spec_from_spec_or_run); cnnkit.spec.overrides applies and locates them
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY.PATH=VALUE",
        help="Change one value of the spec, e.g. --set train.epochs=3 or "
        "--set model.layers[0].Conv2D.filters=16 (YAML values; repeatable).",
    ),
]


TrainThreadsOpt = Annotated[
    int | None,
    typer.Option(
        min=1, help="Threads for the kernels (default: all cores, divided among --workers)."
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Data-parallel training on N processes of this machine (MPI: the `mpi` extra); "
        "train.batch_size stays the global batch. Across machines: mpiexec -n N cnnkit train "
        "SPEC.",
    ),
]


@app.command()
def train(
    spec: Annotated[Path | None, typer.Argument(help="YAML spec, e.g. configs/mnist.yaml.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override train.epochs.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Override train.batch_size.")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Override the spec's seed.")] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="Start from this checkpoint (.npz) or run directory: model.weights."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder that holds run directories.")] = Path("runs"),
    quiet: QuietOpt = False,
    set_: SetOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue this run directory from its last checkpoint (mid-epoch included), "
            "with its own spec; --epochs N may extend it.",
        ),
    ] = None,
    threads: TrainThreadsOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Train the model of SPEC and write a new run directory under --out (or --resume one).

    In a terminal: a live progress bar. Elsewhere (a pipe, CI): plain lines, one per epoch and
    one every logging.every_steps steps. --quiet: only the run directory is printed. After
    Ctrl-C the run continues with --resume RUN_DIR, bit for bit as if never interrupted.

    Example: cnnkit train configs/mnist.yaml --set train.epochs=3
    """
    overrides = _train_overrides(set_, epochs, batch_size, seed, weights)
    if _launched(workers, spec, resume, overrides):
        return
    speaks = distributed.env_rank() == 0  # data-parallel: rank 0 speaks for every rank
    quiet = quiet or not speaks
    notes = display.error_console if quiet else display.console
    note = (
        (lambda text: display.print_line(notes, f"[yellow]Note:[/yellow] {text}"))
        if speaks
        else None
    )
    result = _train_or_resume(spec, resume, epochs, overrides, out, quiet, note, threads)
    if not speaks:
        return
    if quiet:
        print(result.run_dir)
        return
    display.print_trained(result.run_dir, result.spec)


def _train_or_resume(spec, resume, epochs, overrides, out, quiet, note, threads) -> api.TrainResult:
    """api.resume (--resume) or api.train (SPEC), with the display's reporter."""
    show_run_dir = (
        None
        if quiet
        else (lambda d: display.print_line(display.console, f"Run directory: [bold]{d}[/bold]"))
    )
    if resume is not None:
        every_steps = api.load_run_spec(resume).logging.every_steps
        with display.make_reporter(quiet, every_steps) as reporter:
            result = api.resume(
                resume,
                epochs,
                spec,
                overrides,
                reporter,
                note,
                threads=threads,
                progress=display.load_progress(quiet),
            )
    else:
        if spec is None:
            raise SpecError(
                "give a spec file, or --resume RUN_DIR",
                where="cnnkit train",
                hint="e.g. cnnkit train configs/mnist.yaml",
            )
        parsed = load_spec(spec, overrides, check_data=True)  # as `check` does
        parsed = replace(parsed, command=command_line())  # config.yaml records it
        with display.make_reporter(quiet, parsed.logging.every_steps) as reporter:
            result = api.train(
                parsed,
                out=out,
                reporter=reporter,
                on_run_dir=show_run_dir,
                on_note=note,
                threads=threads,
                progress=display.load_progress(quiet),
            )
    return result


def _launched(workers: int | None, spec: Path | None, resume: Path | None, overrides) -> bool:
    """--workers N (N > 1) outside MPI: the same command as N MPI ranks (cnnkit.launch), the
    spec checked once first; True when that ran (this process then exits with its code)."""
    if workers is None or distributed.under_mpi():
        if workers is not None and workers != distributed.env_size():
            raise SpecError(
                f"--workers {workers} under an MPI launcher that started "
                f"{distributed.env_size()} processes",
                where="--workers",
                hint="Leave --workers out under mpiexec or srun: their -n is the number.",
            )
        return False
    if workers == 1:
        return False
    if resume is None and spec is not None:
        load_spec(spec, overrides, check_data=True)  # one error, not one per worker
    raise SystemExit(launch.run_workers(workers))


def _train_overrides(
    set_: list[str] | None,
    epochs: int | None,
    batch_size: int | None,
    seed: int | None,
    weights: Path | None,
) -> list[str]:
    """What train overrides: every --set, then --epochs, --batch-size, --seed and --weights."""
    options = [
        option_override(key, value, flag)
        for key, value, flag in (
            ("train.epochs", epochs, "--epochs"),
            ("train.batch_size", batch_size, "--batch-size"),
            ("seed", seed, "--seed"),
            ("model.weights", str(weights) if weights else None, "--weights"),
        )
        if value is not None
    ]
    return [*(set_ or []), *options]


@app.command()
def reproduce(
    run: Annotated[Path, typer.Argument(help="Run directory written by `cnnkit train`.")],
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Train this many epochs (default: the spec's).")
    ] = None,
) -> None:
    """Train RUN's saved spec again and report whether the metrics match bit for bit.

    The new run directory is made beside RUN. The metrics of every epoch both runs have are
    compared at full precision, and the final weights when both end at the same epoch. Exit
    code 1 when they do not match.

    A run trained by N workers is trained again by N (as `--workers N`).

    Example: cnnkit reproduce runs/mnist --epochs 2
    """
    workers = api.run_workers(run)
    if workers > 1 and not distributed.under_mpi():
        raise SystemExit(launch.run_workers(workers))
    if distributed.env_rank() != 0:
        api.reproduce(run, epochs)
        return
    with display.RichReporter() as reporter:
        result = api.reproduce(
            run,
            epochs,
            reporter,
            on_run_dir=lambda d: display.console.print(f"Run directory: [bold]{d}[/bold]"),
            progress=display.load_progress(),
        )
    display.print_reproduction(result)
    if not result.match:
        raise typer.Exit(1)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by `cnnkit train`.")],
    checkpoint: CheckpointOpt = "best",
    split: Annotated[
        EvalSplit,
        typer.Option(
            help="The split to evaluate: test (an error when the data has none), validation, "
            "or train (never augmented).",
        ),
    ] = EvalSplit.test,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Loss, accuracy, metrics, per-class report and confusion matrix of one split (--split).

    Default: the test split. Also the most-confused class pairs. Writes evaluation.json,
    confusion_matrix.png, misclassified.png, misclassified.csv and predictions.csv (every
    sample's probabilities, as `cnnkit predict` gives them) for the test split (another split:
    evaluation_SPLIT.json, ...) and report.md in the run directory.

    Example: cnnkit evaluate runs/mnist --split validation --checkpoint last
    """
    report = api.evaluate(
        run, checkpoint, split=split.value, progress=display.load_progress(as_json or quiet)
    )
    if as_json:
        print(json.dumps(json_safe(report), indent=2))
        return
    if quiet:
        optimistic = " (optimistic: selected on this split)" if report["optimistic"] else ""
        print(
            f"{report['split']} accuracy {report['accuracy']:.4f}  loss {report['loss']:.4f}"
            + optimistic
        )
        return
    for table in display.evaluation_tables(report):
        display.console.print(table)
    display.console.print(f"Wrote {', '.join(report['files'])} in {Path(run)}")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    run: Annotated[Path, typer.Option("--run", "-r", help="Run directory to load the model from.")],
    checkpoint: CheckpointOpt = "best",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes to show.")] = 3,
    invert: Annotated[
        bool | None,
        typer.Option(
            "--invert/--no-invert",
            help="Force or forbid inverting dark-on-light images (default: decide per image).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Classify image files with a trained run: top-k classes and probabilities.

    Images are read as the run's training read them (size, colour mode, interpolation,
    normalisation): for an image folder, predicting its test/ files gives evaluate's
    probabilities exactly. Exit code 0 when every image was read; 1 when some could not be
    (the others are predicted, the failures listed; --json: their "error"); 2 when none.

    Example: cnnkit predict my_digit.png drawings/ --run runs/mnist --top-k 3
    """
    results = api.predict(images, run, checkpoint, top_k, invert)
    failed = any(r["error"] for r in results)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        heading = display.predictions_heading(results)
        if heading:  # the folder, whole (the rows name files relative to it)
            display.console.print(heading, soft_wrap=True)
        display.console.print(display.predictions_table(results))
        for line in display.prediction_notes(results):
            display.console.print(line)
        if failed:
            display.error_console.print(display.predict_failures(results))
    if failed:
        raise typer.Exit(1)


ExportFormat = Enum("ExportFormat", {name: name for name in api.EXPORT_FORMATS}, type=str)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory written by `cnnkit train`.")],
    checkpoint: CheckpointOpt = "best",
    format: Annotated[
        ExportFormat, typer.Option("--format", help="The file format.")
    ] = ExportFormat.onnx,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The file to write (default RUN/model.onnx).")
    ] = None,
    opset: Annotated[int, typer.Option(help="The ONNX opset to write (13 or newer).")] = 17,
    verify_on: Annotated[
        int | None,
        typer.Option(
            "--verify-on",
            min=1,
            help="Check on the first N test images (default: the whole test split).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export the run's model to ONNX, with its preprocessing and head, checked by onnxruntime.

    The model takes `image`: float32 (N, H, W, C), raw pixels 0-255 in the run's colour mode,
    and gives `probabilities`: float32 (N, classes), as `cnnkit predict`. It is checked by
    onnx.checker, then run by onnxruntime next to cnnkit on the test split: the share of equal
    argmax and the largest probability difference are printed and written to FILE.verify.json.
    Exit code 1 (and no model file) when they differ by more than 1e-4; 2 without the onnx
    extra (pip install "cnnkit[onnx]").

    Example: cnnkit export runs/mnist --verify-on 1000
    """
    result = api.export(
        run,
        checkpoint,
        format.value,
        out,
        opset,
        verify_on,
        progress=display.load_progress(as_json),
    )
    if as_json:
        print(json.dumps(json_safe(result.to_dict()), indent=2))
        return
    for line in display.export_lines(result.to_dict()):
        display.console.print(line, soft_wrap=True)


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="Run directory to load the model from.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    checkpoint: CheckpointOpt = "best",
    max_files: Annotated[
        int, typer.Option("--max-files", min=1, help="Files a request may send.")
    ] = 64,
    max_image_mb: Annotated[
        float, typer.Option("--max-image-mb", min=0.001, help="Size limit of one file, in MiB.")
    ] = 10.0,
    max_batch: Annotated[
        int | None,
        typer.Option(
            "--max-batch",
            min=1,
            help="Images one forward pass gathers from concurrent requests (default: the "
            "spec's train.eval_batch_size; 1: each request alone).",
        ),
    ] = None,
) -> None:
    """Serve the run's model over HTTP: POST images to /predict, get predict --json's answer.

    The model loads once; images of concurrent requests are batched. GET /health, GET /model
    (classes, input shape, spec, metrics), API docs at /docs. Bad input gets a 4xx JSON error.
    Needs the serve extra: pip install "cnnkit\\[serve]". Ctrl-C stops it.

    Example: cnnkit serve runs/mnist --port 8000, then
    curl -F file=@digit.png http://127.0.0.1:8000/predict
    """
    from cnnkit.serve import serve as serve_run

    serve_run(
        run,
        host,
        port,
        checkpoint,
        max_files=max_files,
        max_image_bytes=int(max_image_mb * 2**20),
        max_batch=max_batch,
        on_start=display.print_serving,
    )


@app.command()
def summary(
    spec_or_run: Annotated[Path, typer.Argument(help="YAML spec or run directory.")],
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Batch of the memory plan (default: the spec's)."),
    ] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Keras-style model summary: layers, output shapes, parameters and MACs; no data needed.

    Also the memory per batch. Memory columns: what each layer keeps for a forward pass and
    for a training step (activations kept for backward and the gradients kept from step to
    step, weight gradients, optimizer state).

    Example: cnnkit summary configs/mnist.yaml --batch-size 256
    """
    info = api.summarize(api.spec_from_spec_or_run(spec_or_run, set_), batch_size)
    if as_json:
        print(json.dumps(api.summary_dict(info), indent=2))
        return
    display.console.print(
        display.summary_table(info.title, info.rows, info.totals, info.memory, info.input_shape)
    )


@app.command()
def check(
    spec: Annotated[Path, typer.Argument(help="YAML spec, e.g. configs/mnist.yaml.")],
    set_: SetOpt = None,
) -> None:
    """Check SPEC in a second: every error with its line, every shape, the memory plan.

    Loads no data and compiles no kernel. Prints the summary and "ok" (exit 0), or every error
    found, each with file:line:column and the offending line (exit 2). Warns when a training
    step would need more than 80% of the available memory, with the largest batch size that
    fits.

    Example: cnnkit check configs/mnist.yaml --set train.batch_size=512
    """
    for renderable in display.check_renderables(api.check(spec, set_)):
        display.console.print(renderable)


@app.command()
def init(
    path: Annotated[
        Path | None, typer.Argument(help="Spec file to write (default: <template>.yaml here).")
    ] = None,
    template: Annotated[
        str, typer.Option("--template", "-t", help="mnist, folder or binary.")
    ] = "mnist",
) -> None:
    """Write a commented starter spec that trains as written; never overwrites a file.

    Templates: mnist (a small CNN on MNIST), binary (one sigmoid unit: MNIST 3 vs 8), folder
    (your own images in train/<class>/ folders; try it on `cnnkit data make-shapes`).

    Example: cnnkit init --template binary my_spec.yaml
    """
    written = api.init_spec(template, path)
    display.console.print(
        f"Wrote [bold]{written}[/bold] ({template} template).\n"
        f"Next: cnnkit check {written}   then   cnnkit train {written}",
        soft_wrap=True,
    )


@app.command()
def schema(
    out: Annotated[
        Path | None, typer.Option(help="Write the schema to this file instead of printing it.")
    ] = None,
) -> None:
    """Print (or write) the JSON Schema of the spec, for editor completion and checking.

    Generated from the option tables the validator uses. Point your editor's YAML language
    server at it with a first line `# yaml-language-server: $schema=PATH` in the spec.

    Example: cnnkit schema --out cnnkit/spec/cnnkit-spec.schema.json
    """
    text = api.spec_schema()
    if out is None:
        print(text, end="")
        return
    api.write_text(out, text)
    display.console.print(f"Wrote [bold]{out}[/bold]")


@app.command()
def runs(
    folder: Annotated[Path, typer.Argument(help="Folder of run directories.")] = Path("runs"),
    as_json: JsonOpt = False,
) -> None:
    """Table of the runs under FOLDER, newest first, with their state and best accuracy.

    Columns: name, started, dataset, epochs done/planned, best validation accuracy and its
    epoch, test accuracy (once evaluated), images/s, state (finished, interrupted, failed).

    Example: cnnkit runs runs --json
    """
    infos = api.list_runs(folder)
    if as_json:
        print(json.dumps(json_safe(infos), indent=2))
        return
    display.console.print(display.runs_table(infos, str(folder)))


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="First run directory (A).")],
    run_b: Annotated[Path, typer.Argument(help="Second run directory (B).")],
    as_json: JsonOpt = False,
) -> None:
    """Two runs side by side: the spec keys that differ, then every metric, the better marked.

    Example: cnnkit compare runs/mnist runs/mnist-2
    """
    result = api.compare_runs(run_a, run_b)
    if as_json:
        print(json.dumps(json_safe(result), indent=2))
        return
    for renderable in display.compare_renderables(result):
        display.console.print(renderable)


@app.command()
def augment(
    spec: Annotated[Path, typer.Argument(help="YAML spec with an augmentation: section.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Training images to show.")] = 20,
    versions: Annotated[
        int, typer.Option(min=1, help="Rows of augmented versions under the originals.")
    ] = 4,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("augment.png"),
) -> None:
    """Preview the spec's augmentation as a PNG grid, without training.

    The first row shows training images, the rows below augmented versions of them.

    Example: cnnkit augment configs/shapes_folder.yaml --n 8 --out augment.png
    """
    preview = api.augment_preview(
        load_spec(spec), n=n, out=out, versions=versions, progress=display.load_progress()
    )
    if not preview.augments:
        display.console.print(
            "[yellow]Note:[/yellow] the spec's augmentation section changes no image: "
            "every row shows the originals."
        )
    display.console.print(
        f"Wrote [bold]{preview.path}[/bold]: {preview.images} training images (first row) "
        f"and {preview.versions} augmented versions of each.",
        soft_wrap=True,
    )


data_app = typer.Typer(
    help="Data tools: make example datasets, check a dataset.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


@data_app.command("make-shapes")
def make_shapes(
    folder: Annotated[Path, typer.Argument(help="New (or empty) folder to write into.")],
    size: Annotated[int, typer.Option(min=8, help="Image width and height in pixels.")] = 64,
    per_class: Annotated[
        int, typer.Option("--per-class", min=1, help="Training images per class.")
    ] = 300,
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same images.")] = 0,
) -> None:
    """Write a deterministic RGB folder dataset of circles, squares and triangles.

    Example: cnnkit data make-shapes datasets/shapes
    """
    from cnnkit.data.shapes import make_shapes as write

    counts = write(folder, size=size, per_class=per_class, seed=seed)
    display.console.print(
        f"Wrote {', '.join(f'{n:,} {split}' for split, n in counts.items())} images "
        f"({size}×{size} RGB) to [bold]{folder}[/bold]",
        soft_wrap=True,
    )


@data_app.command("check")
def data_check(
    target: Annotated[
        Path, typer.Argument(metavar="SPEC_OR_FOLDER", help="Image folder or YAML spec.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Data-quality report without training: counts, bad files, duplicates, leakage.

    Findings that can hurt training exit 1: unreadable files, duplicates across splits
    (leakage), empty, tiny or differing class folders, class imbalance. Information exits 0:
    a histogram of image sizes (training resizes them), image modes, duplicates within a
    split, ignored files. --json: counts and a few examples of each.

    Example: cnnkit data check datasets/shapes
    """
    if as_json:
        report = api.check_data(target)
        print(json.dumps(report, indent=2))
    else:
        with display.console.status(f"Checking {target} ..."):
            report = api.check_data(target)
        for renderable in display.data_check_renderables(report):
            display.console.print(renderable)
    if report["findings"]:
        raise typer.Exit(1)


@app.command()
def bench(
    spec: Annotated[Path, typer.Argument(help="YAML spec, e.g. configs/mnist_basic.yaml.")],
    steps: Annotated[int, typer.Option(min=1, help="Timed batches per round.")] = 20,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Default: the spec's.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Threads (both frameworks; default: all cores).")
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds; medians are reported.")] = 3,
    vs: Annotated[
        str | None,
        typer.Option(
            "--vs",
            help="torch, keras or torch,keras: the same network in PyTorch and/or Keras, "
            "alternately.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    set_: SetOpt = None,
) -> None:
    """Training and inference images/s on synthetic data, per-layer times, GFLOP/s.

    Timed after an untimed warm-up. With --vs torch (or keras, or torch,keras) the same network
    is built in PyTorch and/or TensorFlow-Keras (when installed); each side is checked against
    the peer's network in float64 on the same weights (refused only if cnnkit is off) and all
    are timed alternately in this process: the ratios are what to read.

    Example: cnnkit bench configs/mnist_basic.yaml --threads 2 --vs torch,keras
    """
    parsed = load_spec(spec, set_)
    result = api.bench(
        parsed,
        steps=steps,
        batch_size=batch_size,
        threads=threads,
        vs=vs,
        rounds=rounds,
        on_progress=None if as_json else display.bench_progress,
    )
    if as_json:
        print(json.dumps(json_safe(result.to_dict()), indent=2))
        return
    for renderable in display.bench_renderables(result.to_dict()):
        display.console.print(renderable)


def _reflow_help(*apps: typer.Typer) -> None:
    """Commands' help as paragraphs that wrap at the terminal's width: this Typer keeps the
    docstrings' own line breaks after the first paragraph, so at 80 columns a sentence broke
    twice ("... 3 vs 8), folder" / "(your own images ..."). Paragraphs stay apart."""
    for app_ in apps:
        for command in app_.registered_commands:
            doc = inspect.getdoc(command.callback) if command.callback else None
            if command.help is None and doc:
                command.help = "\n\n".join(" ".join(p.split("\n")) for p in doc.split("\n\n"))


_reflow_help(app, data_app)


def _root_cause(error: BaseException) -> BaseException:
    """The first exception of the chain that led to error (its causes and contexts)."""
    seen = {id(error)}
    while (inner := error.__cause__ or error.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        error = inner
    return error


def main() -> None:
    translate_forwarded_signals()
    speaks = distributed.env_rank() == 0  # data-parallel: rank 0 speaks for every rank
    try:
        app()
    except CnnkitError as error:
        if speaks:
            display.print_error(error)
        else:  # rank 0 says it in full; a rank's own error still shows
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"rank {distributed.env_rank()}: {first}", file=sys.stderr, flush=True)
        raise SystemExit(error.exit_code) from None
    except Interrupted as stop:
        if speaks:
            display.print_interrupted(stop)
        raise SystemExit(stop.exit_code) from None
    except BrokenPipeError:  # stdout's reader has gone (`cnnkit runs | head -1`): quietly
        output_closed()
        raise SystemExit(141) from None  # 128 + SIGPIPE, as a Unix tool
    except CompileInterrupted as stop:
        if speaks:
            display.error_console.print(str(stop))
        sys.stdout.flush()
        os._exit(stop.exit_code)  # no interpreter shutdown under the thread still compiling
    except SystemExit as done:
        # Typer ends a command that raised KeyboardInterrupt or hit a closed pipe (a print()
        # of --json) with a bare exit code, 130 or 1: say what happened, exit as a Unix tool
        cause = _root_cause(done)
        if isinstance(cause, KeyboardInterrupt):
            if speaks:
                display.error_console.print(
                    "Interrupted (no training step in progress; nothing to save)."
                )
            raise SystemExit(130) from None
        if isinstance(cause, BrokenPipeError) or (done.code in (0, None) and stdout_was_closed()):
            output_closed()
            raise SystemExit(141) from None  # 128 + SIGPIPE
        raise
    except KeyboardInterrupt:
        # outside the training loop (loading data, evaluate, predict): nothing to save, and
        # every file on disk is whole (atomic writes)
        if speaks:
            display.error_console.print(
                "Interrupted (no training step in progress; nothing to save)."
            )
        raise SystemExit(130) from None
