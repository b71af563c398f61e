"""Data options (synthetic source, class subsets) and model.weights (fine-tuning)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnkit import api
from cnnkit.data.batches import make_splits
from cnnkit.data.sources import count_classes
from cnnkit.errors import CheckpointError, SpecError
from cnnkit.spec.build import build_model
from cnnkit.spec.config import parse_spec

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "datasets" / "mnist"

LAYERS = """
model:
  input_shape: [28, 28, 1]
  layers:
    - Conv2D: {filters: 4, kernel_size: 3, strides: 2, activation: relu}
    - Flatten: {}
    - Dense: {units: UNITS, activation: softmax}
"""


def spec_text(data: str, units: int = 10, extra: str = "") -> str:
    return f"seed: 5\ndata: {data}\n{LAYERS.replace('UNITS', str(units))}{extra}"


def test_synthetic_source_needs_shape_and_classes():
    with pytest.raises(SpecError, match="needs num_classes"):
        parse_spec(spec_text("{source: synthetic}"))
    no_shape = "data: {source: synthetic, num_classes: 3}\nmodel: {layers: [Flatten: {}]}"
    with pytest.raises(SpecError, match="needs model.input_shape"):
        parse_spec(no_shape)


def test_synthetic_source_is_seeded_and_shaped():
    spec = parse_spec(spec_text("{source: synthetic, num_classes: 7, max_train_samples: 50}", 7))
    first, second = api.load_dataset(spec), api.load_dataset(spec)
    assert first.x_train.shape == (50, 28, 28, 1) and first.x_train.dtype == np.uint8
    assert first.y_train.max() < 7 and first.class_names == [str(i) for i in range(7)]
    assert np.array_equal(first.x_train, second.x_train)


def test_num_classes_is_not_an_mnist_option():
    with pytest.raises(SpecError) as info:
        parse_spec(spec_text("{source: mnist, num_classes: 3}"))
    assert "data.num_classes" in info.value.where


def test_class_subset_relabels_in_order():
    spec = parse_spec(spec_text(f"{{source: mnist, path: {MNIST}, classes: [8, 3]}}", units=2))
    assert count_classes(spec.data, None) == 2
    dataset = api.load_dataset(spec)
    splits = make_splits(dataset, spec.data, spec.seed)
    assert splits.class_names == ["8", "3"]
    in_test = np.isin(dataset.y_test, [3, 8])
    assert len(splits.test) == in_test.sum()
    # label 0 is an 8, label 1 a 3, in the original order of the test set
    assert np.array_equal(splits.test.y, np.where(dataset.y_test[in_test] == 8, 0, 1))


def test_class_subset_errors():
    with pytest.raises(SpecError) as info:
        parse_spec(spec_text("{source: mnist, classes: [3, 12]}", units=2))
    assert "data.classes[1]" in info.value.where and "0 to 9" in info.value.message
    with pytest.raises(SpecError, match="at least two different"):
        parse_spec(spec_text("{source: mnist, classes: [3, 3]}", units=2))
    with pytest.raises(SpecError, match="2 classes"):
        parse_spec(spec_text("{source: mnist, classes: [3, 8]}", units=10))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    data = f"{{source: mnist, path: {MNIST}, max_train_samples: 256, max_test_samples: 64}}"
    spec = parse_spec(spec_text(data, extra="train: {epochs: 1, batch_size: 64}\n"))
    return api.train(spec, out=tmp_path_factory.mktemp("runs")).run_dir


def test_model_weights_initialises_from_a_run(trained_run: Path):
    data = f"{{source: mnist, path: {MNIST}}}"
    extra = "train: {epochs: 1}\n"
    spec = parse_spec(
        spec_text(data, extra=extra).replace("model:", f"model:\n  weights: {trained_run}")
    )
    model = build_model(spec).build(seed=999)
    path = api.load_initial_weights(model, spec)
    assert path == trained_run / "checkpoints" / "best.npz"
    with np.load(path) as ckpt:
        for key, value in model.named_params().items():
            assert np.array_equal(value, ckpt[key]), key


def test_model_weights_shape_mismatch_names_layer_and_shapes(trained_run: Path):
    data = f"{{source: mnist, path: {MNIST}, classes: [3, 8]}}"
    text = spec_text(data, units=2).replace("model:", f"model:\n  weights: {trained_run}")
    spec = parse_spec(text)
    model = build_model(spec).build(seed=0)
    with pytest.raises(CheckpointError) as info:
        api.load_initial_weights(model, spec)
    message = str(info.value)
    assert "layers.2.kernel" in message and "Dense" in message
    assert "(676, 10)" in message and "(676, 2)" in message  # 13*13*4 inputs


def test_model_weights_missing_file(tmp_path: Path):
    spec = parse_spec(
        spec_text("{source: mnist}").replace("model:", f"model:\n  weights: {tmp_path}/nope.npz")
    )
    with pytest.raises(CheckpointError, match="not found"):
        api.load_initial_weights(build_model(spec).build(0), spec)
