"""Images/s of cnnkit's evaluate on the MNIST test set (10,000 images) against Keras'
`model.evaluate` on the same model and weights, alternately in one process, same threads.

Each spec is trained briefly (one epoch on its first --train-samples images: the figures are
about speed, not accuracy) into a temporary run directory. Per round, in turn:
  - cnnkit, the inference path of `cnnkit evaluate` (cnnkit.train.trainer.evaluate_split, as
    cnnkit.api.evaluate calls it: uint8 test images preprocessed batch by batch, inference-mode
    forward, loss, the spec's metrics, class probabilities) at the spec's train.eval_batch_size;
  - Keras, `model.evaluate(x_test, y_test, batch_size=the same)` of the Keras twin (cnnkit's
    bench twin, cnnkit.bench_keras.build_twin: the run's weights copied in) on images already
    scaled to [0, 1], loss and accuracy, compiled with jit_compile off and on (the faster is
    reported, and named);
  - the whole `cnnkit.api.evaluate(run)` use case (reading the IDX files, writing
    evaluation.json, predictions.csv and report.md included), for scale.
Threads: cnnkit's Numba pool and TensorFlow's intra-op pool --threads, TF's inter-op pool 1.

Usage (repo root, an environment with TensorFlow):
    python benchmarks/evaluate_vs_keras.py [SPEC ...] [--rounds 3] [--threads 2] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPECS = ["configs/mnist_basic.yaml", "configs/mnist_two_conv.yaml", "configs/mnist_lenet.yaml"]


def cnnkit_evaluator(run_dir: Path):
    """A function running cnnkit evaluate's inference path over the test split, as
    cnnkit.api.evaluate sets it up; and the number of images."""
    from cnnkit import api
    from cnnkit.data.augment import Preprocessor
    from cnnkit.data.batches import make_splits
    from cnnkit.runs.layout import RunDir
    from cnnkit.spec.build import build_loss, build_metrics
    from cnnkit.train.trainer import evaluate_split

    spec, model, _, _ = api.load_model(run_dir)
    test = make_splits(api.load_dataset(spec), spec.data, spec.seed).test
    preprocessor = Preprocessor.from_spec(spec, saved=RunDir(run_dir).read_normalization)
    loss_fn, metrics = build_loss(spec), build_metrics(spec)
    batch = spec.train.eval_batch_size

    def run():
        return evaluate_split(model, loss_fn, test, preprocessor, batch, metrics)

    return run, spec, model, test, batch


def keras_evaluator(spec, model, test, batch: int, threads: int):
    """The Keras twin's model.evaluate on the test images scaled to [0, 1], the faster of
    jit_compile off and on (after a warm-up each)."""
    from cnnkit.bench_keras import build_twin, import_keras

    tf, keras = import_keras(threads)
    x = (test.x.astype("float32") / 255.0).reshape(len(test.x), *model.input_shape)
    y = test.y.astype("int64")
    best = None
    for jit in (False, True):
        twin, variables = build_twin(keras, model, "float32")
        for key, variable in variables.items():
            layer, name = key.split(".")[1:]
            arrays = {**model.layers[int(layer)].params, **model.layers[int(layer)].state}
            variable.assign(arrays[name])
        twin.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=jit,
        )

        def run(twin=twin):
            return twin.evaluate(x, y, batch_size=batch, verbose=0)

        run()  # warm-up: traces (and with XLA compiles) the test step
        seconds = _seconds(run)
        if best is None or seconds < best[0]:
            best = (seconds, jit, run)
    return best[2], best[1], f"keras {keras.__version__} (tensorflow {tf.__version__})"


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(path: str, rounds: int, threads: int, train_samples: int) -> dict:
    from cnnkit import api
    from cnnkit.spec.config import load_spec

    with tempfile.TemporaryDirectory() as out:
        overrides = {"train.epochs": 1, "data.max_train_samples": train_samples}
        run_dir = api.train(load_spec(ROOT / path, overrides), out=Path(out)).run_dir
        ours, spec, model, test, batch = cnnkit_evaluator(run_dir)
        ours()  # warm-up
        theirs, jit, version = keras_evaluator(spec, model, test, batch, threads)
        rows = []
        for r in range(1, rounds + 1):
            row = {"round": r, "cnnkit_s": _seconds(ours), "keras_s": _seconds(theirs)}
            row["api_evaluate_s"] = _seconds(lambda: api.evaluate(run_dir))
            n = len(test.y)
            row["cnnkit_images_per_s"] = n / row["cnnkit_s"]
            row["keras_images_per_s"] = n / row["keras_s"]
            row["api_evaluate_images_per_s"] = n / row["api_evaluate_s"]
            row["ratio"] = row["cnnkit_images_per_s"] / row["keras_images_per_s"]
            rows.append(row)
            print(
                f"{path} round {r}: cnnkit {row['cnnkit_images_per_s']:,.0f} images/s, "
                f"Keras model.evaluate {row['keras_images_per_s']:,.0f}, ratio "
                f"{row['ratio']:.2f}; whole api.evaluate {row['api_evaluate_images_per_s']:,.0f}",
                flush=True,
            )
    median = {k: statistics.median(row[k] for row in rows) for k in rows[0] if k != "round"}
    print(
        f"{path}: median cnnkit evaluate {median['cnnkit_images_per_s']:,.0f} images/s, Keras "
        f"model.evaluate {median['keras_images_per_s']:,.0f} (jit_compile={jit}), "
        f"ratio {median['ratio']:.2f}; batch {batch}, {len(test.y):,} test images, {version}",
        flush=True,
    )
    return {"spec": path, "batch_size": batch, "images": len(test.y), "keras": version,
            "keras_jit_compile": jit, "rounds": rows, "median": median}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=SPECS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    from cnnkit.bench_keras import import_keras
    from cnnkit.threads import configure_threads

    configure_threads(args.threads)
    import_keras(args.threads)  # before TensorFlow starts: its pools are fixed then
    results = [compare(s, args.rounds, args.threads, args.train_samples) for s in args.specs]
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
