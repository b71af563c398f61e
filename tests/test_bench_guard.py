"""The correctness guard every peer's twin shares (cnnkit.bench_guard): the relative error, the
floor for gradients that are zero in exact arithmetic, and the rule: cnnkit passes within the
tolerance, or as close as the peer's own float32 is on that array; only cnnkit off is refused.
With real twins: tests/test_bench.py (PyTorch), tests/test_bench_keras.py (Keras)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.bench_guard import PEER_FACTOR, TOLERANCE, judge, relative_error
from cnnkit.errors import CnnkitError

REF = {
    "output": np.array([[1.0, -2.0], [0.5, 4.0]]),
    "loss": 0.5,
    "gradients": {"layers.0.kernel": np.array([2.0, -1.0]), "layers.0.bias": np.zeros(2)},
}


def _side(output=0.0, loss=0.0, kernel=0.0, bias=0.0) -> dict:
    """REF with each array moved by the given relative error (of its largest entry)."""
    return {
        "output": REF["output"] + output * 4.0,
        "loss": REF["loss"] * (1 + loss),
        "gradients": {
            "layers.0.kernel": REF["gradients"]["layers.0.kernel"] + kernel * 2.0,
            "layers.0.bias": np.array([bias * 2e-3, 0.0]),  # measured against the floor
        },
    }


def test_relative_error():
    assert relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert relative_error([1.0, 2.5], [1.0, 2.0]) == pytest.approx(0.25)
    assert relative_error(3.0, 2.0) == pytest.approx(0.5)
    assert relative_error([1e-9], [0.0], floor=1e-3) == pytest.approx(1e-6)
    assert relative_error([0.0], [0.0]) == 0.0 and relative_error([1.0], [0.0]) == np.inf
    assert relative_error([np.nan], [1.0]) == np.inf


def test_judge_reports_each_array_and_the_worst():
    check = judge(
        "keras", "Keras", "the Keras twin in float64", _side(1e-6), _side(kernel=2e-3), REF
    )
    assert check["ok"] and check["peer"] == "keras" and check["tolerance"] == TOLERANCE
    mine, theirs = check["cnnkit"], check["keras"]
    assert mine["ok"] and mine["worst"] == "output" and mine["max"] == pytest.approx(1e-6)
    assert not theirs["ok"] and theirs["worst"] == "gradient of layers.0.kernel"
    assert theirs["gradients"]["layers.0.bias"] == pytest.approx(0.0)
    assert theirs["max"] == pytest.approx(2e-3)


def test_cnnkit_as_close_as_the_peer_passes_and_farther_is_refused():
    """A gradient zero in exact arithmetic: 1e-3 of the largest gradient is the scale."""
    close = judge("torch", "PyTorch", "ref", _side(bias=0.3), _side(bias=0.3 / PEER_FACTOR), REF)
    assert close["ok"] and close["cnnkit"]["worst"] == "gradient of layers.0.bias"
    with pytest.raises(CnnkitError, match="cnnkit's gradient of layers.0.bias is off by 3.00e-01"):
        judge("torch", "PyTorch", "ref", _side(bias=0.3), _side(bias=0.01), REF)
    with pytest.raises(CnnkitError, match="Keras in float32 is off by 0.00e"):
        judge("keras", "Keras", "ref", _side(loss=1e-3), _side(), REF)


def test_in_an_ill_conditioned_network_a_gradient_may_be_as_far_off_as_the_peers_worst():
    """The peer's float32 beyond the tolerance on one gradient (resnet20: relu masks flipping on
    rounding hit other layers on each side): cnnkit's other gradients may be as far off."""
    elsewhere = judge("torch", "PyTorch", "ref", _side(kernel=2e-3), _side(bias=2e-3), REF)
    assert elsewhere["ok"] and elsewhere["cnnkit"]["worst"] == "gradient of layers.0.kernel"
    with pytest.raises(CnnkitError, match="gradient of layers.0.kernel is off by 2.00e-02"):
        judge("torch", "PyTorch", "ref", _side(kernel=2e-2), _side(bias=2e-3), REF)
    # a well-conditioned network (the peer within the tolerance everywhere) gives no such room
    with pytest.raises(CnnkitError, match="gradient of layers.0.kernel is off by 2.00e-03"):
        judge("torch", "PyTorch", "ref", _side(kernel=2e-3), _side(bias=5e-5), REF)
    # nor does it extend to the output and the loss
    with pytest.raises(CnnkitError, match="cnnkit's output is off"):
        judge("torch", "PyTorch", "ref", _side(output=2e-3), _side(bias=2e-3), REF)


def test_without_gradients_only_the_output_is_judged():
    ref = {"output": REF["output"], "loss": None, "gradients": {}}
    side = {"output": REF["output"], "loss": None, "gradients": {}}
    check = judge("keras", "Keras", "ref", side, side, ref)
    assert check["ok"] and check["cnnkit"]["loss"] is None and check["cnnkit"]["gradients"] == {}
