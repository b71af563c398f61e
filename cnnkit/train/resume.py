"""Exact resume: what a last checkpoint must hold so that training continues bit for bit.

last.npz holds the weights, last.optimizer.npz the optimizer's moments; this module adds the
rest, in last.json's "resume" entry (JSON) and last.state.npz (arrays):

- where: the epoch, the optimizer steps done in it, whether the epoch (validation, callbacks)
  finished;
- every random stream: the shuffle stream as it was when the epoch began (the epoch's
  permutation is drawn again from it and the first `step` batches skipped), the augmentation
  stream as it was right after the last trained batch was prepared (the background prefetch
  thread runs ahead, so its live state would be too far on), and the dropout stream;
- the interrupted epoch's running totals (loss sum, images seen, the metrics' confusion
  matrix, top-k hits and auc scores), so its metrics.csv row is the uninterrupted run's;
- the finished epochs' rows at full precision, and the callbacks' counters (best checkpoint,
  early stopping and its kept best weights).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.errors import CheckpointError, SpecError
from cnnkit.io import read_npz
from cnnkit.runs.rundir import load_checkpoint, load_optimizer_state
from cnnkit.spec.config import Spec

# spec keys a resume may change: they alter neither the model, the data nor the optimizer
RESUMABLE_CHANGES = ("name", "train.epochs", "train.save_every_steps")


def encode_float(value: Any) -> Any:
    """JSON keeps NaN and infinities as strings ("nan", "inf", "-inf"): a row's undefined auc,
    a monitor's initial best."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def decode_float(value: Any) -> Any:
    return float(value) if value in ("nan", "inf", "-inf") else value


@dataclass
class ResumeState:
    """A last checkpoint, read back: everything `fit` needs to continue."""

    weights: dict[str, np.ndarray]
    optimizer_arrays: dict[str, np.ndarray]
    optimizer_meta: dict[str, Any]
    info: dict[str, Any]  # last.json's "resume" entry
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # last.state.npz
    path: Path | None = None

    @property
    def epoch(self) -> int:
        return int(self.info["epoch"])

    @property
    def step(self) -> int:
        return int(self.info["step"])

    @property
    def complete(self) -> bool:
        return bool(self.info["epoch_complete"])

    def next_position(self) -> tuple[int, int]:
        """(epoch, steps already done in it) where training continues."""
        return (self.epoch + 1, 0) if self.complete else (self.epoch, self.step)

    @property
    def history(self) -> list[dict[str, Any]]:
        return [{k: decode_float(v) for k, v in row.items()} for row in self.info["history"]]

    def restore_rngs(self, shuffle, augment, dropout) -> None:
        rng = self.info["rng"]
        shuffle.bit_generator.state = rng["shuffle"]
        augment.bit_generator.state = rng["augment"]
        if dropout is not None and rng.get("dropout") is not None:
            dropout.bit_generator.state = rng["dropout"]

    def restore_totals(self, totals) -> None:
        saved = self.info["totals"]
        totals.loss_sum = float(saved["loss_sum"])
        totals.seen = int(saved["seen"])
        metric_arrays = {
            k.removeprefix("metrics."): v
            for k, v in self.arrays.items()
            if k.startswith("metrics.")
        }
        totals.metrics.load_state(metric_arrays, saved["metrics"])

    def restore_callbacks(self, best_checkpoint, early_stopping) -> None:
        saved = self.info["best_checkpoint"]
        best_checkpoint.watch.best = float(decode_float(saved["best"]))
        best_checkpoint.best_epoch = saved["best_epoch"]
        saved = self.info.get("early_stopping")
        if early_stopping is None or saved is None:
            return
        early_stopping.watch.best = float(decode_float(saved["best"]))
        early_stopping.best_epoch = saved["best_epoch"]
        early_stopping.wait = int(saved["wait"])
        early_stopping.stopped_epoch = saved["stopped_epoch"]
        prefix = "early_stopping.best_weights."
        kept = {k.removeprefix(prefix): v for k, v in self.arrays.items() if k.startswith(prefix)}
        early_stopping.best_weights = kept or None


