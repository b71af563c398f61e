"""One epoch of a cnnkit MNIST spec in plain TensorFlow-Keras, then the test-set loss and
accuracy: the Keras yardstick of `cnnkit train SPEC --epochs 1` (benchmarks/epoch_vs_peers.py
times both, and benchmarks/torch_epoch.py, as fresh processes).

What a Keras user writes: the IDX files read with numpy, rescaled by 1/255; keras.Sequential
of the spec's layers (cnnkit's layer names and options are Keras' own), compile with the spec's
optimizer (Adam's epsilon 1e-7 is Keras' default) and sparse categorical cross-entropy on the
softmax output, `model.fit(epochs=1, batch_size=the spec's, shuffle=True)`, then
`model.evaluate` on the test set in batches of train.eval_batch_size (500). TensorFlow's
intra-op pool gets --threads, its inter-op pool 1, before TensorFlow starts. --jit-compile:
Keras' default (auto) or XLA forced on or off. Neither cnnkit nor Numba is imported.

Usage: python benchmarks/keras_epoch.py configs/mnist_basic.yaml [--threads N] [--jit-compile auto]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from peer_spec import MNIST, mnist, read_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--data", type=Path, default=MNIST)
    parser.add_argument("--limit", type=int, default=None, help="first N images (a smoke test)")
    parser.add_argument("--jit-compile", default="auto", choices=("auto", "true", "false"))
    args = parser.parse_args()
    start = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    spec = read_spec(args.spec)
    keras.utils.set_random_seed(spec["seed"])
    x_train, y_train, x_test, y_test = mnist(args.data, args.limit)
    layers = [getattr(keras.layers, kind)(**options) for kind, options in spec["layers"]]
    model = keras.Sequential([keras.Input(spec["input_shape"]), *layers])
    name, options = spec["optimizer"]
    optimizer = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[name](**options)
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit,
    )
    first_step = time.perf_counter()
    model.fit(x_train, y_train, batch_size=spec["batch_size"], epochs=1, shuffle=True, verbose=0)
    train_s = time.perf_counter() - first_step
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=spec["eval_batch_size"], verbose=0)
    print(
        f"keras {keras.__version__} (tensorflow {tf.__version__}), {spec['name']}, "
        f"{tf.config.threading.get_intra_op_parallelism_threads()} threads, jit_compile "
        f"{model.jit_compile}: {len(x_train) / train_s:,.0f} training images/s; "
        f"test loss {loss:.4f}, accuracy {accuracy:.4f}; "
        f"{time.perf_counter() - start:.1f} s in the script"
    )


if __name__ == "__main__":
    main()
