"""Images/s of `cnnkit evaluate`'s inference pass over a run's test split (cnnkit only).

The pass timed is what evaluate runs after loading the run and its data: preprocessing, the
model in inference mode, the loss, the metrics and the class probabilities of every test image
(cnnkit.train.trainer.evaluate_split), in batches of the spec's train.eval_batch_size (or
--batch-size). Loading the checkpoint and the dataset is not timed: Keras' model.evaluate, which
benchmarks/keras compares with through `evaluate_images_per_s`, gets its arrays in memory too.

    PYTHONPATH=$PWD python benchmarks/evaluate_speed.py runs/mnist_basic --threads 2
    PYTHONPATH=$PWD python benchmarks/evaluate_speed.py runs/mnist_basic --batch-size 128,500,1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from cnnkit.api import load_dataset, load_model
from cnnkit.data.augment import Preprocessor
from cnnkit.data.batches import make_splits
from cnnkit.runs.rundir import RunDir
from cnnkit.spec.build import build_loss, build_metrics
from cnnkit.threads import configure_threads
from cnnkit.train.trainer import evaluate_split


def _prepare(run_dir: Path):
    spec, model, _, _ = load_model(run_dir)
    splits = make_splits(load_dataset(spec), spec.data, spec.seed)
    preprocessor = Preprocessor.from_spec(spec, saved=RunDir(run_dir).read_normalization)
    return spec, model, splits.test, preprocessor, build_loss(spec), build_metrics(spec)


def evaluate_images_per_s(
    run_dir: str | Path,
    threads: int | None = None,
    batch_size: int | None = None,
    repeats: int = 3,
) -> dict:
    """Median images/s of evaluate's pass over the run's test split (after one untimed pass
    that compiles or loads the kernels), with the figures that go next to it."""
    configure_threads(threads)
    spec, model, test, preprocessor, loss_fn, metric_set = _prepare(Path(run_dir))
    batch = batch_size or spec.train.eval_batch_size
    evaluate_split(model, loss_fn, test, preprocessor, batch, metric_set)  # warm-up
    rates, accuracy = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = evaluate_split(model, loss_fn, test, preprocessor, batch, metric_set)
        rates.append(len(test) / (time.perf_counter() - start))
        accuracy = result.accuracy
    return {
        "run": str(run_dir),
        "model": spec.name,
        "images": len(test),
        "batch_size": batch,
        "threads": configure_threads(threads),
        "images_per_s": statistics.median(rates),
        "rounds": rates,
        "accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", default="", help="comma-separated; default the spec's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_size.split(",") if s] or [None]
    rows = []
    for run in args.runs:
        for size in sizes:
            row = evaluate_images_per_s(run, args.threads, size, args.repeats)
            rows.append(row)
            print(
                f"{row['model']:<16} batch {row['batch_size']:>5}  "
                f"{row['images_per_s']:>9,.0f} images/s  accuracy {row['accuracy']:.4f}"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
