"""Compile (or load from the cache) every kernel a run needs before its first training step.

The first ever run compiles the Numba kernels for about a minute (53 s for mnist.yaml on
the 2-core AVX2 reference machine). Done inside the first step,
that looks like a hang, counts against epoch 1's images/s, and cannot be stopped with Ctrl-C:
Numba holds the interpreter for seconds at a time, so a signal handler in the compiling thread
runs late. So `warm_up` runs one forward and backward pass of two training images, and one
inference pass, on a copy of the model (the real model, its random streams and its BatchNorm
statistics are untouched), before the run directory exists, in a background thread. The
calling thread only waits, so Ctrl-C raises KeyboardInterrupt in it at once; the CLI then
exits without waiting for the compiler (os._exit: no interpreter shutdown under a compiling
thread). Nothing of the run has been written at that point.

Whether anything compiles is known from Numba's own event (`numba:compile`, raised only on a
cache miss), so a warm cache never announces a compilation. The estimate comes from
COMPILE_SECONDS: each kernel's compile time measured on a cold cache.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnkit.interrupts import CompileInterrupted
from cnnkit.nn.inference import plan_kernels

# Seconds to compile each kernel (with the helpers it inlines) on a cold cache, from Numba's
# compile events: measured with two specs (configs/mnist.yaml, and one with strides, average
# pooling and augmentation), then scaled to the total measured for mnist.yaml on the reference
# machine (AMD EPYC, AVX2, 2 cores, idle: 53 s, 2026-12-01), where CALIBRATION_SECONDS is the
# time of _calibration_loop. A kernel not listed counts DEFAULT_SECONDS. The first compile of a
# process also pays Numba's own start (in batch_moments' figure: it compiled first there).
CALIBRATION_SECONDS = 0.024
COMPILE_SECONDS = {
    "cnnkit.kernels.conv.conv2d_forward": 14.2,
    "cnnkit.kernels.conv.conv2d_backward_weights": 13.1,
    "cnnkit.kernels.conv.conv2d_backward_input": 5.9,
    "cnnkit.kernels.batchnorm.batch_moments": 9.6,
    "cnnkit.kernels.batchnorm.normalize": 2.0,
    "cnnkit.kernels.batchnorm.backward_sums": 3.1,
    "cnnkit.kernels.batchnorm.backward_input": 0.9,
    "cnnkit.kernels.pool.maxpool2d_forward": 2.2,
    "cnnkit.kernels.pool.maxpool2d_backward": 0.9,
    "cnnkit.kernels.pool.avgpool2d_forward": 1.3,
    "cnnkit.kernels.pool.avgpool2d_backward": 1.3,
    "cnnkit.kernels.activations.relu_backward_into": 1.1,
    "cnnkit.kernels.affine.augment_batch": 3.5,
    # the fused inference plan's (cold cache, 2026-12-02, scaled by machine_slowness 5.5)
    "cnnkit.kernels.fused.maxpool2d_infer": 3.0,
    "cnnkit.kernels.fused.scale_shift": 1.9,
    "cnnkit.kernels.fused.add_relu": 1.6,
    # one after another in a process whose Numba had started (cold cache, 2026-12-02, the
    # AVX-512 Xeon, scaled by its machine_slowness 0.66)
    "cnnkit.kernels.pool.maxpool2d_forward_tiles": 2.1,
    "cnnkit.kernels.pool.maxpool2d_backward_tiles": 1.6,
    "cnnkit.kernels.activations.relu_into": 0.3,
    "cnnkit.kernels.activations.add_into": 0.3,
    "cnnkit.kernels.optimizers.adam_update": 0.8,
    "cnnkit.kernels.optimizers.momentum_update": 0.5,
    "cnnkit.kernels.dense.dense": 4.2,  # 2.8 s here, after the convolution's microkernels
    "cnnkit.kernels.dense.dense_backward": 2.4,  # 1.6 s here
}
# conv2d_backward_input (a Python function) also runs conv2d_backward_input_phases_direct for
# strided layers: 2.3 s more on a cold cache on the Xeon (about 3.5 s on the reference
# machine), left out of its figure, which mnist.yaml (no strides) measured
DEFAULT_SECONDS = 2.0


@dataclass
class WarmUp:
    seconds: float  # wall time of the warm-up
    compiled: bool  # something was compiled (not everything came from the cache)


def kernels_used(model: Any, augmenter: Any = None, optimizer: Any = None) -> list[str]:
    """Qualified names of the kernels (cnnkit.kernels.nojit.lazy stand-ins) that the methods
    of the model's layer classes, the activations they use, the augmenter and the optimizer
    call, and the model's where a layer's output has several readers: what a training step
    may need to compile."""
    owners: list[Any] = [
        (type(layer), layer.unused_kernel_modules(), layer.unused_kernels())
        for layer in model.layers
    ]
    if any(n > 1 for n in getattr(model, "readers", ())):  # backward sums their gradients
        owners.append((type(model), (), ()))
    if augmenter is not None:
        owners.append((type(augmenter), (), ()))
    names: list[str] = []
    for owner, modules, kernels in owners:
        for cls in owner.__mro__:
            for function in vars(cls).values():
                names += [
                    k
                    for k in _kernels_called(function)
                    if k.rpartition(".")[0] not in modules and k not in kernels
                ]
    if optimizer is not None:
        names += optimizer.kernels(model.named_params())
    names += plan_kernels(model.layers)  # the inference pass's fused kernels
    if any(getattr(layer, "options", {}).get("activation") == "gelu" for layer in model.layers):
        from cnnkit.nn import activations

        names += [f for v in vars(activations).values() if (f := getattr(v, "kernel", None))]
    return list(dict.fromkeys(names))


def _kernels_called(function: Any) -> list[str]:
    code = getattr(function, "__code__", None)
    if code is None:
        return []
    scope = function.__globals__
    return [k for n in code.co_names if (k := getattr(scope.get(n), "kernel", None))]


def uncached(kernels: list[str]) -> list[str]:
    """The kernels with no entry in Numba's cache for this source file and this machine.

    A kernel that is a plain Python function (conv2d_forward picks the direct or the GEMM
    path, conv2d_backward_input runs on conv2d_forward or on the column path) counts as cached
    when any compiled function it calls, directly or through such functions, is."""
    import importlib

    out = []
    for name in kernels:
        module, _, attr = name.rpartition(".")
        target = getattr(importlib.import_module(module), attr)
        dispatchers = [target] if hasattr(target, "_cache") else _called_dispatchers(target)
        if dispatchers and not any(_has_cache_entry(d) for d in dispatchers):
            out.append(name)
    return out


def _called_dispatchers(function: Any, seen: set[int] | None = None) -> list[Any]:
    """The compiled functions a plain Python function calls, through the plain functions of
    its own module that it calls (each visited once)."""
    seen = set() if seen is None else seen
    seen.add(id(function))
    code = getattr(function, "__code__", None)
    scope = getattr(function, "__globals__", {})
    found = []
    for name in code.co_names if code is not None else ():
        target = scope.get(name)
        if hasattr(target, "_cache"):
            found.append(target)
        elif (
            getattr(target, "__code__", None) is not None
            and getattr(target, "__module__", None) == getattr(function, "__module__", None)
            and id(target) not in seen
        ):
            found += _called_dispatchers(target, seen)
    return found


def _has_cache_entry(dispatcher: Any) -> bool:
    try:
        index = dispatcher._cache._cache_file._load_index()  # {} when missing or stale
        magic = dispatcher.targetctx.codegen().magic_tuple()  # this CPU's code
        return any(key[1] == magic for key in index)
    except Exception:  # another Numba version's layout: assume compiled, announce nothing
        return True


def estimate_seconds(kernels: list[str]) -> float:
    """The compile time of these kernels here and now: the reference machine's figures times
    how much slower than there a short pure-Python loop runs. LLVM compiles on one core, so
    its time follows that core's speed and how busy it is, which the loop measures at once
    (a load average lags by a minute and knows nothing of the core's speed)."""
    reference = sum(COMPILE_SECONDS.get(name, DEFAULT_SECONDS) for name in kernels)
    return reference * machine_slowness()


def machine_slowness() -> float:
    """This machine's time for _calibration_loop over the reference machine's (median of 3;
    about 75 ms in all, spent only when something is about to compile)."""
    times = sorted(_calibration_loop() for _ in range(3))
    return max(0.25, times[1] / CALIBRATION_SECONDS)


def _calibration_loop() -> float:
    started = time.perf_counter()
    total = 0
    for i in range(200_000):
        total += i * i % 7
    return time.perf_counter() - started


def rounded(seconds: float) -> int:
    """An estimate as people say it: 3, 8, 25, 40 s (to 5 s above 10 s)."""
    return max(1, round(seconds)) if seconds < 10 else 5 * round(seconds / 5)


def warm_up(
    model: Any,
    loss_fn: Any,
    preprocessor: Any,
    x: np.ndarray,
    y: np.ndarray,
    on_compiling: Callable[[float], None] | None = None,
    run_dir: Any = None,
    optimizer: Any = None,
) -> WarmUp:
    """Run one training and one inference pass of x[:2] on a copy of the model, and one
    update of a copy of the optimizer on the copy's gradients, so that every kernel is
    compiled or loaded before the first timed step.

    on_compiling(estimate_s) is called (in this thread) as soon as Numba starts compiling
    something, with the estimated total; never when every kernel comes from the cache.
    Ctrl-C while it compiles: CompileInterrupted (naming run_dir, a resumed run left as it
    was) at once, the compile thread left behind; after the thread is done, KeyboardInterrupt
    as usual. The thread's own `finished` event says which, not Thread.is_alive(): a join()
    interrupted by Ctrl-C marks a running thread as stopped (CPython 3.11, bpo-45274)."""
    from numba.core import event

    started = time.perf_counter()
    compiling = threading.Event()

    class Listener(event.Listener):
        def on_start(self, ev) -> None:
            compiling.set()

        def on_end(self, ev) -> None:  # required by the interface; the start is what counts
            pass

    failure: list[BaseException] = []
    finished = threading.Event()

    def run() -> None:
        try:
            errors = np.errstate(over="ignore", invalid="ignore", divide="ignore")
            twin = copy.deepcopy(model)
            xb, yb = x[:2], y[:2]
            with errors:  # random weights on any data: overflow is no concern here
                logits = twin.forward(preprocessor.training(np.random.default_rng(0))(xb), True)
                _, dlogits = loss_fn(logits, yb)
                twin.backward(dlogits)
                if optimizer is not None:  # its one-pass kernels (the real one untouched)
                    copy.deepcopy(optimizer).step(twin.named_params(), twin.named_grads())
                twin.forward(preprocessor(xb), False)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)
        finally:
            finished.set()

    pending = uncached(kernels_used(model, getattr(preprocessor, "augmenter", None), optimizer))
    estimate = estimate_seconds(pending) if pending else DEFAULT_SECONDS
    listener = Listener()
    event.register("numba:compile", listener)
    announced = False
    thread = threading.Thread(target=run, name="cnnkit-warm-up", daemon=True)
    try:
        thread.start()
        while not finished.wait(0.05):  # Ctrl-C: KeyboardInterrupt here, at once
            if compiling.is_set() and not announced:
                announced = True
                if on_compiling is not None:
                    on_compiling(estimate)
    except KeyboardInterrupt:
        if finished.is_set():
            raise
        raise CompileInterrupted(run_dir) from None
    finally:
        event.unregister("numba:compile", listener)  # a late event from a left thread: harmless
    if failure:
        raise failure[0]
    return WarmUp(time.perf_counter() - started, compiling.is_set())
