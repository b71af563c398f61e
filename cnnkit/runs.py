"""The run directory: its layout, atomic writes and checkpoints.

    runs/<name>/
      config.yaml            resolved spec (every default filled in)
      summary.txt            the model summary table
      metrics.csv            one row per epoch
      checkpoints/last.npz   + last.json   (after every epoch)
      checkpoints/best.npz   + best.json   (best val_accuracy so far)
      evaluation.json        written by `cnnkit evaluate`

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted write never leaves a half-written file behind a valid name.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit import CHECKPOINT_FORMAT_VERSION, __version__
from cnnkit.config import Spec, load_spec
from cnnkit.errors import CheckpointError

METRICS_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "lr")


def create_run_dir(out_root: Path, name: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3 ... : an existing run is never reused or overwritten."""
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"cannot create the output folder: {exc.strerror}",
            where=str(out_root),
            hint="Give --out a folder you can write to.",
        ) from None
    for n in range(1, 10_000):
        candidate = out_root / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()  # atomic: fails if another process made it first
        except FileExistsError:
            continue
        (candidate / "checkpoints").mkdir()
        return candidate
    raise RuntimeError(f"no free run directory name for {name} in {out_root}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in METRICS_COLUMNS})
    atomic_write_text(path, buffer.getvalue())


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e-3 or abs(value) >= 1e6 else f"{value:.6f}"
    return value


# -- checkpoints -------------------------------------------------------------------------


def save_checkpoint(path: Path, params: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write `<path>.npz` then its `<path>.json` sidecar, each atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **params)
    atomic_write_bytes(path.with_suffix(".npz"), buffer.getvalue())
    sidecar = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "cnnkit_version": __version__,
        **meta,
        "arrays": {k: list(v.shape) for k, v in params.items()},
    }
    write_json(path.with_suffix(".json"), sidecar)


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and sidecar metadata; never unpickles (allow_pickle=False)."""
    npz, sidecar = path.with_suffix(".npz"), path.with_suffix(".json")
    if not npz.is_file():
        raise CheckpointError("checkpoint not found", where=str(npz))
    meta: dict[str, Any] = {}
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"unreadable checkpoint metadata: {exc}", where=str(sidecar)
            ) from None
    version = meta.get("format_version", CHECKPOINT_FORMAT_VERSION)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {version} is newer than this cnnkit understands "
            f"({CHECKPOINT_FORMAT_VERSION})",
            where=str(sidecar),
            hint="Upgrade cnnkit to load it.",
        )
    try:
        with np.load(npz, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"corrupt or unreadable checkpoint: {exc}", where=str(npz)) from None
    return arrays, meta


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    """'best' or 'last' inside the run, or a path to an .npz file."""
    if which in ("best", "last"):
        return run_dir / "checkpoints" / f"{which}.npz"
    return Path(which)


def load_run_spec(run_dir: Path) -> Spec:
    if not run_dir.is_dir():
        raise CheckpointError(
            "run directory not found",
            where=str(run_dir),
            hint="Give a folder written by `cnnkit train`, e.g. runs/mnist.",
        )
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise CheckpointError(
            "not a run directory (no config.yaml)",
            where=str(run_dir),
            hint="Give a folder written by `cnnkit train`, e.g. runs/mnist.",
        )
    return load_spec(config)
