"""Cross-entropy losses (cnnkit.nn.losses): finite-difference gradients, values by formula,
label smoothing, stability for huge logits.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cnnkit.nn.losses import CategoricalCrossentropy, SparseCategoricalCrossentropy
from tests.nn.gradcheck import (
    TOL,
    numerical_gradient,
    rel_error,
)


def log_softmax_reference(z):
    z = np.asarray(z, dtype=np.float64)
    return np.array([[v - np.log(np.sum(np.exp(row))) for v in row] for row in z])


LOSS_CASES = [
    pytest.param(CategoricalCrossentropy, {"label_smoothing": 0.0}, id="cce"),
    pytest.param(CategoricalCrossentropy, {"label_smoothing": 0.1}, id="cce-smooth0.1"),
    pytest.param(SparseCategoricalCrossentropy, {}, id="sparse-cce"),
]


@pytest.mark.parametrize("cls, options", LOSS_CASES)
def test_crossentropy_gradient(cls, options):
    rng = np.random.default_rng(21)
    logits = rng.standard_normal((5, 4)) * 2
    labels = np.array([0, 3, 1, 1, 2])
    loss_fn = cls(from_logits=False, **options)
    loss, dlogits = loss_fn(logits, labels)
    assert isinstance(loss, float)
    assert dlogits.shape == logits.shape and dlogits.dtype == np.float64
    numeric = numerical_gradient(lambda: loss_fn(logits, labels)[0], logits)
    err = rel_error(dlogits, numeric)
    assert err < TOL, f"relative error {err:.3g}"
    # rows of softmax - targets sum to zero
    np.testing.assert_allclose(dlogits.sum(axis=1), 0, atol=1e-15)


@pytest.mark.parametrize("cls", [CategoricalCrossentropy, SparseCategoricalCrossentropy])
def test_crossentropy_value_matches_numpy_formula(cls):
    rng = np.random.default_rng(22)
    logits = rng.standard_normal((6, 3))
    labels = np.array([2, 0, 1, 1, 0, 2])
    loss, _ = cls(from_logits=False)(logits, labels)
    expected = -np.mean(log_softmax_reference(logits)[np.arange(6), labels])
    assert loss == pytest.approx(expected, rel=1e-13)


def test_crossentropy_label_smoothing_value():
    rng = np.random.default_rng(23)
    logits = rng.standard_normal((4, 5))
    labels = np.array([4, 0, 2, 2])
    s, k = 0.1, 5
    loss, _ = CategoricalCrossentropy(label_smoothing=s, from_logits=False)(logits, labels)
    logp = log_softmax_reference(logits)
    # Keras: targets = onehot * (1 - s) + s / k
    per_sample = [
        -sum(((1 - s) * (j == labels[i]) + s / k) * logp[i, j] for j in range(k)) for i in range(4)
    ]
    assert loss == pytest.approx(np.mean(per_sample), rel=1e-13)


def test_crossentropy_known_value():
    # logits all equal: softmax uniform over 4 classes, loss = log(4) per sample
    loss, dlogits = CategoricalCrossentropy(label_smoothing=0.0, from_logits=False)(
        np.zeros((2, 4)), np.array([1, 3])
    )
    assert loss == pytest.approx(np.log(4.0), rel=1e-15)
    # (softmax - onehot) / batch = (0.25 - [0,1,0,0]) / 2
    np.testing.assert_allclose(dlogits[0], [0.125, -0.375, 0.125, 0.125], rtol=1e-15)


@pytest.mark.parametrize(
    "cls, options",
    [
        (CategoricalCrossentropy, {"label_smoothing": 0.0}),
        (CategoricalCrossentropy, {"label_smoothing": 0.1}),
        (SparseCategoricalCrossentropy, {}),
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_crossentropy_stable_for_huge_logits(cls, options, dtype):
    logits = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]], dtype=dtype)
    labels = np.array([0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # underflow of exp(-2000) to 0 is harmless; overflow, 0/0 or log(0) is not
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            loss, dlogits = cls(from_logits=False, **options)(logits, labels)
    assert np.isfinite(loss)
    assert np.isfinite(dlogits).all()
    assert dlogits.dtype == np.dtype(dtype)
    if options.get("label_smoothing", 0.0) == 0.0:
        # sample 0 is right with certainty (loss 0), sample 1 is off by 2000
        assert loss == pytest.approx(1000.0, rel=1e-6)
        expected = np.array([[0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]]) / 2
        np.testing.assert_allclose(dlogits, expected, atol=1e-7)
