"""What benchmarks/torch_epoch.py and benchmarks/keras_epoch.py share: the MNIST IDX files read with
numpy, and the few things they take from a cnnkit spec (layers, batch size, optimizer, loss),
read with PyYAML alone: the peer scripts import neither cnnkit nor Numba, as a plain PyTorch or
Keras script would not.

Covers the sequential MNIST specs (configs/mnist_basic.yaml, mnist_two_conv.yaml,
mnist_lenet.yaml): Conv2D, MaxPooling2D, AveragePooling2D, Flatten, Dense, Dropout, Activation;
anything else stops the script with a message.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "cnnkit" / "data" / "mnist"
LAYERS = ("Conv2D", "MaxPooling2D", "AveragePooling2D", "Flatten", "Dense", "Dropout", "Activation")
# cnnkit's (and Keras') defaults for what a spec may leave out
OPTIMIZER_DEFAULTS = {
    "adam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
    "sgd": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False},
}


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist(
    data: Path = MNIST, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): images float32 in [0, 1] (rescaled by 1/255 as
    cnnkit's mnist source), (N, 28, 28, 1) channels-last; labels int64; the first `limit` of
    each split if given."""

    def images(name: str) -> np.ndarray:
        raw = read_idx(data / name)[:limit]
        return (raw.astype(np.float32) / np.float32(255.0))[..., None]

    def labels(name: str) -> np.ndarray:
        return read_idx(data / name)[:limit].astype(np.int64)

    return (
        images("train-images-idx3-ubyte.gz"),
        labels("train-labels-idx1-ubyte.gz"),
        images("t10k-images-idx3-ubyte.gz"),
        labels("t10k-labels-idx1-ubyte.gz"),
    )


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def read_spec(path: Path) -> dict:
    """{"name", "input_shape", "layers": [(type, options)], "batch_size", "eval_batch_size",
    "optimizer": (name, options with defaults), "loss"} of a sequential MNIST spec."""
    spec = yaml.safe_load(Path(path).read_text())
    layers = []
    for entry in spec["model"]["layers"]:
        ((kind, options),) = entry.items()
        if kind not in LAYERS:
            raise SystemExit(f"{path}: the peer scripts build {', '.join(LAYERS)}, not {kind}")
        if kind == "Activation" and isinstance(options, str):
            options = {"activation": options}
        options = dict(options or {})
        for key in ("kernel_size", "pool_size", "strides"):
            if key in options:
                options[key] = _pair(options[key])
        layers.append((kind, options))
    optimizer = spec.get("optimizer", "adam")
    if isinstance(optimizer, str):
        optimizer = {"name": optimizer}
    name = optimizer.pop("name")
    if name not in OPTIMIZER_DEFAULTS:
        raise SystemExit(f"{path}: the peer scripts use adam or sgd, not {name}")
    train = spec.get("train", {})
    loss = spec.get("loss", "sparse_categorical_crossentropy")
    return {
        "name": spec["name"],
        "input_shape": tuple(spec["model"]["input_shape"]),
        "layers": layers,
        "batch_size": train.get("batch_size", 32),
        "eval_batch_size": train.get("eval_batch_size", 500),
        "optimizer": (name, {**OPTIMIZER_DEFAULTS[name], **optimizer}),
        "loss": loss if isinstance(loss, str) else loss["name"],
        "seed": spec.get("seed", 42),
    }
