"""Optimizers with Keras 3's update rules, options and defaults, updating parameters in place.

Every rule below follows `keras/src/optimizers/<name>.py` (Keras 3) line for line, and the
shared machinery follows `keras/src/optimizers/base_optimizer.py`:

- the learning rate of a step is `schedule(iterations)` (the step count *before* the update,
  so the first step uses `schedule(0)`) when a per-step schedule is attached, else the float
  `learning_rate` (which epoch-level schedules such as reduce-on-plateau change between epochs);
- gradients are clipped first (`clipnorm`: each gradient separately, `g * c / max(||g||, c)`;
  `global_clipnorm`: all gradients together by their joint norm; `clipvalue`: elementwise to
  [-v, v]; Keras allows only one of the three);
- then decoupled weight decay, `p -= p * weight_decay * lr` (Keras' `_apply_weight_decay`,
  AdamW's default 0.004; any optimizer accepts it);
- then the optimizer's own `update_step`, with `t = iterations + 1` as Keras' `local_step`.

Moments and the step count live in `state` (named arrays) and `iterations`;
`state_dict()` / `load_state_dict()` save and restore them (and any schedule state) exactly.
Scalars are computed in float64 and cast to the parameter's dtype; arrays keep their dtype.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol

import numpy as np

from cnnkit.errors import CheckpointError, SpecError
from cnnkit.kernels.nojit import lazy
from cnnkit.options import Option

# one pass over each parameter (cnnkit.kernels.optimizers); numba is imported on the first call
adam_update, momentum_update = lazy("cnnkit.kernels.optimizers", "adam_update", "momentum_update")

# below this many values numpy's few passes cost less than a kernel call
_FUSED_MIN_SIZE = 4096


def _fused(p: np.ndarray, g: np.ndarray) -> bool:
    """Whether the one-pass kernels take this parameter: a large float array, contiguous, its
    gradient of the same dtype and contiguous."""
    return (
        p.size >= _FUSED_MIN_SIZE
        and p.dtype in (np.float32, np.float64)
        and g.dtype == p.dtype
        and p.flags.c_contiguous
        and g.flags.c_contiguous
    )


class LearningRateSchedule(Protocol):
    """What an optimizer needs from a schedule (see cnnkit.nn.schedules)."""

    name: str
    per_step: bool

    def __call__(self, step: int) -> float: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _lr_option(default: float) -> Option:
    return Option("float", default=default, minimum=0.0, exclusive_min=True)


def _beta_option(default: float) -> Option:
    return Option("float", default=default, minimum=0.0, maximum=1.0, exclusive_max=True)


# Options every optimizer accepts (Keras' base optimizer keyword arguments), with Keras'
# defaults (None = off). AdamW overrides weight_decay's default.
COMMON_OPTIONS = {
    "weight_decay": Option("float_or_null", default=None, minimum=0.0),
    "clipnorm": Option("float_or_null", default=None, minimum=0.0, exclusive_min=True),
    "clipvalue": Option("float_or_null", default=None, minimum=0.0, exclusive_min=True),
    "global_clipnorm": Option("float_or_null", default=None, minimum=0.0, exclusive_min=True),
}
CLIP_OPTIONS = ("clipnorm", "clipvalue", "global_clipnorm")


class Optimizer:
    name: ClassVar[str] = "optimizer"
    OPTIONS: ClassVar[dict[str, Option]] = {}

    def __init__(self, **options):
        self.options = {k: options.get(k, opt.default) for k, opt in self.OPTIONS.items()}
        self.options.update(options)
        # the settable learning rate; a per-step schedule, when attached, takes precedence
        self.learning_rate = float(self.options["learning_rate"])
        self.schedule: LearningRateSchedule | None = None
        self.iterations = 0  # steps applied so far (Keras' optimizer.iterations)
        self.lr = self.learning_rate  # the learning rate the latest step used
        self.state: dict[str, np.ndarray] = {}

    @classmethod
    def check_options(cls, options: dict[str, Any], path: str = "optimizer") -> None:
        """Spec-time checks across options (Keras raises the same ValueError)."""
        given = [k for k in CLIP_OPTIONS if options.get(k) is not None]
        if len(given) > 1:
            raise SpecError(
                f"only one of clipnorm, clipvalue and global_clipnorm can be set (found "
                f"{' and '.join(given)})",
                where=f"{path}.{given[1]}",
                hint="Keep one: clipnorm clips each gradient's norm, global_clipnorm the norm of "
                "all of them together, clipvalue each element.",
            )

    # -- one step --------------------------------------------------------------------------
    def current_learning_rate(self) -> float:
        """The learning rate the next step will use."""
        if self.schedule is not None and self.schedule.per_step:
            return float(self.schedule(self.iterations))
        return self.learning_rate

    def kernels(self, params: dict[str, np.ndarray]) -> list[str]:
        """The compiled kernels (qualified names) a step on these parameters calls: what the
        training warm-up checks the cache for (cnnkit.train.warmup)."""
        if not any(_fused(p, p) for p in params.values()):  # (a gradient is p's dtype and shape)
            return []
        return [f"cnnkit.kernels.optimizers.{name}" for name in self._fused_kernels()]

    def _fused_kernels(self) -> tuple[str, ...]:
        return ()

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Apply one update to every parameter (keys like 'layers.0.kernel'), in place."""
        lr = self.lr = self.current_learning_rate()
        grads = self._clip(grads)
        wd = self.options.get("weight_decay")
        self.iterations += 1
        self._begin_step(lr)
        for key, p in params.items():
            if wd:
                p *= p.dtype.type(1.0 - lr * wd)  # p - p * wd * lr, decoupled (Keras/AdamW)
            self.update(key, p, grads[key], lr)

    def _clip(self, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Keras' `_clip_gradients`: returns new arrays where clipping changes a gradient."""
        opts = self.options
        if opts.get("clipnorm"):
            c = opts["clipnorm"]
            out = {}
            for key, g in grads.items():
                norm = math.sqrt(float(np.vdot(g, g)))
                out[key] = g * g.dtype.type(c / norm) if norm > c else g
            return out
        if opts.get("global_clipnorm"):
            c = opts["global_clipnorm"]
            norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
            if norm <= c:
                return grads
            return {key: g * g.dtype.type(c / norm) for key, g in grads.items()}
        if opts.get("clipvalue"):
            v = opts["clipvalue"]
            return {key: np.clip(g, -v, v) for key, g in grads.items()}
        return grads

    def _begin_step(self, lr: float) -> None:
        """Per-step scalars shared by all parameters (self.iterations is already t)."""

    def update(self, key: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def _slot(self, kind: str, key: str, like: np.ndarray, fill: float = 0.0) -> np.ndarray:
        slot = self.state.get(f"{kind}.{key}")
        if slot is None:
            slot = self.state[f"{kind}.{key}"] = np.full_like(like, fill)
        return slot

    def _scratch(self, index: int, key: str, like: np.ndarray) -> np.ndarray:
        """A reusable work array shaped like a parameter (not state: never saved), so an
        update allocates nothing per step. index: which of the update's work arrays."""
        scratch = self.__dict__.setdefault("_scratch_arrays", {})
        array = scratch.get((index, key))
        if array is None or array.shape != like.shape or array.dtype != like.dtype:
            array = scratch[(index, key)] = np.empty_like(like)
        return array

    # -- saving and restoring --------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        """Scalars beyond `iterations` that a subclass keeps across steps (JSON-safe)."""
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, meta): the slot arrays (copies) and everything else, JSON-serialisable.

        Together with the same spec they let a fresh optimizer continue bit for bit."""
        arrays = {key: array.copy() for key, array in self.state.items()}
        meta = {
            "name": self.name,
            "iterations": self.iterations,
            "learning_rate": self.learning_rate,
            "lr": self.lr,
            "options": dict(self.options),
            "extra": self._extra_state(),
            "schedule": None
            if self.schedule is None
            else {"name": self.schedule.name, **self.schedule.state_dict()},
        }
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore what state_dict() returned (e.g. read back from last.optimizer.npz/.json)."""
        if meta.get("name") != self.name:
            raise CheckpointError(
                f"the saved optimizer state is for {meta.get('name')!r}, not {self.name!r}",
                hint="Resume with the optimizer the run was trained with.",
            )
        saved_schedule = meta.get("schedule")
        if saved_schedule is not None:
            if self.schedule is None or saved_schedule.get("name") != self.schedule.name:
                ours = None if self.schedule is None else self.schedule.name
                raise CheckpointError(
                    f"the saved optimizer state has schedule {saved_schedule.get('name')!r}, "
                    f"this optimizer has {ours!r}",
                )
            self.schedule.load_state_dict({k: v for k, v in saved_schedule.items() if k != "name"})
        self.iterations = int(meta["iterations"])
        self.learning_rate = float(meta["learning_rate"])
        self.lr = float(meta.get("lr", self.learning_rate))
        self.state = {key: np.array(array, copy=True) for key, array in arrays.items()}
        self._load_extra_state(meta.get("extra") or {})


class SGD(Optimizer):
    """Keras 3 SGD (keras/src/optimizers/sgd.py): with momentum, v = momentum*v - lr*g and
    p += v; nesterov: p += momentum*v - lr*g (v already updated); without momentum p -= lr*g."""

    name = "sgd"
    OPTIONS = {
        "learning_rate": _lr_option(0.01),
        "momentum": Option("float", default=0.0, minimum=0.0, maximum=1.0),
        "nesterov": Option("bool", default=False),
        **COMMON_OPTIONS,
    }

    def _fused_kernels(self) -> tuple[str, ...]:
        plain = self.options["momentum"] == 0 or self.options["nesterov"]
        return () if plain else ("momentum_update",)

    def update(self, key: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        dt = p.dtype.type
        lr, momentum = dt(lr), dt(self.options["momentum"])
        scaled = np.multiply(g, lr, out=self._scratch(0, key, p))  # lr * g, no allocation
        if momentum == 0:
            p -= scaled
            return
        v = self._slot("momentum", key, p)
        if _fused(p, g) and not self.options["nesterov"]:
            momentum_update(p.reshape(-1), g.reshape(-1), v.reshape(-1), lr, momentum)
            return
        v *= momentum
        v -= scaled
        if self.options["nesterov"]:
            p += momentum * v - lr * g
        else:
            p += v


class RMSprop(Optimizer):
    """Keras 3 RMSprop (keras/src/optimizers/rmsprop.py):
    v = rho*v + (1-rho)*g^2; centered: a = rho*a + (1-rho)*g and denominator v - a^2 + eps,
    else v + eps (epsilon inside the sqrt); increment = lr*g / sqrt(denominator);
    momentum > 0: mom = momentum*mom + increment, p -= mom; else p -= increment."""

    name = "rmsprop"
    OPTIONS = {
        "learning_rate": _lr_option(0.001),
        "rho": Option("float", default=0.9, minimum=0.0, maximum=1.0),
        "momentum": Option("float", default=0.0, minimum=0.0, maximum=1.0),
        "epsilon": Option("float", default=1e-7, minimum=0.0),
        "centered": Option("bool", default=False),
        **COMMON_OPTIONS,
    }

    def update(self, key: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        dt = p.dtype.type
        rho, eps = dt(self.options["rho"]), dt(self.options["epsilon"])
        v = self._slot("velocity", key, p)
        v *= rho
        v += (1 - rho) * (g * g)
        if self.options["centered"]:
            a = self._slot("average_gradient", key, p)
            a *= rho
            a += (1 - rho) * g
            denominator = v - a * a
            denominator += eps
        else:
            denominator = v + eps
        increment = dt(lr) * g
        increment /= np.sqrt(denominator, out=denominator)
        momentum = self.options["momentum"]
        if momentum > 0:
            mom = self._slot("momentum", key, p)
            mom *= dt(momentum)
            mom += increment
            p -= mom
        else:
            p -= increment


class Adam(Optimizer):
    """Keras 3 Adam (keras/src/optimizers/adam.py): bias correction folded into the step size,
    alpha = lr * sqrt(1 - b2^t) / (1 - b1^t); m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    amsgrad: v_hat = max(v_hat, v) replaces v; p -= alpha * m / (sqrt(v) + eps)."""

    name = "adam"
    OPTIONS = {
        "learning_rate": _lr_option(0.001),
        "beta_1": _beta_option(0.9),
        "beta_2": _beta_option(0.999),
        "epsilon": Option("float", default=1e-7, minimum=0.0),
        "amsgrad": Option("bool", default=False),
        **COMMON_OPTIONS,
    }

    def _fused_kernels(self) -> tuple[str, ...]:
        return ("adam_update",)

    def _begin_step(self, lr: float) -> None:
        t = self.iterations
        b1, b2 = self.options["beta_1"], self.options["beta_2"]
        self._alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)

    def update(self, key: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        dt = p.dtype.type
        b1, b2 = dt(self.options["beta_1"]), dt(self.options["beta_2"])
        m, v = self._slot("m", key, p), self._slot("v", key, p)
        if _fused(p, g):
            v_hat = self._slot("vhat", key, p) if self.options["amsgrad"] else v
            adam_update(
                p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), v_hat.reshape(-1),
                self.options["amsgrad"], 1 - b1, 1 - b2, dt(self.options["epsilon"]),
                dt(self._alpha),
            )  # fmt: skip
            return
        # the same operations, in the same order, as m += (g - m) * (1 - b1) and so on, into
        # two reused work arrays: bitwise the same result, no allocation per step
        work, step = self._scratch(0, key, p), self._scratch(1, key, p)
        np.subtract(g, m, out=work)
        work *= 1 - b1
        m += work
        np.multiply(g, g, out=work)
        work -= v
        work *= 1 - b2
        v += work
        if self.options["amsgrad"]:
            v_hat = self._slot("vhat", key, p)
            np.maximum(v_hat, v, out=v_hat)
            v = v_hat
        denominator = np.sqrt(v, out=work)
        denominator += dt(self.options["epsilon"])
        np.multiply(m, dt(self._alpha), out=step)
        step /= denominator
        p -= step


class AdamW(Adam):
    """Keras 3 AdamW (keras/src/optimizers/adamw.py): Adam after the decoupled weight decay
    p -= p * weight_decay * lr that the base optimizer applies before every update (default
    weight_decay 0.004, Loshchilov & Hutter 2019)."""

    name = "adamw"
    OPTIONS = {
        **Adam.OPTIONS,
        "weight_decay": Option("float", default=0.004, minimum=0.0),
    }


class Adagrad(Optimizer):
    """Keras 3 Adagrad (keras/src/optimizers/adagrad.py): the accumulator starts at
    initial_accumulator_value; acc += g^2; p -= lr * g / sqrt(acc + eps)."""

    name = "adagrad"
    OPTIONS = {
        "learning_rate": _lr_option(0.001),
        "initial_accumulator_value": Option("float", default=0.1, minimum=0.0),
        "epsilon": Option("float", default=1e-7, minimum=0.0),
        **COMMON_OPTIONS,
    }

    def update(self, key: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        dt = p.dtype.type
        acc = self._slot("accumulator", key, p, self.options["initial_accumulator_value"])
        acc += g * g
        denominator = acc + dt(self.options["epsilon"])
        p -= dt(lr) * g / np.sqrt(denominator, out=denominator)


class Adadelta(Optimizer):
    """Keras 3 Adadelta (keras/src/optimizers/adadelta.py), with rms(x) = sqrt(x + eps):
    Eg2 = rho*Eg2 + (1-rho)*g^2; delta = -rms(Edx2) * g / rms(Eg2);
    Edx2 = rho*Edx2 + (1-rho)*delta^2; p += lr * delta."""

    name = "adadelta"
    OPTIONS = {
        "learning_rate": _lr_option(0.001),
        "rho": Option("float", default=0.95, minimum=0.0, maximum=1.0),
        "epsilon": Option("float", default=1e-7, minimum=0.0),
        **COMMON_OPTIONS,
    }

    def update(self, key: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        dt = p.dtype.type
        rho, eps = dt(self.options["rho"]), dt(self.options["epsilon"])
        eg2 = self._slot("accumulated_grad", key, p)
        edx2 = self._slot("accumulated_delta_var", key, p)
        eg2 *= rho
        eg2 += (1 - rho) * (g * g)
        delta = np.sqrt(edx2 + eps)
        delta *= g
        delta /= np.sqrt(eg2 + eps)
        np.negative(delta, out=delta)
        edx2 *= rho
        edx2 += (1 - rho) * (delta * delta)
        delta *= dt(lr)
        p += delta


class Nadam(Optimizer):
    """Keras 3 Nadam (keras/src/optimizers/nadam.py), Dozat 2015's momentum cache:
    u_t = b1 * (1 - 0.5 * 0.96^t), u_{t+1} likewise; the product u_1...u_t is kept across
    steps (`u_product`, updated once per step before the parameters);
    m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    m_hat = u_{t+1} m / (1 - u_product * u_{t+1}) + (1 - u_t) g / (1 - u_product);
    v_hat = v / (1 - b2^t); p -= lr * m_hat / (sqrt(v_hat) + eps)."""

    name = "nadam"
    OPTIONS = {
        "learning_rate": _lr_option(0.001),
        "beta_1": _beta_option(0.9),
        "beta_2": _beta_option(0.999),
        "epsilon": Option("float", default=1e-7, minimum=0.0),
        **COMMON_OPTIONS,
    }

    def __init__(self, **options):
        super().__init__(**options)
        self.u_product = 1.0

    def _begin_step(self, lr: float) -> None:
        t, b1, b2 = self.iterations, self.options["beta_1"], self.options["beta_2"]
        self._u_t = b1 * (1.0 - 0.5 * 0.96**t)
        self._u_t1 = b1 * (1.0 - 0.5 * 0.96 ** (t + 1))
        self.u_product *= self._u_t
        self._u_product_t1 = self.u_product * self._u_t1
        self._v_correction = 1.0 - b2**t

    def update(self, key: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        dt = p.dtype.type
        b1, b2 = dt(self.options["beta_1"]), dt(self.options["beta_2"])
        m, v = self._slot("m", key, p), self._slot("v", key, p)
        m += (g - m) * (1 - b1)
        v += (g * g - v) * (1 - b2)
        m_hat = m * dt(self._u_t1 / (1.0 - self._u_product_t1))
        m_hat += g * dt((1.0 - self._u_t) / (1.0 - self.u_product))
        denominator = np.sqrt(v / dt(self._v_correction))
        denominator += dt(self.options["epsilon"])
        m_hat *= dt(lr)
        m_hat /= denominator
        p -= m_hat

    def _extra_state(self) -> dict[str, Any]:
        return {"u_product": self.u_product}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.u_product = float(extra.get("u_product", 1.0))


ALL_OPTIMIZERS: tuple[type[Optimizer], ...] = (SGD, RMSprop, Adam, AdamW, Adagrad, Adadelta, Nadam)
