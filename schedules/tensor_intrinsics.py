"""mma.sync tensor intrinsics for the tensor-core convolution, registered under names of our own.

TVM 0.27 has ldmatrix + mma.sync m16n8k16 intrinsics (``tvm/s_tir/tensor_intrin/cuda.py``,
``get_mma_intrin_group``), float16 only, holding fragments in ``"warp"`` memory that the
``LowerWarpMemory`` pass spreads over the lanes.  Two things stop us from using them as they are:

* No bfloat16 (``get_ldmatrix_intrin`` asserts float16, ``get_mma_intrin`` has no bf16 spelling),
  although PTX has ``mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`` on sm_80+ and
  ``ldmatrix`` moves 16-bit elements whatever they are.
* ``LowerWarpMemory`` lowers only the first ``warp`` buffer of a statement sequence (its
  ``WarpMemoryRewriter`` stops at the first warp ``AllocBuffer`` and hands the rest to that buffer's
  rewriter), and a GEMM has three fragment buffers: A and B stayed warp-sized in every thread
  (2048 halves per thread for 4x2 fragments, indexed by ``threadIdx.x``: 300-6000 bytes of stack
  in ``ptxas -v``).  With the implementations below (a per-lane copy around the PTX),
  ``LowerWarpMemory`` rejects the fragments outright ("require positive constant coefficient on
  warp index threadIdx_x").

So the intrinsics below have TVM's descriptions (the same 16x16 tile <-> (lane, element) map,
``shared_16x16_to_ldmatrix_32x8_layout``; ``tests/test_tensorcore.py`` compares them with TVM's) with
the fragments in ``"local"`` memory: a ``[32, 8]`` fragment of which each lane touches only its own
row.  TVM keeps the lane axis in the allocation (a tensorized block matches the whole ``[32, 8]``
region), so a thread's array is 32 times the 8 elements it uses, but every access is at
``threadIdx.x * 8 + constant`` (the fragment loops are unrolled), and nvcc promotes those elements
to registers: ``ptxas -v`` reports no stack frame (checked by the tests).  The implementations copy
each lane's row into 8 registers around the PTX instruction (``ldmatrix``, ``mma.sync``); nvcc
removes the copies.

Only what the convolution uses is made: both operands "transposed" (A staged as ``[k, m]``, B as
``[n, k]``), shared memory ``shared.dyn``, float32 accumulators.  TF32 (float32 inputs,
m16n8k8) is not provided: ldmatrix cannot load 32-bit elements in these layouts, and TF32 rounds
the inputs to 10 mantissa bits, which is not the float32 convolution the modules promise.
"""
from __future__ import annotations

import functools
from typing import Dict

from tvm.runtime import convert
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

#: one warp-wide fragment: a 16x16 tile held as 8 elements in each of 32 lanes
WARP, LOCAL, TILE = 32, 8, 16
#: where fragments live (see the module docstring for why not TVM's "warp")
FRAGMENT_SCOPE = "local"
#: element types -> PTX spelling of the mma operands (``ptx_legacy.mma``'s names) and the short
#: spelling in our intrinsics' names
PTX_TYPE = {"float16": "fp16", "bfloat16": "bf16"}
SHORT = {"float16": "f16", "bfloat16": "bf16"}


def fragment_layout(i, j):
    """(lane, element) holding element (i, j) of a 16x16 tile in an mma.sync / ldmatrix fragment:
    TVM's ``shared_16x16_to_ldmatrix_32x8_layout`` (not imported: importing anything from
    ``tvm.s_tir.tensor_intrin`` registers every target's intrinsics, 30-80 s on two cores)."""
    return 4 * (i % 8) + (j % 8) // 2, 4 * (j // 8) + (i // 8) * 2 + (j % 2)


