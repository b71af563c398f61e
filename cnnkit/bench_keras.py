"""The TensorFlow-Keras twin of a cnnkit model, for `cnnkit bench --vs keras` (TensorFlow is never
a dependency: this module is imported only when asked for).

cnnkit's layers carry Keras' names, options and layout (NHWC; kernels (kh, kw, in, filters),
Dense (in, out), the same weight names), so the twin is each layer's Keras class built from the
layer's own options (initializers dropped: cnnkit's weights and moving statistics are copied in
as they are; regularizers as keras.regularizers.L1L2, whose penalties Keras adds to the loss as
cnnkit does), wired as the spec wires them (Keras' functional API, merges included). The head
returns logits when cnnkit's does (softmax or sigmoid fused into the loss), with a from_logits
loss. The optimizer is Keras' own of the same name with the spec's options (Adam's epsilon
1e-7 is Keras' default and cnnkit's).

Timing is Keras at its best: a compiled training step (`model.train_on_batch`, a tf.function)
and inference as a tf.function of `model(x, training=False)`, each measured with XLA
(jit_compile) off and on after warm-up; the faster of each is timed and named in the result.
TensorFlow's intra-op pool gets cnnkit's thread count, its inter-op pool one thread, set before
TensorFlow initialises.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from cnnkit.bench_guard import cnnkit_side, judge
from cnnkit.errors import CnnkitError, ExtraMissing

INSTALL_HINT = (
    "pip install tensorflow-cpu (TensorFlow's Keras); it is never a dependency of cnnkit."
)
OPTIMIZERS = {
    "sgd": "SGD",
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "adamw": "AdamW",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "nadam": "Nadam",
}  # cnnkit's optimizers are Keras 3's, options by the same names
CROSSENTROPY = ("categorical_crossentropy", "sparse_categorical_crossentropy")


def import_keras(threads: int):
    """TensorFlow (intra-op threads = `threads`, inter-op 1) and Keras on its TensorFlow
    backend; ExtraMissing (exit 2) when TensorFlow is not installed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no C++ info lines on stderr
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import tensorflow as tf
    except ImportError:
        raise ExtraMissing(
            "--vs keras needs TensorFlow, which is not installed", hint=INSTALL_HINT
        ) from None
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already ran in this process: its pools are fixed
        pass
    import keras

    if keras.backend.backend() != "tensorflow":
        raise CnnkitError(
            f"--vs keras measures Keras on TensorFlow, but KERAS_BACKEND is "
            f"{keras.backend.backend()!r}",
            hint="Unset KERAS_BACKEND or set it to tensorflow.",
        )
    return tf, keras


def _unsupported(what: str) -> CnnkitError:
    return CnnkitError(
        f"--vs keras cannot build {what}",
        hint="Run `cnnkit bench` without --vs keras for this spec.",
    )


def _layer_kwargs(keras, layer) -> dict[str, Any]:
    """Keras constructor arguments from a cnnkit layer's options (the same names)."""
    kwargs: dict[str, Any] = {}
    for key, value in layer.options.items():
        if key.endswith("_initializer"):
            continue  # the weights are copied in
        if key.endswith("_regularizer") and value is not None:
            value = keras.regularizers.L1L2(l1=value["l1"], l2=value["l2"])
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    if getattr(layer, "returns_logits", False):
        kwargs["activation"] = "linear"  # the loss works on logits, as cnnkit's
    return kwargs


def _keras_layer(keras, layer, dtype: str):
    cls = getattr(keras.layers, layer.keras_name, None)
    if cls is None:
        raise _unsupported(f"a {layer.keras_name} layer")
    try:
        return cls(**_layer_kwargs(keras, layer), dtype=dtype)
    except (TypeError, ValueError) as e:
        raise _unsupported(f"a {layer.keras_name} layer with these options ({e})") from None


