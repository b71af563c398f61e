"""Layer families, one a module. The registry (cnnkit.registry) maps spec names to them."""

from cnnkit.layers.base import Layer
from cnnkit.layers.conv import Conv2D
from cnnkit.layers.core import Activation, Dense, Dropout, Flatten, LeakyReLU, SpatialDropout2D
from cnnkit.layers.normalization import BatchNormalization
from cnnkit.layers.pooling import (
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
