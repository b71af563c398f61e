"""Losses (values, float64 finite-difference gradients w.r.t. the logits, stability), the metrics
(hand-computed on tiny label sets), their spec errors, and a tiny binary run end to end."""

from __future__ import annotations

import csv
import json
import math
import textwrap
import warnings
from itertools import product

import numpy as np
import pytest

from cnnkit.errors import SpecError
from cnnkit.nn.losses import (
    BinaryCrossentropy,
    CategoricalCrossentropy,
    CategoricalHinge,
    MeanSquaredError,
    SparseCategoricalCrossentropy,
)
from cnnkit.nn.metrics import MetricSet, parse_metrics, roc_auc
from cnnkit.runs.rundir import METRICS_COLUMNS, metrics_columns
from cnnkit.spec.build import build_loss, build_metrics, build_model
from cnnkit.spec.config import parse_spec

LN2, LN3 = math.log(2.0), math.log(3.0)
EPS, TOL = 1e-6, 1e-6


def numerical_gradient(f, array: np.ndarray, eps: float = EPS) -> np.ndarray:
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(1e-8, np.max(np.abs(a)) + np.max(np.abs(b))))


# ----------------------------------------------------------------------------- gradients

GRADIENT_CASES = [
    pytest.param(CategoricalCrossentropy(), 4, id="softmax+cce"),
    pytest.param(CategoricalCrossentropy(label_smoothing=0.2), 4, id="softmax+cce-smooth"),
    pytest.param(SparseCategoricalCrossentropy(), 4, id="softmax+sparse-cce"),
    pytest.param(BinaryCrossentropy(), 1, id="sigmoid+bce"),
    pytest.param(BinaryCrossentropy(label_smoothing=0.1), 1, id="sigmoid+bce-smooth"),
    pytest.param(MeanSquaredError(head="softmax"), 4, id="softmax+mse"),
    pytest.param(MeanSquaredError(head="linear"), 4, id="linear+mse"),
    pytest.param(CategoricalHinge(head="softmax"), 4, id="softmax+hinge"),
    pytest.param(CategoricalHinge(head="linear"), 4, id="linear+hinge"),
]


@pytest.mark.parametrize("loss_fn, units", GRADIENT_CASES)
def test_loss_gradient_matches_finite_differences(loss_fn, units):
    rng = np.random.default_rng(31)
    n = 7
    logits = rng.standard_normal((n, units)) * 1.5
    labels = rng.integers(0, max(units, 2), size=n)
    if isinstance(loss_fn, CategoricalHinge):
        logits[::2][np.arange(4), labels[::2]] += 4  # some samples past the margin (no loss)
        # keep every sample away from the kinks (margin 0, ties for the largest wrong output)
        y = loss_fn.probabilities(logits)
        t = np.eye(units)[labels]
        wrong = np.sort((1 - t) * y, axis=1)
        margin = wrong[:, -1] - (t * y).sum(axis=1) + 1
        assert np.abs(margin).min() > 1e-4 and (wrong[:, -1] - wrong[:, -2]).min() > 1e-4
        assert (margin > 0).any() and (loss_fn.head == "softmax" or (margin < 0).any())
    loss, dlogits = loss_fn(logits, labels)
    assert isinstance(loss, float)
    assert dlogits.shape == logits.shape and dlogits.dtype == np.float64
    numeric = numerical_gradient(lambda: loss_fn(logits, labels)[0], logits)
    err = rel_error(dlogits, numeric)
    assert err < TOL, f"relative error {err:.3g}"
    assert np.abs(dlogits).max() > 0


