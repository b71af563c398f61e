"""Files written so that nothing is ever half-written, and read without running code.

Every write goes to a temporary file in the same folder, is fsynced and renamed into place: an
interrupted write (Ctrl-C, a full disk) leaves the previous file intact. JSON is strict (NaN and
infinities become null). .npz archives are read with allow_pickle=False and checked to hold
plain numbers only. Everything that touches the disk (run directories, caches, previews) uses
these; nothing here knows what the files mean.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.errors import CheckpointError, StorageError


def _file_mode() -> int:
    """The mode open() would give a new file (0o666 less the umask): mkstemp's 0o600 would
    make run files unreadable to the user's group, unlike every other file they write."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, rename into place. A failed write (full
    disk, unwritable folder) leaves the previous file intact and raises StorageError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = stage(path, data)
        os.replace(tmp, path)
    except OSError as exc:
        raise storage_error(exc, path) from None


def stage(path: Path, data: bytes) -> Path:
    """Write `data` to a new temporary file in path's folder (fsynced); its path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def storage_error(exc: OSError, path: Path, kept: str = "") -> StorageError:
    reason = exc.strerror or str(exc)
    code = errno.errorcode.get(exc.errno or 0)
    return StorageError(
        f"could not write {path.name}: {reason}" + (f" ({code})" if code else ""),
        where=str(path.parent),
        hint=(kept or f"The previous {path.name}, if any, is intact (writes are atomic).")
        + " Free some disk space or make the folder writable, then try again.",
    )


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


def starts_like_pickle(path: Path) -> bool:
    """A pickle stream (protocol 2+) starts with the PROTO opcode 0x80 and its version."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):  # a zip archive: an .npz holding an object array
        return True
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz archive, loaded with allow_pickle=False."""
    if not path.is_file():
        raise CheckpointError(f"{what} not found", where=str(path))
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise CheckpointError(
                f"not an .npz archive (a single .npy array?): cannot be a {what}",
                where=str(path),
            )
        with loaded as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc) and not starts_like_pickle(path):
            raise CheckpointError(
                f"corrupt {what}: not a numpy .npz archive (unknown content)",
                where=str(path),
                hint="Checkpoints are the .npz files cnnkit writes under RUN_DIR/checkpoints/.",
            ) from None
        if "pickle" in str(exc):
            raise CheckpointError(
                f"{what} contains pickled Python objects; cnnkit never unpickles (it could run "
                "arbitrary code)",
                where=str(path),
                hint="A checkpoint holds plain numeric arrays only, as written by cnnkit.",
            ) from None
        raise CheckpointError(f"corrupt {what}: {exc}", where=str(path)) from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, zlib.error) as exc:
        raise CheckpointError(
            f"corrupt or truncated {what} ({exc.__class__.__name__}: {exc})", where=str(path)
        ) from None
    bad = [k for k, a in arrays.items() if a.dtype.kind not in "biuf"]
    if bad:
        raise CheckpointError(
            f"{what} array {bad[0]} has dtype {arrays[bad[0]].dtype}, not a number type",
            where=str(path),
        )
    return arrays


def generated_page_main(argv: list[str] | None, what: str, page: str, render) -> None:
    """The command line of a generated docs page (`python -m cnnkit.spec.reference --out
    docs/reference/spec.md`): print render()'s text, or write it atomically to --out."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=f"Print (or write) the {what} page.")
    parser.add_argument("--out", type=Path, help=f"write it here (the repository's: {page})")
    args = parser.parse_args(argv)
    text = render()
    if args.out:
        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
