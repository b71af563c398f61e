"""The run directory: its layout, atomic writes and checkpoints.

    runs/<name>/
      config.yaml            resolved spec (every default filled in)
      summary.txt            the model summary table
      metrics.csv            one row per epoch
      checkpoints/last.npz   + last.json   (after every epoch)
      checkpoints/last.optimizer.npz       (the optimizer's moments; its scalars in last.json)
      checkpoints/best.npz   + best.json   (best epoch by callbacks.checkpoint.monitor)
      run.json               the run's state (cnnkit.runstate)
      curves.png, report.md  the training curves and the run's Markdown report
      tensorboard/           TensorBoard events (logging.tensorboard: true)
      evaluation.json        written by `cnnkit evaluate`, with confusion_matrix.png,
                             misclassified.png and misclassified.csv

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted write never leaves a half-written file behind a valid name.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit import CHECKPOINT_FORMAT_VERSION, __version__
from cnnkit.config import Spec, load_spec
from cnnkit.errors import CheckpointError

METRICS_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "lr")


def metrics_columns(metric_names: Sequence[str] = ("accuracy",)) -> tuple[str, ...]:
    """metrics.csv columns for the chosen metrics (MetricSet.names): the fixed columns, with
    every metric other than accuracy and its val_ twin after val_accuracy, in spec order."""
    extra = [c for name in metric_names if name != "accuracy" for c in (name, f"val_{name}")]
    cut = METRICS_COLUMNS.index("val_accuracy") + 1
    return (*METRICS_COLUMNS[:cut], *extra, *METRICS_COLUMNS[cut:])


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


def _file_mode() -> int:
    """The mode open() would give a new file (0o666 less the umask): mkstemp's 0o600 would
    make run files unreadable to the user's group, unlike every other file they write."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
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
    """Strict JSON: NaN and infinities (an undefined auc, a diverged loss) become null."""
    atomic_write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_metrics_csv(
    path: Path, rows: list[dict[str, Any]], columns: Sequence[str] = METRICS_COLUMNS
) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    atomic_write_text(path, buffer.getvalue())


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e-3 or abs(value) >= 1e6 else f"{value:.6f}"
    return value


# -- checkpoints -------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    params: dict[str, np.ndarray],
    meta: dict[str, Any],
    optimizer_state: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None,
) -> None:
    """Write `<path>.npz`, then (given Optimizer.state_dict()) `<path>.optimizer.npz`, then the
    `<path>.json` sidecar, each atomically; the sidecar comes last, so it never describes
    arrays that are not on disk yet. The optimizer's scalars (iterations, learning rate,
    schedule state) go in the sidecar's "optimizer" entry."""
    _write_npz(path.with_suffix(".npz"), params)
    sidecar = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "cnnkit_version": __version__,
        **meta,
        "arrays": {k: list(v.shape) for k, v in params.items()},
    }
    if optimizer_state is not None:
        arrays, optimizer_meta = optimizer_state
        state_file = path.with_suffix(".optimizer.npz")
        _write_npz(state_file, arrays)
        sidecar["optimizer"] = {**optimizer_meta, "state_file": state_file.name}
    write_json(path.with_suffix(".json"), sidecar)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_optimizer_state(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """What save_checkpoint stored for the optimizer beside `path` (e.g. checkpoints/last),
    ready for Optimizer.load_state_dict; never unpickles."""
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text()).get("optimizer")
    except (OSError, json.JSONDecodeError) as exc:
        message = f"unreadable checkpoint metadata: {exc}"
        raise CheckpointError(message, where=str(sidecar)) from None
    if not meta:
        raise CheckpointError("this checkpoint has no optimizer state", where=str(sidecar))
    state_file = path.parent / meta.get("state_file", path.with_suffix(".optimizer.npz").name)
    try:
        with np.load(state_file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"unreadable optimizer state: {exc}", where=str(state_file)) from None
    return arrays, meta


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