def test_gradient_through_the_whole_model_with_a_sigmoid_head():
    # the model hands logits to BCE: the last Dense layer skips its sigmoid

    spec = parse_spec(BINARY_SPEC)
    model = build_model(spec).build(spec.seed, dtype=np.float64)
    loss_fn = build_loss(spec)
    rng = np.random.default_rng(2)
    x, labels = rng.random((3, 4, 4, 1)), np.array([0, 1, 1])
    logits = model.forward(x, training=True)
    assert logits.shape == (3, 1)
    _, dlogits = loss_fn(logits, labels)
    model.backward(dlogits)
    kernel = model.named_params()["layers.1.kernel"]
    analytic = model.named_grads()["layers.1.kernel"].copy()
    numeric = numerical_gradient(
        lambda: loss_fn(model.forward(x, training=True), labels)[0], kernel
    )
    assert rel_error(analytic, numeric) < TOL


# ----------------------------------------------------------------------------- values


def test_binary_crossentropy_values():
    # sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4
    logits = np.array([[0.0], [LN3], [-LN3]])
    labels = np.array([1, 1, 0])
    loss, dlogits = BinaryCrossentropy()(logits, labels)
    # -ln(1/2), -ln(3/4), -ln(1 - 1/4)
    assert loss == pytest.approx((LN2 + 2 * math.log(4 / 3)) / 3, rel=1e-14)
    # (p - y) / n
    np.testing.assert_allclose(dlogits, [[-0.5 / 3], [-0.25 / 3], [0.25 / 3]], rtol=1e-14)
    # Keras' label smoothing: y -> y (1 - s) + s / 2 = 0.9 or 0.1 for s = 0.2
    loss, _ = BinaryCrossentropy(label_smoothing=0.2)(logits, labels)
    p = np.array([0.5, 0.75, 0.25])
    y = np.array([0.9, 0.9, 0.1])
    expected = np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert loss == pytest.approx(expected, rel=1e-14)


def test_mean_squared_error_values():
    # softmax head: softmax([0, ln 2, ln 3]) = [1, 2, 3] / 6 against [0, 0, 1]:
    # (1 + 4 + 9) / 36 / 3 classes = 7 / 54
    loss, _ = MeanSquaredError(head="softmax")(np.array([[0.0, LN2, LN3]]), np.array([2]))
    assert loss == pytest.approx(7 / 54, rel=1e-14)
    # linear head: [1, -1, 2] vs [1, 0, 0] -> (0 + 1 + 4) / 3; [0, 0, 0] vs [0, 1, 0] -> 1 / 3
    loss, dlogits = MeanSquaredError(head="linear")(
        np.array([[1.0, -1.0, 2.0], [0.0, 0.0, 0.0]]), np.array([0, 1])
    )
    assert loss == pytest.approx(1.0, rel=1e-15)
    # 2 (y - t) / (n k) = (y - t) / 3
    np.testing.assert_allclose(dlogits, [[0, -1 / 3, 2 / 3], [0, -1 / 3, 0]], rtol=1e-15)


def test_categorical_hinge_values():
    # softmax [1, 2, 3] / 6: label 0: neg 3/6 - pos 1/6 + 1 = 4/3; label 2: 2/6 - 3/6 + 1 = 5/6
    logits = np.array([[0.0, LN2, LN3], [0.0, LN2, LN3]])
    loss, _ = CategoricalHinge(head="softmax")(logits, np.array([0, 2]))
    assert loss == pytest.approx((4 / 3 + 5 / 6) / 2, rel=1e-14)
    # linear: [3, 0, 1] label 0: max(1 - 3 + 1, 0) = 0 (no gradient);
    # [-1, -2, -3] label 0: Keras' neg = max((1 - t) y) = 0 (the true class' zero) -> 0 + 1 + 1 = 2
    outputs = np.array([[3.0, 0.0, 1.0], [-1.0, -2.0, -3.0]])
    loss, dlogits = CategoricalHinge(head="linear")(outputs, np.array([0, 0]))
    assert loss == pytest.approx(1.0, rel=1e-15)
    np.testing.assert_allclose(dlogits, [[0, 0, 0], [-0.5, 0, 0]], atol=1e-15)


