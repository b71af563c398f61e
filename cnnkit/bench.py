"""`cnnkit bench`: training and inference throughput of a spec on synthetic data, per-layer
times, achieved GFLOP/s, and optionally the same network in PyTorch side by side.

Machines here are shared and noisy, so a comparison runs both frameworks alternately in one
process (cnnkit, PyTorch, cnnkit, PyTorch, ...) and reports per-round ratios and their median:
absolute times move with the load, ratios measured that way hold.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnkit.errors import CnnkitError
from cnnkit.nn.losses import Loss
from cnnkit.nn.model import LayerTimings, Model
from cnnkit.nn.optimizers import Optimizer
from cnnkit.spec.build import build_loss, build_metrics, build_model, build_optimizer
from cnnkit.spec.config import Spec
from cnnkit.threads import configure_threads
from cnnkit.train.step import TrainStep


@dataclass
class BenchResult:
    spec: str
    batch_size: int
    steps: int
    rounds: int
    threads: int
    train_images_per_s: float  # median over rounds
    infer_images_per_s: float
    train_gflops: float  # achieved, from the summary's MACs (2 FLOPs a MAC)
    infer_gflops: float
    # name, type, forward_ms, backward_ms, forward/backward_gflops (None for layers without
    # multiply-adds), forward/backward_peak_share; slowest first
    layers: list[dict[str, Any]]
    peak_memory_mb: float | None = None  # the process's peak resident set (ru_maxrss)
    # numpy memory allocated at once during one training step after warm-up (tracemalloc
    # peak; arrays reused from step to step do not count; Numba's scratch is not traced)
    step_alloc_mb: float | None = None
    torch: dict[str, Any] | None = None  # --vs torch: throughputs, ratios, correctness guard
    # the machine's FP32 peak on `threads` threads, measured (cnnkit.kernels.peak); each layer
    # row's forward_gflops / backward_gflops and their *_peak_share (fractions of it)
    peak_gflops: float | None = None
    rounds_detail: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _layer_names(model: Model) -> list[str]:
    return [row.name for row in model.summary_rows()]


def _synthetic_batch(model: Model, loss_fn: Loss, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, *model.input_shape), dtype=np.float32)
    units = model.layers[-1].output_shape[-1]
    classes = 2 if units == 1 else units
    y = rng.integers(0, classes, size=batch)
    return x, y


class _CnnkitRunner:
    """One training step (training's own: cnnkit.train.step) and one inference pass of
    cnnkit's model on a fixed batch."""

    def __init__(self, spec: Spec, batch: int):
        self.model = build_model(spec).build(spec.seed)
        self.loss_fn = build_loss(spec)
        self.optimizer: Optimizer = build_optimizer(spec)
        self.step = TrainStep(self.model, self.loss_fn, self.optimizer, build_metrics(spec))
        self.x, self.y = _synthetic_batch(self.model, self.loss_fn, batch, spec.seed)

    def train_step(self) -> None:
        self.step(self.x, self.y)

    def infer(self) -> np.ndarray:
        return self.model.forward(self.x, training=False)

    def layer_times(self, steps: int) -> list[tuple[float, float]]:
        """Mean forward and backward seconds per layer over `steps` training steps (the
        model's own forward and backward, timed layer by layer)."""
        timings = LayerTimings.of(self.model)
        for _ in range(steps):
            logits = self.model.forward(self.x, True, timings)
            _, grad = self.loss_fn(logits, self.y)
            self.model.backward(grad, timings)
            self.optimizer.step(self.step.params, self.model.named_grads())
        return [
            (f / steps, b / steps) for f, b in zip(timings.forward, timings.backward, strict=True)
        ]


def _timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - start


def _flops(model: Model) -> tuple[float, float]:
    """FLOPs per image of inference and of a training step (forward + both backward GEMMs;
    the first layer computes no input gradient)."""
    infer = train = 0.0
    for layer, row in zip(model.layers, model.summary_rows(), strict=True):
        infer += 2.0 * row.macs
        train += 2.0 * row.macs * (3 if layer.needs_input_grad else 2)
    return infer, train


def _peak_memory_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux


def run_bench(
    spec: Spec,
    steps: int = 20,
    batch_size: int | None = None,
    threads: int | None = None,
    vs: str | None = None,
    rounds: int = 3,
    warmup: int = 3,
    on_progress=None,
) -> BenchResult:
    """Time `steps` training steps and `steps` inference batches per round, `rounds` times,
    after `warmup` untimed steps (which compile the kernels on a cold cache)."""
    if vs not in (None, "torch"):
        raise CnnkitError(f"--vs {vs!r} is not supported", hint="Use --vs torch.")
    progress = on_progress or (lambda text: None)
    n_threads = configure_threads(threads)
    batch = batch_size or spec.train.batch_size
    ours = _CnnkitRunner(spec, batch)
    theirs = None
    if vs == "torch":
        from cnnkit.bench_torch import TorchRunner

        theirs = TorchRunner(spec, ours.model, ours.loss_fn, batch, n_threads, ours.x, ours.y)
    progress("warming up (compiles the kernels on a cold cache)")
    guard = None
    if theirs is not None:
        guard = theirs.check_against(ours)  # before any training step changes the weights
    runners = [r for r in (ours, theirs) if r is not None]
    for _ in range(warmup):
        for runner in runners:
            runner.train_step()
            runner.infer()
    tracemalloc.start()
    ours.train_step()
    step_alloc = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    detail = [_round(ours, theirs, batch, steps, r, rounds, progress) for r in range(rounds)]
    progress("per-layer times, and the machine's FP32 peak (an FMA microkernel)")
    from cnnkit.kernels.peak import measure_peak_gflops  # numba, imported when it runs

    peak = measure_peak_gflops(n_threads)
    layer_rows = _layer_rows(ours, max(steps // 2, 3), batch, peak)

    def median(key: str) -> float:
        return statistics.median(row[key] for row in detail)

    infer_flops, train_flops = _flops(ours.model)
    result = BenchResult(
        spec=spec.name,
        batch_size=batch,
        steps=steps,
        rounds=rounds,
        threads=n_threads,
        train_images_per_s=median("train"),
        infer_images_per_s=median("infer"),
        train_gflops=median("train") * train_flops / 1e9,
        infer_gflops=median("infer") * infer_flops / 1e9,
        layers=layer_rows,
        rounds_detail=detail,
        step_alloc_mb=step_alloc,
        peak_gflops=peak,
    )
    if theirs is not None:
        result.torch = {
            "version": theirs.version,
            "threads": theirs.threads,
            "train_images_per_s": median("torch_train"),
            "infer_images_per_s": median("torch_infer"),
            "train_ratio": median("train_ratio"),
            "infer_ratio": median("infer_ratio"),
            "check": guard,
        }
    result.peak_memory_mb = _peak_memory_mb()
    return result


def _round(ours, theirs, batch: int, steps: int, r: int, rounds: int, progress) -> dict:
    """Images/s of one round: cnnkit then PyTorch, training then inference."""
    progress(f"round {r + 1} of {rounds}")
    row = {"train": batch * steps / _timed(ours.train_step, steps)}
    if theirs is not None:
        row["torch_train"] = batch * steps / _timed(theirs.train_step, steps)
    row["infer"] = batch * steps / _timed(ours.infer, steps)
    if theirs is not None:
        row["torch_infer"] = batch * steps / _timed(theirs.infer, steps)
        row["train_ratio"] = row["train"] / row["torch_train"]
        row["infer_ratio"] = row["infer"] / row["torch_infer"]
    return row


def _layer_rows(ours: _CnnkitRunner, steps: int, batch: int, peak: float) -> list[dict[str, Any]]:
    """Forward and backward milliseconds per layer, slowest first, and the GFLOP/s they
    achieve from the layer's multiply-adds (2 FLOPs each): forward 2*MACs, backward the
    weight gradient's 2*MACs plus, where needed, the input gradient's 2*MACs; and those as
    fractions of the measured peak. Layers without MACs (pooling, Flatten) get None."""
    names = _layer_names(ours.model)
    times = ours.layer_times(steps)
    rows = []
    for name, layer, row, (f, b) in zip(
        names, ours.model.layers, ours.model.summary_rows(), times, strict=True
    ):
        flops = 2.0 * row.macs * batch
        back = flops * (2 if layer.needs_input_grad else 1)
        fwd_g = flops / f / 1e9 if flops and f > 0 else None
        bwd_g = back / b / 1e9 if back and b > 0 else None
        rows.append(
            {
                "name": name,
                "type": layer.keras_name,
                "forward_ms": 1000 * f,
                "backward_ms": 1000 * b,
                "forward_gflops": fwd_g,
                "backward_gflops": bwd_g,
                "forward_peak_share": None if fwd_g is None else fwd_g / peak,
                "backward_peak_share": None if bwd_g is None else bwd_g / peak,
            }
        )
    rows.sort(key=lambda r: -(r["forward_ms"] + r["backward_ms"]))
    return rows
