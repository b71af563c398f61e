"""Decoding an image folder once: first pass (decode + resize) vs second pass (cache).

Usage (from the repo root): python benchmarks/folder_cache_bench.py [--images 10000] [--size 80]

Writes a make-shapes folder of about --images PNG files (train/ val/ test/) into a temporary
directory, then loads it twice through the folder source with an empty cache directory:
pass 1 scans, decodes and resizes every file (Pillow, a thread per core) and writes the
cache; pass 2 scans the folder again (paths, sizes, modification times: the cache key) and
loads the cached uint8 arrays. Prints images/s of each pass and their ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run without installing

from cnnkit.data.folder import decode_split, scan_folder  # noqa: E402
from cnnkit.data.shapes import make_shapes  # noqa: E402


def load_all(root: Path, size: int) -> int:
    """Scan and decode every split the way the folder source does; returns the image count."""
    scan = scan_folder(root)
    bad: list[str] = []
    total = 0
    for files in scan.splits.values():
        total += len(decode_split(files, (size, size), "rgb", "bilinear", False, bad).x)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=80, help="image side in pixels")
    args = parser.parse_args()
    # make-shapes writes per_class train images a class and a quarter of that to val/ and test/
    per_class = -(-args.images * 2 // 9)
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "shapes", Path(tmp) / "cache"
        os.environ["CNNKIT_CACHE_DIR"] = str(cache)
        start = time.perf_counter()
        make_shapes(data, size=args.size, per_class=per_class, seed=0)
        print(f"wrote the folder in {time.perf_counter() - start:.1f} s")
        times = []
        for label in ("first pass (decode, resize, write cache)", "second pass (from cache)"):
            start = time.perf_counter()
            n = load_all(data, args.size)
            seconds = time.perf_counter() - start
            times.append(seconds)
            print(f"{label:42s} {n:,} images in {seconds:6.2f} s: {n / seconds:9,.0f} images/s")
        print(f"second pass is {times[0] / times[1]:.1f}x faster")


if __name__ == "__main__":
    main()