def test_probabilities_of_each_head():
    z = np.array([[0.0], [LN3]])
    bce = BinaryCrossentropy()
    np.testing.assert_allclose(bce.probabilities(z), [[0.5], [0.75]], rtol=1e-15)
    np.testing.assert_allclose(bce.class_probabilities(z), [[0.5, 0.5], [0.25, 0.75]], rtol=1e-15)
    logits = np.array([[0.0, LN2, LN3]])
    np.testing.assert_allclose(
        MeanSquaredError(head="softmax").class_probabilities(logits), [[1 / 6, 2 / 6, 3 / 6]]
    )
    # a linear head's outputs are what Keras' predict returns
    np.testing.assert_array_equal(MeanSquaredError(head="linear").probabilities(logits), logits)


BIG_LOGIT_CASES = [
    pytest.param(BinaryCrossentropy(), np.array([[1000.0], [-1000.0], [30.0]]), id="bce"),
    pytest.param(
        BinaryCrossentropy(label_smoothing=0.1),
        np.array([[1000.0], [-1000.0], [30.0]]),
        id="bce-smooth",
    ),
    pytest.param(
        MeanSquaredError(head="softmax"),
        np.array([[1000.0, -1000.0], [-1000.0, 1000.0], [0.0, 0.0]]),
        id="mse",
    ),
    pytest.param(
        CategoricalHinge(head="softmax"),
        np.array([[1000.0, -1000.0], [-1000.0, 1000.0], [0.0, 0.0]]),
        id="hinge",
    ),
]


