"""Reader for the IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from cnnkit.errors import DataError

# IDX type codes -> numpy dtypes (big-endian on disk)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path, md5s: tuple[str, ...] = ()) -> np.ndarray:
    """Return the array stored in an IDX file; raise DataError naming the file if malformed.

    With md5s, the *decompressed* content must have one of them: a check that survives
    recompression (Debian's Fashion-MNIST .gz files differ from upstream's, their content not).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file: {exc}", where=str(path)) from None
    if md5s and hashlib.md5(raw).hexdigest() not in md5s:
        raise DataError(
            f"checksum mismatch: the content has md5 {hashlib.md5(raw).hexdigest()}, expected "
            f"{md5s[0]}",
            where=str(path),
            hint="The file is corrupt or not the original; replace it with a fresh copy.",
        )
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError("not an IDX file (bad magic number)", where=str(path))
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"IDX file is truncated or padded: {len(raw)} bytes, expected {expected} for "
            f"shape {shape}",
            where=str(path),
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )
