"""The data-parallel step in one process: two ranks as two threads that sum their buffers
through a barrier (ThreadRanks, the same float additions as a 2-rank Allreduce), against
TrainStep on the whole batches. The real MPI processes are tests/e2e/test_distributed.py."""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest

from cnnkit import distributed
from cnnkit.distributed import Communicator
from cnnkit.errors import SpecError
from cnnkit.interrupts import StopFlag
from cnnkit.nn.metrics import MetricSet
from cnnkit.spec.build import build_loss, build_model, build_optimizer
from cnnkit.spec.config import parse_spec
from cnnkit.train.parallel import GradientBuffer, ParallelStep, check_slices, rank_batches
from cnnkit.train.step import TrainStep

SPEC = """\
seed: 4
data: {source: synthetic, num_classes: 3}
model:
  input_shape: [6, 5, 2]
  layers:
    - Conv2D: {filters: 3, kernel_size: 3, padding: same, activation: relu,
               kernel_regularizer: {l2: 0.01}}
    - BatchNormalization: {synchronized: SYNC}
    - Dropout: {rate: 0.3}
    - Flatten: {}
    - Dense: {units: 3, activation: softmax}
optimizer: {name: adam, learning_rate: 0.01}
"""


class ThreadRanks(Communicator):
    """`size` ranks as threads of this process: each thread sets its rank; sum_ adds every
    rank's buffer in rank order (as a 2-rank Allreduce: a + b on both)."""

    def __init__(self, size: int):
        self.size, self.local = size, threading.local()
        self.barrier = threading.Barrier(size)
        self.slots: list = [None] * size

    @property
    def rank(self) -> int:
        return self.local.rank

    def sum_(self, buffer, what="allreduce", timeout=True):
        self.slots[self.rank] = buffer.copy()
        self.barrier.wait()
        total = self.slots[0].copy()
        for other in self.slots[1:]:
            total += other
        self.barrier.wait()
        buffer[...] = total
        return buffer

    def broadcast(self, value, what="broadcast", timeout=True):
        self.slots[self.rank] = value
        self.barrier.wait()
        root = self.slots[0]
        self.barrier.wait()
        return root


def build(sync: bool):
    spec = parse_spec(SPEC.replace("SYNC", str(sync).lower()))
    model = build_model(spec).build(spec.seed)
    return model, build_loss(spec), build_optimizer(spec), MetricSet(["accuracy"], 3)


def batches_of(n_batches: int = 3, batch: int = 7):
    rng = np.random.default_rng(0)
    return [
        (rng.standard_normal((batch, 6, 5, 2)).astype(np.float32), rng.integers(0, 3, batch))
        for _ in range(n_batches)
    ]


def train_ranks(sync: bool, data, size: int = 2):
    """Each rank's weights, losses and metrics after training on `data` as `size` threads."""
    comm = ThreadRanks(size)
    results: list = [None] * size
    errors: list = []

    def rank(r: int) -> None:
        try:
            comm.local.rank = r
            model, loss_fn, optimizer, metrics = build(sync)
            step = ParallelStep(model, loss_fn, optimizer, metrics, comm, 7, StopFlag(), StopFlag())
            losses = []
            for x, y in data:
                lo, hi = distributed.slice_bounds(len(y), r, size)
                losses.append(step(x[lo:hi], y, None, lo))
            results[r] = (model.named_weights(), losses, metrics.result())
        except BaseException as error:  # raised in the test's thread
            errors.append(error)
            comm.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(size)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distributed, "_world", comm)  # what synchronized BN asks
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return results


def train_single(data):
    model, loss_fn, optimizer, metrics = build(True)
    step = TrainStep(model, loss_fn, optimizer, metrics)
    losses = [step(x, y) for x, y in data]
    return model.named_weights(), losses, metrics.result()


