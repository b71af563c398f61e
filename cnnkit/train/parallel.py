"""The data-parallel training step: each rank trains on its slice of the global batch, and one
Allreduce of one preallocated buffer makes every rank's optimizer step the same.

The buffer (float32, contiguous) holds, in this order:

    every gradient (named_grads' order) | the batch's logits (n x classes) | loss sum | stop flags

Each rank computes the gradient of the SUM of its slice's losses divided by the global batch
size n (the loss's mean gradient times len(slice) / n), so the sum over ranks is the gradient
of the global batch's mean loss, whatever the slices' sizes (the remainder rule of
cnnkit.distributed.slice_bounds). The regularizers' gradients are added after the sum, once.
Each rank writes its logits into its own rows of the logits block, zeros elsewhere: the sum
is the whole batch's logits (adding zeros is exact), from which every rank updates the
metrics as a single process would. The loss sum and the stop flags (one per signal: SIGINT,
SIGTERM, SIGPIPE) ride along, so a signal to any rank stops every rank after the same step.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import numpy as np

from cnnkit.data.batches import Split, batch_indices
from cnnkit.distributed import Communicator, slice_bounds, training_part
from cnnkit.errors import SpecError
from cnnkit.interrupts import StopFlag
from cnnkit.nn.losses import Loss
from cnnkit.nn.metrics import MetricSet
from cnnkit.nn.model import Model
from cnnkit.nn.optimizers import Optimizer
from cnnkit.train.step import TrainStep

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)


class GradientBuffer:
    """The one buffer a step sums: views of it for every gradient and the logits."""

    def __init__(self, grads: dict[str, np.ndarray], batch_size: int, classes: int):
        sizes = [g.size for g in grads.values()]
        self.grad_size = int(sum(sizes))
        self.classes, self.batch_size = classes, batch_size
        self.logits_at = self.grad_size
        self.scalars_at = self.logits_at + batch_size * classes
        self.data = np.zeros(self.scalars_at + 1 + len(STOP_SIGNALS), dtype=np.float32)
        self.grads: dict[str, np.ndarray] = {}
        offset = 0
        for (name, g), size in zip(grads.items(), sizes, strict=True):
            self.grads[name] = self.data[offset : offset + size].reshape(g.shape)
            offset += size

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def fill(
        self,
        grads: dict[str, np.ndarray],
        logits: np.ndarray,
        lo: int,
        n: int,
        loss_sum: float,
        signum: int | None,
    ) -> None:
        for name, g in grads.items():
            self.grads[name][...] = g
        block = self.data[self.logits_at : self.scalars_at]
        block[:] = 0.0
        rows = block[: n * self.classes].reshape(n, self.classes)
        rows[lo : lo + len(logits)] = logits.reshape(len(logits), self.classes)
        scalars = self.data[self.scalars_at :]
        scalars[:] = 0.0
        scalars[0] = loss_sum
        if signum in STOP_SIGNALS:
            scalars[1 + STOP_SIGNALS.index(signum)] = 1.0

    def logits(self, n: int) -> np.ndarray:
        return self.data[self.logits_at : self.logits_at + n * self.classes].reshape(
            n, self.classes
        )

    def loss_sum(self) -> float:
        return float(self.data[self.scalars_at])

    def signum(self) -> int | None:
        """The signal some rank saw (SIGINT before SIGTERM before SIGPIPE), or None."""
        flags = self.data[self.scalars_at + 1 :]
        for signum, flag in zip(STOP_SIGNALS, flags, strict=True):
            if flag > 0:
                return int(signum)
        return None


class ParallelStep(TrainStep):
    """TrainStep on this rank's slice of the global batch, with the one Allreduce."""

    def __init__(
        self,
        model: Model,
        loss_fn: Loss,
        optimizer: Optimizer,
        metrics: MetricSet,
        comm: Communicator,
        batch_size: int,
        local: StopFlag,
        agreed: StopFlag,
    ):
        """local: this rank's signal flag; agreed: set once the allreduce shows any rank's."""
        super().__init__(model, loss_fn, optimizer, metrics)
        self.comm, self.batch_size = comm, batch_size
        self.local, self.agreed = local, agreed
        self.buffer: GradientBuffer | None = None  # made at the first step (the logits' width)
        self.patient = True  # the next allreduce may wait long (rank 0 was writing files)

    def __call__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        before_update: Callable[[float, dict[str, np.ndarray]], None] | None = None,
        lo: int = 0,
    ) -> float:
        """x: this rank's rows [lo, lo + len(x)) of the batch; y: the whole batch's labels.
        The loss of the whole batch as TrainStep reports it."""
        n, local = len(y), len(x)
        with training_part(lo, lo + local, n):
            logits = self.model.forward(x, training=True)
            loss, dlogits = self.loss_fn(logits, y[lo : lo + local])
            dlogits = dlogits * dlogits.dtype.type(local / n)
            self.model.backward(dlogits, regularize=False)
        grads = self.model.named_grads()
        if self.buffer is None:
            classes = int(np.prod(logits.shape[1:]))
            self.buffer = GradientBuffer(grads, self.batch_size, classes)
        buffer = self.buffer
        buffer.fill(grads, logits, lo, n, loss * local, self.local.signum)
        self.comm.sum_(buffer.data, "the gradient allreduce", timeout=not self.patient)
        self.patient = False
        agreed = buffer.signum()
        if agreed is not None and self.agreed.signum is None:
            self.agreed.signum = agreed  # every rank stops after this step
        summed = buffer.grads
        for name, extra in self.model.regularization_grads().items():
            summed[name] += extra
        mean_loss = buffer.loss_sum() / n
        if before_update is not None:
            before_update(mean_loss, summed)
        self.optimizer.step(self.params, summed)
        self.metrics.update(buffer.logits(n).copy(), y)  # the buffer is the next step's
        return mean_loss + self.model.regularization_loss()


def rank_batches(
    split: Split,
    batch_size: int,
    prepare: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator | None,
    start: int,
    comm: Communicator,
    whole: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(this rank's images, the batch's labels, lo) of every batch, as `batches` yields them
    to a single process. whole: prepare the whole batch, then slice (augmentation draws from
    one stream per batch: every rank draws what a single process draws); else slice first."""
    for idx in batch_indices(len(split), batch_size, rng, start):
        y = split.y[idx]
        lo, hi = slice_bounds(len(y), comm.rank, comm.size)
        x = prepare(split.x[idx])[lo:hi] if whole else prepare(split.x[idx][lo:hi])
        yield x, y, lo


def check_slices(n_train: int, batch_size: int, comm: Communicator) -> None:
    """Every batch must give every rank at least one image (an empty slice has no forward)."""
    last = n_train % batch_size
    small = min(batch_size, last or batch_size, n_train)
    if small >= comm.size:
        return
    what = "train.batch_size" if batch_size < comm.size else "the last batch of an epoch"
    raise SpecError(
        f"{what} has {small} images for {comm.size} workers: every worker needs at least one "
        "image of every batch",
        where="train.batch_size",
        hint=f"Use a batch_size of at least {comm.size} whose remainder of the {n_train} "
        f"training images ({n_train} % batch_size) is 0 or at least {comm.size}, or fewer "
        "workers.",
    )
