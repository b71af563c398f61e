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
from cnnkit.errors import CnnkitError
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
    spec: Annotated[Path, typer.Argument(help="YAML spec, e.g. configs/mnist.yaml.")],
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
    threads: Annotated[
        int | None, typer.Option(min=1, help="Threads for the kernels (default: all cores).")
    ] = None,
) -> None:
    """Train the model of SPEC and write a new run directory under --out."""
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
    parsed = load_spec(spec, overrides)
    with display.RichReporter() as reporter:
        result = api.train(
            parsed,
            out=out,
            reporter=reporter,
            threads=threads,
            on_run_dir=lambda d: display.console.print(f"Run directory: [bold]{d}[/bold]"),
            on_note=lambda text: display.console.print(f"[yellow]Note:[/yellow] {text}"),
        )
    monitor = parsed.callbacks["checkpoint"]["monitor"]  # what chose best.npz
    best = json.loads((result.run_dir / "checkpoints" / "best.json").read_text())
    display.console.print(
        f"Done. Best {monitor} {best['metrics'][monitor]:.4f} at epoch {best['epoch']} "
        "(checkpoints/best.npz).\n"
        f"Run directory: [bold]{result.run_dir}[/bold]\n"
        f"Next: cnnkit evaluate {result.run_dir}"
    )


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
        str | None, typer.Option("--vs", help="torch: the same network in PyTorch, alternately.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Training and inference images/s on synthetic data, per-layer times, GFLOP/s."""
    parsed = load_spec(spec)
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


def main() -> None:
    try:
        app()
    except CnnkitError as error:
        display.print_error(error)
        raise SystemExit(error.exit_code) from None
    except KeyboardInterrupt:
        # Checkpoints are written atomically after each epoch, so what is on disk is whole.
        display.error_console.print("Interrupted. Checkpoints of finished epochs are kept.")
        raise SystemExit(130) from None