@pytest.mark.parametrize("loss_fn, logits", BIG_LOGIT_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_losses_stable_for_huge_logits(loss_fn, logits, dtype):
    logits = logits.astype(dtype)
    labels = np.array([1, 1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # underflow of exp(-1000) to 0 is harmless; overflow, 0/0 or log(0) is not
        with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
            loss, dlogits = loss_fn(logits, labels)
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    assert dlogits.dtype == np.dtype(dtype)
    if isinstance(loss_fn, BinaryCrossentropy) and not loss_fn.options:
        # right with certainty (0), wrong by 1000 (1000), z = 30 with y = 0 (30 + log1p(e^-30))
        assert loss == pytest.approx((0 + 1000 + 30) / 3, rel=1e-6)
        np.testing.assert_allclose(dlogits, [[0.0], [-1 / 3], [1 / 3]], atol=1e-7)


# ----------------------------------------------------------------------------- metrics


def one_hot_logits(predicted, k):
    return np.eye(k)[np.asarray(predicted)] * 5.0


def test_accuracy_precision_recall_f1_macro_with_a_class_never_predicted():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 1, 0, 1, 1])  # class 2 is never predicted
    metrics = MetricSet(["accuracy", "precision", "recall", "f1"], num_classes=3)
    # streamed in two uneven batches: the same as one
    metrics.update(one_hot_logits(predicted[:2], 3), labels[:2])
    metrics.update(one_hot_logits(predicted[2:], 3), labels[2:])
    result = metrics.result()
    # precision: 2/3, 1/3, 0 (never predicted: 0, not NaN); recall: 1, 1/2, 0
    # f1: 4/5, 2/5, 0
    assert result == pytest.approx(
        {"accuracy": 0.5, "precision": 1 / 3, "recall": 1 / 2, "f1": 2 / 5}, rel=1e-14
    )
    assert list(result) == ["accuracy", "precision", "recall", "f1"]
    np.testing.assert_array_equal(metrics.confusion, [[2, 0, 0], [1, 1, 0], [0, 2, 0]])
    metrics.reset()
    assert metrics.count == 0 and metrics.result()["accuracy"] == 0.0


def test_top_k_accuracy_counts_ties_as_hits():
    logits = np.array(
        [
            [3.0, 2.0, 2.0, 1.0],  # label 2: one class above (tie with class 1): top-2 hit
            [1.0, 1.0, 1.0, 1.0],  # label 3: all tied, nothing above: a hit for every k
            [0.0, 5.0, 4.0, 3.0],  # label 0: three above: a miss even for k = 3
            [1.0, 2.0, 3.0, 4.0],  # label 3: the top
        ]
    )
    labels = np.array([2, 3, 0, 3])
    entries = parse_metrics([{"top_k_accuracy": {"k": 1}}, {"top_k_accuracy": {"k": 2}}])
    entries += parse_metrics([{"top_k_accuracy": {"k": 3}}])
    metrics = MetricSet(entries, num_classes=4)
    metrics.update(logits, labels)
    assert metrics.result() == {
        "accuracy": 0.25,  # argmax takes the first of tied classes: only the last row is right
        "top_1_accuracy": 0.5,
        "top_2_accuracy": 0.75,
        "top_3_accuracy": 0.75,
    }


def test_one_sigmoid_unit_is_two_classes():
    # z > 0 means class 1 (p > 0.5); z = 0 (p = 0.5) is class 0
    metrics = MetricSet(["accuracy", "recall", "auc"], num_classes=2)
    metrics.update(np.array([[-1.0], [0.0], [2.0], [3.0]]), np.array([0, 1, 1, 0]))
    result = metrics.result()
    assert result["accuracy"] == 0.5
    assert result["recall"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    # positives score 0, 2; negatives -1, 3: pairs won 1 + 1 + 0 + 0... (0>-1, 2>-1) = 2 of 4
    assert result["auc"] == 0.5
    assert "auc" not in metrics.running()  # auc needs the whole epoch


def keras_precision_recall_f1(probabilities, labels):
    """keras.metrics.Precision(), Recall() and F1Score(threshold=0.5) on one sigmoid output,
    written out: predicted positive when p > 0.5 (strictly, metrics_utils' `y_pred >
    thresholds`), tp / (tp + fp), tp / (tp + fn) (divide_no_nan: 0 / 0 is 0), and
    2 p r / (p + r)."""
    predicted = np.asarray(probabilities) > 0.5
    positive = np.asarray(labels) == 1
    tp = int((predicted & positive).sum())
    fp = int((predicted & ~positive).sum())
    fn = int((~predicted & positive).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def test_binary_precision_recall_f1_are_the_positive_class_as_keras():
    # one sigmoid unit: z = 0 is p = 0.5, not positive (Keras: p > 0.5)
    z = np.array([-2.0, 0.0, 0.1, 3.0, 1.0, -1.0, 2.0, -0.5])
    labels = np.array([0, 1, 1, 1, 0, 1, 1, 0])
    names = ["accuracy", "precision", "recall", "f1"]
    names += ["precision_macro", "recall_macro", "f1_macro"]
    metrics = MetricSet(parse_metrics(names), num_classes=2, binary=True)
    metrics.update(z[:3, None], labels[:3])
    metrics.update(z[3:, None], labels[3:])
    result = metrics.result()
    # predicted 1 at z = 0.1, 3, 1, 2: tp 3 (0.1, 3, 2), fp 1 (z = 1), fn 2 (z = 0, -1), tn 2
    expected = {
        "accuracy": 5 / 8,
        "precision": 3 / 4,
        "recall": 3 / 5,
        "f1": 2 / 3,  # 2 tp / (2 tp + fp + fn) = 6 / 9
        # class 0: precision 2/4, recall 2/3, f1 4/7; averaged with class 1's
        "precision_macro": (1 / 2 + 3 / 4) / 2,
        "recall_macro": (2 / 3 + 3 / 5) / 2,
        "f1_macro": (4 / 7 + 2 / 3) / 2,
    }
    assert result == pytest.approx(expected, rel=1e-14)
    assert list(result) == names
    assert metrics.running() == result  # streamed: the progress bar shows the same
    keras = keras_precision_recall_f1(1 / (1 + np.exp(-z)), labels)
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx(keras, rel=1e-14)
    # nothing predicted positive: 0, as Keras' divide_no_nan (not NaN)
    metrics.reset()
    metrics.update(np.array([[-1.0], [-2.0]]), np.array([1, 0]))
    assert metrics.result()["precision"] == 0.0 and metrics.result()["f1"] == 0.0


def test_multiclass_precision_recall_f1_are_macro_averages():
    # K > 2: no positive class; precision = precision_macro (per class, then the mean)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    names = ["precision", "recall", "f1", "precision_macro", "recall_macro", "f1_macro"]
    metrics = MetricSet(parse_metrics(names), num_classes=3)
    metrics.update(one_hot_logits(predicted, 3), labels)
    result = metrics.result()
    # per class: precision 2/3, 1/2, 2/3; recall 2/3, 1/2, 2/3; f1 the same
    mean = (2 / 3 + 1 / 2 + 2 / 3) / 3
    assert result == pytest.approx({"accuracy": 5 / 8, **dict.fromkeys(names, mean)}, rel=1e-14)
    # a two-unit softmax is not "binary" either: macro over both classes, as before
    two = MetricSet(["precision", "precision_macro"], num_classes=2)
    two.update(np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]), np.array([1, 0, 0]))
    assert two.result() == pytest.approx(
        {"accuracy": 2 / 3, "precision": 3 / 4, "precision_macro": 3 / 4}
    )


def test_macro_metrics_in_the_spec_and_as_monitors():
    from cnnkit.nn.monitor import direction

    text = spec_text("Dense: {units: 1, activation: sigmoid}", "binary_crossentropy")
    text = text.replace("source: mnist", "source: mnist, classes: [3, 8]")
    text += "metrics: [precision, f1_macro]\n"
    text += "callbacks: {checkpoint: {monitor: val_f1_macro}, "
    text += "early_stopping: {monitor: precision_macro}}\n"
    err = spec_error(text)  # precision_macro is not computed: only the listed metrics are
    assert err.where.endswith("callbacks.early_stopping.monitor"), err.where
    assert "'precision_macro' is not a metric this run reports" in err.message, err.message
    spec = parse_spec(text.replace("precision_macro}", "f1_macro}"))
    assert spec.callbacks.checkpoint.monitor == "val_f1_macro"
    assert direction("val_f1_macro", "auto") == "max"
    metrics = build_metrics(spec)
    assert metrics.binary and metrics.names == ["accuracy", "precision", "f1_macro"]
    ten = parse_spec(spec_text("Dense: {units: 10, activation: softmax}") + "metrics: [f1]\n")
    assert not build_metrics(ten).binary


def test_auc_exact_with_ties():
    # scikit-learn's doc example: 0.75
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # positives 1, 2; negatives 1, 0: (1 vs 1) tie = 1/2, the other three pairs won: 3.5 / 4
    assert roc_auc(np.array([1.0, 2.0, 1.0, 0.0]), np.array([1, 1, 0, 0])) == 0.875
    assert roc_auc(np.full(6, 0.3), np.array([0, 1, 0, 1, 1, 0])) == 0.5
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))
    # against the pairwise definition, many ties
    rng = np.random.default_rng(5)
    scores, labels = rng.integers(0, 5, 200).astype(float), rng.integers(0, 2, 200)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [(p > q) + 0.5 * (p == q) for p, q in product(pos, neg)]
    assert roc_auc(scores, labels) == pytest.approx(np.mean(pairs), rel=1e-12)