def tile_position(lane, element):
    """The inverse of :func:`fragment_layout`: TVM's ``ldmatrix_32x8_to_shared_16x16_layout``."""
    return 8 * (element % 4 // 2) + lane // 4, 8 * (element // 4) + (lane % 4) * 2 + element % 2


def ldmatrix_intrin(dtype: str, operand: str, scope: str = "shared.dyn"):
    """(desc, impl) loading a 16x16 tile of a transposed operand (A as [k, m], B as [n, k]) from
    shared memory into a fragment: TVM's ``get_ldmatrix_intrin(16, dtype, operand, True)``."""
    transpose_in_ldmatrix = operand == "A"      # A is [k, m]: ldmatrix.trans; B is [n, k]: plain
    half = convert(WARP // 2)

    def smem_offset(tx, stride):
        return stride * 8 * (tx // half) + stride * (tx % 8) + 8 * ((tx % half) // 8)

    @T.prim_func(s_tir=True)
    def desc(warp_handle: T.handle, shared_handle: T.handle) -> None:
        shared = T.match_buffer(shared_handle, (TILE, TILE), dtype, align=64, offset_factor=TILE,
                                scope=scope)
        warp = T.match_buffer(warp_handle, (WARP, LOCAL), dtype, align=64, offset_factor=TILE,
                              scope=FRAGMENT_SCOPE)
        with T.sblock("root"):
            T.reads(shared[0:TILE, 0:TILE])
            T.writes(warp[0:WARP, 0:LOCAL])
            for ax0, ax1 in T.grid(TILE, TILE):
                with T.sblock("shared_warp"):
                    v0, v1 = T.axis.remap("SS", [ax0, ax1])
                    T.reads(shared[v0, v1])
                    thread_id, local_id = T.meta_var(fragment_layout(v0, v1))
                    T.writes(warp[thread_id, local_id])
                    warp[thread_id, local_id] = shared[v0, v1]

    @T.prim_func(s_tir=True)
    def impl(warp_handle: T.handle, shared_handle: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        shared = T.match_buffer(shared_handle, (TILE, TILE), dtype, align=64, offset_factor=TILE,
                                scope=scope, strides=[s0, s1])
        warp = T.match_buffer(warp_handle, (WARP, LOCAL), dtype, align=64, offset_factor=TILE,
                              scope=FRAGMENT_SCOPE)
        with T.sblock("root"):
            T.reads(shared[0:TILE, 0:TILE])
            T.writes(warp[0:WARP, 0:LOCAL])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                with T.sblock("ldmatrix"):
                    T.reads(shared[0:TILE, 0:TILE])
                    T.writes(warp[tx, 0:LOCAL])
                    registers = T.sblock_alloc_buffer((LOCAL,), dtype, scope="local")
                    T.evaluate(T.ptx_legacy.ldmatrix(
                        transpose_in_ldmatrix, 4, ".b16", registers.data, 0,
                        shared.access_ptr("r"), smem_offset(tx, s0), dtype=dtype))
                    for i in T.unroll(LOCAL):
                        warp[tx, i] = registers[i]

    return desc, impl


def mma_intrin(dtype: str):
    """(desc, impl) of C[m, n] += A[k, m] * B[n, k] on 16x16x16 fragments, float32 accumulators:
    two ``mma.sync.m16n8k16`` (one per 8-column half of C).  TVM's
    ``get_mma_intrin(16, dtype, dtype, "float32", True, True)``."""
    ptx = PTX_TYPE[dtype]

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, LOCAL), dtype, align=64, offset_factor=TILE, scope=FRAGMENT_SCOPE)
        B = T.match_buffer(b, (WARP, LOCAL), dtype, align=64, offset_factor=TILE, scope=FRAGMENT_SCOPE)
        C = T.match_buffer(c, (WARP, LOCAL), "float32", align=64, offset_factor=TILE,
                           scope=FRAGMENT_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:LOCAL], A[0:WARP, 0:LOCAL], B[0:WARP, 0:LOCAL])
            T.writes(C[0:WARP, 0:LOCAL])
            for i, j, k in T.grid(TILE, TILE, TILE):
                with T.sblock("C"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    thread_id_c, local_id_c = T.meta_var(fragment_layout(vi, vj))
                    thread_id_a, local_id_a = T.meta_var(fragment_layout(vk, vi))
                    thread_id_b, local_id_b = T.meta_var(fragment_layout(vj, vk))
                    T.reads(C[thread_id_c, local_id_c], A[thread_id_a, local_id_a],
                            B[thread_id_b, local_id_b])
                    T.writes(C[thread_id_c, local_id_c])
                    C[thread_id_c, local_id_c] += T.Cast("float32", A[thread_id_a, local_id_a]) * \
                        T.Cast("float32", B[thread_id_b, local_id_b])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, LOCAL), dtype, align=64, offset_factor=TILE, scope=FRAGMENT_SCOPE)
        B = T.match_buffer(b, (WARP, LOCAL), dtype, align=64, offset_factor=TILE, scope=FRAGMENT_SCOPE)
        C = T.match_buffer(c, (WARP, LOCAL), "float32", align=64, offset_factor=TILE,
                           scope=FRAGMENT_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:LOCAL], A[0:WARP, 0:LOCAL], B[0:WARP, 0:LOCAL])
            T.writes(C[0:WARP, 0:LOCAL])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                with T.sblock("mma"):
                    T.reads(C[tx, 0:LOCAL], A[tx, 0:LOCAL], B[tx, 0:LOCAL])
                    T.writes(C[tx, 0:LOCAL])
                    a_reg = T.sblock_alloc_buffer((LOCAL,), dtype, scope="local")
                    b_reg = T.sblock_alloc_buffer((LOCAL,), dtype, scope="local")
                    c_reg = T.sblock_alloc_buffer((LOCAL,), "float32", scope="local")
                    for i in T.unroll(LOCAL):
                        a_reg[i] = A[tx, i]
                        b_reg[i] = B[tx, i]
                        c_reg[i] = C[tx, i]
                    T.evaluate(T.ptx_legacy.mma(
                        "m16n8k16", "row", "col", ptx, ptx, "fp32",
                        a_reg.data, 0, b_reg.data, 0, c_reg.data, 0, False, dtype="float32"))
                    T.evaluate(T.ptx_legacy.mma(
                        "m16n8k16", "row", "col", ptx, ptx, "fp32",
                        a_reg.data, 0, b_reg.data, LOCAL // 2, c_reg.data, LOCAL // 2, False,
                        dtype="float32"))
                    for i in T.unroll(LOCAL):
                        C[tx, i] = c_reg[i]

    return desc, impl