def capture(
    *,
    epoch: int,
    step: int,
    steps: int,
    complete: bool,
    stopped_early: bool,
    shuffle_state: dict,
    augment_state: dict,
    dropout_rng,
    totals,
    history: list[dict[str, Any]],
    best_checkpoint,
    early_stopping,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(last.json "resume" entry, last.state.npz arrays) for the position given."""
    metric_arrays, metric_scalars = totals.metrics.state()
    arrays = {f"metrics.{k}": v for k, v in metric_arrays.items()}
    info: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "steps_per_epoch": steps,
        "epoch_complete": complete,
        "stopped_early": stopped_early,
        "rng": {
            "shuffle": shuffle_state,
            "augment": augment_state,
            "dropout": None if dropout_rng is None else dropout_rng.bit_generator.state,
        },
        "totals": {"loss_sum": totals.loss_sum, "seen": totals.seen, "metrics": metric_scalars},
        "history": [{k: encode_float(v) for k, v in row.items()} for row in history],
        "best_checkpoint": {
            "best": encode_float(best_checkpoint.watch.best),
            "best_epoch": best_checkpoint.best_epoch,
        },
        "early_stopping": None,
    }
    if early_stopping is not None:
        info["early_stopping"] = {
            "best": encode_float(early_stopping.watch.best),
            "best_epoch": early_stopping.best_epoch,
            "wait": early_stopping.wait,
            "stopped_epoch": early_stopping.stopped_epoch,
        }
        for key, array in (early_stopping.best_weights or {}).items():
            arrays[f"early_stopping.best_weights.{key}"] = array
    return info, arrays


def load_resume_state(run_dir: Path, spec: Spec) -> ResumeState:
    """checkpoints/last of a run, with every check a resume needs (clear errors)."""
    last = Path(run_dir) / "checkpoints" / "last"
    if not last.with_suffix(".npz").is_file():
        raise CheckpointError(
            "nothing to resume: the run has no checkpoint yet (it stopped before its first save)",
            where=str(last.with_suffix(".npz")),
            hint="Train again with `cnnkit train SPEC`; set train.save_every_steps to "
            "checkpoint within an epoch.",
        )
    weights, meta = load_checkpoint(last)
    info = meta.get("resume")
    if not info:
        raise CheckpointError(
            "this checkpoint has no resume state (written by an older cnnkit)",
            where=str(last.with_suffix(".json")),
            hint="Fine-tune from it instead: cnnkit train SPEC --weights RUN_DIR.",
        )
    if meta.get("spec_hash") not in (None, spec.hash()):
        raise CheckpointError(
            "last.npz was written for a different model or data than this run's config.yaml",
            where=str(last.with_suffix(".npz")),
        )
    optimizer_arrays, optimizer_meta = load_optimizer_state(last)
    state_file = last.with_suffix(".state.npz")
    arrays = read_npz(state_file, "resume state") if state_file.is_file() else {}
    _check_hashes(last, meta)
    return ResumeState(weights, optimizer_arrays, optimizer_meta, info, arrays, last)


def _check_hashes(last: Path, meta: dict[str, Any]) -> None:
    """Every file of the set must be the one the sidecar describes (not a mix of two saves)."""
    for name, digest in (meta.get("sha256") or {}).items():
        file = last.parent / name
        if not file.is_file() or hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise CheckpointError(
                f"{name} does not match {last.name}.json: the checkpoint set is incomplete or "
                "mixed from two saves",
                where=str(file),
                hint="Fine-tune from best.npz instead: cnnkit train SPEC --weights RUN_DIR.",
            )


# -- what changed ---------------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: value}


def spec_changes(saved: Spec, given: Spec) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, given value) for every resolved key that differs."""
    a, b = _flatten(saved.to_dict()), _flatten(given.to_dict())
    missing = object()
    changes = []
    for key in list(a) + [k for k in b if k not in a]:
        old, new = a.get(key, missing), b.get(key, missing)
        if old != new:
            show = lambda v: "(absent)" if v is missing else v  # noqa: E731
            changes.append((key, show(old), show(new)))
    return changes


def refuse_changes(saved: Spec, given: Spec, run_dir: Path, source: str) -> None:
    """Raise SpecError with a diff when `given` changes anything but RESUMABLE_CHANGES."""
    changes = [
        c
        for c in spec_changes(saved, given)
        if not any(c[0] == k or c[0].startswith(k + ".") for k in RESUMABLE_CHANGES)
    ]
    if not changes:
        return
    lines = [f"  {key}: {old!r} -> {new!r}" for key, old, new in changes[:20]]
    if len(changes) > 20:
        lines.append(f"  ... and {len(changes) - 20} more")
    raise SpecError(
        f"cannot resume with a changed spec ({source}); a resumed run must train the same "
        f"model on the same data with the same optimizer. Changed (saved -> given):\n"
        + "\n".join(lines),
        where=str(Path(run_dir) / "config.yaml"),
        hint="Resume with the run's own spec (`cnnkit train --resume RUN_DIR`, --epochs N to "
        "train longer), or start a new run: cnnkit train SPEC.",
    )
