"""Name -> class tables for layers, losses and optimizers (data sources: cnnkit.data.sources).

Layer names are matched case- and underscore-insensitively, so Keras spelling (MaxPooling2D)
and snake_case (max_pooling2d) both work.
"""

from __future__ import annotations

from cnnkit.nn.layers import ALL_LAYERS
from cnnkit.nn.layers.base import Layer
from cnnkit.nn.losses import ALL_LOSSES, LOSS_ALIASES, Loss
from cnnkit.nn.optimizers import ALL_OPTIMIZERS, Optimizer


def _fold(name: str) -> str:
    return name.lower().replace("_", "")


_LAYER_LOOKUP: dict[str, type[Layer]] = {}
for _cls in ALL_LAYERS:
    for _name in (_cls.keras_name, _cls.type_name, *_cls.aliases):
        _LAYER_LOOKUP[_fold(_name)] = _cls

LOSSES: dict[str, type[Loss]] = {cls.name: cls for cls in ALL_LOSSES}
LOSSES.update({alias: LOSSES[name] for alias, name in LOSS_ALIASES.items()})
OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in ALL_OPTIMIZERS}


def canonical_layer(name: str) -> type[Layer] | None:
    return _LAYER_LOOKUP.get(_fold(name))


def layer_names() -> list[str]:
    return [cls.keras_name for cls in ALL_LAYERS]
