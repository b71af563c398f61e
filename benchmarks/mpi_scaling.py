"""Data-parallel scaling on this machine: 1 process x T threads against P processes x T/P
threads (MPI, loopback), the same global batch, the same training step cnnkit trains with.

    python benchmarks/mpi_scaling.py [--spec configs/mnist_basic.yaml] [--steps 30]
        [--rounds 3] [--workers 2] [--out benchmarks/results/DIR]

Each configuration runs as its own command (the 1-process one in a subprocess too, so both
pay the same start), alternated `rounds` times; figures are medians. A child trains `warmup`
steps, then times `steps` steps: images/s of the global batch, and the milliseconds per step
spent in the one gradient Allreduce (cnnkit.distributed.MPICommunicator.seconds, which
includes waiting for the slower rank), and the same Allreduce alone (the ranks lined up by a
barrier first: the transfer and the sum; median and fastest of the steps, since on a loaded
2-core machine a rank often waits for the other to be scheduled). Rank 0 prints one JSON
line, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(spec_path: str, steps: int, warmup: int) -> None:
    """One configuration: under mpiexec (P ranks) or alone; rank 0 prints the figures."""
    import numpy as np

    from cnnkit import api, distributed
    from cnnkit.data.batches import batches as plain_batches
    from cnnkit.interrupts import StopFlag
    from cnnkit.nn.metrics import MetricSet
    from cnnkit.spec.config import load_spec
    from cnnkit.train.parallel import ParallelStep, rank_batches
    from cnnkit.train.step import TrainStep

    comm = distributed.start()
    spec = load_spec(spec_path)
    setup = api._setup(spec)  # data, model from the seed, loss, optimizer; threads configured
    import numba

    metrics = MetricSet(["accuracy"], len(setup.splits.class_names))
    batch = spec.train.batch_size
    if comm.distributed:
        step = ParallelStep(
            setup.model,
            setup.loss_fn,
            setup.optimizer,
            metrics,
            comm,
            batch,
            StopFlag(),
            StopFlag(),
        )
    else:
        step = TrainStep(setup.model, setup.loss_fn, setup.optimizer, metrics)
    rng = np.random.default_rng(spec.seed)
    prepare = setup.preprocessor

    def batches():
        while True:  # epochs of the spec's training split, shuffled
            if comm.distributed:
                yield from rank_batches(setup.splits.train, batch, prepare, rng, 0, comm, False)
            else:
                for x, y in plain_batches(setup.splits.train, batch, prepare, rng):
                    yield x, y, 0

    stream = batches()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(warmup):
            x, y, lo = next(stream)
            _call(step, x, y, lo, comm)
        prepared = [next(stream) for _ in range(steps)]  # data preparation is not timed
        reduce_before = getattr(comm, "seconds", 0.0)
        start = time.perf_counter()
        for x, y, lo in prepared:
            _call(step, x, y, lo, comm)
        wall = time.perf_counter() - start
    reduce_seconds = getattr(comm, "seconds", 0.0) - reduce_before
    alone = [0.0]  # the same buffer's Allreduce alone, the ranks lined up by a barrier first
    if comm.distributed:
        alone = []
        for _ in range(steps):
            comm.comm.Barrier()
            t = time.perf_counter()
            comm.comm.Allreduce(comm.mpi.IN_PLACE, step.buffer.data, op=comm.mpi.SUM)
            alone.append(time.perf_counter() - t)
    if comm.is_root:
        grads = sum(g.size for g in setup.model.named_grads().values())
        print(
            json.dumps(
                {
                    "processes": comm.size,
                    "threads_per_process": numba.get_num_threads(),
                    "images_per_s": steps * batch / wall,
                    "ms_per_step": 1000 * wall / steps,
                    "allreduce_ms_per_step": 1000 * reduce_seconds / steps,
                    "allreduce_alone_ms": 1000 * float(np.median(alone)),
                    "allreduce_alone_min_ms": 1000 * min(alone),
                    "buffer_bytes": getattr(step, "buffer", None) and step.buffer.nbytes,
                    "gradient_values": grads,
                    "load_average": os.getloadavg()[0],
                }
            ),
            flush=True,
        )
    comm.close()


def _call(step, x, y, lo, comm):
    if comm.distributed:
        return step(x, y, None, lo)
    return step(x, y)


def run(command: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="configs/mnist_basic.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.spec, args.steps, args.warmup)
        return

    from cnnkit.launch import find_mpiexec, launch_command

    me = [str(Path(__file__).resolve()), "--child", "--spec", args.spec]
    me += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMPI_ALLOW_RUN_AS_ROOT": "1"}
    env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    per_rank = max(1, args.threads // args.workers)
    configs = {
        f"1 x {args.threads}": ([sys.executable, *me], {"CNNKIT_NUM_THREADS": str(args.threads)}),
        f"{args.workers} x {per_rank}": (
            launch_command(find_mpiexec(), args.workers, me),
            {"CNNKIT_NUM_THREADS": str(per_rank)},
        ),
    }
    results: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (command, extra) in configs.items():  # alternated: the machine's load moves
            results[name].append(run(command, {**env, **extra}))
    summary = {}
    for name, rows in results.items():
        summary[name] = {
            key: statistics.median(r[key] for r in rows)
            for key in (
                "images_per_s",
                "ms_per_step",
                "allreduce_ms_per_step",
                "allreduce_alone_ms",
                "allreduce_alone_min_ms",
                "load_average",
            )
        }
        summary[name]["buffer_bytes"] = rows[0]["buffer_bytes"]
        summary[name]["gradient_values"] = rows[0]["gradient_values"]
    names = list(summary)
    ratio = summary[names[1]]["images_per_s"] / summary[names[0]]["images_per_s"]
    lines = [
        f"spec {args.spec}, global batch from the spec, {args.steps} timed steps, "
        f"{args.rounds} rounds alternated, medians",
        "| processes x threads | images/s | ms/step | allreduce ms/step (with waiting) "
        "| allreduce alone ms, median (min) | buffer bytes |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['images_per_s']:.0f} | {s['ms_per_step']:.1f} | "
            f"{s['allreduce_ms_per_step']:.2f} | {s['allreduce_alone_ms']:.2f} "
            f"({s['allreduce_alone_min_ms']:.2f}) | "
            f"{s['buffer_bytes'] or '-'} |"
        )
    lines.append(f"ratio {names[1]} / {names[0]} images/s: {ratio:.2f}")
    loads = [r["load_average"] for rows in results.values() for r in rows]
    lines.append(f"load average (1 min) during the runs: {min(loads):.1f} to {max(loads):.1f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = Path(args.spec).stem
        record = {
            "spec": args.spec,
            "steps": args.steps,
            "rounds": args.rounds,
            "machine": platform.processor() or platform.machine(),
            "runs": results,
            "summary": summary,
            "ratio": ratio,
        }
        (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