def test_auc_of_two_softmax_units_ranks_by_the_logit_difference():
    logits = np.array([[0.0, 1.0], [2.0, 0.0], [5.0, 5.5], [0.0, 0.0]])
    metrics = MetricSet(["auc"], num_classes=2)
    metrics.update(logits[:2], np.array([1, 0]))
    metrics.update(logits[2:], np.array([0, 1]))
    # scores z1 - z0: positives 1, 0; negatives -2, 0.5 -> (1>-2, 1>0.5, 0>-2, 0<0.5) = 3/4
    assert metrics.result()["auc"] == 0.75


def test_metric_parsing_and_columns():
    assert parse_metrics(["accuracy", "top_k_accuracy", "F1"]) == [
        "accuracy",
        {"top_k_accuracy": {"k": 5}},  # Keras' default k
        "f1",
    ]
    assert parse_metrics(["sparse_top_k_categorical_accuracy", "acc"]) == [
        {"top_k_accuracy": {"k": 5}},
        "accuracy",
    ]
    names = MetricSet(parse_metrics(["precision", {"top_k_accuracy": {"k": 3}}]), 10).names
    assert names == ["accuracy", "precision", "top_3_accuracy"]  # accuracy always, first
    assert metrics_columns(["accuracy"]) == METRICS_COLUMNS
    assert metrics_columns(names) == (
        "epoch",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "precision",
        "val_precision",
        "top_3_accuracy",
        "val_top_3_accuracy",
        "seconds",
        "lr",
    )


