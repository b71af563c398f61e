"""Optimizer steps against numbers worked out by hand (Keras 3 update rules and defaults).

The expected values are literals; the comments show the arithmetic that produced them.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.optimizers import SGD, Adam
from cnnkit.options import resolve_options

RTOL = 1e-12
ATOL = 1e-15


def make(cls, **overrides):
    return cls(**resolve_options(overrides, cls.OPTIONS, "optimizer"))


def close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- defaults


def test_keras_defaults():
    assert resolve_options({}, Adam.OPTIONS, "optimizer") == {
        "learning_rate": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
    }
    assert resolve_options({}, SGD.OPTIONS, "optimizer") == {
        "learning_rate": 0.01,
        "momentum": 0.0,
        "nesterov": False,
    }


# ----------------------------------------------------------------------------- Adam

# Three steps on p0 = [1.0, -2.0, 0.5] with the Keras defaults (lr 0.001, b1 0.9, b2 0.999,
# eps 1e-7). alpha_t = lr * sqrt(1 - b2^t) / (1 - b1^t):
#   alpha_1 = 0.001 * sqrt(0.001)    / 0.1   = 3.16227766e-4
#   alpha_2 = 0.001 * sqrt(0.001999) / 0.19  = 0.001 * 0.04471018 / 0.19  = 2.35316725e-4
#   alpha_3 = 0.001 * sqrt(0.002997001) / 0.271 = 0.001 * 0.05474487 / 0.271 = 2.02010597e-4
ADAM_GRADS = [
    [0.1, -0.2, 0.0],
    [0.3, 0.1, -0.5],
    [-0.1, 0.2, 0.0],
]
ADAM_EXPECTED = [
    # t=1: m = 0.1 g = [0.01, -0.02, 0]; v = 0.001 g^2 = [1e-5, 4e-5, 0]
    #   p0 - alpha_1 * 0.01 / (sqrt(1e-5) + 1e-7) = 1 - 3.16227766e-4 * 3.16217766 = 0.99900003
    #   p1 + alpha_1 * 0.02 / (sqrt(4e-5) + 1e-7) = -2 + 3.16227766e-4 * 3.16222766 = -1.99900002
    #   the zero gradient leaves p2 unchanged (m = 0, divided by eps)
    [0.9990000316217766, -1.9990000158111383, 0.5],
    # t=2: m = 0.9 m + 0.1 g = [0.009 + 0.03, -0.018 + 0.01, 0 - 0.05] = [0.039, -0.008, -0.05]
    #      v = 0.999 v + 0.001 g^2 = [0.999e-5 + 9e-5, 3.996e-5 + 1e-5, 2.5e-4]
    #        = [9.999e-5, 4.996e-5, 2.5e-4]
    #   0.99900003162 - 2.35316725e-4 * 0.039 / (0.0099995 + 1e-7)   = 0.99808226
    #  -1.99900001581 - 2.35316725e-4 * -0.008 / (0.00706824 + 1e-7) = -1.99873368
    #   0.5 - 2.35316725e-4 * -0.05 / (0.0158114 + 1e-7)             = 0.50074413
    [0.9980822596809746, -1.9987336825395066, 0.5007441321172622],
    # t=3: m = [0.0351 - 0.01, -0.0072 + 0.02, -0.045 + 0] = [0.0251, 0.0128, -0.045]
    #      v = [9.989001e-5 + 1e-5, 4.991004e-5 + 4e-5, 2.4975e-4 + 0]
    #        = [1.0989001e-4, 8.991004e-5, 2.4975e-4]
    #   0.99808226 - 2.02010597e-4 * 0.0251 / (0.01048284 + 1e-7)  = 0.99759857
    #  -1.99873368 - 2.02010597e-4 * 0.0128 / (0.00948209 + 1e-7)  = -1.99900638
    #   0.50074413 - 2.02010597e-4 * -0.045 / (0.01580348 + 1e-7)  = 0.50131935
    [0.9975985724469442, -1.9990063764545694, 0.5013193483988124],
]
ADAM_M3 = [0.0251, 0.0128, -0.045]
ADAM_V3 = [1.0989001e-4, 8.991004e-5, 2.4975e-4]


def test_adam_three_steps_keras_defaults():
    opt = make(Adam)
    p = np.array([1.0, -2.0, 0.5])
    for t, (g, expected) in enumerate(zip(ADAM_GRADS, ADAM_EXPECTED, strict=True), start=1):
        opt.step({"w": p}, {"w": np.array(g)})
        assert opt.iterations == t
        close(p, expected)
    close(opt.state["m.w"], ADAM_M3, rtol=1e-12, atol=1e-17)
    close(opt.state["v.w"], ADAM_V3, rtol=1e-12, atol=1e-17)


def test_adam_first_step_is_about_lr_times_sign():
    # with |g| >> eps, step 1 is alpha_1 * 0.1 g / (sqrt(0.001) |g|) = lr * sign(g)
    opt = make(Adam)
    p = np.array([0.0, 0.0, 0.0])
    opt.step({"w": p}, {"w": np.array([3.0, -0.5, 0.1])})
    close(p, [-0.001, 0.001, -0.001], rtol=1e-4)


def test_adam_custom_options():
    # lr 0.01, b1 0.5, b2 0.9, eps 0.1 (large so that it matters), g = 2 on p = 1:
    #   alpha_1 = 0.01 * sqrt(1 - 0.9) / (1 - 0.5) = 0.02 * 0.316227766 = 0.00632455532
    #   m = 0.5 * 2 = 1.0; v = 0.1 * 4 = 0.4; sqrt(v) = 0.632455532
    #   p = 1 - 0.00632455532 * 1.0 / (0.632455532 + 0.1) = 1 - 0.00863473 = 0.99136527
    opt = make(Adam, learning_rate=0.01, beta_1=0.5, beta_2=0.9, epsilon=0.1)
    p = np.array([1.0])
    opt.step({"w": p}, {"w": np.array([2.0])})
    close(p, [0.9913652705949582])


def test_adam_state_is_per_parameter():
    # two parameters in one step: each has its own moments, the same alpha_1 and iteration
    opt = make(Adam)
    a, b = np.array([1.0, -2.0, 0.5]), np.array([[0.0, 0.0]])
    opt.step(
        {"layers.0.kernel": a, "layers.0.bias": b},
        {
            "layers.0.kernel": np.array(ADAM_GRADS[0]),
            "layers.0.bias": np.array([[0.1, 0.0]]),
        },
    )
    assert opt.iterations == 1
    close(a, ADAM_EXPECTED[0])
    # 0 - 3.16227766e-4 * 0.01 / (sqrt(1e-5) + 1e-7) = -0.0009999684 (as for p0 above)
    close(b, [[-0.0009999683782234, 0.0]])
    assert set(opt.state) == {
        "m.layers.0.kernel",
        "v.layers.0.kernel",
        "m.layers.0.bias",
        "v.layers.0.bias",
    }


def test_adam_float32_keeps_dtype():
    opt = make(Adam)
    p = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    for g, expected in zip(ADAM_GRADS, ADAM_EXPECTED, strict=True):
        opt.step({"w": p}, {"w": np.array(g, dtype=np.float32)})
        assert p.dtype == np.float32
        close(p, expected, rtol=1e-6, atol=1e-7)
    assert opt.state["m.w"].dtype == np.float32
    assert opt.state["v.w"].dtype == np.float32


# ----------------------------------------------------------------------------- SGD

# Three steps on p0 = [1.0, -2.0], lr 0.01, gradients:
SGD_GRADS = [[0.5, -1.0], [0.1, 0.2], [0.0, -0.3]]


def run_sgd(opt, dtype=np.float64):
    p = np.array([1.0, -2.0], dtype=dtype)
    history = []
    for g in SGD_GRADS:
        opt.step({"w": p}, {"w": np.array(g, dtype=dtype)})
        assert p.dtype == np.dtype(dtype)
        history.append(p.copy())
    return history


SGD_PLAIN = [
    [0.995, -1.99],  # p - 0.01 g = [1 - 0.005, -2 + 0.01]
    [0.994, -1.992],  # [0.995 - 0.001, -1.99 - 0.002]
    [0.994, -1.989],  # [0.994 - 0, -1.992 + 0.003]
]
# momentum 0.9: v = 0.9 v - 0.01 g; p += v
SGD_MOMENTUM = [
    [0.995, -1.99],  # v1 = [-0.005, 0.01]
    [0.9895, -1.983],  # v2 = [-0.0045 - 0.001, 0.009 - 0.002] = [-0.0055, 0.007]
    [0.98455, -1.9737],  # v3 = [-0.00495 - 0, 0.0063 + 0.003] = [-0.00495, 0.0093]
]
# nesterov: same v; p += 0.9 v - 0.01 g
SGD_NESTEROV = [
    [0.9905, -1.981],  # [1 - 0.0045 - 0.005, -2 + 0.009 + 0.01]
    [0.98455, -1.9767],  # [0.9905 - 0.00495 - 0.001, -1.981 + 0.0063 - 0.002]
    [0.980095, -1.96533],  # [0.98455 - 0.004455 - 0, -1.9767 + 0.00837 + 0.003]
]


def test_sgd_plain():
    opt = make(SGD)  # Keras default lr 0.01
    for got, expected in zip(run_sgd(opt), SGD_PLAIN, strict=True):
        close(got, expected)
    assert opt.iterations == 3
    assert opt.state == {}  # no momentum slot without momentum


def test_sgd_momentum():
    opt = make(SGD, learning_rate=0.01, momentum=0.9)
    for got, expected in zip(run_sgd(opt), SGD_MOMENTUM, strict=True):
        close(got, expected)
    close(opt.state["momentum.w"], [-0.00495, 0.0093])


def test_sgd_nesterov():
    opt = make(SGD, learning_rate=0.01, momentum=0.9, nesterov=True)
    for got, expected in zip(run_sgd(opt), SGD_NESTEROV, strict=True):
        close(got, expected)
    close(opt.state["momentum.w"], [-0.00495, 0.0093])


def test_sgd_custom_learning_rate():
    # lr 0.5: p = [1 - 0.25, -2 + 0.5] = [0.75, -1.5]
    opt = make(SGD, learning_rate=0.5)
    p = np.array([1.0, -2.0])
    opt.step({"w": p}, {"w": np.array([0.5, -1.0])})
    close(p, [0.75, -1.5])


def test_sgd_momentum_state_is_per_parameter():
    opt = make(SGD, momentum=0.9)
    a, b = np.array([1.0, -2.0]), np.array([0.0])
    for g in SGD_GRADS:
        opt.step({"a": a, "b": b}, {"a": np.array(g), "b": np.array([1.0])})
    close(a, SGD_MOMENTUM[-1])
    # b: v = -0.01, -0.019, -0.0271; p = -0.01 - 0.019 - 0.0271 = -0.0561
    close(b, [-0.0561])


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, SGD_PLAIN),
        ({"momentum": 0.9}, SGD_MOMENTUM),
        (
            {"momentum": 0.9, "nesterov": True},
            SGD_NESTEROV,
        ),
    ],
)
def test_sgd_float32_keeps_dtype(options, expected):
    opt = make(SGD, **options)
    for got, exp in zip(run_sgd(opt, np.float32), expected, strict=True):
        assert got.dtype == np.float32
        close(got, exp, rtol=1e-6, atol=1e-7)
    for slot in opt.state.values():
        assert slot.dtype == np.float32
