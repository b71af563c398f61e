"""Wall time of a whole `cnnkit train configs/mnist_basic.yaml --epochs 1` process against the
same epoch in plain PyTorch (benchmarks/torch_mnist_basic.py), run alternately.

Each round starts both as fresh processes (interpreter start-up, imports, data loading, the
Numba cache, test-set evaluation and cnnkit's checkpoints included) one after the other and
times them; the ratio cnnkit / PyTorch is printed per round and as the median. The issue's bar:
at most 2x. Both processes get the same thread count and OMP_WAIT_POLICY (passive by default:
on shared cores, spinning OpenMP pools slowed both frameworks 1.5-3x).

Usage (repo root): python benchmarks/train_vs_torch.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE"))
    args = parser.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    env["CNNKIT_NUM_THREADS"] = str(args.threads)
    ratios = []
    with tempfile.TemporaryDirectory() as out:
        cnnkit = [sys.executable, "-m", "cnnkit", "train", "configs/mnist_basic.yaml"]
        cnnkit += ["--epochs", "1", "--out", out]
        torch = [sys.executable, "benchmarks/torch_mnist_basic.py", "--threads", str(args.threads)]
        timed(cnnkit, env)  # untimed: warms the Numba cache and the page cache for both
        for r in range(1, args.rounds + 1):
            ours, _ = timed(cnnkit, env)
            theirs, line = timed(torch, env)
            ratios.append(ours / theirs)
            print(
                f"round {r}: cnnkit {ours:.1f} s, PyTorch {theirs:.1f} s, "
                f"ratio {ours / theirs:.2f}  ({line})",
                flush=True,
            )
    verdict = "within" if statistics.median(ratios) <= 2 else "OVER"
    print(
        f"median ratio cnnkit / PyTorch (whole process, one epoch): "
        f"{statistics.median(ratios):.2f} ({verdict} the 2x bar)"
    )


if __name__ == "__main__":
    main()