def test_two_ranks_equal_one_process_and_each_other():
    """Batches of 7 split 4 + 3 (the remainder rule), synchronized BN, Dropout masks of the
    whole batch, an L2 penalty added once: the weights within 1e-5 of one process's, both
    ranks bit for bit the same, the reported loss and accuracy the whole batch's."""
    data = batches_of()
    (w0, loss0, m0), (w1, loss1, m1) = train_ranks(True, data)
    w, loss, m = train_single(data)
    for key in w:
        assert np.array_equal(w0[key], w1[key]), key
        scale = max(float(np.max(np.abs(w[key]))), 1e-30)
        assert float(np.max(np.abs(w0[key] - w[key]))) / scale < 1e-5, key
    assert loss0 == loss1
    np.testing.assert_allclose(loss0, loss, rtol=1e-5)
    assert m0 == m1 and m0["accuracy"] == pytest.approx(m["accuracy"])


def test_per_rank_batch_statistics_differ_from_one_process():
    """Without synchronized the ranks normalise by their own slices: the trainable weights
    still agree between ranks (one allreduce), the moving statistics are each rank's."""
    data = batches_of(2)
    (w0, _, _), (w1, _, _) = train_ranks(False, data)
    w, _, _ = train_single(data)
    kernel = "layers.0.kernel"
    assert np.array_equal(w0[kernel], w1[kernel])
    assert not np.allclose(w0[kernel], w[kernel], rtol=1e-5, atol=0)
    assert not np.array_equal(w0["layers.1.moving_mean"], w1["layers.1.moving_mean"])


def test_buffer_holds_gradients_logits_loss_and_the_first_signal():
    grads = {"a": np.ones((2, 3), np.float32), "b": np.full(4, 2.0, np.float32)}
    buffer = GradientBuffer(grads, batch_size=5, classes=2)
    assert buffer.data.size == 6 + 4 + 5 * 2 + 1 + 3
    logits = np.arange(4, dtype=np.float32).reshape(2, 2)
    buffer.fill(grads, logits, lo=3, n=5, loss_sum=1.5, signum=signal.SIGTERM)
    assert np.array_equal(buffer.grads["a"], grads["a"]) and buffer.grads["b"][0] == 2.0
    expected = np.zeros((5, 2), np.float32)
    expected[3:] = logits
    assert np.array_equal(buffer.logits(5), expected)
    assert buffer.loss_sum() == 1.5 and buffer.signum() == signal.SIGTERM
    buffer.data[-3] = 1.0  # another rank's SIGINT: it wins
    assert buffer.signum() == signal.SIGINT
    buffer.fill(grads, logits, lo=0, n=2, loss_sum=0.0, signum=None)
    assert buffer.signum() is None and buffer.logits(2).tolist() == logits.tolist()


def test_rank_batches_give_each_rank_its_slice_of_the_same_batches():
    from cnnkit.data.batches import Split, batches

    split = Split(np.arange(11 * 2, dtype=np.uint8).reshape(11, 2, 1, 1), np.arange(11))
    comm = ThreadRanks(2)
    whole = list(batches(split, 4, 1.0, np.random.default_rng(1)))
    parts = []
    for r in range(2):
        comm.local.rank = r
        got = list(
            rank_batches(split, 4, lambda x: x * 1.0, np.random.default_rng(1), 0, comm, False)
        )
        parts.append(got)
    for (x, y), (x0, y0, lo0), (x1, y1, lo1) in zip(whole, *parts, strict=True):
        assert np.array_equal(y0, y) and np.array_equal(y1, y) and lo0 == 0
        assert np.array_equal(np.concatenate([x0, x1]), x) and lo1 == len(x0)


def test_every_rank_needs_an_image_of_every_batch():
    check_slices(10, 4, ThreadRanks(2))  # 4, 4, 2
    with pytest.raises(SpecError, match="last batch of an epoch has 1 images for 2 workers"):
        check_slices(9, 4, ThreadRanks(2))
    with pytest.raises(SpecError, match="train.batch_size has 2 images for 3 workers"):
        check_slices(10, 2, ThreadRanks(3))
