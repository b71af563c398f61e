"""Optimizer steps against numbers worked out by hand (Keras 3 update rules and defaults).

The expected values are literals; the comments show the arithmetic that produced them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnkit.errors import CheckpointError, SpecError
from cnnkit.nn.optimizers import (
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    AdamW,
    Nadam,
    RMSprop,
)
from cnnkit.nn.schedules import ExponentialDecay
from cnnkit.options import resolve_options

RTOL = 1e-12
ATOL = 1e-15


def make(cls, **overrides):
    return cls(**resolve_options(overrides, cls.OPTIONS, "optimizer"))


def close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- defaults


COMMON = {"weight_decay": None, "clipnorm": None, "clipvalue": None, "global_clipnorm": None}


def test_keras_defaults():
    def defaults(cls):
        return resolve_options({}, cls.OPTIONS, "optimizer")

    assert defaults(Adam) == {
        "learning_rate": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "amsgrad": False,
        **COMMON,
    }
    assert defaults(SGD) == {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False, **COMMON}
    assert defaults(RMSprop) == {
        "learning_rate": 0.001,
        "rho": 0.9,
        "momentum": 0.0,
        "epsilon": 1e-7,
        "centered": False,
        **COMMON,
    }
    assert defaults(AdamW) == {**defaults(Adam), "weight_decay": 0.004}
    assert defaults(Adagrad) == {
        "learning_rate": 0.001,
        "initial_accumulator_value": 0.1,
        "epsilon": 1e-7,
        **COMMON,
    }
    assert defaults(Adadelta) == {"learning_rate": 0.001, "rho": 0.95, "epsilon": 1e-7, **COMMON}
    assert defaults(Nadam) == {
        "learning_rate": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        **COMMON,
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


# ----------------------------------------------------------------------------- the others
# Three steps each on p0 = [1.0, -2.0] with SGD_GRADS = [[0.5, -1.0], [0.1, 0.2], [0.0, -0.3]]
# unless said otherwise; numbers rounded to 8 digits in the comments.


def run_steps(opt, grads=SGD_GRADS, p0=(1.0, -2.0), dtype=np.float64):
    p = np.array(p0, dtype=dtype)
    history = []
    for g in grads:
        opt.step({"w": p}, {"w": np.array(g, dtype=dtype)})
        assert p.dtype == np.dtype(dtype)
        history.append(p.copy())
    return history


def check_trajectory(opt, expected, **kwargs):
    for got, exp in zip(run_steps(opt, **kwargs), expected, strict=True):
        close(got, exp)


# RMSprop, Keras defaults (lr 0.001, rho 0.9, eps 1e-7): v = 0.9 v + 0.1 g^2;
# p -= lr g / sqrt(v + eps)
RMSPROP = [
    # v = [0.025, 0.1]: 1 - 0.0005 / sqrt(0.0250001) = 1 - 0.0031622714;
    #                  -2 + 0.001 / sqrt(0.1000001) = -2 + 0.0031622761
    [0.9968377286643679, -1.9968377239209694],
    # v = [0.0225 + 0.001, 0.09 + 0.004] = [0.0235, 0.094]
    #   p0 - 0.0001 / sqrt(0.0235001) = p0 - 0.00065232669
    #   p1 - 0.0002 / sqrt(0.0940001) = p1 - 0.00065232773
    [0.9961854019792421, -1.99749005164704],
    # v = [0.02115, 0.0846 + 0.009 = 0.0936]; g0 = 0 leaves p0; p1 + 0.0003 / sqrt(0.0936001)
    #   = p1 + 0.00098058018
    [0.9961854019792421, -1.996509471495163],
]


def test_rmsprop_three_steps_keras_defaults():
    opt = make(RMSprop)
    check_trajectory(opt, RMSPROP)
    close(opt.state["velocity.w"], [0.02115, 0.0936])
    assert set(opt.state) == {"velocity.w"}  # no momentum or mean slot unless asked for


# centered with momentum 0.9, lr 0.01: a = 0.9 a + 0.1 g; denominator v - a^2 + eps;
# increment = lr g / sqrt(denominator); mom = 0.9 mom + increment; p -= mom
RMSPROP_CENTERED_MOMENTUM = [
    # v = [0.025, 0.1], a = [0.05, -0.1], den = [0.0225001, 0.0900001]
    # inc = [0.005 / 0.15000033, -0.01 / 0.30000017] = [0.033333259, -0.033333315] = mom
    [0.9666667407404939, -1.9666666851851697],
    # v = [0.0235, 0.094], a = [0.055, -0.07], den = [0.0204751, 0.0891001]
    # inc = [0.001 / 0.14309123, 0.002 / 0.2984964] = [0.0069885485, 0.0067002483]
    # mom = [0.03 + 0.0069885485, -0.03 + 0.0067002483] = [0.036988482, -0.023299735]
    [0.9296782588948239, -1.943366950193592],
    # v = [0.02115, 0.0936], a = [0.0495, -0.093], den = [0.01869985, 0.0849511]
    # inc = [0, -0.003 / 0.29146372 = -0.010292876]
    # mom = [0.033289634, -0.020969762 - 0.010292876 = -0.031262638]
    [0.896388625233721, -1.9121043124510981],
]


def test_rmsprop_centered_with_momentum():
    opt = make(RMSprop, learning_rate=0.01, momentum=0.9, centered=True)
    check_trajectory(opt, RMSPROP_CENTERED_MOMENTUM)
    close(opt.state["average_gradient.w"], [0.0495, -0.093])
    close(opt.state["momentum.w"], [0.03328963366110299, -0.03126263774249389])


# Adam with amsgrad, lr 0.1, beta_1 = beta_2 = 0.5 (so that v falls quickly), eps 1e-7,
# on gradients [[1.0, 0.1], [0.0, 0.2], [0.5, 0.0]]. alpha_t = 0.1 sqrt(1 - 0.5^t) / (1 - 0.5^t):
# alpha = 0.14142136, 0.11547005, 0.1069045
AMSGRAD_GRADS = [[1.0, 0.1], [0.0, 0.2], [0.5, 0.0]]
AMSGRAD = [
    # m = [0.5, 0.05], v = v_hat = [0.5, 0.005]
    # p - alpha m / (sqrt(v_hat) + eps) = [1 - 0.099999986, -2 - 0.099999859]
    [0.9000000141421336, -2.099999858578844],
    # m = [0.25, 0.125], v = [0.25, 0.0225], v_hat = max = [0.5, 0.0225]
    # steps = [0.11547005 * 0.25 / 0.70710688, 0.11547005 * 0.125 / 0.15000010]
    #       = [0.040824823, 0.096224981]   (plain Adam would divide by sqrt(0.25): 0.057735)
    [0.8591751908692492, -2.1962248392937944],
    # m = [0.375, 0.0625], v = [0.25, 0.01125], v_hat = [0.5, 0.0225]
    # steps = [0.1069045 * 0.375 / 0.70710688, 0.1069045 * 0.0625 / 0.15000010]
    #       = [0.056694663, 0.044543511]
    [0.8024805279357012, -2.2407683499168582],
]


def test_adam_amsgrad_keeps_the_largest_v():
    opt = make(Adam, learning_rate=0.1, beta_1=0.5, beta_2=0.5, amsgrad=True)
    check_trajectory(opt, AMSGRAD, grads=AMSGRAD_GRADS)
    close(opt.state["v.w"], [0.25, 0.01125])
    close(opt.state["vhat.w"], [0.5, 0.0225])
    plain = run_steps(make(Adam, learning_rate=0.1, beta_1=0.5, beta_2=0.5), AMSGRAD_GRADS)
    # identical until v falls: step 2, p0 = 0.9 - 0.11547005 * 0.25 / 0.5 = 0.84226500
    close(plain[0], AMSGRAD[0])
    close(plain[1][0], 0.8422649987701741)


# AdamW, lr 0.1, weight_decay 0.004 (Keras default), Adam defaults otherwise. Each step first
# p -= p * 0.004 * 0.1 (= p * 0.9996), then Adam; alpha = 0.031622777, 0.023531673, 0.02020106
ADAMW = [
    # decayed = [0.9996, -1.9992]; m = [0.05, -0.1], v = [0.00025, 0.001]
    # step = alpha m / (sqrt(v) + eps) = [0.099999368, -0.099999684]
    [0.8996006324515321, -1.899200316226766],
    # decayed = [0.89924079, -1.8984406]; m = [0.055, -0.07], v = [0.00025975, 0.001039]
    # step = [0.023531673 * 0.055 / 0.016116861, 0.023531673 * -0.07 / 0.032233623]
    #      = [0.0803036, -0.051102449]
    [0.8189371926168434, -1.8473381869201473],
    # decayed = [0.81860962, -1.8465993]; m = [0.0495, -0.093], v = [0.00025949025, 0.001127961]
    # step = [0.062074915, -0.055938236]
    [0.7565347027109889, -1.7906610156865934],
]


def test_adamw_decays_weights_before_the_adam_step():
    check_trajectory(make(AdamW, learning_rate=0.1), ADAMW)


def test_weight_decay_works_for_any_optimizer():
    # SGD lr 0.1, weight_decay 0.5: p * (1 - 0.05) - 0.1 g = [0.95 - 0.05, -1.9 + 0.1]
    opt = make(SGD, learning_rate=0.1, weight_decay=0.5)
    p = np.array([1.0, -2.0])
    opt.step({"w": p}, {"w": np.array([0.5, -1.0])})
    close(p, [0.9, -1.8])


# Adagrad, lr 0.1 (Keras default 0.001 moves too little to read), accumulator from 0.1:
# acc += g^2; p -= lr g / sqrt(acc + eps)
ADAGRAD = [
    # acc = [0.35, 1.1]: [1 - 0.05 / 0.59160806, -2 + 0.1 / 1.0488089]
    #                  = [1 - 0.084515413, -2 + 0.095346255]
    [0.9154845866007779, -1.9046537454093613],
    # acc = [0.36, 1.14]: [p0 - 0.01 / 0.60000008, p1 - 0.02 / 1.0677079]
    #                   = [p0 - 0.016666664, p1 - 0.018731715]
    [0.8988179222489255, -1.9233854608194287],
    # acc = [0.36, 1.23]: p0 unchanged; p1 + 0.03 / 1.1090537 = p1 + 0.027050088
    [0.8988179222489255, -1.896335372879003],
]


def test_adagrad_three_steps():
    opt = make(Adagrad, learning_rate=0.1)
    check_trajectory(opt, ADAGRAD)
    close(opt.state["accumulator.w"], [0.36, 1.23])


# Adadelta, lr 1.0 (the paper's form), rho 0.95, eps 1e-7, rms(x) = sqrt(x + eps):
# Eg2 = 0.95 Eg2 + 0.05 g^2; delta = -rms(Edx2) g / rms(Eg2); Edx2 = 0.95 Edx2 + 0.05 delta^2
ADADELTA = [
    # Eg2 = [0.0125, 0.05]; rms(Edx2) = sqrt(1e-7) = 0.00031622777
    # delta = [-0.00031622777 * 0.5 / 0.11180385, 0.00031622777 / 0.22360702]
    #       = [-0.0014142079, 0.0014142121]; Edx2 = [9.99992e-8, 9.99998e-8]
    [0.9985857920944472, -1.9985857878518383],
    # Eg2 = [0.012375, 0.0495]; rms(Edx2) = [0.0004472127, 0.00044721337]
    # delta = [-0.0004472127 * 0.1 / 0.11124343, -0.00044721337 * 0.2 / 0.22248618]
    #       = [-0.0004020127, -0.00040201452]
    [0.9981837793966586, -1.9989878023708596],
    # Eg2 = [0.01175625, 0.051525]; g0 = 0: delta0 = 0
    # delta1 = 0.00045064464 * 0.3 / 0.22699141 = 0.00059558815
    [0.9981837793966586, -1.9983922142251038],
]


def test_adadelta_three_steps():
    opt = make(Adadelta, learning_rate=1.0)
    check_trajectory(opt, ADADELTA)
    close(opt.state["accumulated_grad.w"], [0.01175625, 0.051525])
    close(opt.state["accumulated_delta_var.w"], [9.792595294198174e-08, 1.1566282596004839e-07])


# Nadam, Keras defaults (lr 0.001, b1 0.9, b2 0.999, eps 1e-7). Momentum cache
# u_t = 0.9 (1 - 0.5 * 0.96^t): u_1 = 0.468, u_2 = 0.48528, u_3 = 0.5018688, u_4 = 0.51779405
# u_product after step t: 0.468, 0.22711104, 0.11397995
# m_hat = u_{t+1} m / (1 - u_product u_{t+1}) + (1 - u_t) g / (1 - u_product)
# v_hat = v / (1 - 0.999^t); p -= lr m_hat / (sqrt(v_hat) + eps)
NADAM = [
    # m = [0.05, -0.1], v = [0.00025, 0.001]
    # m_hat = 0.48528 m / (1 - 0.22711104) + 0.532 g / 0.532 = 0.62787803 m + g
    #       = [0.5313939, -1.0627878]; v_hat = v / 0.001 = [0.25, 1.0]
    # step = 0.001 * [0.5313939 / 0.5000001, -1.0627878 / 1.0000001]
    [0.9989372124092487, -1.99893721230297],
    # m = [0.055, -0.07], v = [0.00025975, 0.001039]
    # m_hat = 0.56643052 m + 0.66596889 g = [0.097750567, 0.093543641]
    # v_hat = v / 0.001999 = [0.12993997, 0.51975988]; step = [0.00027117384, 0.00012975163]
    [0.9986660385732743, -1.9990669639360241],
    # m = [0.0495, -0.093], v = [0.00025949025, 0.001127961]
    # m_hat = 0.55026996 m + 0.5622121 g = [0.027238363, -0.21983874]
    # v_hat = v / 0.002997001 = [0.086583304, 0.37636324]; step = [9.2568617e-5, -0.00035834434]
    [0.9985734699564689, -1.9987086195936015],
]


def test_nadam_three_steps_keras_defaults():
    opt = make(Nadam)
    check_trajectory(opt, NADAM)
    close(opt.u_product, 0.468 * 0.48528 * 0.5018688)


# ----------------------------------------------------------------------------- clipping


def test_clipnorm_clips_each_gradient_by_its_own_norm():
    # SGD lr 0.1, clipnorm 1: ||[3, 4]|| = 5 -> [0.6, 0.8]; ||[0.3, 0.4]|| = 0.5 stays;
    # ||[0, -2]|| = 2 -> [0, -1]
    opt = make(SGD, learning_rate=0.1, clipnorm=1.0)
    expected = [
        [0.94, -2.08],  # [1 - 0.06, -2 - 0.08]
        [0.91, -2.12],  # [0.94 - 0.03, -2.08 - 0.04]
        [0.91, -2.02],  # [0.91 - 0, -2.12 + 0.1]
    ]
    check_trajectory(opt, expected, grads=[[3.0, 4.0], [0.3, 0.4], [0.0, -2.0]])


def test_clipnorm_is_per_variable_and_global_clipnorm_joint():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}
    # clipnorm 1: a has norm 3 -> [1, 0]; b has norm 4 -> [1]. SGD lr 1: p = 0 - g
    a, b = np.zeros(2), np.zeros(1)
    make(SGD, learning_rate=1.0, clipnorm=1.0).step({"a": a, "b": b}, grads)
    close(a, [-1.0, 0.0])
    close(b, [-1.0])
    # global_clipnorm 1: joint norm sqrt(9 + 16) = 5 -> a [0.6, 0], b [0.8]
    a, b = np.zeros(2), np.zeros(1)
    make(SGD, learning_rate=1.0, global_clipnorm=1.0).step({"a": a, "b": b}, grads)
    close(a, [-0.6, 0.0])
    close(b, [-0.8])
    close(grads["a"], [3.0, 0.0])  # the caller's gradients are not modified


def test_clipvalue_clips_elementwise():
    # SGD lr 0.1, clipvalue 0.5: [3, -4] -> [0.5, -0.5]; [0.3, -0.4] stays; [0, -2] -> [0, -0.5]
    opt = make(SGD, learning_rate=0.1, clipvalue=0.5)
    expected = [
        [0.95, -1.95],  # [1 - 0.05, -2 + 0.05]
        [0.92, -1.91],  # [0.95 - 0.03, -1.95 + 0.04]
        [0.92, -1.86],  # [0.92 - 0, -1.91 + 0.05]
    ]
    check_trajectory(opt, expected, grads=[[3.0, -4.0], [0.3, -0.4], [0.0, -2.0]])


def test_only_one_clip_option():
    with pytest.raises(SpecError, match="only one of clipnorm, clipvalue and global_clipnorm"):
        SGD.check_options({"clipnorm": 1.0, "clipvalue": 0.5})


ALL = [
    (SGD, {"momentum": 0.9, "nesterov": True}),
    (RMSprop, {"momentum": 0.5, "centered": True}),
    (Adam, {"amsgrad": True}),
    (AdamW, {}),
    (Adagrad, {}),
    (Adadelta, {}),
    (Nadam, {}),
]
IDS = [cls.name for cls, _ in ALL]


@pytest.mark.parametrize("cls, options", ALL, ids=IDS)
def test_clipping_happens_before_the_update(cls, options):
    # 4 g clipped to norm ||g|| is exactly g (powers of two): the same trajectory as g itself
    g = [np.array(x) for x in SGD_GRADS]
    norm = float(np.sqrt(np.vdot(g[0], g[0])))
    free, clipped = np.array([1.0, -2.0]), np.array([1.0, -2.0])
    a, b = make(cls, **options), make(cls, clipnorm=norm, **options)
    a.step({"w": free}, {"w": g[0]})
    b.step({"w": clipped}, {"w": 4 * g[0]})
    np.testing.assert_array_equal(free, clipped)


@pytest.mark.parametrize("cls, options", ALL, ids=IDS)
def test_float32_keeps_dtype_and_matches_float64(cls, options):
    p64 = run_steps(make(cls, **options))
    opt = make(cls, **options)
    p32 = run_steps(opt, dtype=np.float32)
    for a, b in zip(p32, p64, strict=True):
        close(a, b, rtol=2e-6, atol=2e-7)
    for slot in opt.state.values():
        assert slot.dtype == np.float32


# ----------------------------------------------------------------------------- saved state


def _npz_round_trip(arrays, tmp_path):
    path = tmp_path / "state.npz"
    np.savez(path, **arrays)
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


@pytest.mark.parametrize("cls, options", ALL, ids=IDS)
def test_state_round_trip_gives_a_bitwise_identical_next_step(cls, options, tmp_path):
    rng = np.random.default_rng(7)
    shapes = {"layers.0.kernel": (3, 3, 1, 4), "layers.0.bias": (4,)}
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = [
        {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(4)
    ]
    opt = make(cls, **options)
    opt.schedule = ExponentialDecay(opt.learning_rate, decay_steps=2, decay_rate=0.5)
    for g in grads[:3]:
        opt.step(params, g)
    arrays, meta = opt.state_dict()
    # as a checkpoint stores them: arrays in an .npz, the rest in JSON
    arrays, meta = _npz_round_trip(arrays, tmp_path), json.loads(json.dumps(meta))
    fresh = make(cls, **options)
    fresh.schedule = ExponentialDecay(fresh.learning_rate, decay_steps=2, decay_rate=0.5)
    fresh.load_state_dict(arrays, meta)
    resumed = {k: v.copy() for k, v in params.items()}
    opt.step(params, grads[3])
    fresh.step(resumed, grads[3])
    assert fresh.iterations == opt.iterations == 4
    assert fresh.lr == opt.lr == opt.learning_rate * 0.5 ** (3 / 2)
    for key in params:
        assert params[key].tobytes() == resumed[key].tobytes()
    for key in opt.state:
        assert opt.state[key].tobytes() == fresh.state[key].tobytes()


def test_state_through_a_checkpoint_file(tmp_path):
    from cnnkit.runs.rundir import load_optimizer_state, save_checkpoint

    opt = make(Nadam)
    p = np.array([1.0, -2.0], dtype=np.float32)
    for g in SGD_GRADS:
        opt.step({"w": p}, {"w": np.array(g, dtype=np.float32)})
    save_checkpoint(tmp_path / "last", {"w": p}, {"epoch": 1}, opt.state_dict())
    assert (tmp_path / "last.optimizer.npz").is_file()
    arrays, meta = load_optimizer_state(tmp_path / "last")
    assert meta["iterations"] == 3
    assert meta["extra"]["u_product"] == opt.u_product
    fresh = make(Nadam)
    fresh.load_state_dict(arrays, meta)
    q = p.copy()
    opt.step({"w": p}, {"w": np.array([0.25, 0.5], dtype=np.float32)})
    fresh.step({"w": q}, {"w": np.array([0.25, 0.5], dtype=np.float32)})
    assert p.tobytes() == q.tobytes()


def test_state_of_another_optimizer_is_refused():
    arrays, meta = make(Adam).state_dict()
    with pytest.raises(CheckpointError, match="'adam', not 'sgd'"):
        make(SGD).load_state_dict(arrays, meta)


@pytest.mark.parametrize(
    "cls, options",
    [(Adam, {}), (Adam, {"amsgrad": True}), (SGD, {"momentum": 0.9}), (SGD, {})],
    ids=["adam", "amsgrad", "sgd-momentum", "sgd"],
)
def test_an_update_allocates_no_parameter_sized_array(cls, options):
    """After the first step (which creates the slots), a step reuses work arrays: the
    training loop allocates nothing large per step (tracemalloc sees numpy's buffers)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    p = {"w": rng.standard_normal((512, 512)).astype(np.float32)}  # 1 MiB
    g = {"w": rng.standard_normal((512, 512)).astype(np.float32)}
    opt = cls(**options)
    opt.step(p, g)
    tracemalloc.start()
    try:
        opt.step(p, g)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < p["w"].nbytes // 4, peak


# ----------------------------------------------------------------------------- one-pass kernels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "cls, options",
    [
        (Adam, {}),
        (Adam, {"amsgrad": True}),
        (AdamW, {"learning_rate": 0.01}),
        (SGD, {"learning_rate": 0.05, "momentum": 0.9}),
        (SGD, {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}),
        (SGD, {"learning_rate": 0.05}),
    ],
)
def test_one_pass_kernels_are_bitwise_the_numpy_updates(cls, options, dtype, monkeypatch):
    """Large parameters take cnnkit.kernels.optimizers' one-pass updates: over five steps
    (the slots warm up, AMSGrad's maximum switches sides) the parameters and slots are
    bitwise those of the numpy in-place sequence they replace (NaN included)."""
    import cnnkit.nn.optimizers as optimizers

    rng = np.random.default_rng(4)
    start = {"kernel": rng.standard_normal((96, 128)).astype(dtype)}
    start["kernel"][0, 0] = np.nan  # np.maximum and the kernel both keep a NaN
    grads = [{"kernel": rng.standard_normal((96, 128)).astype(dtype)} for _ in range(5)]

    def run(min_size):
        monkeypatch.setattr(optimizers, "_FUSED_MIN_SIZE", min_size)
        opt, params = make(cls, **options), {k: v.copy() for k, v in start.items()}
        for g in grads:
            opt.step(params, g)
        slots = {k: v.copy() for k, v in opt.state_dict()[0].items()}
        return params["kernel"], slots

    fused, fused_slots = run(4096)
    plain, plain_slots = run(10**9)
    assert fused.tobytes() == plain.tobytes()
    assert fused_slots.keys() == plain_slots.keys()
    for key in plain_slots:
        assert fused_slots[key].tobytes() == plain_slots[key].tobytes(), key
