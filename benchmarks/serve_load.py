"""Load on `cnnkit serve`: requests/s and p50/p99 latency, beside in-process prediction.

Usage (from the repo root, the serve extra and httpx installed):
    python benchmarks/serve_load.py [--run RUN_DIR] [--seconds 6] [--out DIR]

Without --run, configs/mnist.yaml (3 Conv2D with BatchNormalization, 104,874 parameters) is
trained for one short epoch into a temporary folder: the weights do not change the timings. 64
MNIST test digits, as PNG bytes, are the images. Then, each bounded (a fixed number of
requests, or --seconds, whichever comes first):

- in process: `cnnkit.api.predict` on 1 and 32 image files per call (it loads the run each
  call, as the command does), and `cnnkit.api.Predictor.predict` on the same images with the
  model loaded once (what the server runs per request);
- a server (`python -m cnnkit serve RUN --port P`, a real process) asked by 1, 4 and 16
  concurrent clients (threads, one keep-alive httpx client each), every request 1 or 32 images,
  with batching of concurrent requests on (default) and off (--max-batch 1), the two servers
  measured alternately.

The clients run on the same machine as the server: on 2 cores they take CPU from it, so the
figures are a floor of what a separate client machine would see. Prints a table and writes
serve_load.json (and the lscpu summary) to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run without installing

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cnnkit import api  # noqa: E402
from cnnkit.data.idx import read_idx  # noqa: E402
from cnnkit.data.images import ImageBytes  # noqa: E402
from cnnkit.spec.config import load_spec  # noqa: E402

MNIST = ROOT / "cnnkit" / "data" / "mnist"
SIZES = (1, 32)  # images per request
CLIENTS = (1, 4, 16)
REQUESTS = {1: 2000, 32: 300}  # the bound on requests per measurement (--seconds the other)


def train_run(folder: Path) -> Path:
    overrides = {"data.max_train_samples": 512, "data.validation_split": None, "train.epochs": 1}
    return api.train(load_spec(ROOT / "configs" / "mnist.yaml", overrides), folder).run_dir


def digits(folder: Path, n: int = 64) -> list[Path]:
    paths = []
    for i, digit in enumerate(read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:n]):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(digit).save(paths[-1])
    return paths


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def timed(call, size: int, bound: int, seconds: float) -> dict[str, float]:
    """call(i) repeated until bound calls or seconds: calls/s, images/s, latencies."""
    call(0)  # warm
    latencies, started = [], time.perf_counter()
    while len(latencies) < bound and time.perf_counter() - started < seconds:
        t = time.perf_counter()
        call(len(latencies))
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    n = len(latencies)
    rates = {"requests_per_s": n / wall, "images_per_s": n * size / wall}
    return {"requests": n, **rates, **percentiles(latencies)}


def pick(items: list, i: int, size: int) -> list:
    """The i-th request's size items, cycling through them."""
    return [items[(i * size + j) % len(items)] for j in range(size)]


def in_process(run: Path, paths: list[Path], seconds: float) -> list[dict]:
    predictor = api.Predictor.load(run)
    uploads = [ImageBytes(p.name, p.read_bytes()) for p in paths]
    rows = []
    for size in SIZES:
        bound = REQUESTS[size]
        whole = timed(lambda i, n=size: api.predict(pick(paths, i, n), run), size, bound, seconds)
        loaded = timed(
            lambda i, n=size: predictor.predict(pick(uploads, i, n)), size, bound, seconds
        )
        rows.append({"mode": "api.predict (loads the run)", "images": size, **whole})
        rows.append({"mode": "Predictor.predict (loaded)", "images": size, **loaded})
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, *options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "cnnkit", "serve", str(run), "--port", str(port), *options]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )  # one log line a request: discarded here
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not answer /health in 120 s")


def load(url: str, files: list[tuple[str, bytes]], size: int, clients: int, seconds: float):
    """clients threads, each posting size-image requests in a loop on its own connection."""
    bound = REQUESTS[size]
    latencies: list[float] = []
    failures, lock = [0], threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            parts = lambda i: [("file", (n, data, "image/png")) for n, data in pick(files, i, size)]  # noqa: E731
            http.post(f"{url}/predict", files=parts(k))  # warm the connection
            barrier.wait()
            stop, i = time.perf_counter() + seconds, k
            while time.perf_counter() < stop:
                with lock:
                    if len(latencies) >= bound:
                        return
                t = time.perf_counter()
                response = http.post(f"{url}/predict", files=parts(i))
                elapsed = time.perf_counter() - t
                with lock:
                    latencies.append(elapsed)
                    failures[0] += response.status_code != 200
                i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    before = httpx.get(f"{url}/health").json()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    after = httpx.get(f"{url}/health").json()
    passes = after["forward_passes"] - before["forward_passes"]
    n = len(latencies)
    return {
        "requests": n,
        "failed": failures[0],
        "requests_per_s": n / wall,
        "images_per_s": n * size / wall,
        **percentiles(latencies),
        "requests_per_pass": (after["requests"] - before["requests"]) / max(1, passes),
    }


def served(run: Path, paths: list[Path], seconds: float) -> list[dict]:
    """Both servers (batching on and off) up at once, measured alternately: the load of the
    machine drifts, and alternation spreads it over both."""
    files = [(p.name, p.read_bytes()) for p in paths]
    modes = {"on": (), "off": ("--max-batch", "1")}
    ports = {mode: free_port() for mode in modes}
    procs = [start_server(run, ports[mode], *options) for mode, options in modes.items()]
    rows = []
    try:
        for size in SIZES:
            for clients in CLIENTS:
                for mode in modes:
                    url = f"http://127.0.0.1:{ports[mode]}"
                    row = load(url, files, size, clients, seconds)
                    rows.append({"batching": mode, "images": size, "clients": clients, **row})
                    print(table_row(rows[-1]), flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
    return rows


def table_row(r: dict) -> str:
    who = r.get("mode") or f"server, batching {r['batching']:<3}, {r['clients']:>2} clients"
    per_pass = f"  {r['requests_per_pass']:5.2f} req/pass" if "requests_per_pass" in r else ""
    return (
        f"{who:<40} {r['images']:>2} img/req  {r['requests']:>5} req  "
        f"{r['requests_per_s']:8.1f} req/s  {r['images_per_s']:8.1f} img/s  "
        f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms{per_pass}"
    )


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    keep = ("Model name", "CPU(s):", "Thread(s) per core")
    lines = [line for line in out.splitlines() if line.startswith(keep)]
    flags = next((line for line in out.splitlines() if line.startswith("Flags")), "")
    simd = [f for f in ("avx2", "avx512f", "fma") if f in flags.split()]
    return "; ".join(" ".join(line.split()) for line in lines) + f"; SIMD: {', '.join(simd)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run directory (default: train one)")
    parser.add_argument("--seconds", type=float, default=6.0, help="bound of each measurement")
    parser.add_argument("--out", type=Path, help="write serve_load.json here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train_run(Path(tmp) / "runs")
        paths = digits(Path(tmp))
        print(f"CPU: {cpu()}\nrun: {run}", flush=True)
        rows = in_process(run, paths, args.seconds)
        for row in rows:
            print(table_row(row), flush=True)
        rows += served(run, paths, args.seconds)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {"cpu": cpu(), "seconds_bound": args.seconds, "requests_bound": REQUESTS}
        (args.out / "serve_load.json").write_text(json.dumps({**result, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
