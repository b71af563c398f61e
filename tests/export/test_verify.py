"""onnxruntime next to cnnkit (cnnkit.export.verify): the two figures, the tolerance, the
report's file name, batching, and the errors (a model onnxruntime cannot load, a mismatch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from cnnkit.errors import VerificationError  # noqa: E402
from cnnkit.export.verify import (  # noqa: E402
    TOLERANCE,
    compare,
    mismatch_error,
    run_onnx,
    session,
    verification_file,
)
from tests.export.test_onnx import GRAPH, parity, pixels  # noqa: E402


def test_compare_gives_the_argmax_agreement_and_the_largest_difference():
    ours = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5], [0.9, 0.1]], np.float32)
    theirs = ours.copy()
    theirs[1] = [0.6, 0.4]  # argmax flips, difference 0.2
    theirs[3] += [-3e-5, 3e-5]
    v = compare(theirs, ours, "test")
    assert (v.images, v.split, v.argmax_agreement) == (4, "test", 0.75)
    assert v.max_abs_difference == pytest.approx(0.2, abs=1e-6)
    assert not v.passed and v.tolerance == TOLERANCE == 1e-4
    assert v.to_dict()["passed"] is False
    close = compare(ours + np.float32(5e-5), ours, "test")
    assert close.passed and close.argmax_agreement == 1.0


def test_probabilities_of_another_shape_are_an_error():
    with pytest.raises(VerificationError, match=r"shape \(2, 3\), cnnkit \(2, 2\)"):
        compare(np.zeros((2, 3)), np.zeros((2, 2)), "test")


def test_the_report_sits_beside_the_model():
    assert verification_file(Path("out/digits.onnx")) == Path("out/digits.verify.json")


def test_batches_do_not_change_the_probabilities():
    _, _, proto = parity(GRAPH, n=1)
    x = pixels(7, (10, 9, 3))
    whole = run_onnx(proto.SerializeToString(), x, batch_size=64)
    np.testing.assert_allclose(
        run_onnx(proto.SerializeToString(), x, batch_size=3), whole, rtol=1e-6, atol=1e-7
    )
    assert whole.shape == (7, 4)


def test_a_model_onnxruntime_cannot_load_is_a_verification_error():
    with pytest.raises(VerificationError, match="cannot load the exported model") as caught:
        session(b"not a model")
    assert caught.value.exit_code == 1


def test_a_mismatch_names_the_figures_and_exits_1():
    ours = np.array([[0.7, 0.3]], np.float32)
    v = compare(ours + np.float32(0.01), ours, "validation")
    error = mismatch_error(v, Path("m.verify.json"))
    assert error.exit_code == 1 and error.where == "m.verify.json"
    assert "on 1 validation images" in error.message and "0.01 > 0.0001" in error.message
    assert "argmax agrees on 100.00%" in error.message and "not written" in error.hint
