"""BatchNormalization over the last (channels) axis, with Keras 3's formulas and defaults."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit.distributed import batch_part, world
from cnnkit.errors import SpecError
from cnnkit.kernels.nojit import lazy
from cnnkit.nn.initializers import check_initializer
from cnnkit.nn.layers.base import Layer, SavedArray, Shape
from cnnkit.nn.regularizers import check_regularizer
from cnnkit.options import Option, checker

# numba is imported on the first call, not when a spec is checked (cnnkit.kernels.nojit)
backward_input, backward_sums, batch_moments, normalize = lazy(
    "cnnkit.kernels.batchnorm", "backward_input", "backward_sums", "batch_moments", "normalize"
)


@checker({"const": -1})
def _axis(value: Any, path: str) -> int:
    if value != -1 or isinstance(value, bool):
        raise SpecError(
            f"axis {value!r} is not supported",
            where=path,
            hint="Only axis: -1 (the channels of channels-last images, or the features).",
        )
    return -1


class BatchNormalization(Layer):
    """Normalise each channel by batch statistics in training, moving statistics in inference.

    Training: mean and (biased) variance over every axis but the last; y = gamma (x - mean) /
    sqrt(var + epsilon) + beta; then moving = moving * momentum + batch * (1 - momentum), with
    the same biased variance (Keras 3). gamma and beta are trainable (if scale / center);
    moving_mean and moving_variance are non-trainable state that checkpoints hold.

    synchronized (Keras 3's option): in data-parallel training, the batch statistics are the
    whole global batch's, summed over the ranks (two allreduces in forward, one in backward);
    by default each rank normalises by its own slice's. One process: no difference.
    """

    type_name = "batch_normalization"
    keras_name = "BatchNormalization"
    aliases = ("batch_norm", "BatchNorm")
    OPTIONS = {
        "axis": Option(_axis, default=-1),
        "momentum": Option("float", default=0.99, minimum=0.0, maximum=1.0),
        "epsilon": Option("float", default=0.001, minimum=0.0, exclusive_min=True),
        "center": Option("bool", default=True),
        "scale": Option("bool", default=True),
        "beta_initializer": Option(check_initializer, default="zeros"),
        "gamma_initializer": Option(check_initializer, default="ones"),
        "moving_mean_initializer": Option(check_initializer, default="zeros"),
        "moving_variance_initializer": Option(check_initializer, default="ones"),
        "beta_regularizer": Option(check_regularizer, default=None),
        "gamma_regularizer": Option(check_regularizer, default=None),
        "synchronized": Option(
            "bool",
            default=False,
            doc="data-parallel training: batch statistics over every rank's slice",
        ),
    }

    def build(self, input_shape: Shape) -> None:
        c, o = input_shape[-1], self.options
        if o["scale"]:
            self.add_weight("gamma", (c,), o["gamma_initializer"], o["gamma_regularizer"])
        if o["center"]:
            self.add_weight("beta", (c,), o["beta_initializer"], o["beta_regularizer"])
        for name in ("moving_mean", "moving_variance"):
            self.add_weight(name, (c,), o[f"{name}_initializer"], trainable=False)

    def macs(self) -> int:
        return int(np.prod(self.input_shape))  # one multiply-add per value (inference)

    def saved_arrays(self, training: bool, last: bool = False) -> list[SavedArray]:
        return [SavedArray(self.output_shape)] * 2  # the normalised input and the output

    def _affine(self, c: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        gamma = self.params.get("gamma")
        beta = self.params.get("beta")
        return (
            gamma if gamma is not None else np.ones(c, dtype),
            beta if beta is not None else np.zeros(c, dtype),
        )

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        # every axis but the last is a "row": (N, H, W, C) -> (N*H*W, C), a view
        x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
        t = x.dtype.type
        self._rows = x2.shape[0]  # the rows the batch statistics are over
        # inside a data-parallel step only (a batch part is set): never in the kernel warm-up
        self._synced = training and self.options["synchronized"] and batch_part() is not None
        if self._synced:
            mean, var = self._global_moments(x2)
        elif training:
            mean, var = batch_moments(x2)  # float64, biased variance as Keras' ops.moments
        if training:
            m = self.options["momentum"]
            # in place: a dict captured from named_weights() sees the new values
            self.state["moving_mean"] *= t(m)
            self.state["moving_mean"] += (t(1) - t(m)) * mean.astype(x.dtype)
            self.state["moving_variance"] *= t(m)
            self.state["moving_variance"] += (t(1) - t(m)) * var.astype(x.dtype)
        else:
            mean = self.state["moving_mean"].astype(np.float64)
            var = self.state["moving_variance"].astype(np.float64)
        inv = (1.0 / np.sqrt(var + self.options["epsilon"])).astype(x.dtype)
        gamma, beta = self._affine(x.shape[-1], x.dtype)
        if training:  # kept from step to step: numpy's fresh arrays page-faulted each step
            xhat = self.workspace("xhat", x2.shape, x2.dtype)
            y = self.workspace("out", x2.shape, x2.dtype)
        else:
            xhat, y = np.empty_like(x2), np.empty_like(x2)
        normalize(x2, mean.astype(x.dtype), inv, gamma, beta, xhat, y)
        self._inv, self._xhat, self._training = inv, xhat, training
        return y.reshape(x.shape)

    def _global_moments(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and biased variance over every rank's rows (float64, two passes as
        batch_moments): sums and the row count, then the squared deviations, allreduced."""
        comm, c = world(), x2.shape[1]
        sums = np.empty(c + 1, dtype=np.float64)
        sums[:c] = x2.sum(axis=0, dtype=np.float64)
        sums[c] = x2.shape[0]
        comm.sum_(sums, "synchronized batch normalization")
        self._rows = int(sums[c])
        mean = sums[:c] / sums[c]
        squares = np.square(x2 - mean).sum(axis=0)
        comm.sum_(squares, "synchronized batch normalization")
        return mean, squares / sums[c]

    def kept_gradients(self, last: bool = False) -> list[SavedArray]:
        return [SavedArray(self.input_shape)] if self.needs_input_grad else []

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dy2 = np.ascontiguousarray(dy).reshape(-1, dy.shape[-1])
        sum_dy, sum_dy_xhat = backward_sums(dy2, self._xhat)
        if "beta" in self.params:
            self.grads["beta"] = sum_dy.astype(dy.dtype)
        if "gamma" in self.params:
            self.grads["gamma"] = sum_dy_xhat.astype(dy.dtype)
        if not self.needs_input_grad:
            return None
        gamma, _ = self._affine(dy.shape[-1], dy.dtype)
        scale = gamma * self._inv
        if not self._training:  # moving statistics are constants
            return (dy2 * scale).reshape(dy.shape)
        # batch statistics depend on x: d xhat/dx projected out of the mean and xhat directions
        rows = self._rows
        if self._synced:  # the statistics are every rank's rows: so are their gradients
            both = np.concatenate([sum_dy, sum_dy_xhat]).astype(np.float64)
            world().sum_(both, "synchronized batch normalization")
            c = dy2.shape[1]
            sum_dy, sum_dy_xhat = both[:c], both[c:]
        dx = self.workspace("dx", dy2.shape, dy2.dtype)
        backward_input(
            dy2,
            self._xhat,
            scale,
            (sum_dy / rows).astype(dy.dtype),
            (sum_dy_xhat / rows).astype(dy.dtype),
            dx,
        )
        return dx.reshape(dy.shape)

    def torch_twin(self, twin) -> None:
        """nn.BatchNorm2d (BatchNorm1d on features) with Keras' epsilon; PyTorch's momentum is
        the new batch's weight, 1 - Keras'. The moving statistics are copied in as they are
        now (PyTorch updates its running variance with the unbiased batch variance, Keras
        and cnnkit with the biased one: the twins agree in training mode and on these
        statistics, not on the statistics after a few steps)."""
        o = self.options
        if not (o["center"] and o["scale"]):
            raise twin.unsupported("a BatchNormalization without center or scale")
        image = len(self.input_shape) == 3
        norm = (twin.nn.BatchNorm2d if image else twin.nn.BatchNorm1d)(
            self.input_shape[-1], eps=o["epsilon"], momentum=1.0 - o["momentum"]
        )
        twin.add(norm)
        twin.copy(self, "gamma", norm.weight)
        twin.copy(self, "beta", norm.bias)
        with twin.torch.no_grad():
            norm.running_mean.copy_(twin.torch.from_numpy(np.array(self.state["moving_mean"])))
            norm.running_var.copy_(twin.torch.from_numpy(np.array(self.state["moving_variance"])))
