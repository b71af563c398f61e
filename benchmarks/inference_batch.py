"""Inference images/s of a spec's model by batch size, fused plan and layer by layer.

What train.eval_batch_size (evaluate, predict, the validation pass) is chosen from: each
batch size's images/s of Model.forward(x, training=False) on random input, the sizes and the
two paths alternated round by round in one process (the machines are shared: ratios hold,
absolute figures move).

    PYTHONPATH=$PWD python benchmarks/inference_batch.py configs/mnist_basic.yaml \
        configs/resnet20.yaml --sizes 32,128,256,500,1000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from cnnkit.spec.build import build_model
from cnnkit.spec.config import load_spec
from cnnkit.threads import configure_threads


def images_per_s(model, x: np.ndarray, fused: bool, images: int) -> float:
    """Images/s over about `images` images in batches of len(x)."""
    calls = max(1, images // len(x))
    start = time.perf_counter()
    for _ in range(calls):
        model.forward(x, training=False, fused=fused)
    return calls * len(x) / (time.perf_counter() - start)


def sweep(spec_path: Path, sizes: list[int], rounds: int, images: int) -> list[dict]:
    spec = load_spec(spec_path)
    model = build_model(spec).build(spec.seed)
    rng = np.random.default_rng(0)
    xs = {n: rng.random((n, *model.input_shape), dtype=np.float32) for n in sizes}
    for n in sizes:  # compile, and build the plan and its buffers
        model.forward(xs[n], fused=True)
        model.forward(xs[n], fused=False)
    rates: dict[tuple[int, bool], list[float]] = {(n, f): [] for n in sizes for f in (1, 0)}
    for _ in range(rounds):
        for n in sizes:
            for fused in (True, False):
                rates[(n, fused)].append(images_per_s(model, xs[n], fused, images))
    return [
        {
            "model": spec.name,
            "batch_size": n,
            "fused_images_per_s": statistics.median(rates[(n, True)]),
            "layers_images_per_s": statistics.median(rates[(n, False)]),
            "fused_over_layers": statistics.median(
                a / b for a, b in zip(rates[(n, True)], rates[(n, False)], strict=True)
            ),
        }
        for n in sizes
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", type=Path)
    parser.add_argument("--sizes", default="32,128,256,500,1000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000, help="images per timing")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configure_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for path in args.specs:
        for row in sweep(path, sizes, args.rounds, args.images):
            rows.append(row)
            print(
                f"{row['model']:<16} batch {row['batch_size']:>5}  fused "
                f"{row['fused_images_per_s']:>8,.0f}  layers {row['layers_images_per_s']:>8,.0f}"
                f"  images/s  fused/layers {row['fused_over_layers']:.2f}"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
