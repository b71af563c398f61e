"""The one training step: its loss is Keras' (data loss + regularization penalties), the
metrics see its logits, a check before the update can stop it, and bench times this step."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.bench import _CnnkitRunner
from cnnkit.nn.optimizers import SGD
from cnnkit.spec.build import build_loss, build_metrics, build_model
from cnnkit.spec.config import parse_spec
from cnnkit.train.step import TrainStep

SPEC = """\
name: step
data: {source: synthetic, num_classes: 3}
model:
  input_shape: [4, 4, 1]
  layers:
    - Flatten: {}
    - Dense: {units: 3, activation: softmax, kernel_regularizer: {l2: 0.5}}
optimizer: {name: sgd, learning_rate: 0.1}
"""


def parts():
    spec = parse_spec(SPEC)
    model = build_model(spec).build(spec.seed)
    loss_fn = build_loss(spec)
    optimizer = SGD(learning_rate=0.1)
    rng = np.random.default_rng(0)
    x = rng.random((6, 4, 4, 1), dtype=np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    return spec, model, loss_fn, optimizer, x, y


def test_the_loss_includes_the_penalties_and_the_metrics_see_the_batch():
    spec, model, loss_fn, optimizer, x, y = parts()
    step = TrainStep(model, loss_fn, optimizer, build_metrics(spec))
    logits = model.forward(x, training=True)
    data_loss, _ = loss_fn(logits, y)
    before = {k: v.copy() for k, v in model.named_weights().items()}
    loss = step(x, y)
    assert model.regularization_loss() > 0.01  # the penalty of the updated weights
    assert loss == pytest.approx(data_loss + model.regularization_loss(), rel=1e-6)
    assert any(not np.array_equal(before[k], v) for k, v in model.named_weights().items())
    assert step.metrics.confusion.sum() == len(y)


def test_a_check_before_the_update_can_stop_the_step():
    spec, model, loss_fn, optimizer, x, y = parts()
    step = TrainStep(model, loss_fn, optimizer, build_metrics(spec))
    before = {k: v.copy() for k, v in model.named_weights().items()}

    def refuse(loss, grads):
        assert set(grads) == set(before)
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        step(x, y, refuse)
    assert all(np.array_equal(before[k], v) for k, v in model.named_weights().items())
    assert optimizer.iterations == 0


def test_bench_times_the_training_step():
    runner = _CnnkitRunner(parse_spec(SPEC), 4)
    assert isinstance(runner.step, TrainStep)
    runner.train_step()
    assert runner.optimizer.iterations == 1 and runner.step.metrics.confusion.sum() == 4
