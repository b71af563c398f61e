"""Grouped and depthwise convolution kernels (cnnkit.kernels.grouped) against the references
in tests/reference.py: each group a plain convolution, each depthwise channel one too."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.kernels import grouped
from cnnkit.kernels.depthwise import depthwise_backward_input, simd_depthwise
from cnnkit.kernels.grouped import (
    grouped_conv2d_backward_input,
    grouped_conv2d_backward_weights,
    grouped_conv2d_forward,
)
from cnnkit.kernels.nojit import conv_output_size
from tests import reference as ref
from tests.reference import DTYPES, close

GEOMETRIES = [
    (padding, stride, dilation)
    for padding in ("valid", "same")
    for stride in ((1, 1), (2, 2), (2, 1))
    for dilation in ((1, 1), (2, 2), (1, 2))
]
# (batch, H, W, C, KH, KW, groups, F): non-square inputs and kernels, odd and even sizes,
# batch 1, one channel per group (depthwise-like), several, groups 1/2/3, filters per group
# 1 and several. Groups = C with F = C is depthwise with multiplier 1, F = 2C multiplier 2.
GROUPED_SHAPES = [
    (1, 7, 5, 3, 3, 2, 3, 3),  # Cg = 1, Fg = 1: the depthwise M = 1 loop
    (2, 6, 7, 3, 2, 3, 3, 6),  # Cg = 1, Fg = 2: the depthwise M > 1 loop
    (2, 7, 6, 4, 3, 3, 2, 6),  # Cg = 2, Fg = 3
    (2, 7, 6, 16, 3, 2, 2, 6),  # Cg = 8: each group on the GEMM convolution kernels
    (1, 5, 8, 6, 3, 2, 3, 3),  # Cg = 2, Fg = 1
    (3, 6, 6, 6, 1, 1, 3, 9),  # 1x1, Cg = 2, Fg = 3
    (2, 5, 7, 1, 3, 3, 1, 2),  # one channel, groups 1
    (1, 8, 7, 3, 3, 3, 1, 4),  # groups 1 (the general loop with one group)
]
# (batch, H, W, C, KH, KW, depth_multiplier)
DEPTHWISE_SHAPES = [
    (1, 7, 5, 1, 3, 2, 1),
    (2, 6, 7, 3, 3, 3, 1),
    (2, 7, 6, 3, 2, 3, 2),
    (1, 5, 8, 8, 3, 3, 2),
    (3, 6, 5, 1, 1, 1, 3),
]


def geometry(h, w, kh, kw, padding, stride, dilation):
    eff = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    if padding == "valid" and (eff[0] > h or eff[1] > w):
        pytest.skip("effective kernel larger than the input")
    oh, pt = conv_output_size(h, kh, stride[0], dilation[0], padding)
    ow, pl = conv_output_size(w, kw, stride[1], dilation[1], padding)
    return (oh, ow), (pt, pl)


def run_kernels(x, wt, b, groups, stride, dilation, pad, out_hw, dout, relu=False):
    """forward, input gradient, weight and bias gradients, each from a garbage-filled output
    (every kernel must overwrite all of it)."""
    args = (groups, *stride, *dilation, *pad)
    dtype = x.dtype
    out = np.full((x.shape[0], *out_hw, wt.shape[3]), np.nan, dtype=dtype)
    grouped_conv2d_forward(x, wt, b, *args, out, relu)
    dx = np.full(x.shape, np.nan, dtype=dtype)
    grouped_conv2d_backward_input(dout, wt, *args, dx)
    dw = np.full(wt.shape, np.nan, dtype=dtype)
    db = np.full(b.shape, np.nan, dtype=dtype)
    grouped_conv2d_backward_weights(x, dout, *args, dw, db)
    return out, dx, dw, db


def check_against_reference(x, wt, b, groups, stride, dilation, pad, out_hw, dout, close_fn):
    out, dx, dw, db = run_kernels(x, wt, b, groups, stride, dilation, pad, out_hw, dout)
    geo = (stride, dilation, pad)
    dtype = x.dtype.type
    close_fn(out, ref.grouped_conv2d_forward(x, wt, b, groups, *geo, out_hw), dtype)
    close_fn(dx, ref.grouped_conv2d_backward_input(dout, wt, groups, x.shape, *geo), dtype)
    dw_ref, db_ref = ref.grouped_conv2d_backward_weights(x, dout, groups, wt.shape, *geo)
    close_fn(dw, dw_ref, dtype)
    close_fn(db, db_ref, dtype)
    return out


def grouped_case(shape, padding, stride, dilation, dtype, seed=0):
    n, h, w, c, kh, kw, groups, f = shape
    out_hw, pad = geometry(h, w, kh, kw, padding, stride, dilation)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    wt = rng.standard_normal((kh, kw, c // groups, f)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    dout = rng.standard_normal((n, *out_hw, f)).astype(dtype)
    return x, wt, b, out_hw, pad, dout


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding, stride, dilation", GEOMETRIES)
@pytest.mark.parametrize("shape", GROUPED_SHAPES)
def test_grouped_against_reference(shape, padding, stride, dilation, dtype):
    x, wt, b, out_hw, pad, dout = grouped_case(shape, padding, stride, dilation, dtype)
    check_against_reference(x, wt, b, shape[6], stride, dilation, pad, out_hw, dout, close)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding, stride, dilation", GEOMETRIES)
@pytest.mark.parametrize("shape", DEPTHWISE_SHAPES)
def test_depthwise_as_grouped_against_reference(shape, padding, stride, dilation, dtype):
    """A (KH, KW, C, M) depthwise kernel viewed as (KH, KW, 1, C*M) with groups = C: output
    channel c*M + m is channel c convolved with w[:, :, c, m] (the reference builds it so)."""
    n, h, w, c, kh, kw, m = shape
    out_hw, pad = geometry(h, w, kh, kw, padding, stride, dilation)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    wd = rng.standard_normal((kh, kw, c, m)).astype(dtype)
    b = rng.standard_normal(c * m).astype(dtype)
    dout = rng.standard_normal((n, *out_hw, c * m)).astype(dtype)
    view = wd.reshape(kh, kw, 1, c * m)
    out = check_against_reference(x, view, b, c, stride, dilation, pad, out_hw, dout, close)
    close(out, ref.depthwise_conv2d_forward(x, wd, b, stride, dilation, pad, out_hw), dtype)


def close_sum(actual, expected, dtype):
    """float32 sums of many terms: the absolute error scales with the largest result."""
    assert actual.dtype == np.dtype(dtype)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize(
    "shape",
    [
        (37, 9, 7, 16, 3, 3, 16, 16),  # batch > weight-gradient chunks, depthwise M = 1
        (19, 10, 9, 8, 3, 3, 8, 16),  # depthwise M = 2
        (18, 9, 8, 12, 3, 3, 3, 6),  # groups 3, Cg = 4, Fg = 2
        (18, 9, 8, 27, 3, 3, 3, 6),  # groups 3, Cg = 9: GEMM per group
    ],
)
def test_grouped_big_batches_against_reference(shape):
    x, wt, b, out_hw, pad, dout = grouped_case(shape, "same", (1, 1), (1, 1), np.float32)
    check_against_reference(x, wt, b, shape[6], (1, 1), (1, 1), pad, out_hw, dout, close_sum)


@pytest.mark.parametrize("shape", [GROUPED_SHAPES[0], GROUPED_SHAPES[1], GROUPED_SHAPES[2]])
def test_fused_relu(shape):
    x, wt, b, out_hw, pad, dout = grouped_case(shape, "same", (2, 1), (1, 1), np.float64)
    geo = ((2, 1), (1, 1), pad)
    out, *_ = run_kernels(x, wt, b, shape[6], *geo, out_hw, dout, relu=True)
    expected = ref.grouped_conv2d_forward(x, wt, b, shape[6], *geo, out_hw)
    assert (expected < 0).any()
    close(out, np.maximum(expected, 0), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_kernels_bitwise_deterministic(dtype):
    """Repeated calls give identical bytes (batch 40 > chunk count; the three loop shapes)."""
    cases = []
    for shape in [(40, 9, 8, 6, 3, 3, 6, 6), (40, 9, 8, 6, 3, 3, 6, 12), (40, 9, 8, 6, 3, 3, 2, 4)]:
        x, wt, b, out_hw, pad, dout = grouped_case(shape, "same", (1, 1), (1, 1), dtype, seed=3)
        cases.append((x, wt, b, shape[6], (1, 1), (1, 1), pad, out_hw, dout))
    first = [run_kernels(*case) for case in cases]
    for _ in range(2):
        for arrays, again in zip(first, [run_kernels(*case) for case in cases], strict=True):
            for a, b_ in zip(arrays, again, strict=True):
                assert a.tobytes() == b_.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_direct_loops_take_any_group_size(dtype, monkeypatch):
    """Groups of >= 8 channels run on the GEMM convolution per group; the direct loops,
    forced here, compute the same for them."""
    monkeypatch.setattr(grouped, "_GEMM_MIN_CHANNELS", 10**6)
    shape = (3, 7, 6, 16, 3, 2, 2, 6)
    x, wt, b, out_hw, pad, dout = grouped_case(shape, "same", (2, 1), (1, 2), dtype)
    check_against_reference(x, wt, b, 2, (2, 1), (1, 2), pad, out_hw, dout, close)


# (batch, H, W, C, KH, KW, depth_multiplier) for the float32 vector kernels
# (cnnkit.kernels.depthwise): C*M a multiple of 8; odd widths leave pixels after the blocks of
# 4; batch 17 > the weight gradient's 16 chunks.
SIMD_DEPTHWISE_SHAPES = [
    (3, 9, 7, 8, 3, 3, 1),
    (2, 8, 9, 8, 3, 2, 2),
    (17, 10, 10, 16, 3, 3, 1),
    (2, 7, 8, 4, 3, 3, 2),
    (2, 6, 6, 24, 5, 5, 1),
]


@pytest.mark.parametrize("padding, stride, dilation", GEOMETRIES)
@pytest.mark.parametrize("shape", SIMD_DEPTHWISE_SHAPES)
def test_vector_depthwise_kernels_against_reference(shape, padding, stride, dilation):
    n, h, w, c, kh, kw, m = shape
    out_hw, pad = geometry(h, w, kh, kw, padding, stride, dilation)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    view = rng.standard_normal((kh, kw, 1, c * m)).astype(np.float32)
    b = rng.standard_normal(c * m).astype(np.float32)
    dout = rng.standard_normal((n, *out_hw, c * m)).astype(np.float32)
    assert simd_depthwise(x, view, c, dout)  # these arrays take the vector kernels
    check_against_reference(x, view, b, c, stride, dilation, pad, out_hw, dout, close)
    if m == 1:  # the vector input gradient itself (multiplier 1 only)
        dx = np.full(x.shape, np.nan, np.float32)
        depthwise_backward_input(dout, view, *stride, *dilation, *pad, dx)
        expected = ref.grouped_conv2d_backward_input(dout, view, c, x.shape, stride, dilation, pad)
        close(dx, expected, np.float32)
    out, *_ = run_kernels(x, view, b, c, stride, dilation, pad, out_hw, dout, relu=True)
    expected = ref.grouped_conv2d_forward(x, view, b, c, stride, dilation, pad, out_hw)
    close(out, np.maximum(expected, 0), np.float32)


def test_vector_depthwise_kernels_bitwise_deterministic():
    x, wt, b, out_hw, pad, dout = grouped_case((40, 9, 8, 16, 3, 3, 16, 32), "same", (1, 1),
                                               (1, 1), np.float32, seed=4)  # fmt: skip
    first = run_kernels(x, wt, b, 16, (1, 1), (1, 1), pad, out_hw, dout)
    again = run_kernels(x, wt, b, 16, (1, 1), (1, 1), pad, out_hw, dout)
    assert all(a.tobytes() == b_.tobytes() for a, b_ in zip(first, again, strict=True))


def test_vector_depthwise_takes_only_its_arrays():
    """float32, one channel per group, a multiple of 8 filters; anything else: the loops."""
    x = np.zeros((1, 4, 4, 8), np.float32)
    out = np.zeros((1, 4, 4, 8), np.float32)
    assert simd_depthwise(x, np.zeros((3, 3, 1, 8), np.float32), 8, out)
    assert not simd_depthwise(x.astype(np.float64), np.zeros((3, 3, 1, 8)), 8, out)
    assert not simd_depthwise(x, np.zeros((3, 3, 2, 8), np.float32), 4, out)  # Cg = 2
    x6 = np.zeros((1, 4, 4, 6), np.float32)
    assert not simd_depthwise(x6, np.zeros((3, 3, 1, 6), np.float32), 6, out[..., :6].copy())
