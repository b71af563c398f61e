"""Augmentation throughput, and what full augmentation costs a training run.

Usage (from the repo root): python benchmarks/augment_bench.py [--steps 40] [--repeats 5]

1. The augmentation kernel alone (every option on: rotation, shifts, shear, zoom, flips,
   brightness, channel shift; bilinear, reflect fill) in images/s, for MNIST-sized batches
   (200 x 28x28x1) and 80x80x3 batches (64), median of --repeats.
2. Training throughput of configs/mnist_basic.yaml over --steps steps on MNIST: without
   augmentation, with full augmentation (prefetched in a background thread, as `cnnkit train`
   does) and with full augmentation computed synchronously (no prefetch), in one process,
   alternating after a warm-up run; medians and the ratios. Target: augmented at most 15%
   slower than plain.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run without installing

from dataclasses import replace  # noqa: E402

import cnnkit.train.trainer as training  # noqa: E402
from cnnkit.api import load_dataset  # noqa: E402
from cnnkit.data.augment import Augmenter, Preprocessor, resolve_augmentation  # noqa: E402
from cnnkit.data.batches import Split, Splits, make_splits  # noqa: E402
from cnnkit.spec.build import build_loss, build_model, build_optimizer  # noqa: E402
from cnnkit.spec.config import load_spec  # noqa: E402
from cnnkit.spec.sections import AugmentationSection  # noqa: E402
from cnnkit.threads import configure_threads  # noqa: E402

FULL = {
    "rotation_range": 15,
    "width_shift_range": 0.1,
    "height_shift_range": 0.1,
    "shear_range": 10,
    "zoom_range": 0.1,
    "horizontal_flip": True,
    "vertical_flip": True,
    "fill_mode": "reflect",
    "brightness_range": [0.8, 1.2],
    "channel_shift_range": 20.0,
}


def kernel_throughput(shape: tuple[int, ...], repeats: int) -> float:
    aug = Augmenter(AugmentationSection.of(resolve_augmentation(FULL)))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    aug(x, rng)  # compile / load from the cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            aug(x, rng, 1 / 255)
        times.append((time.perf_counter() - t0) / 5)
    return shape[0] / statistics.median(times)


def train_throughput(spec, split: Split, augmented: bool, prefetched: bool = True) -> float:
    """Images/s of one pass over `split` (fresh model, the Trainer's own epoch, no callbacks)."""
    augmentation = resolve_augmentation(FULL if augmented else None)
    spec = replace(spec, augmentation=AugmentationSection.of(augmentation))
    model = build_model(spec).build(spec.seed)
    loss_fn = build_loss(spec)
    optimizer = build_optimizer(spec)
    pre = Preprocessor.from_spec(spec, split)
    original = training.prefetch
    if not prefetched:
        training.prefetch = lambda items, depth=2: items
    try:
        splits = Splits(split, None, None, [])
        trainer = training.Trainer(model, loss_fn, optimizer, splits, spec, Path("."), [], pre)
        t0 = time.perf_counter()
        trainer._begin_epoch(1)
        trainer._train_epoch()
        return len(split) / (time.perf_counter() - t0)
    finally:
        training.prefetch = original


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    configure_threads()

    print("Augmentation kernel (all options on), images/s, median:")
    for shape in [(200, 28, 28, 1), (64, 80, 80, 3)]:
        rate = kernel_throughput(shape, args.repeats)
        print(f"  batch {shape[0]:>3} of {shape[1]}x{shape[2]}x{shape[3]}: {rate:>10,.0f}")

    spec = load_spec(ROOT / "configs" / "mnist_basic.yaml")
    train = make_splits(load_dataset(spec), spec.data).train
    n = args.steps * spec.train.batch_size
    split = Split(train.x[:n], train.y[:n])
    print(f"\nTraining configs/mnist_basic.yaml, {args.steps} steps of {spec.train.batch_size}:")
    variants = {
        "plain": (False, True),
        "augmented": (True, True),
        "aug, no prefetch": (True, False),
    }
    for augmented, prefetched in variants.values():  # warm-up: compile, caches
        train_throughput(spec, Split(split.x[:400], split.y[:400]), augmented, prefetched)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (augmented, prefetched) in variants.items():
            rates[name].append(train_throughput(spec, split, augmented, prefetched))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"  {name:<17} median {medians[name]:>7,.0f} images/s  (runs: {runs})")
    for name in ("augmented", "aug, no prefetch"):
        slower = 1 - medians[name] / medians["plain"]
        print(f"  {name} / plain: {medians[name] / medians['plain']:.3f} ({slower:+.1%} slower)")


if __name__ == "__main__":
    main()
