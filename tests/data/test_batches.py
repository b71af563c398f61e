"""Splits of a dataset (cnnkit.data.batches.make_splits): class subsets relabelled in order."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit import api
from cnnkit.data.batches import make_splits
from cnnkit.data.sources import count_classes
from cnnkit.errors import SpecError
from cnnkit.spec.config import parse_spec
from tests.clitools import MNIST
from tests.specs import conv_spec_text as spec_text


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
