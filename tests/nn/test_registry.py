"""Layer names (cnnkit.nn.registry): Keras spelling, snake_case and aliases."""

from __future__ import annotations

import pytest

from cnnkit.nn.layers.conv import Conv2D
from cnnkit.nn.layers.core import LeakyReLU, SpatialDropout2D
from cnnkit.nn.layers.normalization import BatchNormalization
from cnnkit.nn.layers.pooling import (
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
)


@pytest.mark.parametrize(
    "cls, name",
    [
        (GlobalAveragePooling2D, "GlobalAvgPool2D"),
        (GlobalMaxPooling2D, "global_max_pooling2d"),
        (BatchNormalization, "batch_normalization"),
        (SpatialDropout2D, "spatial_dropout2d"),
        (LeakyReLU, "leaky_relu"),
        (Conv2D, "Conv2D"),
    ],
)
def test_layer_names_keras_and_snake_case(cls, name):
    from cnnkit.nn.registry import canonical_layer

    assert canonical_layer(name) is cls
    assert canonical_layer(cls.keras_name) is cls
