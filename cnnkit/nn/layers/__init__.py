"""Layer families, one a module. The registry (cnnkit.nn.registry) maps spec names to them."""

from cnnkit.nn.layers.base import Layer
from cnnkit.nn.layers.conv import Conv2D
from cnnkit.nn.layers.core import Activation, Dense, Dropout, Flatten, LeakyReLU, SpatialDropout2D
from cnnkit.nn.layers.normalization import BatchNormalization
from cnnkit.nn.layers.pooling import (
    AveragePooling2D,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
)

ALL_LAYERS: tuple[type[Layer], ...] = (
    Conv2D,
    MaxPooling2D,
    AveragePooling2D,
    Flatten,
    Dense,
    Dropout,
    Activation,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    SpatialDropout2D,
    BatchNormalization,
    LeakyReLU,
)
