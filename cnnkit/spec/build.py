"""The nn objects a resolved spec describes: its model, loss, optimizer and metrics.

cnnkit.nn knows nothing of a spec; this is where a spec's sections become their arguments.
"""

from __future__ import annotations

from cnnkit.nn.losses import Loss
from cnnkit.nn.metrics import MetricSet
from cnnkit.nn.model import Model
from cnnkit.nn.optimizers import Optimizer
from cnnkit.nn.registry import LOSSES, OPTIMIZERS
from cnnkit.spec.config import Spec


def build_model(spec: Spec) -> Model:
    """Fresh (unbuilt) layers from the spec's layer configs: build(seed) allocates them."""
    return Model.from_configs(spec.to_dict()["model"]["layers"], spec.model.input_shape)


def last_activation(spec: Spec) -> str:
    return spec.model.layers[-1].options.get("activation") or "linear"


def build_loss(spec: Spec) -> Loss:
    """The spec's loss, with the head its last layer asks for."""
    return LOSSES[spec.loss.name].for_head(spec.loss.options, last_activation(spec))


def build_optimizer(spec: Spec) -> Optimizer:
    return OPTIMIZERS[spec.optimizer.name](**spec.optimizer.options)


def build_metrics(spec: Spec) -> MetricSet:
    """The spec's metrics (accuracy always first), for the classes its head has."""
    return MetricSet.for_head(spec.metrics, spec.model.layers[-1].output_shape[0])
