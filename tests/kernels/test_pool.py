"""Pooling kernels (cnnkit.kernels.pool) against the slow references in tests/reference.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cnnkit.kernels.nojit import conv_output_size, pool_tiles
from cnnkit.kernels.pool import (
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_backward_tiles,
    maxpool2d_forward,
    maxpool2d_forward_tiles,
)
from tests import reference as ref
from tests.reference import DTYPES, close

# (batch, H, W, C, PH, PW): non-square inputs and windows.
POOL_SHAPES = [(1, 7, 5, 1, 2, 2), (3, 7, 5, 3, 3, 3), (3, 6, 9, 3, 3, 2), (1, 4, 4, 1, 2, 3)]
POOL_CASES = [
    (shape, padding, stride)
    for shape in POOL_SHAPES
    for padding in ("valid", "same")
    for stride in ((1, 1), (2, 2), (3, 3), (2, 1))
]


def pool_geometry(h, w, ph, pw, stride, padding):
    oh, pt = conv_output_size(h, ph, stride[0], 1, padding)
    ow, pl = conv_output_size(w, pw, stride[1], 1, padding)
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


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_kernels_bitwise_deterministic(dtype):
    """Repeated calls give identical bytes (batch 40)."""
    rng = np.random.default_rng(3)
    n = 40
    pdout = rng.standard_normal((n, 6, 6, 12)).astype(dtype)
    x = rng.standard_normal((n, 12, 11, 12)).astype(dtype)

    def run_all():
        mp = np.empty((n, 6, 6, 12), dtype=dtype)
        am = np.empty((n, 6, 6, 12), dtype=np.int64)
        maxpool2d_forward(x, 2, 2, 2, 2, 0, 0, mp, am)
        mdx = np.empty_like(x)
        maxpool2d_backward(pdout, am, mdx)
        ap = np.empty_like(mp)
        avgpool2d_forward(x, 2, 2, 2, 2, 0, 0, ap)
        adx = np.empty_like(x)
        avgpool2d_backward(pdout, 2, 2, 2, 2, 0, 0, adx)
        return [mp, am, mdx, ap, adx]

    first = run_all()
    for _ in range(3):
        for a, b_ in zip(first, run_all(), strict=True):
            assert a.tobytes() == b_.tobytes()


# (batch, H, W, C, PH, PW) whose windows tile the input: even and odd sizes (a last row or
# column no window reads), non-square windows, one channel, batch > the 16 prange chunks.
TILE_SHAPES = [
    (2, 24, 24, 32, 2, 2),
    (3, 7, 9, 5, 2, 2),
    (1, 9, 9, 16, 3, 3),
    (4, 8, 6, 8, 2, 1),
    (17, 5, 8, 1, 1, 4),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", TILE_SHAPES)
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_tiles_against_reference_and_the_general_kernels(shape, ties, dtype):
    """The tiling kernels: the reference's values and winners, and bitwise the general
    kernels' outputs and gradients (which they replace for these windows)."""
    n, h, w, c, ph, pw = shape
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (n, h, w, c)) if ties else rng.standard_normal((n, h, w, c))
    x = x.astype(dtype)
    out_hw, pad = pool_geometry(h, w, ph, pw, (ph, pw), "valid")
    assert pool_tiles((ph, pw), (ph, pw), pad, (h, w), out_hw)
    dout = rng.standard_normal((n, *out_hw, c)).astype(dtype)
    dout[0, 0, 0, 0] = -0.0  # lands as +0.0 in both (0 + g)
    out = np.full((n, *out_hw, c), np.nan, dtype=dtype)
    win = np.full((n, *out_hw, c), -7, dtype=np.int8)
    maxpool2d_forward_tiles(x, ph, pw, out, win)
    dx = np.full(x.shape, np.nan, dtype=dtype)
    maxpool2d_backward_tiles(dout, win, ph, pw, dx)

    out_ref, argmax_ref = ref.maxpool2d_forward(x, (ph, pw), (ph, pw), pad, out_hw)
    np.testing.assert_array_equal(out, out_ref)
    oh = np.arange(out_hw[0])[None, :, None, None]
    ow = np.arange(out_hw[1])[None, None, :, None]
    i, j = win // pw, win % pw
    np.testing.assert_array_equal((oh * ph + i) * w + ow * pw + j, argmax_ref)
    close(dx, ref.maxpool2d_backward(dout, x, (ph, pw), (ph, pw), pad), dtype)

    general_out, _, general_dx = run_maxpool(x, (ph, pw), (ph, pw), pad, out_hw, dout)
    assert out.tobytes() == general_out.tobytes() and dx.tobytes() == general_dx.tobytes()


def test_pool_tiles_condition():
    assert pool_tiles((2, 2), (2, 2), (0, 0), (24, 24), (12, 12))
    assert pool_tiles((3, 1), (3, 1), (0, 0), (7, 5), (2, 5))  # a last row no window reads
    assert not pool_tiles((3, 3), (2, 2), (0, 0), (7, 7), (3, 3))  # overlapping windows
    assert not pool_tiles((2, 2), (2, 2), (1, 0), (6, 6), (4, 3))  # padding before
    assert not pool_tiles((2, 2), (2, 2), (0, 0), (7, 5), (4, 3))  # "same": pads after
    assert not pool_tiles((12, 12), (12, 12), (0, 0), (24, 24), (2, 2))  # 144 > int8
