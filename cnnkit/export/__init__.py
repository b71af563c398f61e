"""Exporting a trained run: ONNX (`cnnkit export RUN_DIR`), checked by onnxruntime.

The exported model's contract (docs/deploying.md):

- one input `image`: float32 (N, H, W, C), raw pixel values 0-255 in the model's colour mode,
  decoded and resized as `cnnkit predict` decodes a file;
- one output `probabilities`: float32 (N, classes), what `cnnkit predict` and `evaluate`
  report (Loss.class_probabilities): a one-unit sigmoid model gives two columns [1 - p, p];
- inside the graph: data.rescale, the samplewise and featurewise normalisation (the run's
  normalization.json), the NHWC -> NCHW transpose, every layer, the head activation.

The onnx and onnxruntime packages are the `onnx` extra: require_onnx() says so when they are
missing; the modules that build and run models (onnx, layers, verify) import them at the top
and are imported only after it.
"""

from __future__ import annotations

from cnnkit.errors import ExtraMissing

EXTRA_HINT = 'Install the extra: pip install "cnnkit[onnx]" (the onnx and onnxruntime packages).'


def require_onnx() -> None:
    """ExtraMissing (exit code 2) unless onnx and onnxruntime can be imported."""
    missing = []
    for package in ("onnx", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ExtraMissing(
            f"exporting to ONNX needs the {' and '.join(missing)} package"
            + ("s" if len(missing) > 1 else "")
            + ", which "
            + ("are" if len(missing) > 1 else "is")
            + " not installed",
            hint=EXTRA_HINT,
        )
