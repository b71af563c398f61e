"""Installed like a library (issue 13, line 6): a non-editable `pip install` into a fresh virtual
environment, used from a folder far from the checkout, trains configs/mnist_basic.yaml offline
(MNIST ships inside the package), evaluates and predicts, and writes nothing into site-packages:
downloads and caches (Numba's compiled kernels included) go to the user data directory.

The environment borrows numpy, numba, ... from the interpreter running the tests: a .pth file
puts its site-packages after the venv's own. (`--system-site-packages` would borrow from the
*base* interpreter instead, which in CI's fresh venv has none of cnnkit's dependencies.) cnnkit
itself is installed with --no-index --no-deps: nothing is downloaded. This interpreter may
have the checkout installed in editable mode; the test checks the venv imports its own copy.
Most of its time is Numba compiling the installed copy's kernels, once (evaluate and predict
then load them from the cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from PIL import Image

from cnnkit.data.idx import read_idx
from cnnkit.data.sources import MNIST_DIR
from cnnkit.runs.layout import RunDir

ROOT = Path(__file__).resolve().parents[2]
PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"


def _run(args: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder: size and modification time, to tell that nothing was written."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with a non-editable install of this checkout's cnnkit, built from a copy
    (pip's build writes build/ and *.egg-info beside the sources)."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "cnnkit", source / "cnnkit", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], base, env)
    own = _run([venv / "bin" / "python", "-c", PURELIB], base, env).stdout.strip()
    # Plain path lines: the borrowed folders' own .pth files (this checkout's editable install
    # among them) are not run, so the venv imports only what pip installs into it.
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(own) / "borrowed.pth").write_text("".join(f"{folder}\n" for folder in borrowed))
    pip = [
        venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]
    _run([*pip, "--no-deps", "--no-build-isolation", "--no-index", source], base, env)
    return venv


def test_installed_cnnkit_trains_evaluates_and_predicts_offline_from_anywhere(venv, tmp_path):
    home, data, work = tmp_path / "home", tmp_path / "data", tmp_path / "work"
    for folder in (home, data, work):
        folder.mkdir()
    shutil.copy(ROOT / "configs" / "mnist_basic.yaml", work)  # no datasets/ beside it
    Image.fromarray(255 - read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")[0]).save(
        work / "digit.png"  # a dark digit on white paper, as a user draws one
    )
    hidden = (
        "PYTHONPATH",
        "NUMBA_CACHE_DIR",
        "CNNKIT_CACHE_DIR",
        "XDG_DATA_HOME",
        "XDG_CACHE_HOME",
    )
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env.update(HOME=str(home), CNNKIT_DATA=str(data), COLUMNS="120")
    python, cnnkit = venv / "bin" / "python", venv / "bin" / "cnnkit"

    where = (
        "import cnnkit, sysconfig; print(cnnkit.__file__); print(sysconfig.get_paths()['purelib'])"
    )
    module, purelib = _run([python, "-c", where], work, env).stdout.split()
    site_packages = Path(purelib)
    assert Path(module) == site_packages / "cnnkit" / "__init__.py"  # not the checkout's
    before = _files(site_packages)

    few = ["--set", "data.max_train_samples=200", "--set", "data.max_test_samples=100"]
    _run([cnnkit, "train", "mnist_basic.yaml", "--epochs", "1", *few, "--out", "runs"], work, env)
    run = RunDir(work / "runs" / "mnist_basic")
    assert run.checkpoint("best").weights.is_file() and len(run.read_metrics()) == 1
    _run([cnnkit, "evaluate", run.root], work, env)
    assert run.read_evaluation()["samples"] == 100
    predicted = json.loads(
        _run([cnnkit, "predict", "digit.png", "--run", run.root, "--json"], work, env).stdout
    )
    assert len(predicted) == 1 and predicted[0]["top"][0]["class"] in list("0123456789")

    _run([cnnkit, "init", "spec.yaml"], work, env)
    schema = (work / "spec.yaml").read_text().splitlines()[0].split("$schema=", 1)[1]
    assert Path(schema) == site_packages / "cnnkit" / "spec" / "cnnkit-spec.schema.json"
    assert Path(schema).is_file()

    assert _files(site_packages) == before  # no cache, no download, no bytecode inside it
    assert list((data / "cache" / "numba").rglob("*.nbi"))  # the kernels' cache went here
    # and the warm-up finds it there: a second training would announce no compilation
    check = (
        "from cnnkit.spec.build import build_model; from cnnkit.spec.config import load_spec;"
        "from cnnkit.train.warmup import kernels_used, uncached;"
        "used = kernels_used(build_model(load_spec('mnist_basic.yaml')).build(0));"
        "print(len(used), uncached(used))"
    )
    assert _run([python, "-c", check], work, env).stdout.split(maxsplit=1)[1].strip() == "[]"
    assert not (home / ".cache" / "cnnkit").exists() and not (home / ".local").exists()
