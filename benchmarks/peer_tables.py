"""Markdown tables of this folder's figures: bench-*.json (cnnkit bench --vs torch,keras),
epoch.json / epoch-*.json (benchmarks/epoch_vs_peers.py), evaluate.json
(benchmarks/evaluate_vs_keras.py). Usage: python benchmarks/peer_tables.py RESULTS_FOLDER."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# the results folder: the first argument (written by benchmarks/bench_peers.sh and the scripts)
HERE = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()


def header(*columns: str) -> None:
    """A Markdown table's header row and the separator row its column count implies."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))


def bench_results() -> list[dict]:
    """The folder's bench-*.json results in name order (an empty file: a bench that failed)."""
    texts = (path.read_text().strip() for path in sorted(HERE.glob("bench-*.json")))
    return [json.loads(text) for text in texts if text]


def bench() -> None:
    header(
        "model (batch)",
        "cnnkit train",
        "PyTorch",
        "Keras",
        "train: / PyTorch, / Keras, / faster",
        "cnnkit infer",
        "PyTorch",
        "Keras",
        "infer: / PyTorch, / Keras, / faster",
        "rounds",
    )
    results = bench_results()
    for r in results:
        t, k, f = r["torch"], r["keras"], r["vs_faster"]
        rounds = "; ".join(
            f"{row['torch_train_ratio']:.2f}/{row['keras_train_ratio']:.2f}/"
            f"{row['torch_infer_ratio']:.2f}/{row['keras_infer_ratio']:.2f}"
            for row in r["rounds_detail"]
        )
        print(
            f"| {r['spec']} ({r['batch_size']}) | {r['train_images_per_s']:,.0f} "
            f"| {t['train_images_per_s']:,.0f} | {k['train_images_per_s']:,.0f} "
            f"| {t['train_ratio']:.2f}, {k['train_ratio']:.2f}, **{f['train_ratio']:.2f}** "
            f"| {r['infer_images_per_s']:,.0f} | {t['infer_images_per_s']:,.0f} "
            f"| {k['infer_images_per_s']:,.0f} "
            f"| {t['infer_ratio']:.2f}, {k['infer_ratio']:.2f}, **{f['infer_ratio']:.2f}** "
            f"| {rounds} |"
        )
    print()
    for r in results:
        c = r["keras"]["setup"].get("chosen", {})
        guard = {p: r[p]["check"][p]["max"] for p in ("torch", "keras")}
        print(
            f"- {r['spec']}: Keras {c.get('train')}; {c.get('infer')}; probe "
            f"{ {k: v for k, v in r['keras']['setup'].items() if k in ('train', 'infer')} }; "
            f"guard max error cnnkit {r['keras']['check']['cnnkit']['max']:.1e}, "
            f"PyTorch {guard['torch']:.1e}, Keras {guard['keras']:.1e}"
        )
    print()


def epoch() -> None:
    header(
        "spec",
        "round",
        "cnnkit s",
        "PyTorch s",
        "Keras s",
        "cnnkit / PyTorch",
        "cnnkit / Keras",
        "cnnkit / faster",
    )
    for path in sorted(HERE.glob("epoch*.json")):
        for res in json.loads(path.read_text())["results"]:
            for row in res["rounds"]:
                print(
                    f"| {res['spec']} | {row['round']} | {row['cnnkit_s']:.1f} "
                    f"| {row['torch_s']:.1f} | {row['keras_s']:.1f} | {row['torch_ratio']:.2f} "
                    f"| {row['keras_ratio']:.2f} | **{row['faster_ratio']:.2f}** |"
                )
    print()


def evaluate() -> None:
    path = HERE / "evaluate.json"
    if not path.exists():
        return
    header(
        "spec",
        "cnnkit evaluate img/s",
        "Keras model.evaluate img/s",
        "ratio",
        "per round",
        "whole api.evaluate img/s",
    )
    for res in json.loads(path.read_text())["results"]:
        m = res["median"]
        rounds = ", ".join(f"{row['ratio']:.2f}" for row in res["rounds"])
        print(
            f"| {res['spec']} (batch {res['batch_size']}, XLA {res['keras_jit_compile']}) "
            f"| {m['cnnkit_images_per_s']:,.0f} | {m['keras_images_per_s']:,.0f} "
            f"| **{m['ratio']:.2f}** | {rounds} | {m['api_evaluate_images_per_s']:,.0f} |"
        )


if __name__ == "__main__":
    bench()
    epoch()
    evaluate()
