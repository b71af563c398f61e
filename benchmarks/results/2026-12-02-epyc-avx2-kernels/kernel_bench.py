"""Micro-benchmark of the convolution kernels, old paths against new, with the FP32 peak measured
between them (see README.md). Arguments: shapes (N, H, W, C, K, F, same-padding)."""

import sys
import time

import numpy as np

sys.path.insert(
    0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "..", "..")
)
from cnnkit.kernels import conv as K
from cnnkit.kernels import peak
from cnnkit.threads import configure_threads

configure_threads(2)


def bin_col(dout, w, sh, sw, dh, dw, pt, pl, dx):
    K.conv2d_backward_input_cols(dout, w, sh, sw, dh, dw, pt, pl, dx)


def bin_rot(dout, w, sh, sw, dh, dw, pt, pl, dx):
    kh, kw = w.shape[0], w.shape[1]
    wt = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))
    zero = np.zeros(wt.shape[3], dtype=dx.dtype)
    K.conv2d_forward(dout, wt, zero, 1, 1, dh, dw, (kh - 1) * dh - pt, (kw - 1) * dw - pl, dx)


def run(shape, reps=5, bins=True):
    n, h, wd, c, k, f, pad = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, wd, c)).astype(np.float32)
    w = rng.standard_normal((k, k, c, f)).astype(np.float32)
    b = np.zeros(f, np.float32)
    p = (k - 1) // 2 if pad else 0
    oh, ow = h - k + 1 + 2 * p, wd - k + 1 + 2 * p
    o = np.empty((n, oh, ow, f), np.float32)
    dx = np.empty_like(x)
    dw_ = np.empty_like(w)
    db = np.empty_like(b)
    macs = n * oh * ow * f * k * k * c
    fns = {
        "fwd_old": lambda: K.conv2d_forward_gemm(x, w, b, 1, 1, 1, 1, p, p, o),
        "fwd_new": lambda: K.conv2d_forward(x, w, b, 1, 1, 1, 1, p, p, o),
        "bw_old": lambda: K.conv2d_backward_weights_gemm(x, o, 1, 1, 1, 1, p, p, dw_, db),
        "bw_new": lambda: K.conv2d_backward_weights(x, o, 1, 1, 1, 1, p, p, dw_, db),
    }
    if bins:
        fns["bin_col"] = lambda: bin_col(o, w, 1, 1, 1, 1, p, p, dx)
        fns["bin_rot"] = lambda: bin_rot(o, w, 1, 1, 1, 1, p, p, dx)
    for fn in fns.values():
        fn()
    best = {k_: 1e9 for k_ in fns}
    pk = 0
    for _ in range(reps):
        pk = max(pk, peak.measure_peak_gflops(2, seconds=0.1))
        for k_, fn in fns.items():
            s = time.perf_counter()
            fn()
            best[k_] = min(best[k_], time.perf_counter() - s)
    g = {k_: 2 * macs / best[k_] / 1e9 for k_ in fns}
    print(
        shape,
        f"peak {pk:.0f}",
        "  ".join(f"{k_} {g[k_]:.1f} ({100 * g[k_] / pk:.0f}%)" for k_ in fns),
        flush=True,
    )


for s in sys.argv[1:]:
    run(*eval(s)) if s.startswith("((") else run(eval(s))
