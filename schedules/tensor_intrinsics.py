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

Only what the convolution uses is made: B staged as ``[n, k]``, A as ``[k, m]`` (NCHW inputs: a row
is one channel at consecutive pixels; ``ldmatrix.trans``) or as ``[m, k]`` (``A_MK``, NHWC inputs: a
row is one pixel's taps and channels; plain ``ldmatrix``, the same registers), shared memory
``shared.dyn``, float32 accumulators.  Every description holds A's fragment as the ``[k, m]`` tile's
(``fragment_layout(k, m)``), so one mma intrinsic serves both stagings.

TF32 (a float32 request with ``tf32``: ``mma.sync.m16n8k8.row.col.f32.tf32.tf32.f32``, four per
16x16x16 step).  ``ldmatrix`` moves 16-bit elements: ``.trans`` would split a 32-bit element of
A's ``[k, m]`` tile, so each lane loads its 8 elements of a tile with plain shared-memory loads, in
the PTX fragment layouts of m16n8k8 (``tf32_layouts``; the accumulator's is the same as m16n8k16's).
The descriptions round each operand with ``targets.cuda.round_to_tf32`` inside the multiply-add,
as the compute of a TF32 request does.  The implementations round once per fragment element instead
of once per use: the loads convert (``cvt.rna.tf32.f32``) and the mma takes the converted values.
The loads' implementations so store rounded values where their descriptions copy; that is exact
for the pair because these fragments feed only the TF32 mma and rounding twice is rounding once.
"""
from __future__ import annotations

import functools
from typing import Dict

from tvm.runtime import convert
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from targets.cuda import round_to_tf32

#: one warp-wide fragment: a 16x16 tile held as 8 elements in each of 32 lanes
WARP, LOCAL, TILE = 32, 8, 16
#: where fragments live (see the module docstring for why not TVM's "warp")
FRAGMENT_SCOPE = "local"
#: the operand type of float32 requests computed on TF32 tensor cores
TF32 = "tf32"
#: operand types (the layer's dtype, or ``"tf32"`` for a TF32 float32 request) -> PTX spelling of the
#: mma operands (``ptx_legacy.mma``'s names) and the short spelling in our intrinsics' names
PTX_TYPE = {"float16": "fp16", "bfloat16": "bf16", TF32: "tf32"}
SHORT = {"float16": "f16", "bfloat16": "bf16", TF32: "tf32"}
#: the type a fragment of each operand type holds in registers
STORAGE = {"float16": "float16", "bfloat16": "bfloat16", TF32: "float32"}


def fragment_layout(i, j):
    """(lane, element) holding element (i, j) of a 16x16 tile in an mma.sync / ldmatrix fragment:
    TVM's ``shared_16x16_to_ldmatrix_32x8_layout`` (not imported: importing anything from
    ``tvm.s_tir.tensor_intrin`` registers every target's intrinsics, 30-80 s on two cores)."""
    return 4 * (i % 8) + (j % 8) // 2, 4 * (j // 8) + (i // 8) * 2 + (j % 2)


def tile_position(lane, element):
    """The inverse of :func:`fragment_layout`: TVM's ``ldmatrix_32x8_to_shared_16x16_layout``."""
    return 8 * (element % 4 // 2) + lane // 4, 8 * (element // 4) + (lane % 4) * 2 + element % 2


def tf32_layouts():
    """(A, B): the (lane, element) of each element of a staged 16x16 tile (A's ``[k, m]``, B's
    ``[n, k]``) in the fragments of ``mma.sync.m16n8k8`` with ``.tf32`` operands (PTX ISA, "Matrix
    Fragments for mma.m16n8k8"): with ``g = lane // 4`` and ``t = lane % 4``, A's registers a0..a3
    hold (m, k) = (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4) and B's b0, b1 hold (k, n) =
    (t, g), (t + 4, g).  Elements ``4h .. 4h + 3`` are A's registers for the K half ``h``; elements
    ``4h + 2c``, ``4h + 2c + 1`` B's for the K half ``h`` and the N half ``c``."""
    def a(k, m):
        return 4 * (m % 8) + k % 4, 4 * (k // 8) + 2 * ((k % 8) // 4) + m // 8

    def b(n, k):
        return 4 * (n % 8) + k % 4, 4 * (k // 8) + 2 * (n // 8) + (k % 8) // 4

    return a, b


def tf32_positions():
    """(A, B): the inverses of :func:`tf32_layouts`, (lane, element) -> staged tile coordinates."""
    def a(lane, element):
        return lane % 4 + 4 * (element // 2 % 2) + 8 * (element // 4), lane // 4 + 8 * (element % 2)

    def b(lane, element):
        return lane // 4 + 8 * (element // 2 % 2), lane % 4 + 4 * (element % 2) + 8 * (element // 4)

    return a, b


#: How A is staged in shared memory: ``[k, m]`` (NCHW inputs) or ``[m, k]`` (NHWC inputs)
A_KM, A_MK = "km", "mk"


def _transposed(layout):
    return lambda i, j: layout(j, i)


def layouts(operand_type: str, a_staged: str = A_KM):
    """(A, B) fragment layouts of ``operand_type``'s mma on the staged tiles (``PTX_TYPE``'s keys):
    ldmatrix's for the 16-bit types, :func:`tf32_layouts` for TF32; A's on a ``[m, k]`` tile
    (``A_MK``) is its ``[k, m]`` layout with the indices swapped."""
    a, b = tf32_layouts() if operand_type == TF32 else (fragment_layout, fragment_layout)
    return (_transposed(a) if a_staged == A_MK else a), b


def _load_desc(storage: str, layout, scope: str):
    """The description of loading a staged 16x16 tile into a fragment laid out by ``layout``."""

    @T.prim_func(s_tir=True)
    def desc(warp_handle: T.handle, shared_handle: T.handle) -> None:
        shared = T.match_buffer(shared_handle, (TILE, TILE), storage, align=64, offset_factor=TILE,
                                scope=scope)
        warp = T.match_buffer(warp_handle, (WARP, LOCAL), storage, align=64, offset_factor=TILE,
                              scope=FRAGMENT_SCOPE)
        with T.sblock("root"):
            T.reads(shared[0:TILE, 0:TILE])
            T.writes(warp[0:WARP, 0:LOCAL])
            for ax0, ax1 in T.grid(TILE, TILE):
                with T.sblock("shared_warp"):
                    v0, v1 = T.axis.remap("SS", [ax0, ax1])
                    T.reads(shared[v0, v1])
                    thread_id, local_id = T.meta_var(layout(v0, v1))
                    T.writes(warp[thread_id, local_id])
                    warp[thread_id, local_id] = shared[v0, v1]

    return desc


def ldmatrix_intrin(dtype: str, operand: str, scope: str = "shared.dyn", a_staged: str = A_KM):
    """(desc, impl) loading a 16x16 tile of an operand (A as ``[k, m]`` or, ``A_MK``, ``[m, k]``; B as
    ``[n, k]``) from shared memory into a fragment: TVM's ``get_ldmatrix_intrin(16, dtype, operand,
    transposed)``.  Each lane gives the address of one 16-byte row of one of four 8x8 matrices,
    which ``ldmatrix.x4`` returns as registers 0-3: A's ``(m 0-7, k 0-7), (m 8-15, k 0-7),
    (m 0-7, k 8-15), (m 8-15, k 8-15)`` (mma.sync's a0-a3), B's ``(n 0-7, k 0-7), (n 0-7, k 8-15),
    (n 8-15, k 0-7), (n 8-15, k 8-15)`` (b0, b1 of each 8-column half)."""
    a_mk = operand == "A" and a_staged == A_MK
    transpose_in_ldmatrix = operand == "A" and not a_mk      # [k, m]: ldmatrix.trans
    half = convert(WARP // 2)

    def smem_offset(tx, stride):
        if a_mk:            # lane -> row tx % 16, column 8 (tx // 16)
            return stride * (tx % half) + 8 * (tx // half)
        return stride * 8 * (tx // half) + stride * (tx % 8) + 8 * ((tx % half) // 8)

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

    return _load_desc(dtype, _transposed(fragment_layout) if a_mk else fragment_layout, scope), impl


def tf32_load_intrin(operand: str, scope: str = "shared.dyn", a_staged: str = A_KM):
    """(desc, impl) loading a 16x16 float32 tile of A ([k, m], or [m, k] with ``A_MK``) or B ([n, k])
    into a TF32 fragment: each lane reads its 8 elements (:func:`tf32_positions`) and converts them
    with ``cvt.rna.tf32.f32`` (see the module docstring for why the description has no rounding)."""
    layout = tf32_layouts()["AB".index(operand)]
    position = tf32_positions()["AB".index(operand)]
    if operand == "A" and a_staged == A_MK:
        layout, km_position = _transposed(layout), position
        position = lambda lane, element: km_position(lane, element)[::-1]   # noqa: E731

    @T.prim_func(s_tir=True)
    def impl(warp_handle: T.handle, shared_handle: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        shared = T.match_buffer(shared_handle, (TILE, TILE), "float32", align=64, offset_factor=TILE,
                                scope=scope, strides=[s0, s1])
        warp = T.match_buffer(warp_handle, (WARP, LOCAL), "float32", align=64, offset_factor=TILE,
                              scope=FRAGMENT_SCOPE)
        with T.sblock("root"):
            T.reads(shared[0:TILE, 0:TILE])
            T.writes(warp[0:WARP, 0:LOCAL])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                with T.sblock("load_tf32"):
                    T.reads(shared[0:TILE, 0:TILE])
                    T.writes(warp[tx, 0:LOCAL])
                    bits = T.sblock_alloc_buffer((LOCAL,), "uint32", scope="local")
                    for i in T.unroll(LOCAL):
                        row, col = T.meta_var(position(tx, i))
                        T.ptx.cvt.rna.tf32.f32(bits[i], shared[row, col])
                        warp[tx, i] = T.reinterpret("float32", bits[i])

    return _load_desc("float32", layout, scope), impl


def _mma_desc(storage: str, operand_value, a_layout, b_layout):
    """The description of C[m, n] += A[k, m] * B[n, k] on 16x16x16 fragments, float32 accumulators,
    each operand taken as ``operand_value`` of its stored element."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, LOCAL), storage, align=64, offset_factor=TILE, scope=FRAGMENT_SCOPE)
        B = T.match_buffer(b, (WARP, LOCAL), storage, align=64, offset_factor=TILE, scope=FRAGMENT_SCOPE)
        C = T.match_buffer(c, (WARP, LOCAL), "float32", align=64, offset_factor=TILE,
                           scope=FRAGMENT_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:LOCAL], A[0:WARP, 0:LOCAL], B[0:WARP, 0:LOCAL])
            T.writes(C[0:WARP, 0:LOCAL])
            for i, j, k in T.grid(TILE, TILE, TILE):
                with T.sblock("C"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    thread_id_c, local_id_c = T.meta_var(fragment_layout(vi, vj))
                    thread_id_a, local_id_a = T.meta_var(a_layout(vk, vi))
                    thread_id_b, local_id_b = T.meta_var(b_layout(vj, vk))
                    T.reads(C[thread_id_c, local_id_c], A[thread_id_a, local_id_a],
                            B[thread_id_b, local_id_b])
                    T.writes(C[thread_id_c, local_id_c])
                    C[thread_id_c, local_id_c] += operand_value(A[thread_id_a, local_id_a]) * \
                        operand_value(B[thread_id_b, local_id_b])

    return desc


def _mma_impl(storage: str, shape: str, ptx: str, calls: int, offsets):
    """The implementation of the 16x16x16 multiply-add on fragments of ``storage``: ``calls``
    ``mma.sync.<shape>`` with ``ptx`` operands, call ``q`` on the registers at ``offsets(q)`` =
    (A, B, C element offsets), around a per-lane copy of the fragments into registers."""

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, LOCAL), storage, align=64, offset_factor=TILE, scope=FRAGMENT_SCOPE)
        B = T.match_buffer(b, (WARP, LOCAL), storage, align=64, offset_factor=TILE, scope=FRAGMENT_SCOPE)
        C = T.match_buffer(c, (WARP, LOCAL), "float32", align=64, offset_factor=TILE,
                           scope=FRAGMENT_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:LOCAL], A[0:WARP, 0:LOCAL], B[0:WARP, 0:LOCAL])
            T.writes(C[0:WARP, 0:LOCAL])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                with T.sblock("mma"):
                    T.reads(C[tx, 0:LOCAL], A[tx, 0:LOCAL], B[tx, 0:LOCAL])
                    T.writes(C[tx, 0:LOCAL])
                    a_reg = T.sblock_alloc_buffer((LOCAL,), storage, scope="local")
                    b_reg = T.sblock_alloc_buffer((LOCAL,), storage, scope="local")
                    c_reg = T.sblock_alloc_buffer((LOCAL,), "float32", scope="local")
                    for i in T.unroll(LOCAL):
                        a_reg[i] = A[tx, i]
                        b_reg[i] = B[tx, i]
                        c_reg[i] = C[tx, i]
                    for q in T.unroll(calls):
                        a_offset, b_offset, c_offset = T.meta_var(offsets(q))
                        T.evaluate(T.ptx_legacy.mma(shape, "row", "col", ptx, ptx, "fp32", a_reg.data, a_offset,
                                                    b_reg.data, b_offset, c_reg.data, c_offset, False,
                                                    dtype="float32"))
                    for i in T.unroll(LOCAL):
                        C[tx, i] = c_reg[i]

    return impl


def mma_intrin(dtype: str):
    """(desc, impl) of C[m, n] += A[k, m] * B[n, k] on 16x16x16 fragments, float32 accumulators:
    two ``mma.sync.m16n8k16`` (one per 8-column half of C, B's and C's elements 4q..4q+3).  TVM's
    ``get_mma_intrin(16, dtype, dtype, "float32", True, True)``."""
    impl = _mma_impl(dtype, "m16n8k16", PTX_TYPE[dtype], 2, lambda q: (0, 4 * q, 4 * q))
    return _mma_desc(dtype, lambda v: T.Cast("float32", v), fragment_layout, fragment_layout), impl


def tf32_mma_intrin():
    """(desc, impl) of C[m, n] += tf32(A[k, m]) * tf32(B[n, k]) on 16x16x16 float32 fragments: four
    ``mma.sync.m16n8k8.row.col.f32.tf32.tf32.f32``, call ``q`` on N half ``q // 2`` and K half
    ``q % 2`` (register offsets per :func:`tf32_layouts`).  The operands arrive converted by
    :func:`tf32_load_intrin` (module docstring)."""
    impl = _mma_impl("float32", "m16n8k8", PTX_TYPE[TF32], 4,
                     lambda q: (4 * (q % 2), 4 * (q % 2) + 2 * (q // 2), 4 * (q // 2)))
    return _mma_desc("float32", round_to_tf32, *tf32_layouts()), impl


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
def intrinsics(operand_type: str, a_staged: str = A_KM) -> Dict[str, str]:
    """The names of the mma.sync kernel's intrinsics for ``operand_type`` (``PTX_TYPE``'s keys:
    ``init``, ``load_a``, ``load_b``, ``compute``, ``store``) with A staged ``a_staged``, registered on
    first use: parsing them with TVMScript takes seconds, which ``import schedules`` should not pay
    where no tensor-core kernel is built."""
    short = SHORT[operand_type]
    if a_staged == A_MK:
        load_a = ("conv_mma_load_tf32_a_mk_dyn", tf32_load_intrin("A", a_staged=A_MK)) if operand_type == TF32 \
            else (f"conv_mma_ldmatrix_{short}_a_dyn", ldmatrix_intrin(operand_type, "A", a_staged=A_MK))
        return {**intrinsics(operand_type), "load_a": _register(*load_a)}
    if operand_type == TF32:
        loads = {"load_a": _register("conv_mma_load_tf32_a_dyn", tf32_load_intrin("A")),
                 "load_b": _register("conv_mma_load_tf32_b_dyn", tf32_load_intrin("B")),
                 "compute": _register("conv_mma_tf32tf32f32_trans_a_trans_b", tf32_mma_intrin())}
    else:
        loads = {"load_a": _register(f"conv_mma_ldmatrix_{short}_a_trans_dyn", ldmatrix_intrin(operand_type, "A")),
                 "load_b": _register(f"conv_mma_ldmatrix_{short}_b_trans_dyn", ldmatrix_intrin(operand_type, "B")),
                 "compute": _register(f"conv_mma_{short}{short}f32_trans_a_trans_b", mma_intrin(operand_type))}
    return {**_accumulator_intrinsics(), **loads}


__all__ = ["A_KM", "A_MK", "intrinsics", "PTX_TYPE", "STORAGE", "TF32", "FRAGMENT_SCOPE", "fragment_layout", "layouts",
           "tf32_layouts", "tf32_positions", "ldmatrix_intrin", "tf32_load_intrin", "mma_intrin",
           "tf32_mma_intrin", "fill_intrin", "store_intrin"]
