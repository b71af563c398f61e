"""`cnnkit bench`: training and inference throughput of a spec on synthetic data, per-layer
times, achieved GFLOP/s, and optionally the same network in PyTorch and/or Keras side by side.

Machines here are shared and noisy, so a comparison runs the frameworks alternately in one
process (cnnkit, PyTorch, Keras, cnnkit, PyTorch, Keras, ...) and reports per-round ratios and
their median: absolute times move with the load, ratios measured that way hold.
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
    keras: dict[str, Any] | None = None  # --vs keras: the same
    # with a peer: cnnkit / the faster peer, per round, medians (the bar)
    vs_faster: dict[str, Any] | None = None
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


PEERS = {"torch": "cnnkit.bench_torch", "keras": "cnnkit.bench_keras"}


def parse_vs(vs: str | None) -> tuple[str, ...]:
    """`--vs torch`, `--vs keras`, `--vs torch,keras` (the order of alternation): the peers."""
    if vs is None:
        return ()
    names = tuple(name.strip().lower() for name in vs.split(","))
    unknown = [name for name in names if name not in PEERS]
    if unknown or not names or len(set(names)) != len(names):
        raise CnnkitError(
            f"--vs {vs!r} is not supported",
            hint="Use --vs torch, --vs keras or --vs torch,keras (each peer once).",
        )
    return names


def _peer_runners(names, spec: Spec, ours: _CnnkitRunner, batch: int, threads: int) -> list:
    """Each peer's runner (its twin of the spec, cnnkit's weights copied in). Imported here:
    neither peer is a dependency; a missing one is ExtraMissing (exit 2)."""
    from cnnkit.bench_keras import KerasRunner
    from cnnkit.bench_torch import TorchRunner

    classes = {"torch": TorchRunner, "keras": KerasRunner}
    return [
        classes[name](spec, ours.model, ours.loss_fn, batch, threads, ours.x, ours.y)
        for name in names
    ]


def _guard(peer, ours: _CnnkitRunner, seed: int) -> dict[str, Any]:
    """peer.check_against(ours), and where it refuses, once more on a second batch.

    Why: float32 and float64 can break a near-tie differently: a max-pooling window whose two
    largest values differ by float32's rounding, a relu input within rounding of zero. The
    gradient then takes a different term, a discrete jump: on mnist_basic's batch of 200, one
    window in 1,081,600 (its top two 3.2e-07 apart) sent cnnkit's first kernel gradient
    2.8e-03 from the float64 twins, as it did PyTorch's float32, while Keras' float32 broke
    the tie as float64 did. A wrong kernel is off on every batch; such a tie almost never
    recurs on another. The refusal on the first batch is kept in the check."""
    try:
        return peer.check_against(ours)
    except CnnkitError as refused:
        first = refused.message
    x, y = ours.x, ours.y
    ours.x, ours.y = _synthetic_batch(ours.model, ours.loss_fn, x.shape[0], seed + 1)
    peer.set_batch(ours.x, ours.y)
    try:
        check = peer.check_against(ours)  # raises again if cnnkit is off on this batch too
    finally:
        ours.x, ours.y = x, y
        peer.set_batch(x, y)
    check["first_batch"] = first
    return check


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
    names = parse_vs(vs)
    progress = on_progress or (lambda text: None)
    n_threads = configure_threads(threads)
    batch = batch_size or spec.train.batch_size
    ours = _CnnkitRunner(spec, batch)
    peers = _peer_runners(names, spec, ours, batch, n_threads)
    progress("warming up (compiles the kernels on a cold cache)")
    # before any training step changes the weights
    guards = {peer.name: _guard(peer, ours, spec.seed) for peer in peers}
    for _ in range(warmup):
        ours.train_step()
        ours.infer()
    setups = {}
    for peer in peers:
        progress(f"warming up {peer.label}")
        setups[peer.name] = peer.warm_up(warmup)
    tracemalloc.start()
    ours.train_step()
    step_alloc = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    detail = [_round(ours, peers, batch, steps, r, rounds, progress) for r in range(rounds)]
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
    for peer in peers:
        figures = _peer_figures(peer, median)
        setattr(
            result, peer.name, {**figures, "setup": setups[peer.name], "check": guards[peer.name]}
        )
    if peers:
        result.vs_faster = {
            "train_ratio": median("faster_train_ratio"),
            "infer_ratio": median("faster_infer_ratio"),
        }
    result.peak_memory_mb = _peak_memory_mb()
    return result


def _peer_figures(peer, median) -> dict[str, Any]:
    """A peer's throughputs and cnnkit's ratios to it, medians over the rounds."""
    return {
        "label": peer.label,
        "version": peer.version,
        "threads": peer.threads,
        "train_images_per_s": median(f"{peer.name}_train"),
        "infer_images_per_s": median(f"{peer.name}_infer"),
        "train_ratio": median(f"{peer.name}_train_ratio"),
        "infer_ratio": median(f"{peer.name}_infer_ratio"),
    }


def _round(ours, peers: list, batch: int, steps: int, r: int, rounds: int, progress) -> dict:
    """Images/s of one round: cnnkit then each peer, training, then the same for inference;
    each ratio cnnkit / peer from this round's figures, and cnnkit / the faster peer."""
    progress(f"round {r + 1} of {rounds}")
    row: dict[str, float] = {}
    for kind, method in (("train", "train_step"), ("infer", "infer")):
        row[kind] = batch * steps / _timed(getattr(ours, method), steps)
        for peer in peers:
            row[f"{peer.name}_{kind}"] = batch * steps / _timed(getattr(peer, method), steps)
        for peer in peers:
            row[f"{peer.name}_{kind}_ratio"] = row[kind] / row[f"{peer.name}_{kind}"]
        if peers:
            fastest = max(row[f"{peer.name}_{kind}"] for peer in peers)
            row[f"faster_{kind}_ratio"] = row[kind] / fastest
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
