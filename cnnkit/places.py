"""Where cnnkit's files live outside a run directory: what ships inside the package (MNIST, the
spec schema, the starter templates), the user's data directory (downloads), the user's cache,
and the source checkout when cnnkit runs from one.

Installed with pip, the package folder is site-packages, and nothing is ever written there:

    $CNNKIT_DATA/datasets/<name>   downloads (Fashion-MNIST, CIFAR-10), when CNNKIT_DATA is set
    $CNNKIT_DATA/cache/            caches (decoded image folders, compiled kernels)

and without CNNKIT_DATA the platform's per-user directories, by platformdirs (XDG on Linux:
~/.local/share/cnnkit/datasets and ~/.cache/cnnkit; ~/Library/... on macOS; %LOCALAPPDATA% on
Windows). platformdirs rather than XDG rules by hand: it is small, well kept, and knows the other
platforms' rules too. CNNKIT_CACHE_DIR still sets the cache alone, as before.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

PACKAGE = Path(__file__).resolve().parent
APP = "cnnkit"


def source_checkout() -> Path | None:
    """The repository root when cnnkit is imported from a source checkout (an editable install
    included), else None: installed, the package's parent is site-packages."""
    root = PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() else None


def data_dir() -> Path:
    """The user's cnnkit data directory: $CNNKIT_DATA, else the platform's user data folder."""
    given = os.environ.get("CNNKIT_DATA")
    if given:
        return Path(given).expanduser()
    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def datasets_dir() -> Path:
    """Where downloaded datasets go (one folder each)."""
    return data_dir() / "datasets"


def cache_dir() -> Path:
    """$CNNKIT_CACHE_DIR, else $CNNKIT_DATA/cache, else the platform's user cache folder
    (~/.cache/cnnkit on Linux)."""
    given = os.environ.get("CNNKIT_CACHE_DIR")
    if given:
        return Path(given).expanduser()
    if os.environ.get("CNNKIT_DATA"):
        return data_dir() / "cache"
    return Path(platformdirs.user_cache_dir(APP, appauthor=False))


def keep_numba_cache_out_of_the_package() -> None:
    """Installed, send Numba's on-disk cache (@njit(cache=True)) to the user cache.

    Numba writes it next to the kernels' source, i.e. into site-packages, whenever that folder
    is writable (a virtual environment); it reads NUMBA_CACHE_DIR once, when it is imported, so
    this runs when cnnkit is imported, before any kernel is. A user's own NUMBA_CACHE_DIR wins;
    a source checkout keeps its cache in cnnkit/kernels/__pycache__, as it always has."""
    if "NUMBA_CACHE_DIR" in os.environ or source_checkout() is not None:
        return
    os.environ["NUMBA_CACHE_DIR"] = str(cache_dir() / "numba")
