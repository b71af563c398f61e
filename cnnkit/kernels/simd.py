"""8-wide float32 vectors for the Numba kernels: LLVM <8 x float> values, which live in ymm
registers, with loads, stores, broadcasts and fused multiply-adds.

Why: a register-blocked GEMM microkernel needs its 12 accumulators in registers for a whole
reduction loop. Written over a small numpy array, LLVM keeps them in memory (the array may
alias the operands, and Numba's negative-index checks break the vectorizer); written as 96
scalars, it does not vectorize them. As values of a vector type they are SSA registers by
construction (checked in tests/kernels/test_conv.py: vfmadd on ymm in the loop).

vfma is llvm.fma.v8f32: one rounding, the same instruction on every run, so results are
bitwise reproducible (they differ from a separate multiply and add in the last bit, as any
FMA does). No bounds checks: the callers' index arithmetic is what keeps them in range.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic, models, register_model

LANES = 8
_VEC = ir.VectorType(ir.FloatType(), LANES)


class F32x8(types.Type):
    """Numba's type of an 8-lane float32 vector value."""

    def __init__(self) -> None:
        super().__init__(name="F32x8")


f32x8 = F32x8()


@register_model(F32x8)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _float32_array(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.float32


def _element_pointer(context, builder, arrty, arr, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(data, [idx])


@intrinsic
def vload(typingctx, arr, idx):
    """arr[idx : idx + 8] of a 1-D float32 array as a vector."""
    if not (_float32_array(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(p, _VEC.as_pointer()), align=4)

    return f32x8(arr, idx), codegen


@intrinsic
def vstore(typingctx, arr, idx, v):
    """arr[idx : idx + 8] = v."""
    if not (_float32_array(arr) and isinstance(idx, types.Integer) and v == f32x8):
        return None

    def codegen(context, builder, sig, args):
        p = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(p, _VEC.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, v), codegen


@intrinsic
def vbroadcast(typingctx, arr, idx):
    """arr[idx] in all 8 lanes (one vbroadcastss)."""
    if not (_float32_array(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        s = builder.load(p, align=4)
        v = builder.insert_element(ir.Constant(_VEC, ir.Undefined), s, ir.IntType(32)(0))
        lanes = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        return builder.shuffle_vector(v, ir.Constant(_VEC, ir.Undefined), lanes)

    return f32x8(arr, idx), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c lane by lane, rounded once (vfmadd231ps)."""
    if not (a == f32x8 and b == f32x8 and c == f32x8):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v8f32"
        )
        return builder.call(fn, args)

    return f32x8(f32x8, f32x8, f32x8), codegen


@intrinsic
def vadd(typingctx, a, b):
    """a + b lane by lane."""
    if not (a == f32x8 and b == f32x8):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return f32x8(f32x8, f32x8), codegen


@intrinsic
def vzero(typingctx):
    """A vector of zeros."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_VEC, [0.0] * LANES)

    return f32x8(), codegen
