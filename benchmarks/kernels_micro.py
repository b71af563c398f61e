"""Micro-benchmark of the conv/pool kernels on the MNIST-sized hot shapes.

Usage (from the repo root): python benchmarks/kernels_micro.py [--batch 64] [--repeats 5]
    [--dtype float32]
Prints the median time and GFLOP/s (2 * multiply-adds) per pass. If torch is importable, also
times torch.nn.functional.conv2d (forward, and input+weight backward via autograd) with 2
threads and prints ours/torch time ratios (> 1 means we are slower).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run without installing

from cnnkit.kernels.conv import (  # noqa: E402
    conv2d_backward_input,
    conv2d_backward_weights,
    conv2d_forward,
)
from cnnkit.kernels.pool import maxpool2d_backward, maxpool2d_forward  # noqa: E402

# (H, W, C, K, F), valid padding, stride 1.
CONV_SHAPES = [(28, 28, 1, 3, 32), (26, 26, 64, 3, 32), (28, 28, 1, 5, 32), (12, 12, 32, 5, 64)]
# (H, W, C, pool)
POOL_SHAPES = [(26, 26, 32, 2), (24, 24, 32, 2)]


def median_time(fn, repeats):
    fn()  # warm-up (JIT compile / cache load)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_conv(x, wt, b, dout, repeats):
    out = np.empty(dout.shape, x.dtype)
    dx = np.empty_like(x)
    dw = np.empty_like(wt)
    db = np.empty_like(b)
    return {
        "fwd": median_time(lambda: conv2d_forward(x, wt, b, 1, 1, 1, 1, 0, 0, out), repeats),
        "bwd_in": median_time(
            lambda: conv2d_backward_input(dout, wt, 1, 1, 1, 1, 0, 0, dx), repeats
        ),
        "bwd_w": median_time(
            lambda: conv2d_backward_weights(x, dout, 1, 1, 1, 1, 0, 0, dw, db), repeats
        ),
    }


def bench_torch(torch, x, wt, b, dout, repeats):
    """(forward, backward) seconds; backward = forward+autograd minus forward."""
    nchw = (0, 3, 1, 2)
    tx = torch.from_numpy(x.transpose(nchw).copy()).requires_grad_(True)
    tw = torch.from_numpy(wt.transpose(3, 2, 0, 1).copy()).requires_grad_(True)
    tb = torch.from_numpy(b.copy()).requires_grad_(True)
    tg = torch.from_numpy(dout.transpose(nchw).copy())
    conv = torch.nn.functional.conv2d

    def fwd():
        with torch.no_grad():
            conv(tx, tw, tb)

    def fwd_bwd():
        torch.autograd.grad(conv(tx, tw, tb), (tx, tw, tb), tg)

    tf = median_time(fwd, repeats)
    return tf, median_time(fwd_bwd, repeats) - tf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    n, dt = args.batch, np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        torch = None

    print(f"batch {n}, {dt}, median of {args.repeats}")
    for h, w, c, k, f in CONV_SHAPES:
        oh, ow = h - k + 1, w - k + 1
        x = rng.standard_normal((n, h, w, c)).astype(dt)
        wt = rng.standard_normal((k, k, c, f)).astype(dt)
        b = rng.standard_normal(f).astype(dt)
        dout = rng.standard_normal((n, oh, ow, f)).astype(dt)
        gflop = 2.0 * n * oh * ow * k * k * c * f / 1e9
        res = bench_conv(x, wt, b, dout, args.repeats)
        print(
            f"conv {h}x{w}x{c} k{k} -> {oh}x{ow}x{f}: "
            + "  ".join(f"{p} {t * 1e3:6.2f} ms {gflop / t:5.1f} GF/s" for p, t in res.items())
        )
        if torch is not None:
            tf, tb = bench_torch(torch, x, wt, b, dout, args.repeats)
            ours_b = res["bwd_in"] + res["bwd_w"]
            print(
                f"    torch: fwd {tf * 1e3:6.2f} ms (ours/torch {res['fwd'] / tf:4.1f})  "
                f"bwd in+w {tb * 1e3:6.2f} ms (ours/torch {ours_b / tb:4.1f})"
            )

    for h, w, c, p in POOL_SHAPES:
        oh, ow = h // p, w // p
        x = rng.standard_normal((n, h, w, c)).astype(dt)
        out = np.empty((n, oh, ow, c), dt)
        am = np.empty((n, oh, ow, c), np.int64)
        dout = rng.standard_normal((n, oh, ow, c)).astype(dt)
        dx = np.empty_like(x)
        tf = median_time(lambda: maxpool2d_forward(x, p, p, p, p, 0, 0, out, am), args.repeats)  # noqa: B023
        tb = median_time(lambda: maxpool2d_backward(dout, am, dx), args.repeats)  # noqa: B023
        print(f"maxpool {p}x{p} on {h}x{w}x{c}: fwd {tf * 1e3:6.2f} ms  bwd {tb * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
