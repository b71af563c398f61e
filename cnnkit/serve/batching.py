"""The images of concurrent requests through the model together, one forward pass at a time.

The model is not thread-safe (its layers keep buffers between calls), so one thread runs every
forward pass. While it runs, requests queue; when it is free it takes every queued request (up to
`max_images` images) and runs them as one batch. Nothing waits for company: a request that arrives
alone runs at once, alone, batched exactly as `cnnkit predict` batches it (so its probabilities
are predict's bit for bit); under load, the batches grow by themselves. A request's images are
never split between passes unless it alone holds more than `max_images`.

Only asyncio and numpy: the ASGI app (cnnkit.serve.app) awaits `submit`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class _Job:
    x: np.ndarray
    future: asyncio.Future


@dataclass
class BatchStats:
    """What the queue has done: /health shows it (requests per pass says how much batching
    happened)."""

    requests: int = 0
    images: int = 0
    forward_passes: int = 0
    largest_batch: int = 0  # images in the largest pass


class BatchQueue:
    """infer(x) -> rows, called in one worker thread on the concatenated images of the
    requests queued while the previous call ran (at most max_images, or one whole request)."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_images: int):
        self._infer = infer
        self.max_images = max(1, int(max_images))
        self._pending: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnkit-infer")
        self.stats = BatchStats()

    async def start(self) -> None:
        """Start the worker on the running event loop (the app's lifespan)."""
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._work(), name="cnnkit-batching")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._pending:
            job.future.cancel()
        self._thread.shutdown(wait=True)

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """The rows of x (uint8 images, N >= 1), computed with whatever else is queued."""
        if self._wake is None:
            raise RuntimeError("BatchQueue.start() was not awaited")
        job = _Job(x, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._wake.set()
        return await job.future

    def _take(self) -> list[_Job]:
        """The first queued request, and the next ones while the images fit in max_images."""
        jobs = [self._pending.popleft()]
        images = len(jobs[0].x)
        while self._pending and images + len(self._pending[0].x) <= self.max_images:
            job = self._pending.popleft()
            jobs.append(job)
            images += len(job.x)
        return [job for job in jobs if not job.future.done()]  # a gone client's is cancelled

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                jobs = self._take()
                if not jobs:
                    continue
                x = jobs[0].x if len(jobs) == 1 else np.concatenate([job.x for job in jobs])
                try:
                    rows = await loop.run_in_executor(self._thread, self._infer, x)
                except Exception as error:  # a bug: every waiting request hears of it
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(error)
                    continue
                self._record(jobs, len(x))
                start = 0
                for job in jobs:
                    end = start + len(job.x)
                    if not job.future.done():
                        job.future.set_result(rows[start:end])
                    start = end

    def _record(self, jobs: list[_Job], images: int) -> None:
        stats = self.stats
        stats.requests += len(jobs)
        stats.images += images
        stats.forward_passes += 1
        stats.largest_batch = max(stats.largest_batch, images)
