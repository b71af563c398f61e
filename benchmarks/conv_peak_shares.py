"""The convolution kernels alone, as shares of the machine's measured FP32 peak (issue 17, line 3).

`cnnkit bench` times each layer inside a training step, with the caches the step leaves behind;
this times the three kernels of the shipped specs' 3x3 and 5x5 layers with >= 32 channels on
their own (hot caches), on the same thread count, against the same peak microkernel. Best and
mean of --repeats calls each.

Usage (repo root): python benchmarks/conv_peak_shares.py [--threads 2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cnnkit.threads import configure_threads

# (name, batch, H, C, F, kernel, stride, padding): the layers of the bench specs, their
# padding as in the spec (same: Keras' output size ceil(H / stride), the odd pixel of
# padding at the bottom and right, as resnet20's strided layers: 16x16 -> 8x8, top pad 0)
SHAPES = [
    ("mnist_two_conv conv2d_1", 32, 26, 64, 32, 3, 1, "valid"),
    ("mnist_lenet conv2d_1", 100, 12, 32, 64, 5, 1, "valid"),
    ("resnet20 32-channel", 128, 16, 32, 32, 3, 1, "same"),
    ("resnet20 64-channel", 128, 8, 64, 64, 3, 1, "same"),
    ("resnet20 strided 16 -> 32", 128, 32, 16, 32, 3, 2, "same"),
    ("resnet20 strided 32 -> 64", 128, 16, 32, 64, 3, 2, "same"),
    ("fashion_mnist conv2d_2", 128, 14, 64, 64, 3, 1, "same"),
]


def output_and_pad(h: int, k: int, s: int, padding: str) -> tuple[int, int]:
    """Output size and top (= left) padding of a Keras convolution."""
    if padding == "valid":
        return (h - k) // s + 1, 0
    oh = -(-h // s)
    return oh, max((oh - 1) * s + k - h, 0) // 2


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), sum(times) / len(times)


def _kernels(conv, x, w, b, out, dout, dx, dw, db, geometry):
    """The three kernels of one layer, each a call without arguments."""
    return {
        "forward": lambda: conv.conv2d_forward(x, w, b, *geometry, out),
        "input gradient": lambda: conv.conv2d_backward_input(dout, w, *geometry, dx),
        "kernel gradient": lambda: conv.conv2d_backward_weights(x, dout, *geometry, dw, db),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    configure_threads(args.threads)
    from cnnkit.kernels import conv  # numba: after the thread settings
    from cnnkit.kernels.peak import measure_peak_gflops

    peak = measure_peak_gflops(args.threads)
    print(f"FP32 peak, {args.threads} threads: {peak:.0f} GFLOP/s; shares: best (mean)")
    rng = np.random.default_rng(0)
    for name, n, h, c, f, k, s, padding in SHAPES:
        oh, p = output_and_pad(h, k, s, padding)
        x = rng.standard_normal((n, h, h, c), dtype=np.float32)
        w = rng.standard_normal((k, k, c, f), dtype=np.float32)
        b = np.zeros(f, np.float32)
        out = np.empty((n, oh, oh, f), np.float32)
        dout = rng.standard_normal(out.shape, dtype=np.float32)
        dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty(f, np.float32)
        gflop = 2.0 * n * oh * oh * f * k * k * c / 1e9
        kernels = _kernels(conv, x, w, b, out, dout, dx, dw, db, (s, s, 1, 1, p, p))
        shares = []
        for label, fn in kernels.items():
            best, mean = timed(fn, args.repeats)
            shares.append(f"{label} {gflop / best / peak:.0%} ({gflop / mean / peak:.0%})")
        print(f"{name} ({n}x{h}x{h}x{c} -> {f}, {k}x{k}, stride {s}): " + ", ".join(shares))


if __name__ == "__main__":
    main()
