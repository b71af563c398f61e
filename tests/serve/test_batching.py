"""The batching queue of `cnnkit serve` in-process: requests queued while a forward pass runs
go through the next one together, in order; a lone request goes alone, whole; an error reaches
every request of its pass and the queue goes on."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from cnnkit.serve.batching import BatchQueue


class Model:
    """infer(x): the rows are x's first pixel, doubled; records each batch's size. The first
    call blocks until `release` is set, so that the test can queue requests behind it."""

    def __init__(self, fail_on: int | None = None):
        self.batches: list[int] = []
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not self.batches:
            self.release.wait(5)
        self.batches.append(len(x))
        if self.fail_on is not None and len(self.batches) == self.fail_on:
            raise RuntimeError("boom")
        return x.reshape(len(x), -1)[:, :1].astype(np.float64) * 2


def images(first: int, n: int) -> np.ndarray:
    return np.arange(first, first + n, dtype=np.uint8).reshape(n, 1, 1, 1)


async def queued_behind_a_running_pass(model: Model, sizes: list[int], max_images: int):
    """One request runs (blocked), the others queue meanwhile; then the pass is released."""
    queue = BatchQueue(model, max_images)
    await queue.start()
    first = asyncio.create_task(queue.submit(images(100, 1)))
    await asyncio.sleep(0)  # submitted
    while queue._pending:  # taken: the first pass has started (blocked in its thread)
        await asyncio.sleep(0.005)
    starts = np.cumsum([0, *sizes])[:-1]
    rest = [
        asyncio.create_task(queue.submit(images(s, n))) for s, n in zip(starts, sizes, strict=True)
    ]
    await asyncio.sleep(0.05)  # every request queued behind the first
    model.release.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    stats = queue.stats
    await queue.close()
    return results, stats


def test_requests_queued_meanwhile_share_the_next_pass_each_getting_its_own_rows():
    model = Model()
    results, stats = asyncio.run(queued_behind_a_running_pass(model, [1, 3, 2], 16))
    assert model.batches == [1, 6]  # the lone first request alone, then the three together
    assert results[0].ravel().tolist() == [200]
    assert [r.ravel().tolist() for r in results[1:]] == [[0], [2, 4, 6], [8, 10]]
    assert (stats.requests, stats.images, stats.forward_passes, stats.largest_batch) == (4, 7, 2, 6)


def test_a_pass_holds_at_most_max_images_but_a_larger_request_goes_whole():
    model = Model()
    results, _ = asyncio.run(queued_behind_a_running_pass(model, [2, 2, 5, 1], 4))
    assert model.batches == [1, 4, 5, 1]  # 2+2 | 5 alone (never split) | 1
    assert results[3].ravel().tolist() == [8, 10, 12, 14, 16]


def test_an_error_reaches_every_request_of_its_pass_and_the_queue_goes_on():
    model = Model(fail_on=2)
    results, _ = asyncio.run(queued_behind_a_running_pass(model, [1, 1], 8))
    assert results[0].ravel().tolist() == [200]
    assert all(isinstance(r, RuntimeError) for r in results[1:])

    async def after_the_error():
        queue = BatchQueue(model, 8)
        await queue.start()
        rows = await queue.submit(images(5, 2))
        await queue.close()
        return rows

    assert asyncio.run(after_the_error()).ravel().tolist() == [10, 12]


def test_submit_before_start_is_a_bug_said_plainly():
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(BatchQueue(Model(), 4).submit(images(0, 1)))
