"""What the whole suite shares: the e2e marker of tests/e2e/ and the fixtures several files use.

Paths (ROOT, MNIST) and the ways of running cnnkit's CLI are in tests/clitools.py; the slow numpy
references of the kernels, and the tolerances to compare against them, in tests/reference.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import clitools  # noqa: F401  (imported first: its snapshot of the environment)

E2E = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in tests/e2e/ is an end-to-end test: `pytest -m "not e2e"` leaves them out."""
    for item in items:
        if E2E in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """The decoded-image cache of image folders goes to this test's tmp_path, not the user's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def image_folder():
    """make(root, splits, classes): one 8x8 PNG per class folder and split, a colour per class
    (so that labels can be told apart)."""

    def make(root: Path, splits=("train", "val", "test"), classes=("cat", "dog", "emu")) -> Path:
        from PIL import Image

        for split in splits:
            for i, name in enumerate(classes):
                (root / split / name).mkdir(parents=True)
                Image.new("RGB", (8, 8), (10 + 40 * i, 20, 30)).save(root / split / name / "0.png")
        return root

    return make


FOLDER_SPEC = """\
data:
  source: folder
  path: {path}
  target_size: [8, 8]{extra}
model:
  layers:
    - Flatten: {{}}
    - Dense: {{units: {units}, activation: softmax}}
"""


@pytest.fixture
def folder_spec(tmp_path):
    """write(path, extra, units): tmp_path/spec.yaml, a Flatten + Dense model of the image
    folder at `path` (8x8 images); `extra` adds lines to the data section."""

    def write(path: str, extra: str = "", units: int = 3) -> Path:
        spec = tmp_path / "spec.yaml"
        spec.write_text(FOLDER_SPEC.format(path=path, extra=extra, units=units))
        return spec

    return write


BENCH_SPEC = """\
name: benchy
data: {source: synthetic, num_classes: 10}
model:
  input_shape: [12, 12, 3]
  layers:
    - Conv2D: {filters: 8, kernel_size: 3, padding: same, activation: relu}
    - MaxPooling2D: {pool_size: 2}
    - Conv2D: {filters: 8, kernel_size: 3, strides: 2, activation: relu}
    - Flatten: {}
    - Dense: {units: 16, activation: relu}
    - Dense: {units: 10, activation: softmax}
optimizer: adam
train: {batch_size: 16}
"""


@pytest.fixture
def bench_spec(tmp_path) -> Path:
    """A small spec to benchmark: two convolutions (one strided), a pooling, two Dense."""
    path = tmp_path / "benchy.yaml"
    path.write_text(BENCH_SPEC)
    return path


@pytest.fixture
def restore_threads():
    """Numba's thread count as it was before the test (which may set it)."""
    import numba

    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)
