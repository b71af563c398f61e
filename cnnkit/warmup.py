"""Compile (or load from the cache) every kernel a run needs before its first training step.

The first ever run compiles the Numba kernels for about 20-40 s. Done inside the first step,
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
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Seconds to compile each kernel (with the helpers it inlines) on a cold cache, from Numba's
# compile events: measured with two specs (configs/mnist.yaml, and one with strides,
# average pooling and augmentation) on the 2-core reference machine while it was shared
# (3.4x slower than idle, from the load), and scaled to the idle machine's measured total for
# mnist.yaml (23 s, README). A kernel not listed counts DEFAULT_SECONDS. The first compile of
# a process also pays Numba's own start (in batch_moments' figure: it compiled first there).
COMPILE_SECONDS = {
    "cnnkit.kernels.conv.conv2d_forward": 6.5,
    "cnnkit.kernels.conv.conv2d_backward_weights": 6.0,
    "cnnkit.kernels.conv.conv2d_backward_input": 2.7,
    "cnnkit.kernels.batchnorm.batch_moments": 4.4,
    "cnnkit.kernels.batchnorm.normalize": 0.9,
    "cnnkit.kernels.batchnorm.backward_sums": 1.4,
    "cnnkit.kernels.batchnorm.backward_input": 0.4,
    "cnnkit.kernels.pool.maxpool2d_forward": 1.0,
    "cnnkit.kernels.pool.maxpool2d_backward": 0.4,
    "cnnkit.kernels.pool.avgpool2d_forward": 0.6,
    "cnnkit.kernels.pool.avgpool2d_backward": 0.6,
    "cnnkit.kernels.activations.relu_backward_into": 0.5,
    "cnnkit.kernels.affine.augment_batch": 1.6,
}
DEFAULT_SECONDS = 1.0

# set when the last warm-up thread has finished. Its own flag, not Thread.is_alive(): a
# join() interrupted by Ctrl-C marks a running thread as stopped (CPython 3.11, bpo-45274).
_finished: threading.Event | None = None


def compiling_in_background() -> bool:
    """True while a warm-up thread abandoned by Ctrl-C may still be inside the compiler."""
    return _finished is not None and not _finished.is_set()


@dataclass
class WarmUp:
    seconds: float  # wall time of the warm-up
    compiled: bool  # something was compiled (not everything came from the cache)
    estimate: float  # the announced estimate (0 when nothing compiled)


def kernels_used(model: Any, augmenter: Any = None) -> list[str]:
    """Qualified names of the kernels (cnnkit.kernels.nojit.lazy stand-ins) that the methods
    of the model's layer classes, the activations they use and the augmenter call: what a
    training step may need to compile."""
    owners: list[Any] = [type(layer) for layer in model.layers]
    if augmenter is not None:
        owners.append(type(augmenter))
    names: list[str] = []
    for owner in owners:
        for cls in owner.__mro__:
            for function in vars(cls).values():
                names += _kernels_called(function)
    if any(getattr(layer, "options", {}).get("activation") == "gelu" for layer in model.layers):
        from cnnkit import activations

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

    A kernel that is a plain Python function (conv2d_backward_input picks one of two compiled
    paths) counts as cached when any compiled function it calls is."""
    import importlib

    out = []
    for name in kernels:
        module, _, attr = name.rpartition(".")
        target = getattr(importlib.import_module(module), attr)
        dispatchers = [target] if hasattr(target, "_cache") else _called_dispatchers(target)
        if dispatchers and not any(_has_cache_entry(d) for d in dispatchers):
            out.append(name)
    return out


def _called_dispatchers(function: Any) -> list[Any]:
    code = getattr(function, "__code__", None)
    scope = getattr(function, "__globals__", {})
    names = code.co_names if code is not None else ()
    return [scope[n] for n in names if hasattr(scope.get(n), "_cache")]


def _has_cache_entry(dispatcher: Any) -> bool:
    try:
        index = dispatcher._cache._cache_file._load_index()  # {} when missing or stale
        magic = dispatcher.targetctx.codegen().magic_tuple()  # this CPU's code
        return any(key[1] == magic for key in index)
    except Exception:  # another Numba version's layout: assume compiled, announce nothing
        return True


def estimate_seconds(kernels: list[str]) -> float:
    """The compile time of these kernels here: the idle figures times how much busier than
    its cores the machine is now (compiling is one thread; other work on the cores slows it
    in proportion, as measured above)."""
    idle = sum(COMPILE_SECONDS.get(name, DEFAULT_SECONDS) for name in kernels)
    try:
        busy = os.getloadavg()[0] / max(os.cpu_count() or 1, 1)
    except OSError:  # no load average on this system
        busy = 1.0
    return idle * max(1.0, busy)


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
) -> WarmUp:
    """Run one training and one inference pass of x[:2] on a copy of the model, so that every
    kernel is compiled or loaded before the first timed step.

    on_compiling(estimate_s) is called (in this thread) as soon as Numba starts compiling
    something, with the estimated total; never when every kernel comes from the cache.
    KeyboardInterrupt (Ctrl-C) is raised here at once, the compile thread left behind."""
    global _finished
    from numba.core import event

    started = time.perf_counter()
    compiling = threading.Event()

    class Listener(event.Listener):
        def on_start(self, ev) -> None:
            compiling.set()

        def on_end(self, ev) -> None:
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
                twin.forward(preprocessor(xb), False)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)
        finally:
            finished.set()

    pending = uncached(kernels_used(model, getattr(preprocessor, "augmenter", None)))
    estimate = estimate_seconds(pending) if pending else DEFAULT_SECONDS
    listener = Listener()
    event.register("numba:compile", listener)
    announced = False
    thread = threading.Thread(target=run, name="cnnkit-warm-up", daemon=True)
    try:
        _finished = finished
        thread.start()
        while not finished.wait(0.05):  # Ctrl-C: KeyboardInterrupt here, at once
            if compiling.is_set() and not announced:
                announced = True
                if on_compiling is not None:
                    on_compiling(estimate)
    finally:
        if finished.is_set():
            event.unregister("numba:compile", listener)
    if failure:
        raise failure[0]
    return WarmUp(time.perf_counter() - started, compiling.is_set(), estimate if announced else 0)
