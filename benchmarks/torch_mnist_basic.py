"""The mnist_basic model (configs/mnist_basic.yaml) trained for one epoch in plain PyTorch.

The yardstick for `cnnkit train configs/mnist_basic.yaml --epochs 1` (issue: a full cnnkit
run must take at most 2x this script's wall time; benchmarks/train_vs_torch.py times both).
Same work as cnnkit's epoch: read the IDX files with numpy (no torchvision), rescale by 1/255,
Conv2D(32, 3, relu) -> MaxPooling2D(2) -> Flatten -> Dense(128, relu) -> Dense(10), Adam
(lr 0.001, epsilon 1e-7 as Keras), batch 200, shuffled, then test-set loss and accuracy.

Usage: python benchmarks/torch_mnist_basic.py [--threads N] [--data cnnkit/data/mnist]
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--data", type=Path, default=ROOT / "cnnkit" / "data" / "mnist")
    parser.add_argument("--batch-size", type=int, default=200)
    args = parser.parse_args()
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(42)

    def images(name: str) -> torch.Tensor:
        x = read_idx(args.data / name).astype(np.float32) / np.float32(255.0)
        return torch.from_numpy(x[:, None, :, :])  # NCHW, PyTorch's layout

    def labels(name: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(args.data / name).astype(np.int64))

    x_train, y_train = images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz")
    x_test, y_test = images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz")

    model = nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 13 * 13, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    first_step = time.perf_counter()
    model.train()
    order = torch.randperm(len(x_train))
    for i in range(0, len(x_train), args.batch_size):
        idx = order[i : i + args.batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x_train[idx]), y_train[idx])
        loss.backward()
        optimizer.step()
    train_s = time.perf_counter() - first_step
    model.eval()
    correct, total_loss = 0, 0.0
    with torch.inference_mode():
        for i in range(0, len(x_test), 500):
            logits = model(x_test[i : i + 500])
            total_loss += float(loss_fn(logits, y_test[i : i + 500])) * len(logits)
            correct += int((logits.argmax(1) == y_test[i : i + 500]).sum())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads: "
        f"{len(x_train) / train_s:,.0f} training images/s; "
        f"test loss {total_loss / len(x_test):.4f}, accuracy {correct / len(x_test):.4f}; "
        f"{time.perf_counter() - start:.1f} s in the script"
    )


if __name__ == "__main__":
    main()
