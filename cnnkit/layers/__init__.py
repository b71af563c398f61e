"""Layer families, one a module. The registry (cnnkit.registry) maps spec names to them."""

from cnnkit.layers.base import Layer
from cnnkit.layers.conv import Conv2D
from cnnkit.layers.core import Activation, Dense, Dropout, Flatten
from cnnkit.layers.pooling import AveragePooling2D, MaxPooling2D

ALL_LAYERS: tuple[type[Layer], ...] = (
    Conv2D,
    MaxPooling2D,
    AveragePooling2D,
    Flatten,
    Dense,
    Dropout,
    Activation,
)