def test_metrics_step_cost_is_vectorised():
    # one update on a big batch is numpy work, not a Python loop per sample
    import time

    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((20000, 10)), rng.integers(0, 10, 20000)
    metrics = MetricSet(parse_metrics(["top_k_accuracy", "precision", "recall", "f1"]), 10)
    start = time.perf_counter()
    metrics.update(logits, labels)
    metrics.running()
    assert time.perf_counter() - start < 0.5
    assert metrics.result()["accuracy"] == pytest.approx(
        (logits.argmax(1) == labels).mean(), rel=1e-12
    )


# ----------------------------------------------------------------------------- spec errors


def spec_text(last_layer: str, loss: str = "categorical_crossentropy", extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        name: t
        data: {{source: mnist{extra}}}
        model:
          layers:
            - Conv2D: {{filters: 2, kernel_size: 3, activation: relu}}
            - MaxPooling2D: {{}}
            - Flatten: {{}}
            - Dense: {{units: 8, activation: relu}}
            - Dropout: {{rate: 0.1}}
            - {last_layer}
        loss: {loss}
        """
    )


def spec_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return info.value


def test_binary_crossentropy_on_ten_softmax_units_names_both():
    err = spec_error(
        spec_text("Dense: {units: 10, activation: softmax}", loss="binary_crossentropy")
    )
    assert err.message == (
        "binary_crossentropy needs one sigmoid unit, the last layer model.layers[5].Dense has "
        "10 units with softmax"
    )
    assert "model.layers[5].Dense" in err.where


def test_binary_crossentropy_needs_two_classes():
    err = spec_error(
        spec_text("Dense: {units: 1, activation: sigmoid}", loss="binary_crossentropy")
    )
    assert "two classes" in err.message and "10 classes" in err.message
    assert "data.classes" in err.hint
    spec = parse_spec(
        spec_text(
            "Dense: {units: 1, activation: sigmoid}",
            loss="{name: binary_crossentropy, label_smoothing: 0.1}",
            extra=", classes: [3, 8]",
        )
        + "metrics: [accuracy, auc]\n"
    )
    loss_fn = build_loss(spec)
    assert isinstance(loss_fn, BinaryCrossentropy) and loss_fn.head == "sigmoid"
    assert build_metrics(spec).names == ["accuracy", "auc"]
    # one linear unit with from_logits: true is fine too
    parse_spec(
        spec_text(
            "Dense: {units: 1}",
            loss="{name: binary_crossentropy, from_logits: true}",
            extra=", classes: [3, 8]",
        )
    )


def test_one_sigmoid_unit_with_categorical_crossentropy_suggests_binary():
    err = spec_error(spec_text("Dense: {units: 1, activation: sigmoid}", extra=", classes: [3, 8]"))
    assert "1 outputs" in err.message and "binary_crossentropy" in err.hint


def test_mse_and_hinge_accept_softmax_or_linear_heads():
    for loss in ("mse", "mean_squared_error", "categorical_hinge"):
        for activation in ("softmax", "linear"):
            spec = parse_spec(spec_text(f"Dense: {{units: 10, activation: {activation}}}", loss))
            assert build_loss(spec).head == activation
        err = spec_error(spec_text("Dense: {units: 10, activation: sigmoid}", loss))
        assert "softmax or linear" in err.message and "sigmoid" in err.message
    err = spec_error(spec_text("Dense: {units: 10, activation: sigmoid}"))
    assert "needs a softmax last layer" in err.message and "from_logits" in err.hint


def test_metric_spec_errors():
    base = spec_text("Dense: {units: 10, activation: softmax}")
    err = spec_error(base + "metrics: [accuracy, auc]\n")
    assert "auc is for binary tasks" in err.message and err.where.endswith("metrics[1]")
    err = spec_error(base + "metrics: [precison]\n")
    assert "unknown metric 'precison'" in err.message and "did you mean 'precision'" in err.hint
    err = spec_error(base + "metrics: [{top_k_accuracy: {k: 10}}]\n")
    assert "always 1 with 10 classes" in err.message
    err = spec_error(base + "metrics: [top_k_accuracy, {top_k_accuracy: {k: 5}}]\n")
    assert "listed twice" in err.message
    err = spec_error(base + "metrics: [{top_k_accuracy: {n: 3}}]\n")
    assert "unknown top_k_accuracy option 'n'" in err.message
    spec = parse_spec(base + "metrics: [accuracy, top_k_accuracy, precision, recall, f1]\n")
    assert spec.to_dict()["metrics"][1] == {"top_k_accuracy": {"k": 5}}
    assert parse_spec(spec.to_yaml()).metrics == spec.metrics  # config.yaml round trip


# ----------------------------------------------------------------------------- end to end

BINARY_SPEC = """
name: binary
seed: 3
data: {source: synthetic, num_classes: 2, max_train_samples: 96, max_test_samples: 40}
model:
  input_shape: [4, 4, 1]
  layers:
    - Flatten: {}
    - Dense: {units: 1, activation: sigmoid}
loss: binary_crossentropy
metrics: [accuracy, precision, recall, f1, auc]
train: {epochs: 2, batch_size: 32}
"""


@pytest.mark.e2e
def test_binary_run_writes_metrics_and_evaluation(tmp_path):
    from cnnkit import api

    spec = parse_spec(BINARY_SPEC)
    result = api.train(spec, out=tmp_path)
    with open(result.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(metrics_columns(["accuracy", "precision", "recall", "f1", "auc"]))
    assert all(0 <= float(rows[-1][c]) <= 1 for c in ("auc", "val_auc", "val_f1"))
    report = api.evaluate(result.run_dir, checkpoint="last")
    assert list(report["metrics"]) == ["accuracy", "precision", "recall", "f1", "auc"]
    assert report["metrics"]["auc"] == pytest.approx(float(rows[-1]["val_auc"]), abs=1e-6)
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == 40
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / 40)
    saved = json.loads((result.run_dir / "evaluation.json").read_text())
    assert saved["metrics"] == report["metrics"]
    from cnnkit.cli.display import evaluation_tables
    from cnnkit.runs.summary import render_text

    # one sigmoid unit: precision, recall and f1 of class 1, as Keras, from the same matrix
    (tn, fp), (fn, tp) = matrix
    assert report["positive_class"] == "1"
    assert report["metrics"]["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
    assert report["metrics"]["recall"] == pytest.approx(tp / (tp + fn))
    assert report["metrics"]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert "| precision (positive class 1) |" in (result.run_dir / "report.md").read_text()
    text = "".join(render_text(t) for t in evaluation_tables(report))
    assert (
        "auc" in text
        and "f1 (positive class 1)" in text
        and "(macro)" not in text.split("Per class")[0]
    )
