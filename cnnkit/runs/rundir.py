"""The run directory's writes: creating it, metrics.csv, checkpoints (cnnkit.runs.layout names
every file).

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted write never leaves a half-written file behind a valid name.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit import CHECKPOINT_FORMAT_VERSION, __version__
from cnnkit.errors import CheckpointError
from cnnkit.io import atomic_write_text, json_safe, read_npz, stage, storage_error
from cnnkit.runs.layout import CHECKPOINT_KINDS, CheckpointFiles, RunDir, read_checkpoint_sidecar
from cnnkit.spec.config import Spec, load_spec

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
        RunDir(candidate).checkpoints.mkdir()
        return candidate
    raise RuntimeError(f"no free run directory name for {name} in {out_root}")


def write_metrics_csv(
    path: Path, rows: list[dict[str, Any]], columns: Sequence[str] = METRICS_COLUMNS
) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_value(row.get(k)) for k in columns})
    atomic_write_text(path, buffer.getvalue())


def csv_value(value: Any) -> Any:
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
    state_arrays: dict[str, np.ndarray] | None = None,
) -> None:
    """Write the checkpoint set `<path>.npz` (+ `<path>.optimizer.npz` given
    Optimizer.state_dict(), + `<path>.state.npz` given resume arrays) and its `<path>.json`
    sidecar, replacing the previous set only once the new one is complete and verified.

    Every file is first written to a temporary name and fsynced, then read back and checked
    (same bytes, a loadable archive with the expected keys); only then are the files renamed
    into place, the sidecar last, with a second Ctrl-C held off for those few renames. The
    sidecar records each file's sha256, so a set mixed from two saves is recognised on load.
    A write error (full disk, unwritable folder) leaves the previous set intact and raises
    StorageError. The optimizer's scalars (iterations, learning rate, schedule state) go in
    the sidecar's "optimizer" entry."""
    from cnnkit.interrupts import critical

    names = CheckpointFiles(path)
    files = {names.weights: _npz_bytes(params)}
    sidecar = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "cnnkit_version": __version__,
        **meta,
        "arrays": {k: list(v.shape) for k, v in params.items()},
    }
    if optimizer_state is not None:
        arrays, optimizer_meta = optimizer_state
        files[names.optimizer] = _npz_bytes(arrays)
        sidecar["optimizer"] = {**optimizer_meta, "state_file": names.optimizer.name}
    if state_arrays is not None:
        files[names.state] = _npz_bytes(state_arrays)
    sidecar["sha256"] = {p.name: hashlib.sha256(data).hexdigest() for p, data in files.items()}
    files[names.sidecar] = (
        json.dumps(json_safe(sidecar), indent=2, allow_nan=False) + "\n"
    ).encode()
    staged: dict[Path, Path] = {}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for final, data in files.items():
            staged[final] = stage(final, data)
            _verify_staged(staged[final], data, final)
        with critical():
            for final, tmp in staged.items():  # sidecar last (insertion order)
                os.replace(tmp, final)
            staged.clear()
    except OSError as exc:
        raise storage_error(
            exc,
            names.weights,
            f"The previous {path.name} checkpoint is intact: it is replaced only once the new "
            "one is completely written and verified.",
        ) from None
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _verify_staged(tmp: Path, data: bytes, final: Path) -> None:
    """Read the staged file back: the same bytes, and (npz) an archive numpy can open."""
    on_disk = tmp.read_bytes()
    if on_disk != data:
        raise OSError(errno.EIO, f"read back {len(on_disk)} bytes, wrote {len(data)}", str(final))
    if final.suffix == ".npz":
        with np.load(io.BytesIO(on_disk), allow_pickle=False) as archive:
            for key in archive.files:
                archive[key]


def load_optimizer_state(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """What save_checkpoint stored for the optimizer beside `path` (e.g. checkpoints/last),
    ready for Optimizer.load_state_dict; never unpickles."""
    names = CheckpointFiles(path)
    meta = read_checkpoint_sidecar(names, required=True).get("optimizer")
    if not meta:
        raise CheckpointError("this checkpoint has no optimizer state", where=str(names.sidecar))
    state_file = path.parent / meta.get("state_file", names.optimizer.name)
    return read_npz(state_file, "optimizer state"), meta


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and sidecar metadata, with a clear CheckpointError for a missing, truncated or
    corrupt file, a newer format version or pickled objects. Never unpickles
    (allow_pickle=False), never runs code. When the sidecar records the file's sha256 (every
    checkpoint written since resume support), the file must match it."""
    names = CheckpointFiles(path)
    npz, sidecar = names.weights, names.sidecar
    if not npz.is_file():
        hint = (
            "A run directory holds checkpoints/best.npz and checkpoints/last.npz once an "
            "epoch (or train.save_every_steps steps) has finished."
        )
        beside = {kind: CheckpointFiles(npz.parent / kind).weights for kind in CHECKPOINT_KINDS}
        if npz == beside["best"] and beside["last"].is_file():
            hint = (
                "The run stopped before its first epoch ended, so it has no best.npz yet; its "
                "last.npz holds the latest weights: add --checkpoint last (or finish training "
                f"first: cnnkit train --resume {npz.parent.parent})."
            )
        raise CheckpointError("checkpoint not found", where=str(npz), hint=hint)
    meta = read_checkpoint_sidecar(names, required=False)
    arrays = read_npz(npz, "checkpoint")
    digests = meta.get("sha256") or {}
    # a copy under another name keeps its sidecar's kind (best, last)
    kind = meta.get("kind")
    copied_from = CheckpointFiles(Path(kind)).weights.name if isinstance(kind, str) else None
    expected = digests.get(npz.name) or digests.get(copied_from)
    if expected and hashlib.sha256(npz.read_bytes()).hexdigest() != expected:
        raise CheckpointError(
            f"{npz.name} does not match its sidecar {sidecar.name} (a different save, or the "
            "file was modified)",
            where=str(npz),
            hint="Use the other checkpoint (--checkpoint best or last), or train again.",
        )
    return arrays, meta


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    """'best' or 'last' inside the run, or a path to an .npz file."""
    if which in CHECKPOINT_KINDS:
        return RunDir(run_dir).checkpoint(which).weights
    return Path(which)


def load_run_spec(run_dir: Path) -> Spec:
    if not run_dir.is_dir():
        raise CheckpointError(
            "run directory not found",
            where=str(run_dir),
            hint="Give a folder written by `cnnkit train`, e.g. runs/mnist.",
        )
    config = RunDir(run_dir).config
    if not config.is_file():
        raise CheckpointError(
            "not a run directory (no config.yaml)",
            where=str(run_dir),
            hint="Give a folder written by `cnnkit train`, e.g. runs/mnist.",
        )
    return load_spec(config)
