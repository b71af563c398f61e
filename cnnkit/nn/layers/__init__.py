"""Layer families, one a module. The registry (cnnkit.nn.registry) maps spec names to them.

ALL_LAYERS is every public Layer class defined in the modules of LAYER_MODULES, in their
order: a layer added to one of them is registered by being defined there (a new module is
added to LAYER_MODULES). Import a layer from its module (cnnkit.nn.layers.reshaping); the
names below are re-exported for the callers that predate that rule.
"""

from cnnkit.nn.layers import conv, core, depthwise, merging, normalization, pooling, reshaping
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

LAYER_MODULES = (conv, depthwise, core, normalization, pooling, reshaping, merging)


def _layers_defined_in(module) -> list[type[Layer]]:
    return [
        value
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, Layer)
        and value.__module__ == module.__name__
        and not name.startswith("_")
    ]


ALL_LAYERS: tuple[type[Layer], ...] = tuple(
    cls for module in LAYER_MODULES for cls in _layers_defined_in(module)
)

__all__ = [
    "ALL_LAYERS",
    "LAYER_MODULES",
    "Activation",
    "AveragePooling2D",
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Layer",
    "LeakyReLU",
    "MaxPooling2D",
    "SpatialDropout2D",
]
