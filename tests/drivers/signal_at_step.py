"""`python -m tests.drivers.signal_at_step STEP INT|TERM TIMES ARGS...`: cnnkit's CLI (`cnnkit
ARGS...`) in a real process that sends itself the signal TIMES times right after optimizer
step STEP, through the callbacks parameter of cnnkit.api.train and resume. Real signals in a
real process: the handlers, the second-signal exit and the exit codes are cnnkit's own."""

from __future__ import annotations

import functools
import os
import signal
import sys
import time

from cnnkit import api
from cnnkit.cli import app
from cnnkit.train.callbacks import Callback


class SignalAtStep(Callback):
    """Sends this process `signum` `times` times after optimizer step `at` of the run."""

    def __init__(self, at: int, signum: int = signal.SIGINT, times: int = 1):
        self.at, self.signum, self.times = at, signum, times

    def on_train_batch_end(self, step: int, logs: dict[str, float]) -> None:
        if self.trainer.optimizer.iterations != self.at:
            return
        for _ in range(self.times):
            os.kill(os.getpid(), self.signum)
            time.sleep(0.05)  # the Python-level handler runs before the next signal is sent


def with_callback(callback: Callback) -> None:
    """cnnkit.api's train and resume, as the CLI calls them, given `callback` too."""
    for name in ("train", "resume"):
        setattr(api, name, functools.partial(getattr(api, name), callbacks=[callback]))


def main() -> None:
    step, name, times, *args = sys.argv[1:]
    with_callback(SignalAtStep(int(step), getattr(signal, f"SIG{name}"), int(times)))
    sys.argv = ["cnnkit", *args]
    app.main()


if __name__ == "__main__":
    main()