def fill_intrin():
    """(desc, impl) zeroing a float32 accumulator fragment: TVM's ``get_mma_fill_intrin``."""
    zero = T.float32(0)

    @T.prim_func(s_tir=True)
    def desc(c: T.handle) -> None:
        C_warp = T.match_buffer(c, (WARP, LOCAL), "float32", scope=FRAGMENT_SCOPE)
        with T.sblock("root"):
            T.reads()
            T.writes(C_warp[0:WARP, 0:LOCAL])
            for i0, i1 in T.grid(TILE, TILE):
                with T.sblock("C_warp"):
                    i, j = T.axis.remap("SS", [i0, i1])
                    thread_id, local_id = T.meta_var(fragment_layout(i, j))
                    T.reads()
                    T.writes(C_warp[thread_id, local_id])
                    C_warp[thread_id, local_id] = zero

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        C = T.match_buffer(c, (WARP, LOCAL), "float32", scope=FRAGMENT_SCOPE, offset_factor=1)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:WARP, 0:LOCAL])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                for i in T.unroll(LOCAL):
                    C[tx, i] = zero

    return desc, impl


def store_intrin(scope: str = "shared.dyn"):
    """(desc, impl) writing a float32 accumulator fragment to a 16x16 tile of ``scope`` memory,
    one element at a time: TVM's ``get_mma_store_intrin("float32", 8, scope, False)``."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        C_warp = T.match_buffer(a, (WARP, LOCAL), "float32", scope=FRAGMENT_SCOPE)
        C = T.match_buffer(c, (TILE, TILE), "float32", scope=scope)
        with T.sblock("root"):
            T.reads(C_warp[0:WARP, 0:LOCAL])
            T.writes(C[0:TILE, 0:TILE])
            for i0, i1 in T.grid(TILE, TILE):
                with T.sblock("C_warp"):
                    v0, v1 = T.axis.remap("SS", [i0, i1])
                    thread_id, local_id = T.meta_var(fragment_layout(v0, v1))
                    T.reads(C_warp[thread_id, local_id])
                    T.writes(C[v0, v1])
                    C[v0, v1] = C_warp[thread_id, local_id]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        C_warp = T.match_buffer(a, (WARP, LOCAL), "float32", scope=FRAGMENT_SCOPE, offset_factor=1)
        C = T.match_buffer(c, (TILE, TILE), "float32", scope=scope, offset_factor=1, strides=[s0, s1])
        with T.sblock("root"):
            T.reads(C_warp[0:WARP, 0:LOCAL])
            T.writes(C[0:TILE, 0:TILE])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                for local_id in T.unroll(LOCAL):
                    row, col = T.meta_var(tile_position(tx, local_id))
                    C[row, col] = C_warp[tx, local_id]

    return desc, impl


def _register(name: str, desc_impl) -> str:
    TensorIntrin.register(name, *desc_impl, override=True)
    return name


@functools.lru_cache(maxsize=None)
def _accumulator_intrinsics() -> Dict[str, str]:
    """The float32 accumulator's intrinsics, the same for every input type."""
    return {
        "init": _register("conv_mma_fill_16x16_f32", fill_intrin()),
        "store": _register("conv_mma_store_16x16_f32_shared_dyn", store_intrin()),
    }


@functools.lru_cache(maxsize=None)
def intrinsics(dtype: str) -> Dict[str, str]:
    """The names of the mma.sync kernel's intrinsics for input type ``dtype`` (``init``, ``load_a``,
    ``load_b``, ``compute``, ``store``), registered on first use: parsing them with TVMScript takes
    seconds, which ``import schedules`` should not pay where no tensor-core kernel is built."""
    short = SHORT[dtype]
    return {
        **_accumulator_intrinsics(),
        "load_a": _register(f"conv_mma_ldmatrix_{short}_a_trans_dyn", ldmatrix_intrin(dtype, "A")),
        "load_b": _register(f"conv_mma_ldmatrix_{short}_b_trans_dyn", ldmatrix_intrin(dtype, "B")),
        "compute": _register(f"conv_mma_{short}{short}f32_trans_a_trans_b", mma_intrin(dtype)),
    }


__all__ = ["intrinsics", "PTX_TYPE", "FRAGMENT_SCOPE", "fragment_layout", "ldmatrix_intrin",
           "mma_intrin", "fill_intrin", "store_intrin"]
