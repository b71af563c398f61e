"""Max, average and global pooling (cnnkit.nn.layers.pooling): finite-difference checks
over odd shapes, ties, and the shape errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.errors import SpecError
from cnnkit.nn.layers.pooling import (
    AveragePooling2D,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
)
from cnnkit.spec.config import build_layers
from tests.nn.gradcheck import (
    check_layer_gradients,
    distinct_values,
    make_layer,
)

POOL_CASES = [
    pytest.param(
        pool, strides, padding, shape, id=f"p{pool}-s{strides}-{padding}-{shape[1]}x{shape[2]}"
    )
    for pool in (2, 3)
    for strides in (None, 1)
    for padding in ("valid", "same")
    for shape in ((2, 7, 5, 2), (1, 6, 7, 3))
] + [
    pytest.param([2, 3], [1, 2], "same", (2, 5, 7, 2), id="p2x3-s1x2-same-5x7"),
    pytest.param([3, 2], [2, 1], "valid", (2, 7, 6, 2), id="p3x2-s2x1-valid-7x6"),
    pytest.param(3, 2, "same", (2, 7, 6, 2), id="p3-s2-same-overlap-7x6"),
]


@pytest.mark.parametrize("cls", [MaxPooling2D, AveragePooling2D])
@pytest.mark.parametrize("pool, strides, padding, shape", POOL_CASES)
def test_pooling_gradients(cls, pool, strides, padding, shape):
    options = {"pool_size": pool, "padding": padding}
    if strides is not None:
        options["strides"] = strides
    layer = make_layer(cls, options, shape[1:])
    x = distinct_values(np.random.default_rng(3), shape)
    y, _ = check_layer_gradients(layer, x)
    if cls is MaxPooling2D:
        # every output is one of the inputs of its channel
        for c in range(shape[3]):
            assert np.isin(y[..., c], x[..., c]).all()


@pytest.mark.parametrize("cls", [GlobalAveragePooling2D, GlobalMaxPooling2D])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_gradients(cls, keepdims):
    shape = (2, 3, 4, 3)
    layer = make_layer(cls, {"keepdims": keepdims}, shape[1:])
    assert layer.output_shape == ((1, 1, 3) if keepdims else (3,))
    x = distinct_values(np.random.default_rng(5), shape)
    y, _ = check_layer_gradients(layer, x)
    reduce = np.mean if cls is GlobalAveragePooling2D else np.max
    np.testing.assert_allclose(y.reshape(2, 3), reduce(x, axis=(1, 2)), rtol=1e-14)


def test_global_max_pooling_gradient_goes_to_first_maximum():
    layer = make_layer(GlobalMaxPooling2D, {}, (2, 2, 1))
    x = np.array([[[[1.0], [5.0]], [[5.0], [2.0]]]])  # tie between (0, 1) and (1, 0)
    assert layer.forward(x, False).tolist() == [[5.0]]
    dx = layer.backward(np.array([[7.0]]))
    np.testing.assert_array_equal(dx[0, ..., 0], [[0.0, 7.0], [0.0, 0.0]])


def test_global_pooling_needs_an_image():
    with pytest.raises(SpecError, match="image-shaped"):
        build_layers([{"GlobalAveragePooling2D": {}}], (10,))


@pytest.mark.parametrize("name", ["MaxPooling2D", "AveragePooling2D"])
def test_a_named_pooling_layer_keeps_its_name_and_inputs_in_the_resolved_spec(name):
    """The resolved config (a run's config.yaml, what build_model rebuilds from) keeps name:
    and inputs:, or a later layer's inputs: [pooled] names nothing."""
    from cnnkit.spec.build import build_model
    from cnnkit.spec.config import parse_spec

    spec = parse_spec(
        "data: {source: synthetic, num_classes: 2}\n"
        "model:\n  input_shape: [4, 4, 1]\n  layers:\n"
        "    - Conv2D: {filters: 2, kernel_size: 1, name: stem}\n"
        f"    - {name}: {{pool_size: 2, inputs: [stem], name: pooled}}\n"
        "    - Flatten: {inputs: [pooled]}\n"
        "    - Dense: {units: 2, activation: softmax}\n"
    )
    config = spec.to_dict()["model"]["layers"][1][name]
    assert (config["name"], config["inputs"], config["strides"]) == ("pooled", ["stem"], [2, 2])
    assert build_model(spec).layers[2].sources == (1,)


@pytest.mark.parametrize(
    "options, winners",
    [({"pool_size": 2}, np.int8), ({"pool_size": 3, "strides": 2}, np.int64)],
)
def test_max_pooling_keeps_small_winners_where_its_windows_tile(options, winners):
    """Windows that tile the input take the kernels that keep an int8 position per window
    (an eighth of the memory the general kernels' int64 index takes), in training and in
    the memory plan; overlapping windows keep the general ones."""
    layer = make_layer(MaxPooling2D, options, (6, 6, 4))
    layer.forward(np.random.default_rng(0).random((2, 6, 6, 4)), training=True)
    assert layer._argmax.dtype == winners
    assert layer.saved_arrays(True)[1].dtype == winners
