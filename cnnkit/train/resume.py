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
- the finished epochs' rows at full precision, and each callback's state under its name
  (cnnkit.train.callbacks: best checkpoint, early stopping and its kept best weights,
  reduce-on-plateau's counters).

The trainer and the callbacks write that state (BackupAndRestore) and read it back through
their state_dict() / load_state_dict(); this module reads and checks the checkpoint set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.errors import CheckpointError, SpecError
from cnnkit.io import read_npz
from cnnkit.runs.layout import RunDir
from cnnkit.runs.rundir import load_checkpoint, load_optimizer_state
from cnnkit.spec.config import Spec
from cnnkit.train.callbacks.base import decode_float

# spec keys a resume may change: they alter neither the model, the data nor the optimizer
RESUMABLE_CHANGES = ("name", "train.epochs", "train.save_every_steps")


@dataclass
class ResumeState:
    """A last checkpoint, read back: everything the Trainer needs to continue."""

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

    def restore(self, trainer) -> None:
        """Put the optimizer, the trainer (position, random streams, totals, history) and
        every callback back as they were saved (the model already holds the weights)."""
        trainer.optimizer.load_state_dict(self.optimizer_arrays, self.optimizer_meta)
        trainer.load_state_dict(self.info, self.arrays)
        trainer.callbacks.load_state_dict(self.info, self.arrays)


def _read_older_layout(info: dict[str, Any], optimizer_meta: dict[str, Any]) -> None:
    """Checkpoints of cnnkit before the callbacks owned their state kept reduce_on_plateau's
    counters in the optimizer's state (last.optimizer.json): they become the callback's."""
    saved = optimizer_meta.get("schedule")
    if saved is not None and saved.get("name") == "reduce_on_plateau":
        info.setdefault("reduce_on_plateau", {k: v for k, v in saved.items() if k != "name"})
        optimizer_meta["schedule"] = None


def load_resume_state(run_dir: Path, spec: Spec) -> ResumeState:
    """checkpoints/last of a run, with every check a resume needs (clear errors)."""
    files = RunDir(run_dir).checkpoint("last")
    last = files.stem
    if not files.weights.is_file():
        raise CheckpointError(
            "nothing to resume: the run has no checkpoint yet (it stopped before its first save)",
            where=str(files.weights),
            hint="Train again with `cnnkit train SPEC`; set train.save_every_steps to "
            "checkpoint within an epoch.",
        )
    weights, meta = load_checkpoint(last)
    info = meta.get("resume")
    if not info:
        raise CheckpointError(
            "this checkpoint has no resume state (written by an older cnnkit)",
            where=str(files.sidecar),
            hint="Fine-tune from it instead: cnnkit train SPEC --weights RUN_DIR.",
        )
    if meta.get("spec_hash") not in (None, spec.hash()):
        raise CheckpointError(
            "last.npz was written for a different model or data than this run's config.yaml",
            where=str(files.weights),
        )
    optimizer_arrays, optimizer_meta = load_optimizer_state(last)
    _read_older_layout(info, optimizer_meta)
    arrays = read_npz(files.state, "resume state") if files.state.is_file() else {}
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
        where=str(RunDir(run_dir).config),
        hint="Resume with the run's own spec (`cnnkit train --resume RUN_DIR`, --epochs N to "
        "train longer), or start a new run: cnnkit train SPEC.",
    )


def refuse_other_workers(info: dict[str, Any], workers: int, run_dir: Path) -> None:
    """A run resumes with the number of workers it was trained with (1 when its checkpoint
    predates data-parallel training): each worker's slice of a batch, and so the order of
    the float additions, depends on it, and the resumed run would no longer be bit for bit
    the uninterrupted one."""
    saved = int(info.get("workers", 1))
    if saved == workers:
        return
    flag = f" --workers {saved}" if saved > 1 else ""
    raise CheckpointError(
        f"this run was trained by {saved} worker{'s' * (saved != 1)} and cannot be resumed "
        f"by {workers}: the slices of every batch, and so the result, would differ",
        where=str(run_dir),
        hint=f"Resume it as it was trained: cnnkit train --resume {run_dir}{flag}",
    )
