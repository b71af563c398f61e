"""The PyTorch twin of a cnnkit model, for `cnnkit bench --vs torch` (PyTorch is never a
dependency: this module is imported only when asked for).

The twin uses PyTorch's own fast layout (NCHW) and layers, each cnnkit layer's defined by
its `torch_twin` method (with the layer, in cnnkit.nn.layers), with cnnkit's weights copied in
(conv kernels (kh, kw, c, f) -> (f, c, kh, kw); the Dense after a Flatten has its rows permuted
from cnnkit's (H, W, C) order to PyTorch's (C, H, W)), so both compute the same function.
`check_against` is the correctness guard: cnnkit and PyTorch, both in float32, are judged against
the twin in float64 on the same weights and batch; only cnnkit being off stops the benchmark.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from cnnkit.bench_guard import TOLERANCE, cnnkit_side, judge, relative_error
from cnnkit.errors import CnnkitError, ExtraMissing

__all__ = ["TOLERANCE", "TorchRunner", "TwinBuilder", "relative_error"]

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
        raise ExtraMissing(
            "--vs torch needs PyTorch, which is not installed",
            hint="pip install torch (the CPU wheel); it is never a dependency of cnnkit.",
        ) from None
    return torch


def _unsupported(what: str) -> CnnkitError:
    return CnnkitError(
        f"--vs torch cannot build {what}",
        hint="Run `cnnkit bench` without --vs torch for this spec.",
    )


class TwinBuilder:
    """What a layer's `torch_twin` appends to (cnnkit.nn.layers.base.Layer.torch_twin): the
    torch modules in order, and which cnnkit weight goes into which torch tensor, how."""

    def __init__(self, torch):
        self.torch = torch
        self.nn = torch.nn
        self.modules: list[Any] = []
        self.copies: list[tuple[str, Any, Any]] = []  # (cnnkit key, torch tensor, to_torch)
        self.has_dropout = False
        self.flat_from: tuple[int, ...] | None = None  # (H, W, C) of the last Flatten's input

    def add(self, *modules) -> None:
        self.modules.extend(modules)

    def copy(self, layer, name: str, tensor, to_torch=lambda a: a) -> None:
        """cnnkit's `name` weight of `layer`, turned by to_torch into `tensor`'s layout."""
        self.copies.append((f"layers.{layer.index}.{name}", tensor, to_torch))

    def function(self, fn):
        """A module applying fn to its input (a layer with no torch module of its own)."""
        return _function_module(self.nn.Module, fn)

    def merge(self, layer):
        """The module of a merge layer (cnnkit.nn.layers.merging): a function of the list of
        its inputs' tensors, in NCHW (Concatenate's axis moved from NHWC)."""
        torch = self.torch
        kind = layer.keras_name
        if kind == "Concatenate":
            rank = len(layer.output_shape)
            axis = layer.options["axis"]
            sample_axis = axis - 1 if axis > 0 else rank + axis
            dim = 1 + ((sample_axis + 1) % 3 if rank == 3 else sample_axis)  # H,W,C -> C,H,W
            return _function_module(self.nn.Module, lambda xs: torch.cat(xs, dim=dim))
        functions = {
            "Add": lambda xs: sum(xs[1:], xs[0]),
            "Subtract": lambda xs: xs[0] - xs[1],
            "Multiply": lambda xs: _product(xs),
            "Average": lambda xs: sum(xs[1:], xs[0]) / len(xs),
            "Maximum": lambda xs: _fold(torch.maximum, xs),
            "Minimum": lambda xs: _fold(torch.minimum, xs),
        }
        if kind not in functions:
            raise self.unsupported(f"a {kind} layer")
        return _function_module(self.nn.Module, functions[kind])

    def activation(self, layer) -> None:
        """The activation of a layer with an `activation` option (none for a logits head)."""
        name = layer.options.get("activation") or "linear"
        if layer.returns_logits or name == "linear":
            return
        if name == "leaky_relu":
            self.add(self.nn.LeakyReLU(0.2))
        elif _ACTIVATIONS.get(name):
            self.add(getattr(self.nn, _ACTIVATIONS[name])())
        else:
            raise self.unsupported(f"the {name} activation")

    @staticmethod
    def unsupported(what: str) -> CnnkitError:
        return _unsupported(what)


def _product(xs):
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


def _fold(fn, xs):
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    return out


def _graph_module(torch, blocks: list, model):
    """The twin of a graph model: each layer's modules as one block, run in the spec's order
    on the outputs of the layers it reads (as cnnkit.nn.model.Model.forward)."""

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(blocks)
            self.wiring = [
                (layer.sources, layer.merges, layer.index in model.skipped)
                for layer in model.layers
            ]

        def forward(self, x):
            outputs: list = []
            for block, (sources, merges, skipped) in zip(self.blocks, self.wiring, strict=True):
                if skipped:
                    outputs.append(None)
                    continue
                inputs = [x if s < 0 else outputs[s] for s in sources]
                outputs.append(block(inputs if merges else inputs[0]))
            return outputs[-1]

    return Graph()


def _function_module(module_class, fn):
    class Function(module_class):
        def forward(self, x):
            return fn(x)

    return Function()


class TorchRunner:
    """The PyTorch peer of `cnnkit bench` (cnnkit.bench's round loop calls train_step and
    infer, check_against before any training step, warm_up after it)."""

    name, label = "torch", "PyTorch"

    def __init__(self, spec, model, loss_fn, batch: int, threads: int, x, y):
        torch = _import_torch()
        self.torch = torch
        self.version = torch.__version__
        torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        twin = TwinBuilder(torch)
        blocks = []
        for layer in model.layers:
            start = len(twin.modules)
            layer.torch_twin(twin)
            blocks.append(torch.nn.Sequential(*twin.modules[start:]))
        if model.skipped:
            raise _unsupported("a layer whose output no layer takes (remove it)")
        if model.is_graph:
            self.net = _graph_module(torch, blocks, model)
        else:  # a stack: PyTorch's own Sequential, as a PyTorch user would write it
            self.net = torch.nn.Sequential(*twin.modules)
        self.copies, self.has_dropout = twin.copies, twin.has_dropout
        # the declared regularizers: Keras' penalties added to the twin's loss, as cnnkit adds
        # them to its own (l1 * sum|w| + l2 * sum w^2, on the twin's copy of each weight)
        self.tensors = {key: tensor for key, tensor, _ in self.copies}  # by cnnkit key
        self.penalties = {
            f"layers.{layer.index}.{w.name}": w.regularizer
            for layer in model.layers
            for w in layer.weights.values()
            if w.trainable and w.regularizer
        }
        self.copy_weights(model)
        self.loss = self._loss(spec, loss_fn)
        self.optimizer = self._optimizer(spec)
        self.set_batch(x, y)

    def set_batch(self, x, y) -> None:
        """The batch (cnnkit's NHWC images, integer labels) timed and checked from now on."""
        torch = self.torch
        # a fresh copy: np.ascontiguousarray keeps the transposed strides of a one-channel
        # batch (numpy calls it contiguous: the size-1 axis's stride does not matter to it),
        # and PyTorch 2.13's convolution backward corrupted the heap on such a tensor
        self.x = torch.from_numpy(np.array(x.transpose(0, 3, 1, 2), order="C"))
        self.y = torch.from_numpy(np.asarray(y))
        if self.binary:
            self.y = self.y.float().reshape(-1, 1)

    def _loss(self, spec, loss_fn):
        name = spec.loss.name
        self.binary = name == "binary_crossentropy"
        smoothing = spec.loss.options.get("label_smoothing", 0.0)
        if name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
            # t (1 - s) + s / K, as Keras and cnnkit
            return self.torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
        if smoothing:
            raise _unsupported(f"{name} with label_smoothing")
        if self.binary:
            return self.torch.nn.BCEWithLogitsLoss()
        raise _unsupported(f"the {name} loss")

    def _optimizer(self, spec):
        o, name, optim = spec.optimizer.options, spec.optimizer.name, self.torch.optim
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
        # what both sides start from, kept in float64 for the guard's reference twin
        self.reference_weights = {k: v.astype(np.float64) for k, v in params.items()}
        with self.torch.no_grad():
            for key, tensor, to_torch in self.copies:
                tensor.copy_(self.torch.from_numpy(np.ascontiguousarray(to_torch(params[key]))))

    def penalty(self, tensors: dict[str, Any]):
        """The regularization loss of the twin whose weights are `tensors` (by cnnkit key)."""
        total = 0.0
        for key, reg in self.penalties.items():
            w = tensors[key]
            if reg["l1"]:
                total = total + reg["l1"] * w.abs().sum()
            if reg["l2"]:
                total = total + reg["l2"] * (w * w).sum()
        return total

    # -- timed work ---------------------------------------------------------------------------
    def warm_up(self, steps: int) -> dict[str, Any]:
        for _ in range(steps):
            self.train_step()
            self.infer()
        return {}

    def train_step(self) -> None:
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        (self.loss(self.net(self.x), self.y) + self.penalty(self.tensors)).backward()
        self.optimizer.step()

    def infer(self):
        self.net.eval()
        with self.torch.inference_mode():
            return self.net(self.x)

    # -- correctness guard ----------------------------------------------------------------------
    def _reference_twin(self):
        """The twin in float64 with the weights both sides started from (and the same batch):
        the yardstick for cnnkit's float32 and PyTorch's float32 alike."""
        torch = self.torch
        twin = copy.deepcopy(self.net).double()
        names = {id(p): n for n, p in self.net.named_parameters()}
        params = dict(twin.named_parameters())
        with torch.no_grad():
            for key, tensor, to_torch in self.copies:
                weights = np.ascontiguousarray(to_torch(self.reference_weights[key]))
                params[names[id(tensor)]].copy_(torch.from_numpy(weights))
        return twin, params, names

    def check_against(self, ours) -> dict[str, Any]:
        """Judge cnnkit and PyTorch (both float32) against the float64 twin
        (cnnkit.bench_guard.judge): forward outputs (logits, inference) and, without dropout,
        the loss and every parameter's gradient of one training batch, in PyTorch's layout.
        Raises only when cnnkit is off (on mnist_basic PyTorch 2.13's first-conv kernel
        gradient is off by 2.8e-03, cnnkit's by 5.9e-07)."""
        torch = self.torch
        twin, twin_params, names = self._reference_twin()
        twin.eval()
        with torch.no_grad():
            ref = {"output": twin(self.x.double()).numpy(), "loss": None, "gradients": {}}
        theirs = {"output": self.infer().numpy(), "loss": None, "gradients": {}}
        gradients = not self.has_dropout  # dropout's random masks differ: not comparable
        ours = cnnkit_side(ours, gradients)
        if gradients:
            twin.train()
            y = self.y.double() if self.binary else self.y
            twin_tensors = {k: twin_params[names[id(t)]] for k, t, _ in self.copies}
            ref_loss = self.loss(twin(self.x.double()), y) + self.penalty(twin_tensors)
            ref_loss.backward()
            ref["loss"] = ref_loss.item()
            self.net.train()
            self.optimizer.zero_grad(set_to_none=True)
            torch_loss = self.loss(self.net(self.x), self.y) + self.penalty(self.tensors)
            torch_loss.backward()
            theirs["loss"] = torch_loss.item()
            for key, tensor, to_torch in self.copies:
                ref["gradients"][key] = twin_params[names[id(tensor)]].grad.numpy()
                theirs["gradients"][key] = tensor.grad.numpy()
                ours["gradients"][key] = to_torch(ours["gradients"][key])
            self.optimizer.zero_grad(set_to_none=True)
        reference = "the PyTorch twin in float64, same weights, same batch"
        return judge("torch", "PyTorch", reference, ours, theirs, ref)
