"""Convolution kernels (cnnkit.kernels.conv) against the slow references in tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.kernels.conv import conv2d_backward_input, conv2d_backward_weights, conv2d_forward
from cnnkit.kernels.nojit import conv_output_size
from tests import reference as ref
from tests.kernels import HAS_AVX512F, NEEDS_AVX2_FMA
from tests.reference import DTYPES, close


def conv_geometry(h, w, kh, kw, stride, dilation, padding):
    oh, pt = conv_output_size(h, kh, stride[0], dilation[0], padding)
    ow, pl = conv_output_size(w, kw, stride[1], dilation[1], padding)
    return (oh, ow), (pt, pl)


# (batch, H, W, C, KH, KW, F): non-square inputs/kernels, batch 1/3, channels 1/3, filters 1/4.
# F is never a multiple of 16 here: float32 and float64 alike take the im2col + GEMM path for
# C >= 8, the direct loops for C < 8 (DIRECT_CASES below: the float32 direct kernels); odd
# K = KH*KW*C, odd row counts and F not a multiple of the vector width exercise every
# unrolling remainder.
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


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_kernels_bitwise_deterministic(dtype):
    """Repeated calls give identical bytes (batch 40 > chunk count; both conv code paths)."""
    rng = np.random.default_rng(3)
    n = 40
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
        return res

    first = run_all()
    for _ in range(3):
        for a, b_ in zip(first, run_all(), strict=True):
            assert a.tobytes() == b_.tobytes()


# The register-blocked direct float32 kernels (conv2d_forward_direct and
# conv2d_backward_weights_direct; the stride-1 input gradient runs on the former): F a
# multiple of 16, dilation 1, any channel count. Output widths 1, 2, 5, 8, 10 and 13 take
# every mix of the 12- (F % 32 == 0 on AVX-512), 6-, 4- and 1-pixel microkernels (the
# weight gradient's KW*C = 3 ... 57 rows, every mix of 12-, 6-, 4- and 1-row blocks);
# channels 1, 3 and odd counts, non-square kernels, batch 1, batch > the chunk count (17),
# stride 2 and (2, 1), valid and same padding, and a small valid layer whose input gradient
# skips the rotated kernel's zero rows.
DIRECT_CASES = [
    ((2, 7, 7, 8, 3, 3, 16), "valid", (1, 1)),  # OW 5
    ((1, 6, 10, 9, 2, 3, 32), "same", (1, 1)),  # OW 10, KW*C 27
    ((3, 9, 8, 19, 3, 3, 16), "same", (2, 2)),  # OW 4
    ((2, 8, 13, 8, 3, 1, 16), "valid", (1, 1)),  # OW 13, KW*C 8
    ((17, 5, 9, 11, 1, 2, 16), "same", (2, 1)),  # batch > chunks, OW 9
    ((1, 12, 12, 8, 5, 5, 32), "valid", (1, 1)),  # lenet-like, OW 8
    ((2, 4, 2, 8, 3, 3, 16), "same", (1, 1)),  # OW 2
    ((2, 3, 3, 12, 3, 3, 16), "valid", (1, 1)),  # OW 1
    ((2, 9, 8, 1, 3, 3, 16), "same", (1, 1)),  # one channel (the first layer), OW 8
    ((1, 8, 11, 3, 5, 2, 32), "valid", (2, 1)),  # three channels, OW 10
]


@pytest.mark.parametrize("shape, padding, stride", DIRECT_CASES)
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_direct_against_reference(shape, padding, stride, relu):
    from cnnkit.kernels.conv import _direct

    dtype = np.float32
    x, wt, b, out_hw, pad, dout = conv_case(shape, padding, stride, (1, 1), dtype, seed=7)
    assert _direct(x, wt, wt.shape[3], out_hw[1], 1, 1)  # the path under test
    args = (*stride, 1, 1, *pad)
    expected = ref.conv2d_forward(x, wt, b, stride, (1, 1), pad, out_hw)
    out = np.full((x.shape[0], *out_hw, wt.shape[3]), np.nan, dtype=dtype)
    conv2d_forward(x, wt, b, *args, out, relu)
    close_sum(out, np.maximum(expected, 0) if relu else expected, dtype)
    if not relu:
        check_conv_backward(x, wt, b, pad, dout, stride, (1, 1), dtype, close_sum)


def test_conv2d_direct_bitwise_deterministic():
    """The direct float32 kernels: repeated calls give identical bytes (batch 40 > chunks)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 10, 9, 12)).astype(np.float32)
    wt = rng.standard_normal((3, 3, 12, 32)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    dout = rng.standard_normal((40, 10, 9, 32)).astype(np.float32)

    def run_all():
        out = np.empty((40, 10, 9, 32), dtype=np.float32)
        conv2d_forward(x, wt, b, 1, 1, 1, 1, 1, 1, out)
        dx = np.empty_like(x)
        conv2d_backward_input(dout, wt, 1, 1, 1, 1, 1, 1, dx)
        dw = np.empty_like(wt)
        db = np.empty_like(b)
        conv2d_backward_weights(x, dout, 1, 1, 1, 1, 1, 1, dw, db)
        return [a.tobytes() for a in (out, dx, dw, db)]

    first = run_all()
    assert run_all() == first and run_all() == first


@NEEDS_AVX2_FMA
@pytest.mark.parametrize("lanes, pixels", [(8, 6), (16, 6), (16, 12)])
def test_direct_microkernel_keeps_its_accumulators_in_vector_registers(lanes, pixels):
    """The inner loop of the 6-pixel microkernel: 12 vfmadd on ymm registers (8 lanes) or
    zmm (16, on AVX-512); of the 12-pixel one (16 lanes only): 24 on zmm. No load or store
    of an accumulator (compiled afresh: Numba does not disassemble cached code)."""
    import re

    import numba

    from cnnkit.kernels import conv
    from cnnkit.kernels.simd import vzeros, width_tag

    if lanes == 16 and not HAS_AVX512F:
        pytest.skip("zmm registers need AVX-512F (16 lanes run as two ymm halves here)")

    @numba.njit
    def call6(a, tag, a0, a1, a2, a3, a4, a5, ak, ak2, b0, bk, bk2, kn, kn2, c0, cp, fresh):
        z = vzeros(tag)
        conv._micro6(
            z, a, a0, a1, a2, a3, a4, a5, ak, ak2, a, b0, bk, bk2, kn, kn2, a, c0, cp, fresh
        )

    @numba.njit
    def call12(a, tag, a0, a1, a2, a3, a4, a5, ak, ak2, b0, bk, bk2, kn, kn2, c0, cp, fresh):
        z = vzeros(tag)
        conv._micro12(
            z, a, a0, a1, a2, a3, a4, a5, a0 + 6, a1 + 6, a2 + 6, a3 + 6, a4 + 6, a5 + 6,
            ak, ak2, a, b0, bk, bk2, kn, kn2, a, c0, cp, fresh,
        )  # fmt: skip

    call = call6 if pixels == 6 else call12
    a = np.zeros(1024, np.float32)
    call(a, width_tag(lanes), 0, 1, 2, 3, 4, 5, 1, 1, 0, 1, 1, 1, 1, 0, 32, False)
    asm = call.inspect_asm(call.signatures[0])
    reg = "ymm" if lanes == 8 else "zmm"
    fmas = re.findall(r"vfmadd\d+ps\s+([^\n]*)", asm)
    assert len(fmas) >= 2 * pixels and all(reg in f for f in fmas), fmas
    # all three operands registers: accumulators, weights and broadcasts never in memory
    # (AVX-512 may fold the broadcast of x into the FMA: a {1to16} memory operand is no
    # accumulator)
    operands = rf"%{reg}\d+, %{reg}\d+, %{reg}\d+|\S+\{{1to16\}}, %{reg}\d+, %{reg}\d+"
    assert all(re.fullmatch(operands, f.strip()) for f in fmas), fmas


@pytest.mark.parametrize("shape, padding, stride", DIRECT_CASES)
def test_direct_kernels_give_the_same_bytes_at_every_width(shape, padding, stride):
    """Two 8-lane vectors of filters a pixel, two 16-lane ones (direct_lanes' choice on
    AVX-512 where F % 32 == 0) and one 16-lane one (F % 16 == 0): each output element is the
    same sum in the same order, so the bytes are equal (without AVX-512 the 16-lane code runs
    as two 8-lane halves, still equal)."""
    from cnnkit.kernels import conv

    x, wt, b, out_hw, pad, dout = conv_case(shape, padding, stride, (1, 1), np.float32, seed=3)
    f_n = wt.shape[3]
    widths = [(8, 2), (16, 1)] + ([(16, 2)] if f_n % 32 == 0 else [])
    results = []
    for lanes, vectors in widths:
        tag = conv.direct_tag(lanes, vectors)
        out = np.empty((x.shape[0], *out_hw, f_n), np.float32)
        conv.conv2d_forward_direct(x, wt, b, *stride, *pad, out, True, tag)
        dw, db = np.empty_like(wt), np.empty_like(b)
        conv.conv2d_backward_weights_direct(x, dout, *stride, *pad, dw, db, tag)
        results.append([a.tobytes() for a in (out, dw, db)])
    assert all(r == results[0] for r in results[1:])


# (batch, H, W, C, KH, KW, F), padding, stride: strided input gradients by phases, one
# stride-1 forward convolution per (row, column) phase; strides 3 and (1, 2); a 1x1 kernel at
# stride 2, whose odd rows and columns no tap reads; 16 filters (the direct kernels) and 5.
PHASE_CASES = [
    ((3, 8, 8, 16, 3, 3, 32), "same", (2, 2)),
    ((2, 9, 8, 16, 3, 3, 16), "valid", (2, 2)),
    ((2, 7, 9, 3, 3, 2, 5), "same", (3, 2)),
    ((2, 8, 8, 16, 1, 1, 32), "valid", (2, 2)),
    ((2, 10, 10, 8, 5, 5, 16), "same", (1, 2)),
    ((3, 16, 16, 32, 3, 3, 64), "same", (2, 2)),  # resnet20's 32 -> 64 downsampling
    ((2, 11, 13, 16, 4, 4, 48), "same", (3, 2)),
    ((2, 7, 7, 16, 3, 3, 16), "valid", (3, 3)),  # the last row and column no output reads
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, padding, stride", PHASE_CASES)
def test_strided_input_gradient_by_phases_against_reference(shape, padding, stride, dtype):
    from cnnkit.kernels.conv import _backward_input_by_phases

    x, wt, b, out_hw, pad, dout = conv_case(shape, padding, stride, (1, 1), dtype)
    dx = np.full(x.shape, np.nan, dtype=dtype)
    assert _backward_input_by_phases(dout, wt, *stride, 1, 1, *pad, dx)  # the path applies
    close(dx, ref.conv2d_backward_input(dout, wt, x.shape, stride, (1, 1), pad), dtype)


@pytest.mark.parametrize("shape, padding, stride", PHASE_CASES)
def test_strided_input_gradient_in_one_pass_gives_the_per_phase_bytes(shape, padding, stride):
    """Where the direct kernels apply (float32, dx's channels a multiple of 16) every phase of
    an image runs in one pass (conv2d_backward_input_phases_direct); a dx that is not
    C-contiguous takes the per-phase forward convolutions and their scatter. Both give the
    same bytes (the same sums in the same order), at one thread and at two."""
    import numba

    from cnnkit.kernels.conv import _backward_input_by_phases

    x, wt, b, out_hw, pad, dout = conv_case(shape, padding, stride, (1, 1), np.float32, seed=4)
    per_phase = np.full((*x.shape[:3], 2 * x.shape[3]), np.nan, np.float32)[..., ::2]
    assert not per_phase.flags.c_contiguous
    assert _backward_input_by_phases(dout, wt, *stride, 1, 1, *pad, per_phase)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            dx = np.full(x.shape, np.nan, dtype=np.float32)
            assert _backward_input_by_phases(dout, wt, *stride, 1, 1, *pad, dx)
            results.append(dx.tobytes())
    finally:
        numba.set_num_threads(before)
    # exact zeros may differ in sign only (a phase that skips a row of padding adds no -0.0)
    assert np.array_equal(np.frombuffer(results[0], np.float32), per_phase.reshape(-1))
    assert all(r == results[0] for r in results)
