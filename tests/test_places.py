"""cnnkit.places: the user data directory, the cache, and Numba's cache when installed."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from cnnkit import places


def test_cnnkit_data_holds_downloads_and_caches(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CNNKIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path))
    assert places.datasets_dir() == tmp_path / "datasets"
    assert places.cache_dir() == tmp_path / "cache"
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "elsewhere"))  # the cache alone
    assert places.cache_dir() == tmp_path / "elsewhere"


def test_without_cnnkit_data_the_platforms_user_folders(monkeypatch):
    for name in ("CNNKIT_DATA", "CNNKIT_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert places.data_dir() == Path(platformdirs.user_data_dir("cnnkit", appauthor=False))
    assert places.cache_dir() == Path(platformdirs.user_cache_dir("cnnkit", appauthor=False))
    assert places.PACKAGE not in places.data_dir().parents  # never the package folder


def test_numba_cache_leaves_the_package_only_when_installed(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path))
    monkeypatch.delenv("CNNKIT_CACHE_DIR", raising=False)
    # set, then deleted: monkeypatch records a variable it deletes only if it existed, and
    # keep_numba_cache_out_of_the_package writes os.environ itself (it must not leak)
    monkeypatch.setenv("NUMBA_CACHE_DIR", "")
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    places.keep_numba_cache_out_of_the_package()  # this checkout: beside the kernels, as always
    assert "NUMBA_CACHE_DIR" not in os.environ
    monkeypatch.setattr(places, "source_checkout", lambda: None)  # as installed
    places.keep_numba_cache_out_of_the_package()
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "cache" / "numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/mine")  # the user's own setting wins
    places.keep_numba_cache_out_of_the_package()
    assert os.environ["NUMBA_CACHE_DIR"] == "/mine"


def test_this_checkout_is_recognised():
    assert places.source_checkout() == Path(__file__).resolve().parents[1]
