"""Wall time of a whole `cnnkit train SPEC --epochs 1` process against the same epoch in plain
PyTorch (benchmarks/torch_epoch.py) and plain Keras (benchmarks/keras_epoch.py), alternately.

Each round starts all three as fresh processes one after the other (interpreter start-up,
imports, data loading, the Numba cache, the test-set evaluation and cnnkit's checkpoints
included) and times them; the ratio cnnkit / peer of the wall times is printed per round and as
the median, and cnnkit / the faster peer (the issue's bar: at most 1.00). Every process gets the
same thread count (CNNKIT_NUM_THREADS, --threads), OMP_WAIT_POLICY and GOMP_SPINCOUNT (cnnkit's
defaults: a few ms of spinning, then sleep; cnnkit.threads says why). One untimed cnnkit
run first fills the Numba cache and the page cache. Replaces train_vs_torch.py (mnist_basic
against PyTorch only).

Usage (repo root): python benchmarks/epoch_vs_peers.py [SPEC ...] [--rounds 3] [--threads 2]
    [--peers torch,keras] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnkit.threads import SPIN_COUNT

ROOT = Path(__file__).resolve().parents[1]
SPECS = ["configs/mnist_basic.yaml", "configs/mnist_two_conv.yaml", "configs/mnist_lenet.yaml"]
SCRIPTS = {"torch": "benchmarks/torch_epoch.py", "keras": "benchmarks/keras_epoch.py"}


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    return wall, lines[-1] if lines else ""


def compare(
    spec: str, peers: list[str], rounds: int, threads: int, env: dict, warm: bool = True
) -> dict:
    """Rounds of cnnkit, then each peer, as fresh processes; wall times and ratios."""
    rows = []
    with tempfile.TemporaryDirectory() as out:
        cnnkit = [sys.executable, "-m", "cnnkit", "train", spec, "--epochs", "1", "--out", out]
        commands = {"cnnkit": cnnkit}
        for peer in peers:
            commands[peer] = [sys.executable, SCRIPTS[peer], spec, "--threads", str(threads)]
        if warm:
            timed(cnnkit, env)  # untimed: warms the Numba cache and the page cache
        for r in range(1, rounds + 1):
            row: dict = {"round": r}
            for name, cmd in commands.items():
                row[f"{name}_s"], row[f"{name}_line"] = timed(cmd, env)
            for peer in peers:
                row[f"{peer}_ratio"] = row["cnnkit_s"] / row[f"{peer}_s"]
            row["faster_ratio"] = row["cnnkit_s"] / min(row[f"{p}_s"] for p in peers)
            rows.append(row)
            walls = ", ".join(f"{n} {row[f'{n}_s']:.1f} s" for n in commands)
            ratios = ", ".join(f"cnnkit / {p} {row[f'{p}_ratio']:.2f}" for p in peers)
            print(f"{spec} round {r}: {walls}; {ratios}", flush=True)
            for name in peers:
                print(f"    {row[f'{name}_line']}", flush=True)
    median = {
        key: statistics.median(row[key] for row in rows)
        for key in [f"{p}_ratio" for p in peers] + ["faster_ratio"]
        + [f"{n}_s" for n in ["cnnkit", *peers]]
    }  # fmt: skip
    verdict = "meets" if median["faster_ratio"] <= 1.0 else "MISSES"
    print(
        f"{spec}: median wall-time ratio "
        + ", ".join(f"cnnkit / {p} {median[f'{p}_ratio']:.2f}" for p in peers)
        + f"; cnnkit / the faster peer {median['faster_ratio']:.2f} ({verdict} the 1.00 bar)",
        flush=True,
    )
    return {"spec": spec, "rounds": rows, "median": median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=SPECS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peers", default="torch,keras", help="torch, keras or torch,keras")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE"))
    parser.add_argument("--gomp-spincount", default=SPIN_COUNT, help="cnnkit's by default")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--no-warm-up", action="store_true", help="skip the untimed cnnkit run (a warm cache)"
    )
    args = parser.parse_args()
    peers = [p.strip() for p in args.peers.split(",")]
    if not peers or any(p not in SCRIPTS for p in peers):
        sys.exit(f"--peers: torch, keras or torch,keras, not {args.peers!r}")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    env["GOMP_SPINCOUNT"] = args.gomp_spincount  # PyTorch's libgomp reads it too
    env["CNNKIT_NUM_THREADS"] = str(args.threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = []
    for spec in args.specs:
        results.append(compare(spec, peers, args.rounds, args.threads, env, not args.no_warm_up))
        if args.json:  # after each spec: a long run's figures so far are kept
            report = {"threads": args.threads, "python": sys.executable, "results": results}
            args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
