"""Array sources (CIFAR-10 binary, npz), Fashion-MNIST's lookup order and the offline error."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest

from cnnkit import api
from cnnkit.data import download, sources
from cnnkit.data.arrays import read_cifar10_batch
from cnnkit.data.batches import make_splits, stratified_subset
from cnnkit.errors import DataError, SpecError
from cnnkit.spec.config import parse_spec
from tests.specs import conv_spec_text

HEAD = "  layers: [Flatten: {{}}, Dense: {{units: {units}, activation: softmax}}]\n"


def spec(data: str, units: int = 10, shape: str | None = None):
    model = "model:\n" + (f"  input_shape: {shape}\n" if shape else "") + HEAD.format(units=units)
    return parse_spec(f"data: {data}\n{model}")


def write_cifar_batch(path: Path, labels: list[int]) -> np.ndarray:
    rng = np.random.default_rng(len(labels))
    planes = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    records = np.concatenate(
        [np.array(labels, np.uint8)[:, None], planes.reshape(len(labels), -1)], axis=1
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    records.tofile(path)
    return planes.transpose(0, 2, 3, 1)  # the NHWC images the reader must return


def test_cifar10_binary_reader(tmp_path: Path):
    root = tmp_path / "cifar-10-batches-bin"
    expected = [write_cifar_batch(root / f"data_batch_{i}.bin", [i, 9, 0]) for i in range(1, 6)]
    write_cifar_batch(root / "test_batch.bin", [3, 4])
    dataset = api.load_dataset(spec(f"{{source: cifar10, path: {tmp_path}}}"))
    assert dataset.x_train.shape == (15, 32, 32, 3) and dataset.x_test.shape == (2, 32, 32, 3)
    assert np.array_equal(dataset.x_train[:3], expected[0])  # planes -> channels last
    assert dataset.y_train[:6].tolist() == [1, 9, 0, 2, 9, 0]
    assert dataset.class_names[8] == "ship"


def test_cifar10_rejects_other_files(tmp_path: Path):
    bad = tmp_path / "data_batch_1.bin"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="not a CIFAR-10 binary batch"):
        read_cifar10_batch(bad)
    with pytest.raises(DataError, match="missing"):
        api.load_dataset(spec(f"{{source: cifar10, path: {tmp_path}}}"))


def test_npz_source(tmp_path: Path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
        y=np.eye(3, dtype=np.float32)[rng.integers(0, 3, 20)],  # one-hot, as to_categorical
        x_test=rng.integers(0, 256, (5, 8, 8), dtype=np.uint8),
        y_test=rng.integers(0, 3, 5),
        class_names=np.array(["a", "b", "c"]),
    )
    s = spec(f"{{source: npz, path: {path}}}", units=3, shape="[8, 8, 1]")
    dataset = api.load_dataset(s)
    assert dataset.x_train.shape == (20, 8, 8, 1) and dataset.class_names == ["a", "b", "c"]
    assert dataset.y_train.dtype == np.int64 and dataset.y_train.max() <= 2
    with pytest.raises(SpecError, match="3 classes"):
        spec(f"{{source: npz, path: {path}}}", units=4, shape="[8, 8, 1]")
    with pytest.raises(DataError, match="model.input_shape"):
        api.load_dataset(spec(f"{{source: npz, path: {path}}}", units=3, shape="[8, 8, 3]"))


def test_npz_errors(tmp_path: Path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((4, 8, 8), np.float32) + 0.5, y=np.arange(4))
    s = spec(f"{{source: npz, path: {path}}}", units=4, shape="[8, 8, 1]")
    with pytest.raises(DataError, match="uint8"):
        api.load_dataset(s)
    with pytest.raises(SpecError, match="needs data.path"):
        spec("{source: npz}", shape="[8, 8, 1]")


def test_fashion_mnist_offline_error_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_DEBIAN", tmp_path / "no-debian-package")
    monkeypatch.setattr(sources, "CHECKOUT", None)  # no datasets/ from an earlier download
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "data"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        api.load_dataset(spec("{source: fashion_mnist}"))
    # the user data directory, never the package folder
    target = tmp_path / "data" / "datasets" / "fashion_mnist" / "train-images-idx3-ubyte.gz"
    assert "offline" in info.value.message and str(target) in info.value.hint
    assert not list(target.parent.iterdir())  # no partial file


def test_shipped_mnist_is_found_from_any_folder_without_a_checkout(tmp_path, monkeypatch):
    """`source: mnist` (data.path's default datasets/mnist, also what every run's config.yaml
    records) finds the copy inside the package, installed or not; a datasets/mnist folder in
    the working directory still comes first."""
    monkeypatch.setattr(sources, "CHECKOUT", None)
    monkeypatch.chdir(tmp_path)
    s = spec("{source: mnist, max_train_samples: 10, max_test_samples: 10}")
    assert s.data.path == "datasets/mnist"
    assert sources.resolve_data_dir(s.data.path, None) == sources.MNIST_DIR
    assert sources.MNIST_DIR.parent == Path(sources.__file__).resolve().parent  # package data
    assert api.load_dataset(s).x_train.shape == (60000, 28, 28, 1)
    (tmp_path / "datasets" / "mnist").mkdir(parents=True)
    assert sources.resolve_data_dir("datasets/mnist", None) == tmp_path / "datasets" / "mnist"


def test_cifar10_downloads_into_the_user_data_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHECKOUT", None)
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "data"))
    fetched = []

    def fetch(url, dest, md5, what):
        fetched.append(dest)
        write_cifar_batch(dest.parent / "cifar-10-batches-bin" / "test_batch.bin", [1, 2])
        for i in range(1, 6):
            write_cifar_batch(dest.parent / "cifar-10-batches-bin" / f"data_batch_{i}.bin", [i])
        return dest

    monkeypatch.setattr(sources, "fetch", fetch)
    monkeypatch.setattr(sources, "extract_cifar10", lambda archive, root: None)
    dataset = api.load_dataset(spec("{source: cifar10}"))
    assert fetched == [tmp_path / "data" / "datasets" / "cifar10" / "cifar-10-binary.tar.gz"]
    assert dataset.x_test.shape == (2, 32, 32, 3)


@pytest.mark.skipif(
    not sources.FASHION_DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist not installed"
)
def test_fashion_mnist_from_debian_package():
    dataset = api.load_dataset(spec("{source: fashion_mnist}"))
    assert dataset.x_train.shape == (60000, 28, 28, 1) and dataset.class_names[9] == "Ankle boot"


def _class_sorted_npz(path: Path, counts: list[int]) -> None:
    """Labels 0..0, 1..1, ...; image i holds the value i (mod 256) so subsets can be told apart."""
    y = np.repeat(np.arange(len(counts)), counts)
    x = (np.arange(len(y)) % 256).astype(np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    names = np.array([f"c{i}" for i in range(len(counts))])
    np.savez(path, x=x, y=y, x_test=x.copy(), y_test=y.copy(), class_names=names)


def _subset(path: Path, seed: int, extra: str = ""):
    data = f"{{source: npz, path: {path}, max_train_samples: 40, max_test_samples: 10{extra}}}"
    s = parse_spec(
        f"seed: {seed}\ndata: {data}\nmodel:\n  input_shape: [4, 4, 1]\n" + HEAD.format(units=3)
    )
    return make_splits(api.load_dataset(s), s.data, s.seed)


def test_max_samples_take_a_stratified_seeded_subset(tmp_path: Path):
    path = tmp_path / "sorted.npz"
    _class_sorted_npz(path, [100, 60, 40])  # max_train_samples 40 < any class: first 40 = c0
    first = _subset(path, seed=1)
    assert np.bincount(first.train.y).tolist() == [20, 12, 8]  # 40 × 100/200, 60/200, 40/200
    assert np.bincount(first.test.y).tolist() == [5, 3, 2]
    values = first.train.x[:, 0, 0, 0].astype(int)
    assert values.tolist() == sorted(values.tolist())  # kept in the data's own order
    assert len(set(values.tolist())) == 40 and values.max() >= 100  # not the first 40
    again = _subset(path, seed=1)
    assert np.array_equal(again.train.x, first.train.x) and np.array_equal(
        again.test.x, first.test.x
    )
    other = _subset(path, seed=2)
    assert np.bincount(other.train.y).tolist() == [20, 12, 8]
    assert not np.array_equal(other.train.x, first.train.x)


def test_stratified_subset_keeps_every_class_and_the_exact_count():
    y = np.repeat(np.arange(4), [500, 300, 197, 3])
    rng = np.random.default_rng(0)
    for n in (4, 7, 10, 64, 999):
        keep = stratified_subset(y, n, rng)
        counts = np.bincount(y[keep], minlength=4)
        assert len(keep) == n == counts.sum() and (counts >= 1).all(), (n, counts)
        assert np.all(np.diff(keep) > 0)  # sorted, no repeats
    # proportional where the shares allow: 64 × (500, 300, 197, 3) / 1000 = 32, 19.2, 12.6, 0.2
    assert np.bincount(y[stratified_subset(y, 64, rng)]).tolist() == [32, 19, 12, 1]


def test_validation_split_of_class_sorted_arrays_is_said(tmp_path: Path):
    """validation_split takes the last fraction, as Keras' fit: on class-sorted arrays that is
    the last class only, which the splits' notes say (train prints them); shuffled: nothing."""
    path = tmp_path / "sorted.npz"
    _class_sorted_npz(path, [100, 60, 40])
    splits = _subset(path, seed=1, extra=", validation_split: 0.2")
    assert set(splits.validation.y.tolist()) == {2}  # Keras' split, unchanged
    (note,) = splits.notes
    assert "has no image of 2 of 3 classes (c0, c1)" in note and "sorted by class" in note
    rng = np.random.default_rng(0)
    with np.load(path) as archive:
        arrays = dict(archive)
    order = rng.permutation(len(arrays["y"]))
    np.savez(path, **{**arrays, "x": arrays["x"][order], "y": arrays["y"][order]})
    assert _subset(path, seed=1, extra=", validation_split: 0.2").notes == []


# -- the synthetic source ----------------------------------------------------------------


def test_synthetic_source_needs_shape_and_classes():
    with pytest.raises(SpecError, match="needs num_classes"):
        parse_spec(conv_spec_text("{source: synthetic}"))
    no_shape = "data: {source: synthetic, num_classes: 3}\nmodel: {layers: [Flatten: {}]}"
    with pytest.raises(SpecError, match="needs model.input_shape"):
        parse_spec(no_shape)


def test_synthetic_source_is_seeded_and_shaped():
    spec = parse_spec(
        conv_spec_text("{source: synthetic, num_classes: 7, max_train_samples: 50}", 7)
    )
    first, second = api.load_dataset(spec), api.load_dataset(spec)
    assert first.x_train.shape == (50, 28, 28, 1) and first.x_train.dtype == np.uint8
    assert first.y_train.max() < 7 and first.class_names == [str(i) for i in range(7)]
    assert np.array_equal(first.x_train, second.x_train)


def test_num_classes_is_not_an_mnist_option():
    with pytest.raises(SpecError) as info:
        parse_spec(conv_spec_text("{source: mnist, num_classes: 3}"))
    assert "data.num_classes" in info.value.where