def build_twin(keras, model, dtype: str):
    """(the Keras model, {cnnkit key: Keras variable} of every weight cnnkit holds, trainable
    or not), in `dtype`, weights not yet copied."""
    if model.skipped:
        raise _unsupported("a layer whose output no layer takes (remove it)")
    inputs = keras.Input(tuple(model.input_shape), dtype=dtype)
    outputs: list = []
    variables: dict[str, Any] = {}
    for layer in model.layers:
        twin = _keras_layer(keras, layer, dtype)
        sources = [inputs if s < 0 else outputs[s] for s in layer.sources]
        outputs.append(twin(sources if layer.merges else sources[0]))
        by_name = {v.name: v for v in twin.weights}
        mine = {**layer.params, **layer.state}
        if set(by_name) != set(mine):
            raise _unsupported(
                f"a {layer.keras_name} layer: Keras holds {sorted(by_name)}, cnnkit {sorted(mine)}"
            )
        for name in mine:
            variables[f"layers.{layer.index}.{name}"] = by_name[name]
    return keras.Model(inputs, outputs[-1]), variables


class KerasRunner:
    """The Keras peer of `cnnkit bench` (cnnkit.bench's round loop calls train_step and infer,
    check_against before any training step, warm_up after it)."""

    name, label = "keras", "Keras"

    def __init__(self, spec, model, loss_fn, batch: int, threads: int, x, y):
        tf, keras = import_keras(threads)
        self.tf, self.keras, self.spec = tf, keras, spec
        self.version = f"{keras.__version__} (TensorFlow {tf.__version__})"
        self.threads = tf.config.threading.get_intra_op_parallelism_threads()
        self.cnnkit_model = model
        self.weights = {
            f"layers.{layer.index}.{name}": np.array(array)
            for layer in model.layers
            for name, array in {**layer.params, **layer.state}.items()
        }  # what both sides start from
        self.trainable = list(model.named_params())
        self._loss_spec(spec, model)
        self.model, self.variables = self._twin("float32")
        self.has_dropout = any(
            layer.keras_name in ("Dropout", "SpatialDropout2D") and layer.options["rate"] > 0
            for layer in model.layers
        )
        self.set_batch(x, y)
        self.jit = {"train": False, "infer": False}
        self._compile(self.model, jit=False)
        self._infer = self._infer_function(self.model, jit=False)

    def set_batch(self, x, y) -> None:
        """The batch (cnnkit's NHWC images, integer labels) timed and checked from now on."""
        self.x = self.tf.constant(x)
        self.y = self.tf.constant(self._labels(y, np.float32))

    # -- building -----------------------------------------------------------------------------
    def _twin(self, dtype: str):
        model, variables = build_twin(self.keras, self.cnnkit_model, dtype)
        for key, variable in variables.items():
            variable.assign(self.weights[key].astype(dtype))
        return model, variables

    def _loss_spec(self, spec, model) -> None:
        name, options = spec.loss.name, spec.loss.options
        head = model.layers[-1]
        if name not in (*CROSSENTROPY, "binary_crossentropy"):
            raise _unsupported(f"the {name} loss")
        if not (getattr(head, "returns_logits", False) or options.get("from_logits")):
            raise _unsupported(f"{name} on a last layer that does not end in softmax or sigmoid")
        self.binary = name == "binary_crossentropy"
        self.smoothing = options.get("label_smoothing", 0.0)
        self.classes = head.output_shape[-1]

    def loss(self, dtype: str):
        losses = self.keras.losses
        if self.binary:
            return losses.BinaryCrossentropy(
                from_logits=True, label_smoothing=self.smoothing, dtype=dtype
            )
        if self.smoothing:  # Keras' sparse loss has no smoothing: one-hot targets
            return losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=self.smoothing, dtype=dtype
            )
        return losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)

    def _labels(self, y, dtype):
        y = np.asarray(y)
        if self.binary:
            return y.astype(dtype).reshape(-1, 1)
        if self.smoothing:
            return np.eye(self.classes, dtype=dtype)[y]
        return y.astype(np.int64)

    def optimizer(self):
        name, options = self.spec.optimizer.name, dict(self.spec.optimizer.options)
        if name not in OPTIMIZERS:
            raise _unsupported(f"the {name} optimizer")
        try:
            return getattr(self.keras.optimizers, OPTIMIZERS[name])(**options)
        except (TypeError, ValueError) as e:
            raise _unsupported(f"the {name} optimizer with these options ({e})") from None

    def _compile(self, model, jit: bool) -> None:
        model.compile(
            optimizer=self.optimizer(),
            loss=self.loss("float32"),
            metrics=["accuracy"],  # cnnkit's training step computes accuracy too
            jit_compile=jit,
        )

    def _infer_function(self, model, jit: bool):
        return self.tf.function(lambda x: model(x, training=False), jit_compile=jit)

    # -- timed work ---------------------------------------------------------------------------
    def train_step(self) -> None:
        self.model.train_on_batch(self.x, self.y)

    def infer(self):
        return self._infer(self.x)

    def warm_up(self, steps: int) -> dict[str, Any]:
        """Warm up and time the training step and inference with XLA off and on (a twin of its
        own for each, from the same weights); keep the faster of each. Returns what was
        measured: images/s of each variant (None: XLA failed, with the error)."""
        probe = max(steps, 2)
        measured: dict[str, Any] = {"train": {}, "infer": {}}
        candidates = {False: self.model}
        try:
            xla_model, _ = self._twin("float32")
            self._compile(xla_model, jit=True)
            candidates[True] = xla_model
        except Exception as e:  # noqa: BLE001 (XLA is optional: measured without it)
            measured["xla_error"] = f"{type(e).__name__}: {e}"[:300]
        best = {}
        for kind in ("train", "infer"):
            for jit, model in candidates.items():
                run = self._runner(kind, model, jit)
                try:
                    for _ in range(steps):
                        run()
                    start = time.perf_counter()
                    for _ in range(probe):
                        run()
                    rate = probe * int(self.x.shape[0]) / (time.perf_counter() - start)
                except Exception as e:  # noqa: BLE001
                    measured["xla_error"] = f"{type(e).__name__}: {e}"[:300]
                    rate = None
                measured[kind][f"jit_compile={jit}"] = rate
                if rate is not None and rate > best.get(kind, (None, 0.0))[1]:
                    best[kind] = (jit, rate, run)
        self.jit = {kind: best[kind][0] for kind in best}
        self.model = candidates[self.jit["train"]]
        self._infer = self._infer_function(candidates[self.jit["infer"]], self.jit["infer"])
        self._infer(self.x)  # traced again for the kept model
        measured["chosen"] = {
            "train": f"model.train_on_batch, jit_compile={self.jit['train']}",
            "infer": f"tf.function(model(x, training=False)), jit_compile={self.jit['infer']}",
        }
        return measured

    def _runner(self, kind: str, model, jit: bool):
        if kind == "train":
            return lambda: model.train_on_batch(self.x, self.y)
        infer = self._infer_function(model, jit)
        return lambda: infer(self.x)

    # -- correctness guard ----------------------------------------------------------------------
    def _loss_and_grads(self, model, variables, dtype: str):
        tf = self.tf
        x = tf.cast(self.x, dtype)
        y = self.y if not (self.binary or self.smoothing) else tf.cast(self.y, dtype)
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = self.loss(dtype)(y, out)
            if model.losses:
                loss = loss + tf.add_n([tf.cast(p, dtype) for p in model.losses])
        keys = self.trainable
        grads = tape.gradient(loss, [variables[k] for k in keys])
        return float(loss.numpy()), {k: g.numpy() for k, g in zip(keys, grads, strict=True)}

    def check_against(self, ours) -> dict[str, Any]:
        """Judge cnnkit and Keras (both float32) against the Keras twin in float64 with the
        same weights and batch (cnnkit.bench_guard.judge): inference outputs and, without
        dropout, the loss (penalties included) and every parameter's gradient. Neither twin's
        weights change (the float32 twin's moving statistics are copied back in)."""
        reference, ref_variables = self._twin("float64")
        x64 = self.tf.cast(self.x, "float64")
        ref = {"output": reference(x64, training=False).numpy(), "loss": None, "gradients": {}}
        theirs = {"output": self.infer().numpy(), "loss": None, "gradients": {}}
        gradients = not self.has_dropout  # dropout's random masks differ: not comparable
        ours = cnnkit_side(ours, gradients)
        if gradients:
            ref["loss"], ref["gradients"] = self._loss_and_grads(
                reference, ref_variables, "float64"
            )
            theirs["loss"], theirs["gradients"] = self._loss_and_grads(
                self.model, self.variables, "float32"
            )
            for key, variable in self.variables.items():  # moving statistics as they were
                variable.assign(self.weights[key])
        description = "the Keras twin in float64, same weights, same batch"
        return judge("keras", "Keras", description, ours, theirs, ref)
