"""What `cnnkit runs` lists and `cnnkit compare` compares, read from run directories only.

Plain data (dicts and lists), so --json prints it as it is and cnnkit.cli.display renders it.
config.yaml is read as plain YAML, not validated: a run written by an older cnnkit still lists.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cnnkit.errors import CheckpointError
from cnnkit.nn.monitor import direction
from cnnkit.runs.layout import RunDir
from cnnkit.runs.state import read_state

_NOT_METRICS = ("epoch", "seconds", "lr")


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def is_run_dir(path: Path) -> bool:
    return RunDir(path).is_run()


def run_info(run_dir: Path) -> dict[str, Any]:
    """One run: name, started, dataset, epochs done/planned, best validation accuracy and its
    epoch, test accuracy (if evaluated on the test split), images/s, state."""
    run = RunDir(run_dir)
    run_dir = run.root
    config = run.read_config()
    rows = run.read_metrics()
    state = read_state(run_dir) or {}
    data = config.get("data") or {}
    dataset = str(data.get("source", "?"))
    if data.get("path") and dataset in ("folder", "npz"):
        dataset += f" ({Path(str(data['path'])).name})"
    planned = state.get("epochs_planned") or (config.get("train") or {}).get("epochs")
    best_acc, best_epoch = None, None
    for row in rows:
        value = _float(row.get("val_accuracy"))
        if value is not None and (best_acc is None or value > best_acc):
            best_acc, best_epoch = value, int(row["epoch"])
    evaluation = run.read_evaluation() or {}
    test_acc = _float(evaluation.get("accuracy")) if evaluation.get("split") == "test" else None
    started = state.get("started")
    if started is None:  # a run written before run.json existed: config.yaml's time
        try:
            mtime = run.config.stat().st_mtime
            started = datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds")
        except OSError:
            started = None
    run_state = state.get("state")
    if run_state is None:
        done = bool(rows) and planned is not None and len(rows) >= int(planned)
        run_state = "finished" if done else "unknown"
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "started": started,
        "dataset": dataset,
        "epochs_done": len(rows),
        "epochs_planned": planned,
        "best_val_accuracy": best_acc,
        "best_epoch": best_epoch,
        "test_accuracy": test_acc,
        "images_per_s": _float(state.get("images_per_s")),
        "state": run_state,
    }


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run directory directly under root (or root itself if it is one), newest first."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(
            "folder not found", where=str(root), hint="Give the folder that holds runs (--out)."
        )
    dirs = [root] if is_run_dir(root) else sorted(p for p in root.iterdir() if is_run_dir(p))
    infos = [run_info(d) for d in dirs]
    infos.sort(key=lambda i: i["started"] or "", reverse=True)
    return infos


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'epochs': 2}, 'model': {'layers': [{'Dense': {...}}]}} ->
    {'train.epochs': 2, 'model.layers[0].Dense.units': 10, ...}"""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def better(name: str, a: float | None, b: float | None) -> str | None:
    """'a', 'b' or None (equal, unknown direction, or a value missing)."""
    if a is None or b is None or a == b:
        return None
    base = name.split(" ")[-1].removeprefix("test_").removeprefix("val_")
    if base in ("images_per_s",):
        way = "max"
    elif base in ("seconds",):
        way = "min"
    else:
        way = direction(base, "auto")
    if way is None:
        return None
    return ("a" if a > b else "b") if way == "max" else ("a" if a < b else "b")


def _metric_values(run_dir: Path, info: dict[str, Any]) -> dict[str, float | None]:
    values: dict[str, float | None] = {}
    run = RunDir(run_dir)
    rows = run.read_metrics()
    if rows:
        for key, value in rows[-1].items():
            if key not in _NOT_METRICS:
                values[f"last epoch {key}"] = _float(value)
    values["best val_accuracy"] = info["best_val_accuracy"]
    evaluation = run.read_evaluation() or {}
    split = evaluation.get("split", "test")
    if evaluation:
        values[f"{split} loss"] = _float(evaluation.get("loss"))
        for key, value in (evaluation.get("metrics") or {}).items():
            values[f"{split} {key}"] = _float(value)
    values["images_per_s"] = info["images_per_s"]
    return values


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """The spec keys that differ (side by side) and every metric of both runs, with the
    better value marked ('a' or 'b')."""
    a, b = Path(a), Path(b)
    for run in (a, b):
        if not is_run_dir(run):
            raise CheckpointError(
                "not a run directory (no config.yaml)",
                where=str(run),
                hint="Give two folders written by `cnnkit train`, e.g. runs/mnist runs/mnist-2.",
            )
    fa, fb = flatten(RunDir(a).read_config()), flatten(RunDir(b).read_config())
    missing = object()
    spec_diff = [
        {"key": key, "a": fa.get(key), "b": fb.get(key)}
        for key in dict.fromkeys([*fa, *fb])
        if fa.get(key, missing) != fb.get(key, missing)
    ]
    info_a, info_b = run_info(a), run_info(b)
    va, vb = _metric_values(a, info_a), _metric_values(b, info_b)
    metrics = [
        {"metric": n, "a": va.get(n), "b": vb.get(n), "better": better(n, va.get(n), vb.get(n))}
        for n in dict.fromkeys([*va, *vb])
    ]
    return {
        "a": info_a,
        "b": info_b,
        "spec_diff": spec_diff,
        "spec_same": len(set(fa) | set(fb)) - len(spec_diff),
        "metrics": metrics,
    }
