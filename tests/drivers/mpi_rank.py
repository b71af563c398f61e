"""`python -m tests.drivers.mpi_rank ACTION RANK STEP ARGS...`: cnnkit's CLI (`cnnkit ARGS...`)
in which data-parallel rank RANK does ACTION right after optimizer step STEP:

- INT, TERM: sends itself SIGINT / SIGTERM (a signal to one rank);
- LAUNCHER-INT, LAUNCHER-TERM: sends the signal to the `--workers` launcher
  (CNNKIT_LAUNCHER_PID), as Ctrl-C at the terminal does;
- KILL: SIGKILL to itself (a rank that dies), having written the time to the file named by
  MPI_RANK_MARK (when set).

Run under `mpiexec -n N`, or with `--workers N` in ARGS: the launcher starts this same
driver as the ranks (it re-runs its own command line). The rank then waits until the signal
has reached it (forwarded by the launcher and mpiexec), so that it stops after its next step
whatever the machine's load."""

from __future__ import annotations

import os
import signal
import sys
import time

from cnnkit.distributed import env_rank
from cnnkit.launch import LAUNCHER_PID
from cnnkit.train.callbacks import Callback
from tests.drivers.signal_at_step import with_callback


class RankAction(Callback):
    def __init__(self, action: str, rank: int, at: int):
        self.action, self.rank, self.at = action, rank, at

    def on_train_batch_end(self, step: int, logs: dict[str, float]) -> None:
        if env_rank() != self.rank or self.trainer.optimizer.iterations != self.at:
            return
        mark = os.environ.get("MPI_RANK_MARK")
        if mark:
            with open(mark, "w") as f:
                f.write(repr(time.time()))
        name = self.action.removeprefix("LAUNCHER-")
        target = int(os.environ[LAUNCHER_PID]) if self.action.startswith("LAUNCHER-") else None
        os.kill(target or os.getpid(), getattr(signal, f"SIG{name}"))
        deadline = time.monotonic() + 20  # until the (forwarded) signal has reached this rank
        while not self.trainer.local_stop.requested and time.monotonic() < deadline:
            time.sleep(0.05)


def main() -> None:
    action, rank, step, *args = sys.argv[1:]
    with_callback(RankAction(action, int(rank), int(step)))
    sys.argv = ["cnnkit", *args]
    from cnnkit.cli import app

    app.main()


if __name__ == "__main__":
    main()
