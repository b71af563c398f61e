"""The PyTorch twin of a cnnkit model, for `cnnkit bench --vs torch` (PyTorch is never a
dependency: this module is imported only when asked for).

The twin uses PyTorch's own fast layout (NCHW) and layers, with cnnkit's weights copied in
(conv kernels (kh, kw, c, f) -> (f, c, kh, kw); the Dense after a Flatten has its rows permuted
from cnnkit's (H, W, C) order to PyTorch's (C, H, W)), so both compute the same function.
`check_against` is the correctness guard: same outputs and same gradients for the same weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit.errors import CnnkitError

# cnnkit activation name -> torch module factory (Keras 3 formulas; hard_sigmoid is relu6(x+3)/6)
_ACTIVATIONS = {
    "linear": None,
    "relu": "ReLU",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "elu": "ELU",
    "selu": "SELU",
    "gelu": "GELU",
    "swish": "SiLU",
    "silu": "SiLU",
    "softplus": "Softplus",
    "hard_sigmoid": "Hardsigmoid",
}


def _import_torch():
    try:
        import torch
    except ImportError:
        raise CnnkitError(
            "--vs torch needs PyTorch, which is not installed",
            hint="pip install torch (CPU wheel); it is never a dependency of cnnkit.",
        ) from None
    return torch


def _unsupported(what: str) -> CnnkitError:
    return CnnkitError(
        f"--vs torch cannot build {what}",
        hint="Run `cnnkit bench` without --vs torch for this spec.",
    )


class TorchRunner:
    def __init__(self, spec, model, loss_fn, batch: int, threads: int, x, y):
        torch = _import_torch()
        self.torch = torch
        self.version = torch.__version__
        torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        nn = torch.nn
        modules: list[Any] = []
        self.copies: list[tuple[str, Any, Any]] = []  # (cnnkit key, torch tensor, to_torch)
        self.has_dropout = False
        flat_from: tuple[int, ...] | None = None  # (H, W, C) of the last Flatten's input
        for layer in model.layers:
            kind = layer.keras_name
            key = f"layers.{layer.index}."
            opts = layer.options
            if kind == "Conv2D":
                kh, kw, c, f = layer.param_shapes()["kernel"]
                h, w, _ = layer.input_shape
                oh, ow, _ = layer.output_shape
                (sh, sw), (dh, dw) = opts["strides"], opts["dilation_rate"]
                pad_b = max((oh - 1) * sh + (kh - 1) * dh + 1 - h, 0) - layer.pad_top
                pad_r = max((ow - 1) * sw + (kw - 1) * dw + 1 - w, 0) - layer.pad_left
                if opts["padding"] == "valid":
                    pad_b = pad_r = 0
                padding = (layer.pad_top, layer.pad_left)
                if (pad_b, pad_r) != padding:
                    modules.append(nn.ZeroPad2d((layer.pad_left, pad_r, layer.pad_top, pad_b)))
                    padding = (0, 0)
                conv = nn.Conv2d(c, f, (kh, kw), (sh, sw), padding, (dh, dw), bias=opts["use_bias"])
                modules.append(conv)
                self.copies.append((key + "kernel", conv.weight, lambda a: a.transpose(3, 2, 0, 1)))
                if opts["use_bias"]:
                    self.copies.append((key + "bias", conv.bias, lambda a: a))
                self._activation(modules, layer)
            elif kind == "Dense":
                n_in, units = layer.param_shapes()["kernel"]
                lin = nn.Linear(n_in, units, bias=opts["use_bias"])
                modules.append(lin)
                if flat_from is not None:
                    fh, fw, fc = flat_from

                    def to_torch(a, fh=fh, fw=fw, fc=fc):
                        return a.reshape(fh, fw, fc, -1).transpose(2, 0, 1, 3).reshape(a.shape).T

                    flat_from = None
                else:

                    def to_torch(a):
                        return a.T

                self.copies.append((key + "kernel", lin.weight, to_torch))
                if opts["use_bias"]:
                    self.copies.append((key + "bias", lin.bias, lambda a: a))
                self._activation(modules, layer)
            elif kind in ("MaxPooling2D", "AveragePooling2D"):
                if opts["padding"] != "valid":
                    raise _unsupported(f"{kind} with padding: same")
                pool = nn.MaxPool2d if kind == "MaxPooling2D" else nn.AvgPool2d
                modules.append(pool(tuple(opts["pool_size"]), tuple(layer.strides)))
            elif kind == "Flatten":
                if len(layer.input_shape) == 3:
                    flat_from = tuple(layer.input_shape)
                modules.append(nn.Flatten())
            elif kind == "Dropout":
                self.has_dropout = True
                modules.append(nn.Dropout(opts["rate"]))
            elif kind == "Activation":
                self._activation(modules, layer)
            elif kind == "GlobalAveragePooling2D" and not opts["keepdims"]:
                modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            else:
                raise _unsupported(f"a {kind} layer")
        self.net = nn.Sequential(*modules)
        self.copy_weights(model)
        self.loss = self._loss(spec, loss_fn)
        self.optimizer = self._optimizer(spec)
        self.x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        self.y = torch.from_numpy(np.asarray(y))
        if self.binary:
            self.y = self.y.float().reshape(-1, 1)

    def _activation(self, modules, layer) -> None:
        name = layer.options.get("activation") or "linear"
        if layer.returns_logits or name == "linear":
            return
        if name == "leaky_relu":
            modules.append(self.torch.nn.LeakyReLU(0.2))
        elif _ACTIVATIONS.get(name):
            modules.append(getattr(self.torch.nn, _ACTIVATIONS[name])())
        else:
            raise _unsupported(f"the {name} activation")

    def _loss(self, spec, loss_fn):
        name = spec.loss["name"]
        self.binary = name == "binary_crossentropy"
        if name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
            return self.torch.nn.CrossEntropyLoss()
        if self.binary:
            return self.torch.nn.BCEWithLogitsLoss()
        raise _unsupported(f"the {name} loss")

    def _optimizer(self, spec):
        o, name, optim = spec.optimizer, spec.optimizer["name"], self.torch.optim
        params = self.net.parameters()
        lr = o["learning_rate"]
        if name == "sgd":
            return optim.SGD(params, lr, momentum=o["momentum"], nesterov=o["nesterov"])
        if name in ("adam", "adamw"):
            betas = (o["beta_1"], o["beta_2"])
            if name == "adam":
                return optim.Adam(params, lr, betas=betas, eps=o["epsilon"])
            return optim.AdamW(
                params, lr, betas=betas, eps=o["epsilon"], weight_decay=o["weight_decay"]
            )
        if name == "rmsprop":
            return optim.RMSprop(
                params, lr, alpha=o["rho"], eps=o["epsilon"], momentum=o["momentum"]
            )
        raise _unsupported(f"the {name} optimizer")

    def copy_weights(self, model) -> None:
        params = model.named_params()
        with self.torch.no_grad():
            for key, tensor, to_torch in self.copies:
                tensor.copy_(self.torch.from_numpy(np.ascontiguousarray(to_torch(params[key]))))

    # -- timed work ---------------------------------------------------------------------------
    def train_step(self) -> None:
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.net(self.x), self.y).backward()
        self.optimizer.step()

    def infer(self):
        self.net.eval()
        with self.torch.inference_mode():
            return self.net(self.x)

    # -- correctness guard ----------------------------------------------------------------------
    def check_against(self, ours) -> dict[str, Any]:
        """Same weights -> same logits (inference) and, without dropout, the same gradients of
        one training batch. Raises if they differ: a benchmark of a wrong kernel is worthless."""
        theirs = self.infer().numpy()
        mine = ours.infer()
        scale = max(float(np.abs(theirs).max()), 1.0)
        out_diff = float(np.abs(theirs - mine).max()) / scale
        check: dict[str, Any] = {"outputs_max_rel_diff": out_diff, "grads_max_rel_diff": None}
        problems = []
        if not out_diff <= 1e-3:
            problems.append(f"outputs differ by {out_diff:.2e} (relative)")
        if not self.has_dropout:
            logits = ours.model.forward(ours.x, training=True)
            _, dlogits = ours.loss_fn(logits, ours.y)
            ours.model.backward(dlogits)
            grads = ours.model.named_grads()
            self.net.train()
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.net(self.x), self.y).backward()
            worst = 0.0
            for key, tensor, to_torch in self.copies:
                t = tensor.grad.numpy()
                g = to_torch(grads[key])
                rel = float(np.abs(t - g).max()) / max(float(np.abs(t).max()), 1e-6)
                worst = max(worst, rel)
                if not rel <= 2e-3:
                    problems.append(f"gradient of {key} differs by {rel:.2e} (relative)")
            self.optimizer.zero_grad(set_to_none=True)
            check["grads_max_rel_diff"] = worst
        if problems:
            raise CnnkitError(
                "cnnkit and PyTorch disagree on the same weights: " + "; ".join(problems),
                hint="A bug in cnnkit's kernels (or in the PyTorch twin): please report it.",
            )
        check["ok"] = True
        return check
