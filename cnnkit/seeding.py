"""One seed in the spec -> independent, reproducible random streams for each use.

Separate streams mean that, say, adding a Dropout layer does not change the shuffling order.
"""

from __future__ import annotations

import numpy as np

# append only: indices pick the streams
STREAMS = ("init", "dropout", "shuffle", "split", "augment", "train_subset", "test_subset")


def random_stream(seed: int, name: str) -> np.random.Generator:
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return np.random.default_rng(children[STREAMS.index(name)])
