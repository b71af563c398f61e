"""onnxruntime next to cnnkit: the exported model run on the same uint8 images, compared.

Two figures: the share of images whose argmax agrees and the largest absolute difference of
any probability. Above TOLERANCE the export fails; both figures go next to the model file
(FILE.verify.json) whether it passes or not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from cnnkit.errors import VerificationError
from cnnkit.export.onnx import INPUT

TOLERANCE = 1e-4  # the largest absolute probability difference an export may have


@dataclass
class Verification:
    images: int
    split: str  # where the images came from: test (the default), validation or train
    argmax_agreement: float  # share of images with the same most probable class
    max_abs_difference: float  # over every image and class
    tolerance: float
    onnxruntime_version: str

    @property
    def passed(self) -> bool:
        return self.max_abs_difference <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def verification_file(model_file: Path) -> Path:
    """model.onnx -> model.verify.json, beside it."""
    return Path(model_file).with_suffix(".verify.json")


def session(model_bytes: bytes) -> onnxruntime.InferenceSession:
    """An onnxruntime session on the CPU; a model it cannot load is a VerificationError."""
    try:
        return onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types (Fail, InvalidGraph, ...)
        raise VerificationError(
            f"onnxruntime {onnxruntime.__version__} cannot load the exported model: {error}",
            hint="An older opset (--opset 17) loads in more runtimes.",
        ) from None


def run_onnx(model_bytes: bytes, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's probabilities for uint8 (or float) images x (N, H, W, C), in batches."""
    runner = session(model_bytes)
    out = [
        runner.run(None, {INPUT: x[i : i + batch_size].astype(np.float32)})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def compare(
    onnx_probabilities: np.ndarray,
    cnnkit_probabilities: np.ndarray,
    split: str,
    tolerance: float = TOLERANCE,
) -> Verification:
    """The two figures of two (N, classes) probability arrays of the same images."""
    if onnx_probabilities.shape != cnnkit_probabilities.shape:
        raise VerificationError(
            f"the exported model gives probabilities of shape {onnx_probabilities.shape}, "
            f"cnnkit {cnnkit_probabilities.shape}",
            hint="This is a bug in cnnkit's export: please report it.",
        )
    n = len(cnnkit_probabilities)
    same = onnx_probabilities.argmax(axis=1) == cnnkit_probabilities.argmax(axis=1)
    difference = np.abs(onnx_probabilities.astype(np.float64) - cnnkit_probabilities)
    return Verification(
        images=n,
        split=split,
        argmax_agreement=float(same.mean()) if n else 1.0,
        max_abs_difference=float(difference.max()) if n else 0.0,
        tolerance=tolerance,
        onnxruntime_version=onnxruntime.__version__,
    )


def mismatch_error(verification: Verification, report: Path) -> VerificationError:
    """The error of an export whose probabilities differ beyond the tolerance."""
    v = verification
    return VerificationError(
        f"the exported model disagrees with cnnkit on {v.images} {v.split} images: largest "
        f"probability difference {v.max_abs_difference:.3g} > {v.tolerance:g}, argmax agrees "
        f"on {v.argmax_agreement:.2%}",
        where=str(report),
        hint="The .onnx file was not written. This is a bug in cnnkit's export: please report "
        "it with the run's config.yaml and this file.",
    )
