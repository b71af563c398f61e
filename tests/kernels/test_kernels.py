"""Kernels in cnnkit.kernels against the slow references in tests/reference.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cnnkit.kernels.conv import (  # noqa: E402
    conv2d_backward_input,
    conv2d_backward_weights,
    conv2d_forward,
    conv_output_size,
)
from cnnkit.kernels.pool import (  # noqa: E402
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
    pool_output_size,
)
from tests import reference as ref

RTOL = {np.float64: 1e-10, np.float32: 1e-4}
ATOL = {np.float64: 1e-12, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]


def close(actual, expected, dtype):
    assert actual.dtype == np.dtype(dtype)
    np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype], atol=ATOL[dtype])


# ----------------------------------------------------------------------------- output sizes


@pytest.mark.parametrize(
    "size, kernel, stride, dilation, padding, expected",
    [
        (28, 3, 1, 1, "valid", (26, 0)),
        (28, 5, 1, 1, "valid", (24, 0)),
        (12, 5, 1, 1, "valid", (8, 0)),
        (7, 3, 2, 1, "valid", (3, 0)),
        (8, 3, 1, 2, "valid", (4, 0)),  # effective kernel 5
        (28, 3, 1, 1, "same", (28, 1)),
        (28, 3, 2, 1, "same", (14, 0)),  # total pad 1 -> all of it bottom/right
        (5, 2, 2, 1, "same", (3, 0)),  # total pad 1
        (7, 3, 2, 1, "same", (4, 1)),  # total pad 2
        (6, 3, 2, 1, "same", (3, 0)),  # total pad 1
        (7, 3, 1, 2, "same", (7, 2)),  # effective kernel 5, total pad 4
        (4, 1, 3, 1, "same", (2, 0)),  # kernel smaller than stride: total pad max(.., 0) = 0
        (26, 2, 2, 1, "valid", (13, 0)),
        (27, 2, 2, 1, "valid", (13, 0)),
    ],
)
def test_conv_output_size(size, kernel, stride, dilation, padding, expected):
    assert conv_output_size(size, kernel, stride, dilation, padding) == expected


def test_conv_output_size_errors():
    with pytest.raises(ValueError):
        conv_output_size(2, 3, 1, 1, "valid")
    with pytest.raises(ValueError):
        conv_output_size(5, 3, 1, 1, "full")


def test_pool_output_size():
    assert pool_output_size(26, 2, 2, "valid") == (13, 0)
    assert pool_output_size(5, 2, 2, "same") == (3, 0)
    assert pool_output_size(7, 3, 2, "same") == (4, 1)


# ----------------------------------------------------------------------------- convolution


def conv_geometry(h, w, kh, kw, stride, dilation, padding):
    oh, pt = conv_output_size(h, kh, stride[0], dilation[0], padding)
    ow, pl = conv_output_size(w, kw, stride[1], dilation[1], padding)
    return (oh, ow), (pt, pl)


# (batch, H, W, C, KH, KW, F): non-square inputs/kernels, batch 1/3, channels 1/3, filters 1/4.
# C >= 8 takes the im2col + GEMM path (C < 8 the direct loops); odd K = KH*KW*C, odd row
# counts and F not a multiple of the vector width exercise every unrolling remainder.
CONV_SHAPES = [
    (1, 7, 5, 1, 3, 2, 1),
    (3, 7, 5, 3, 3, 2, 4),
    (3, 6, 9, 1, 2, 3, 4),
    (1, 8, 8, 3, 3, 3, 1),
    (3, 5, 6, 3, 1, 1, 4),
    (2, 6, 7, 9, 3, 2, 5),
    (1, 5, 7, 9, 3, 3, 3),
    (3, 7, 6, 8, 2, 2, 17),
]
CONV_CASES = [
    (shape, padding, stride, dilation)
    for shape in CONV_SHAPES
    for padding in ("valid", "same")
    for stride in ((1, 1), (2, 2), (2, 1))
    for dilation in ((1, 1), (2, 2), (1, 2))
]


def conv_case(shape, padding, stride, dilation, dtype, seed=0):
    n, h, w, c, kh, kw, f = shape
    eff = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    if padding == "valid" and (eff[0] > h or eff[1] > w):
        pytest.skip("effective kernel larger than the input")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    wt = rng.standard_normal((kh, kw, c, f)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    out_hw, pad = conv_geometry(h, w, kh, kw, stride, dilation, padding)
    dout = rng.standard_normal((n, *out_hw, f)).astype(dtype)
    return x, wt, b, out_hw, pad, dout


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, padding, stride, dilation", CONV_CASES)
def test_conv2d_against_reference(shape, padding, stride, dilation, dtype):
    x, wt, b, out_hw, pad, dout = conv_case(shape, padding, stride, dilation, dtype)
    args = (*stride, *dilation, *pad)

    # Outputs start as garbage: every kernel must fully overwrite them.
    out = np.full((x.shape[0], *out_hw, wt.shape[3]), np.nan, dtype=dtype)
    conv2d_forward(x, wt, b, *args, out)
    close(out, ref.conv2d_forward(x, wt, b, stride, dilation, pad, out_hw), dtype)

    check_conv_backward(x, wt, b, pad, dout, stride, dilation, dtype, close)


def check_conv_backward(x, wt, b, pad, dout, stride, dilation, dtype, close_fn):
    """Both backward kernels, from garbage-filled outputs, against the references."""
    args = (*stride, *dilation, *pad)
    dx = np.full(x.shape, np.nan, dtype=dtype)
    conv2d_backward_input(dout, wt, *args, dx)
    close_fn(dx, ref.conv2d_backward_input(dout, wt, x.shape, stride, dilation, pad), dtype)
    dw = np.full(wt.shape, np.nan, dtype=dtype)
    db = np.full(b.shape, np.nan, dtype=dtype)
    conv2d_backward_weights(x, dout, *args, dw, db)
    dw_ref, db_ref = ref.conv2d_backward_weights(x, dout, wt.shape, stride, dilation, pad)
    close_fn(dw, dw_ref, dtype)
    close_fn(db, db_ref, dtype)


def close_sum(actual, expected, dtype):
    """float32 sums of thousands of terms: the absolute error scales with the largest result."""
    assert actual.dtype == np.dtype(dtype)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6 * scale)


# Paths the CONV_CASES shapes are too small to reach: a batch larger than the kernels' batch
# chunks (16), output rows split over several im2col blocks with a remainder (forward/input
# gradient blocks of 256 KB, weight-gradient blocks of 1 MB), 1x1 kernels on the GEMM path,
# stride 2 and dilation on big inputs, and the fused relu. The input gradient of stride-1
# convolutions whose output is not much smaller than their input (every "same" case here and
# above, and the big valid ones) runs as a forward convolution with the rotated kernel; the
# rest (strides, small valid layers) through column gradients and col2im: both are covered.
@pytest.mark.parametrize(
    "shape, padding, stride, dilation",
    [
        ((17, 9, 7, 8, 3, 3, 5), "same", (1, 1), (1, 1)),  # batch > chunks
        ((2, 64, 60, 32, 3, 3, 4), "valid", (1, 1), (1, 1)),  # several blocks, remainder
        ((3, 6, 5, 16, 1, 1, 7), "valid", (1, 1), (1, 1)),  # 1x1 on the GEMM path
        ((2, 41, 43, 32, 3, 3, 6), "same", (2, 2), (1, 1)),  # stride 2, several blocks
        ((2, 30, 33, 24, 3, 3, 5), "same", (1, 1), (2, 2)),  # dilation, several blocks
        ((21, 12, 12, 1, 5, 5, 8), "valid", (1, 1), (1, 1)),  # 1 input channel, batch > chunks
    ],
)
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_big_shapes_against_reference(shape, padding, stride, dilation, relu):
    dtype = np.float32
    x, wt, b, out_hw, pad, dout = conv_case(shape, padding, stride, dilation, dtype)
    args = (*stride, *dilation, *pad)
    expected = ref.conv2d_forward(x, wt, b, stride, dilation, pad, out_hw)
    out = np.full((x.shape[0], *out_hw, wt.shape[3]), np.nan, dtype=dtype)
    conv2d_forward(x, wt, b, *args, out, relu)
    close_sum(out, np.maximum(expected, 0) if relu else expected, dtype)
    if relu:
        return  # the gradients do not depend on the forward's activation
    check_conv_backward(x, wt, b, pad, dout, stride, dilation, dtype, close_sum)


def test_conv2d_weight_grad_many_chunks():
    """Batch larger than the chunk count: uneven chunks still sum to the reference."""
    x, wt, b, out_hw, pad, dout = conv_case((37, 5, 4, 2, 3, 2, 3), "same", (1, 1), (1, 1), float)
    dw = np.empty_like(wt)
    db = np.empty_like(b)
    conv2d_backward_weights(x, dout, 1, 1, 1, 1, *pad, dw, db)
    dw_ref, db_ref = ref.conv2d_backward_weights(x, dout, wt.shape, (1, 1), (1, 1), pad)
    close(dw, dw_ref, np.float64)
    close(db, db_ref, np.float64)


@pytest.mark.parametrize(
    "padding, stride, dilation", [("same", (2, 1), (1, 2)), ("valid", (1, 2), (2, 1))]
)
def test_conv2d_gradients_finite_difference(padding, stride, dilation):
    """Backward kernels vs central differences of the reference forward (float64, tiny)."""
    x, wt, b, out_hw, pad, dout = conv_case((2, 5, 6, 2, 2, 3, 3), padding, stride, dilation, float)
    args = (*stride, *dilation, *pad)

    def loss(x_, w_, b_):
        return float(np.sum(ref.conv2d_forward(x_, w_, b_, stride, dilation, pad, out_hw) * dout))

    def fd(arr, f_of_arr, eps=1e-6):
        g = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            hi = f_of_arr()
            arr[idx] = old - eps
            lo = f_of_arr()
            arr[idx] = old
            g[idx] = (hi - lo) / (2 * eps)
        return g

    dx = np.empty_like(x)
    conv2d_backward_input(dout, wt, *args, dx)
    dw = np.empty_like(wt)
    db = np.empty_like(b)
    conv2d_backward_weights(x, dout, *args, dw, db)

    # The loss is linear in each argument, so central differences are exact up to rounding.
    fd_tol = dict(rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dx, fd(x, lambda: loss(x, wt, b)), **fd_tol)
    np.testing.assert_allclose(dw, fd(wt, lambda: loss(x, wt, b)), **fd_tol)
    np.testing.assert_allclose(db, fd(b, lambda: loss(x, wt, b)), **fd_tol)


# ----------------------------------------------------------------------------- pooling

# (batch, H, W, C, PH, PW): non-square inputs and windows.
POOL_SHAPES = [(1, 7, 5, 1, 2, 2), (3, 7, 5, 3, 3, 3), (3, 6, 9, 3, 3, 2), (1, 4, 4, 1, 2, 3)]
POOL_CASES = [
    (shape, padding, stride)
    for shape in POOL_SHAPES
    for padding in ("valid", "same")
    for stride in ((1, 1), (2, 2), (3, 3), (2, 1))
]


def pool_geometry(h, w, ph, pw, stride, padding):
    oh, pt = pool_output_size(h, ph, stride[0], padding)
    ow, pl = pool_output_size(w, pw, stride[1], padding)
    return (oh, ow), (pt, pl)


def run_maxpool(x, pool, stride, pad, out_hw, dout):
    n, _, _, c = x.shape
    out = np.full((n, *out_hw, c), np.nan, dtype=x.dtype)
    argmax = np.full((n, *out_hw, c), -7, dtype=np.int64)
    maxpool2d_forward(x, *pool, *stride, *pad, out, argmax)
    dx = np.full(x.shape, np.nan, dtype=x.dtype)
    maxpool2d_backward(dout, argmax, dx)
    return out, argmax, dx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, padding, stride", POOL_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_against_reference(shape, padding, stride, ties, dtype):
    n, h, w, c, ph, pw = shape
    rng = np.random.default_rng(1)
    if ties:
        # Few distinct values: most windows hold repeated maxima.
        x = rng.integers(0, 3, size=(n, h, w, c)).astype(dtype)
    else:
        x = rng.standard_normal((n, h, w, c)).astype(dtype)
    out_hw, pad = pool_geometry(h, w, ph, pw, stride, padding)
    dout = rng.standard_normal((n, *out_hw, c)).astype(dtype)

    out, argmax, dx = run_maxpool(x, (ph, pw), stride, pad, out_hw, dout)
    out_ref, argmax_ref = ref.maxpool2d_forward(x, (ph, pw), stride, pad, out_hw)
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)
    close(dx, ref.maxpool2d_backward(dout, x, (ph, pw), stride, pad), dtype)


def test_maxpool_ties_first_wins_and_one_per_window():
    """Constant input: every window's gradient goes to its first (top-left in-range) position."""
    x = np.full((2, 5, 7, 3), 0.5)
    for stride in ((1, 1), (2, 2), (2, 3)):  # stride 1 < pool 2: overlapping windows
        out_hw, pad = pool_geometry(5, 7, 2, 2, stride, "same")
        dout = np.ones((2, *out_hw, 3))
        _, argmax, dx = run_maxpool(x, (2, 2), stride, pad, out_hw, dout)
        expected = np.zeros_like(x)
        for oh, ow in itertools.product(range(out_hw[0]), range(out_hw[1])):
            ih, iw = max(oh * stride[0] - pad[0], 0), max(ow * stride[1] - pad[1], 0)
            assert (argmax[:, oh, ow, :] == ih * 7 + iw).all()
            expected[:, ih, iw, :] += 1
        np.testing.assert_array_equal(dx, expected)
        # One unit of gradient per window, no more, no less.
        assert dx.sum() == dout.sum()


