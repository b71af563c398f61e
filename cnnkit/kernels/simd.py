"""float32 vectors for the Numba kernels: LLVM <8 x float> and <16 x float> values, which
live in ymm (AVX2) or zmm (AVX-512) registers, with loads, stores, broadcasts and fused
multiply-adds.

Why: a register-blocked GEMM microkernel needs its 12 accumulators in registers for a whole
reduction loop. Written over a small numpy array, LLVM keeps them in memory (the array may
alias the operands, and Numba's negative-index checks break the vectorizer); written as 96
scalars, it does not vectorize them. As values of a vector type they are SSA registers by
construction (checked in tests/kernels/test_conv.py: vfmadd on ymm or zmm in the loop).

Two widths: vload, vbroadcast and vzero make 8-lane vectors (the AVX2 width every x86-64
machine with FMA has); vzeros(width_tag(lanes)), vload_like and vbroadcast_like make vectors as wide
as a given one, so that one kernel source compiles for either width (Numba specialises it on
the vector's type). WIDE_LANES is the widest the machine runs at full speed: 16 where the
CPU has AVX-512F, else 8. Numba's own loop vectorizer stays at 256 bits there (LLVM's
tuning for these CPUs), so only kernels written on these vectors use zmm registers; on the
AVX-512 Xeon they doubled the FMA peak (benchmarks/results, docs/performance.md).
CNNKIT_SIMD_LANES=8 keeps the 8-lane kernels on such a machine (for comparisons).

vfma is llvm.fma: one rounding, the same instruction on every run, so results are bitwise
reproducible (they differ from a separate multiply and add in the last bit, as any FMA
does), and the same at either width (each lane sums its own element in the same order). No
bounds checks: the callers' index arithmetic is what keeps them in range.
"""

from __future__ import annotations

import os

from llvmlite import binding as llvm
from llvmlite import ir
from numba.core import cgutils, config, types
from numba.core.extending import intrinsic, models, register_model

LANES = 8


def _wide_lanes() -> int:
    """16 on a CPU with AVX-512F (as Numba targets it: NUMBA_CPU_FEATURES when set), else 8;
    CNNKIT_SIMD_LANES (8 or 16) overrides."""
    chosen = os.environ.get("CNNKIT_SIMD_LANES", "").strip()
    if chosen:
        if chosen not in ("8", "16"):
            raise ValueError(f"CNNKIT_SIMD_LANES must be 8 or 16, not {chosen!r}")
        return int(chosen)
    if config.CPU_NAME and not config.CPU_FEATURES:
        return LANES  # a named target CPU (a portable cache): assume no more than AVX2
    features = config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()
    return 16 if "+avx512f" in features.split(",") else LANES


WIDE_LANES = _wide_lanes()


class F32Vec(types.Type):
    """Numba's type of a float32 vector value of `lanes` lanes."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        super().__init__(name=f"F32x{lanes}")


f32x8 = F32Vec(8)  # the type vload, vbroadcast and vzero return


def _ir_vector(lanes: int) -> ir.VectorType:
    return ir.VectorType(ir.FloatType(), lanes)


@register_model(F32Vec)
class _F32VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _ir_vector(fe_type.lanes))


def _float32_array(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.float32


def _element_pointer(context, builder, arrty, arr, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(data, [idx])


def _load_codegen(lanes: int):
    def codegen(context, builder, sig, args):
        p = _element_pointer(context, builder, sig.args[-2], args[-2], args[-1])
        return builder.load(builder.bitcast(p, _ir_vector(lanes).as_pointer()), align=4)

    return codegen


def _broadcast_codegen(lanes: int):
    def codegen(context, builder, sig, args):
        vec = _ir_vector(lanes)
        p = _element_pointer(context, builder, sig.args[-2], args[-2], args[-1])
        s = builder.load(p, align=4)
        v = builder.insert_element(ir.Constant(vec, ir.Undefined), s, ir.IntType(32)(0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        return builder.shuffle_vector(v, ir.Constant(vec, ir.Undefined), zeros)

    return codegen


def _zeros_codegen(lanes: int):
    def codegen(context, builder, sig, args):
        return ir.Constant(_ir_vector(lanes), [0.0] * lanes)

    return codegen


def _indexes(arr, idx) -> bool:
    return _float32_array(arr) and isinstance(idx, types.Integer)


@intrinsic
def vload(typingctx, arr, idx):
    """arr[idx : idx + 8] of a 1-D float32 array as a vector."""
    if not _indexes(arr, idx):
        return None
    return f32x8(arr, idx), _load_codegen(LANES)


@intrinsic
def vload_like(typingctx, like, arr, idx):
    """arr[idx : idx + L] as a vector of L lanes, L those of `like` (only its type is read)."""
    if not (isinstance(like, F32Vec) and _indexes(arr, idx)):
        return None
    return like(like, arr, idx), _load_codegen(like.lanes)


@intrinsic
def vstore(typingctx, arr, idx, v):
    """arr[idx : idx + L] = v, a vector of L lanes."""
    if not (_indexes(arr, idx) and isinstance(v, F32Vec)):
        return None

    def codegen(context, builder, sig, args):
        p = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(p, _ir_vector(v.lanes).as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, v), codegen


@intrinsic
def vbroadcast(typingctx, arr, idx):
    """arr[idx] in all 8 lanes (one vbroadcastss)."""
    if not _indexes(arr, idx):
        return None
    return f32x8(arr, idx), _broadcast_codegen(LANES)


@intrinsic
def vbroadcast_like(typingctx, like, arr, idx):
    """arr[idx] in all lanes of a vector as wide as `like`."""
    if not (isinstance(like, F32Vec) and _indexes(arr, idx)):
        return None
    return like(like, arr, idx), _broadcast_codegen(like.lanes)


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c lane by lane, rounded once (vfmadd231ps)."""
    if not (isinstance(a, F32Vec) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        vec = _ir_vector(a.lanes)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{a.lanes}f32"
        )
        return builder.call(fn, args)

    return a(a, a, a), codegen


@intrinsic
def vadd(typingctx, a, b):
    """a + b lane by lane."""
    if not (isinstance(a, F32Vec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return a(a, a), codegen


@intrinsic
def vzero(typingctx):
    """An 8-lane vector of zeros."""
    return f32x8(), _zeros_codegen(LANES)


def width_tag(lanes: int) -> tuple[int, ...]:
    """What a kernel taking vectors of `lanes` lanes is passed to say so: a tuple of that
    many zeros, whose length is part of its Numba type, so that the dispatcher compiles (and
    caches) one specialisation per width and picks it by type at each call. (An integer
    argument made literal with numba.literally re-types the kernel on every call: 30 ms.)"""
    return (0,) * lanes


@intrinsic
def vzeros(typingctx, tag):
    """A vector of zeros as wide as `tag` is long (width_tag(8) or width_tag(16))."""
    if not (isinstance(tag, types.UniTuple) and tag.count in (8, 16)):
        return None
    n = tag.count
    return F32Vec(n)(tag), _zeros_codegen(n)


@intrinsic
def vlanes(typingctx, v):
    """The number of lanes of v's type, a constant."""
    if not isinstance(v, F32Vec):
        return None

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, v.lanes)

    return types.intp(v), codegen
