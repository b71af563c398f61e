"""Checksummed downloads of public datasets, with a clear offline error.

Nothing else in cnnkit touches the network. A file is fetched to a temporary name, its md5
checked, and only then renamed into place, so an interrupted or corrupted download never
looks like a valid file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from cnnkit.errors import DataError

TIMEOUT_S = 30


def fetch(url: str, dest: Path, md5: str, what: str) -> Path:
    """Download url to dest (if not already there) and verify its md5."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    digest = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(
                f"downloaded {what} has md5 {digest.hexdigest()}, expected {md5}",
                where=url,
                hint="The download was corrupted or the file changed upstream; try again.",
            )
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"cannot download {what} ({exc.__class__.__name__}: {exc}); this machine may be "
            "offline",
            where=url,
            hint=f"Download {url} on a machine with network access and put it at {dest}.",
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
