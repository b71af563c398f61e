"""One epoch of a cnnkit MNIST spec in plain PyTorch, then the test-set loss and accuracy: the
PyTorch yardstick of `cnnkit train SPEC --epochs 1` (benchmarks/epoch_vs_peers.py times both,
and benchmarks/keras_epoch.py, as fresh processes).

The same work as cnnkit's epoch: the IDX files read with numpy (no torchvision), rescaled by
1/255; the spec's layers as PyTorch modules (NCHW, PyTorch's own layout; softmax on the last
Dense folded into nn.CrossEntropyLoss), the spec's batch size, shuffled, its optimizer (Adam
with epsilon 1e-7 as Keras and cnnkit, or SGD with momentum), then the test set in batches of
train.eval_batch_size (500). Neither cnnkit nor Numba is imported.

Usage: python benchmarks/torch_epoch.py configs/mnist_basic.yaml [--threads N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from peer_spec import MNIST, mnist, read_spec
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU}


def activation(name: str | None, last: bool) -> list[nn.Module]:
    if name in (None, "linear") or (last and name == "softmax"):  # logits into the loss
        return []
    if name not in ACTIVATIONS:
        raise SystemExit(f"torch_epoch.py: no {name} activation")
    return [ACTIVATIONS[name]()]


def build(spec: dict) -> nn.Sequential:
    h, w, c = spec["input_shape"]
    modules: list[nn.Module] = []
    features = None
    for i, (kind, o) in enumerate(spec["layers"]):
        last = i == len(spec["layers"]) - 1
        if kind == "Conv2D":
            (kh, kw), strides = o["kernel_size"], o.get("strides", (1, 1))
            same = o.get("padding", "valid") == "same"
            modules.append(nn.Conv2d(c, o["filters"], (kh, kw), strides, "same" if same else 0))
            if not same:
                h, w = (h - kh) // strides[0] + 1, (w - kw) // strides[1] + 1
            c = o["filters"]
            modules += activation(o.get("activation"), last)
        elif kind in ("MaxPooling2D", "AveragePooling2D"):
            pool = o["pool_size"]
            strides = o.get("strides") or pool
            cls = nn.MaxPool2d if kind == "MaxPooling2D" else nn.AvgPool2d
            modules.append(cls(pool, strides))
            h, w = (h - pool[0]) // strides[0] + 1, (w - pool[1]) // strides[1] + 1
        elif kind == "Flatten":
            modules.append(nn.Flatten())
            features = h * w * c
        elif kind == "Dense":
            modules.append(nn.Linear(features, o["units"]))
            features = o["units"]
            modules += activation(o.get("activation"), last)
        elif kind == "Dropout":
            modules.append(nn.Dropout(o["rate"]))
        elif kind == "Activation":
            modules += activation(o["activation"], last)
    return nn.Sequential(*modules)


def optimizer(spec: dict, params):
    name, o = spec["optimizer"]
    if name == "adam":
        return torch.optim.Adam(
            params, o["learning_rate"], betas=(o["beta_1"], o["beta_2"]), eps=o["epsilon"]
        )
    return torch.optim.SGD(
        params, o["learning_rate"], momentum=o["momentum"], nesterov=o["nesterov"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--data", type=Path, default=MNIST)
    parser.add_argument("--limit", type=int, default=None, help="first N images (a smoke test)")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = read_spec(args.spec)
    torch.manual_seed(spec["seed"])
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in mnist(args.data, args.limit))
    x_train = x_train.permute(0, 3, 1, 2).contiguous()  # NCHW, PyTorch's layout
    x_test = x_test.permute(0, 3, 1, 2).contiguous()
    model = build(spec)
    opt = optimizer(spec, model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    batch = spec["batch_size"]
    first_step = time.perf_counter()
    model.train()
    order = torch.randperm(len(x_train))
    for i in range(0, len(x_train), batch):
        idx = order[i : i + batch]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x_train[idx]), y_train[idx])
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - first_step
    model.eval()
    correct, total_loss, eval_batch = 0, 0.0, spec["eval_batch_size"]
    with torch.inference_mode():
        for i in range(0, len(x_test), eval_batch):
            logits = model(x_test[i : i + eval_batch])
            total_loss += float(loss_fn(logits, y_test[i : i + eval_batch])) * len(logits)
            correct += int((logits.argmax(1) == y_test[i : i + eval_batch]).sum())
    print(
        f"torch {torch.__version__}, {spec['name']}, {torch.get_num_threads()} threads: "
        f"{len(x_train) / train_s:,.0f} training images/s; "
        f"test loss {total_loss / len(x_test):.4f}, accuracy {correct / len(x_test):.4f}; "
        f"{time.perf_counter() - start:.1f} s in the script"
    )


if __name__ == "__main__":
    main()