def test_maxpool_overlap_accumulates():
    """Pool 3 stride 1: a single dominant pixel wins every window covering it."""
    x = np.zeros((1, 5, 5, 1))
    x[0, 2, 2, 0] = 9.0
    out_hw, pad = pool_geometry(5, 5, 3, 3, (1, 1), "valid")
    dout = np.ones((1, *out_hw, 1))
    _, _, dx = run_maxpool(x, (3, 3), (1, 1), pad, out_hw, dout)
    assert dx[0, 2, 2, 0] == 9.0  # all 3x3 windows contain (2, 2)
    assert dx.sum() == 9.0


def test_maxpool_padding_never_wins():
    """All-negative input with 'same' padding: padded zeros must not be the maximum."""
    x = -np.arange(1, 1 + 5 * 5, dtype=float).reshape(1, 5, 5, 1)
    out_hw, pad = pool_geometry(5, 5, 2, 2, (2, 2), "same")
    out, argmax, _ = run_maxpool(x, (2, 2), (2, 2), pad, out_hw, np.ones((1, *out_hw, 1)))
    assert (out < 0).all()
    assert (argmax >= 0).all() and (argmax < 25).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, padding, stride", POOL_CASES)
def test_avgpool_against_reference(shape, padding, stride, dtype):
    n, h, w, c, ph, pw = shape
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    out_hw, pad = pool_geometry(h, w, ph, pw, stride, padding)
    dout = rng.standard_normal((n, *out_hw, c)).astype(dtype)

    out = np.full((n, *out_hw, c), np.nan, dtype=dtype)
    avgpool2d_forward(x, ph, pw, *stride, *pad, out)
    close(out, ref.avgpool2d_forward(x, (ph, pw), stride, pad, out_hw), dtype)

    dx = np.full(x.shape, np.nan, dtype=dtype)
    avgpool2d_backward(dout, ph, pw, *stride, *pad, dx)
    close(dx, ref.avgpool2d_backward(dout, x.shape, (ph, pw), stride, pad), dtype)


