"""Weight penalties (cnnkit.nn.regularizers): spec forms, the loss value by hand, and
their gradients, added once by the model (Model.backward).
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.errors import SpecError
from cnnkit.nn.layers.core import Dense
from cnnkit.nn.model import Model
from cnnkit.nn.registry import LOSSES
from cnnkit.spec.build import build_model
from cnnkit.spec.config import parse_spec
from tests.nn.gradcheck import (
    TOL,
    away_from_zero,
    make_layer,
    numerical_gradient,
    rel_error,
    spec_text,
)

REG_LAYERS = """    - Conv2D: {filters: 3, kernel_size: 3, activation: tanh,
               kernel_regularizer: {l1: 0.05}}
    - BatchNormalization: {gamma_regularizer: l2}
    - LeakyReLU: {negative_slope: 0.2}
    - SpatialDropout2D: {rate: 0.3}
    - GlobalAveragePooling2D: {}
    - Dense: {units: 4, activation: gelu, kernel_regularizer: {l2: 0.03},
              bias_regularizer: {l1_l2: {l1: 0.02, l2: 0.04}}}
    - Dense: {units: 3, activation: softmax, kernel_regularizer: l1_l2, bias_regularizer: l1}
"""


def test_regularizer_spec_forms_resolve():
    spec = parse_spec(spec_text(REG_LAYERS))
    conv, bn, dense1, dense2 = (spec.model.layers[i].options for i in (0, 1, 5, 6))
    assert conv["kernel_regularizer"] == {"l1": 0.05, "l2": 0.0}
    assert conv["bias_regularizer"] is None
    assert bn["gamma_regularizer"] == {"l1": 0.0, "l2": 0.01}
    assert dense1["kernel_regularizer"] == {"l1": 0.0, "l2": 0.03}
    assert dense1["bias_regularizer"] == {"l1": 0.02, "l2": 0.04}
    assert dense2["kernel_regularizer"] == {"l1": 0.01, "l2": 0.01}
    assert dense2["bias_regularizer"] == {"l1": 0.01, "l2": 0.0}
    # the resolved config validates again to the same spec
    again = parse_spec(spec.to_yaml())
    assert again.to_dict() == spec.to_dict()
    with pytest.raises(SpecError, match="unknown regularizer 'l3'"):
        parse_spec(
            spec_text("    - Flatten: {}\n    - Dense: {units: 3, kernel_regularizer: {l3: 1}}")
        )


def test_regularization_loss_value_by_hand():
    spec = parse_spec(spec_text(REG_LAYERS))
    model = build_model(spec).build(1, dtype=np.float64)
    p = model.named_params()
    expected = (
        0.05 * np.abs(p["layers.0.kernel"]).sum()
        + 0.01 * np.square(p["layers.1.gamma"]).sum()
        + 0.03 * np.square(p["layers.5.kernel"]).sum()
        + 0.02 * np.abs(p["layers.5.bias"]).sum()
        + 0.04 * np.square(p["layers.5.bias"]).sum()
        + 0.01 * np.abs(p["layers.6.kernel"]).sum()
        + 0.01 * np.square(p["layers.6.kernel"]).sum()
        + 0.01 * np.abs(p["layers.6.bias"]).sum()
    )
    assert model.regularization_loss() == pytest.approx(expected, rel=1e-13)
    assert expected > 0
    # no regularizers: 0
    plain = parse_spec(spec_text("    - Flatten: {}\n    - Dense: {units: 3, activation: softmax}"))
    assert build_model(plain).build(1).regularization_loss() == 0.0


def test_model_gradients_with_regularizers_and_new_layers():
    """FD of loss + regularization_loss over every parameter (sampled), training mode:
    BatchNormalization's batch statistics, SpatialDropout2D masks, l1 away from 0, l2, l1_l2."""
    spec = parse_spec(spec_text(REG_LAYERS))
    model = build_model(spec).build(spec.seed, dtype=np.float64)
    loss_fn = LOSSES[spec.loss.name]()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 6, 2))
    labels = np.array([0, 2, 1])
    params = model.named_params()
    for array in params.values():
        array[...] = away_from_zero(rng, array.shape, margin=0.05) * 0.4  # l1 kink out of reach
    dropout = model.layers[3]

    def forward():
        dropout.rng = np.random.default_rng(1)
        return model.forward(x, training=True)

    logits = forward()
    assert (dropout._mask == 0).any() and (dropout._mask != 0).any()
    _, dlogits = loss_fn(logits, labels)
    model.backward(dlogits)
    grads = {k: g.copy() for k, g in model.named_grads().items()}
    assert sorted(grads) == sorted(params)

    def objective():
        return loss_fn(forward(), labels)[0] + model.regularization_loss()

    for key, param in params.items():
        n = min(12, param.size)
        idx = np.sort(rng.choice(param.size, size=n, replace=False))
        numeric = numerical_gradient(objective, param, idx).reshape(-1)[idx]
        err = rel_error(grads[key].reshape(-1)[idx], numeric)
        assert err < TOL, f"{key}: relative error {err:.3g}"


@pytest.mark.parametrize(
    "reg",
    [{"l1": 0.1}, {"l2": 0.2}, {"l1_l2": {"l1": 0.1, "l2": 0.2}}],
    ids=["l1", "l2", "l1_l2"],
)
def test_dense_regularizer_gradient_alone(reg):
    """The layer's backward gives the data gradient; the model adds the penalty's."""
    layer = make_layer(
        Dense, {"units": 3, "kernel_regularizer": reg, "bias_regularizer": reg}, (4,)
    )
    model = Model([layer], (4,))
    for array in layer.params.values():
        array[...] = away_from_zero(np.random.default_rng(2), array.shape, margin=0.05)
    x = np.random.default_rng(3).standard_normal((2, 4))
    r = np.random.default_rng(4).standard_normal((2, 3))
    model.forward(x, training=True)
    model.backward(r)
    grads = {k: g.copy() for k, g in layer.grads.items()}

    def objective():
        return float(np.sum(model.forward(x) * r)) + model.regularization_loss()

    for name, param in layer.params.items():
        err = rel_error(grads[name], numerical_gradient(objective, param))
        assert err < TOL, f"{name}: {err:.3g}"
    layer.forward(x, True)
    layer.backward(r)  # alone, the layer's data gradient: the penalty is not in it twice
    assert rel_error(layer.grads["kernel"], x.T @ r) < 1e-15
