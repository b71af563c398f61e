"""Typer commands only: parse options, call cnnkit.api, print with cnnkit.display.

A CnnkitError (bad spec, data, image or checkpoint) is printed as one panel, exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cnnkit import api, display
from cnnkit.config import load_spec
from cnnkit.errors import CnnkitError, SpecError
from cnnkit.interrupts import Interrupted
from cnnkit.runs import json_safe

app = typer.Typer(
    help="Train, evaluate and use convolutional networks on the CPU from one YAML spec.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CheckpointOpt = Annotated[
    str, typer.Option("--checkpoint", "-c", help="best, last, or a path to an .npz checkpoint.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]


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
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue this run directory from its last checkpoint (mid-epoch included), "
            "with its own spec; --epochs N may extend it."
        ),
    ] = None,
) -> None:
    """Train the model of SPEC and write a new run directory under --out
    (or continue one: --resume RUN_DIR)."""
    overrides = {
        key: value
        for key, value in (
            ("train.epochs", epochs),
            ("train.batch_size", batch_size),
            ("seed", seed),
            ("model.weights", str(weights) if weights else None),
        )
        if value is not None
    }
    note = lambda text: display.console.print(f"[yellow]Note:[/yellow] {text}")  # noqa: E731
    with display.RichReporter() as reporter:
        if resume is not None:
            result = api.resume(resume, epochs, spec, overrides, reporter, note)
        else:
            if spec is None:
                raise SpecError(
                    "give a spec file, or --resume RUN_DIR",
                    where="cnnkit train",
                    hint="e.g. cnnkit train configs/mnist.yaml",
                )
            result = api.train(
                load_spec(spec, overrides),
                out=out,
                reporter=reporter,
                on_run_dir=lambda d: display.console.print(f"Run directory: [bold]{d}[/bold]"),
                on_note=note,
            )
    display.print_trained(result.run_dir, result.spec)


@app.command()
def reproduce(
    run: Annotated[Path, typer.Argument(help="Run directory written by `cnnkit train`.")],
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Train this many epochs (default: the spec's).")
    ] = None,
) -> None:
    """Train RUN's saved spec again into a new run directory and report whether the metrics
    (and final weights) match the original bit for bit. Exit code 1 when they do not."""
    with display.RichReporter() as reporter:
        result = api.reproduce(
            run,
            epochs,
            reporter,
            on_run_dir=lambda d: display.console.print(f"Run directory: [bold]{d}[/bold]"),
        )
    display.print_reproduction(result)
    if not result.match:
        raise typer.Exit(1)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by `cnnkit train`.")],
    checkpoint: CheckpointOpt = "best",
    as_json: JsonOpt = False,
) -> None:
    """Test-set loss and accuracy, per-class precision/recall/F1 and the confusion matrix."""
    report = api.evaluate(run, checkpoint)
    if as_json:
        print(json.dumps(json_safe(report), indent=2))
        return
    for table in display.evaluation_tables(report):
        display.console.print(table)
    display.console.print(f"Wrote {Path(run) / 'evaluation.json'}")


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
    """Classify image files with a trained run: top-k classes and probabilities."""
    results = api.predict(images, run, checkpoint, top_k, invert)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    display.console.print(display.predictions_table(results))


@app.command()
def summary(
    spec_or_run: Annotated[Path, typer.Argument(help="YAML spec or run directory.")],
) -> None:
    """Keras-style model summary: layers, output shapes, parameters, MACs. Loads no data."""
    info = api.summarize(api.spec_from_spec_or_run(spec_or_run))
    display.console.print(display.summary_table(info.title, info.rows, info.totals))


@app.command()
def augment(
    spec: Annotated[Path, typer.Argument(help="YAML spec with an augmentation: section.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Training images to show.")] = 20,
    versions: Annotated[
        int, typer.Option(min=1, help="Rows of augmented versions under the originals.")
    ] = 4,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("augment.png"),
) -> None:
    """Preview the spec's augmentation: a PNG grid of training images (first row) and
    augmented versions of them (rows below), without training."""
    preview = api.augment_preview(load_spec(spec), n=n, out=out, versions=versions)
    if not preview.augments:
        display.console.print(
            "[yellow]Note:[/yellow] the spec's augmentation section changes no image: "
            "every row shows the originals."
        )
    display.console.print(
        f"Wrote [bold]{preview.path}[/bold]: {preview.images} training images (first row) "
        f"and {preview.versions} augmented versions of each."
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
        f"({size}×{size} RGB) to [bold]{folder}[/bold]"
    )


@data_app.command("check")
def data_check(
    target: Annotated[
        Path, typer.Argument(metavar="SPEC_OR_FOLDER", help="Image folder or YAML spec.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Data-quality report without training: class counts and imbalance, unreadable files,
    mixed sizes and modes, duplicates within and across splits, differing class folders.

    Exit code 0 when clean, 1 when there are findings.
    """
    from cnnkit.data.check import check

    if as_json:
        report = check(target)
        print(json.dumps(report, indent=2))
    else:
        with display.console.status(f"Checking {target} ..."):
            report = check(target)
        for renderable in display.data_check_renderables(report):
            display.console.print(renderable)
    if report["findings"]:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except CnnkitError as error:
        display.print_error(error)
        raise SystemExit(error.exit_code) from None
    except Interrupted as stop:
        display.print_interrupted(stop)
        raise SystemExit(stop.exit_code) from None
    except KeyboardInterrupt:
        # outside the training loop (loading data, evaluate, predict): nothing to save, and
        # every file on disk is whole (atomic writes)
        display.error_console.print("Interrupted (no training step in progress; nothing to save).")
        raise SystemExit(130) from None