def test_avgpool_same_excludes_padding():
    x = np.ones((1, 5, 5, 2))
    out_hw, pad = pool_geometry(5, 5, 2, 2, (2, 2), "same")
    out = np.empty((1, *out_hw, 2))
    avgpool2d_forward(x, 2, 2, 2, 2, *pad, out)
    np.testing.assert_array_equal(out, 1.0)  # would be < 1 at the border if padding counted


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_bitwise_deterministic(dtype):
    """Repeated calls give identical bytes (batch 40 > chunk count; both conv code paths)."""
    rng = np.random.default_rng(3)
    n = 40
    pdout = rng.standard_normal((n, 6, 6, 12)).astype(dtype)
    conv_inputs = []
    for c in (3, 12):  # direct loops (C < 8) and im2col + GEMM
        x = rng.standard_normal((n, 12, 11, c)).astype(dtype)
        wt = rng.standard_normal((3, 3, c, 6)).astype(dtype)
        conv_inputs.append((x, wt))
    b = rng.standard_normal(6).astype(dtype)
    dout = rng.standard_normal((n, 12, 11, 6)).astype(dtype)

    def run_all():
        res = []
        for x, wt in conv_inputs:
            out = np.empty((n, 12, 11, 6), dtype=dtype)
            conv2d_forward(x, wt, b, 1, 1, 1, 1, 1, 1, out)
            dx = np.empty_like(x)
            conv2d_backward_input(dout, wt, 1, 1, 1, 1, 1, 1, dx)
            dw = np.empty_like(wt)
            db = np.empty_like(b)
            conv2d_backward_weights(x, dout, 1, 1, 1, 1, 1, 1, dw, db)
            res += [out, dx, dw, db]
        x = conv_inputs[1][0]
        mp = np.empty((n, 6, 6, 12), dtype=dtype)
        am = np.empty((n, 6, 6, 12), dtype=np.int64)
        maxpool2d_forward(x, 2, 2, 2, 2, 0, 0, mp, am)
        mdx = np.empty_like(x)
        maxpool2d_backward(pdout, am, mdx)
        ap = np.empty_like(mp)
        avgpool2d_forward(x, 2, 2, 2, 2, 0, 0, ap)
        adx = np.empty_like(x)
        avgpool2d_backward(pdout, 2, 2, 2, 2, 0, 0, adx)
        return res + [mp, am, mdx, ap, adx]

    first = run_all()
    for _ in range(3):
        for a, b_ in zip(first, run_all(), strict=True):
            assert a.tobytes() == b_.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward_into_against_reference(dtype):
    from cnnkit.kernels.activations import relu_backward_into

    rng = np.random.default_rng(3)
    y = np.maximum(rng.standard_normal((3, 5, 4, 7)), 0).astype(dtype)  # a relu output
    y[0, 0, 0, :3] = 0.0  # exact zeros: the kink, where the gradient is 0 (as TF)
    dy = rng.standard_normal(y.shape).astype(dtype)
    out = np.full(y.shape, np.nan, dtype=dtype)
    relu_backward_into(dy.reshape(-1), y.reshape(-1), out.reshape(-1))
    np.testing.assert_array_equal(out, ref.relu_backward(dy, y))
