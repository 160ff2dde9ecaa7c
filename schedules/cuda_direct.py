"""Direct convolution for NVIDIA GPUs, every variant (dense, 1x1, strided, dilated, grouped,
depthwise, and the phase-decomposed transposed form): one thread block per output tile.

Each block owns ``co_t*co_i`` output channels x ``h_t*h_i`` rows x ``w_t*w_i`` columns (for the
transposed form, of one phase); each thread accumulates ``co_i x h_i x w_i`` outputs in registers.
The reduction runs in chunks of ``rc_i`` input channels: per chunk the block stages the (padded)
input window and the weight slice in shared memory with all its threads (the pad is computed in
that copy, so global reads stay in bounds), then every thread runs the unrolled taps on it.
Half types are loaded as such and accumulated in float32 (the compute's ``conv`` stage).
Tiles shrink until TVM's GPU verifier accepts the kernel for the target's limits.

Where a layer has enough work to keep the GPU busy with 4-8x fewer threads (large batches), each
thread takes a register-blocked tile instead (:func:`blocked_tile`): 8 output channels x up to 4
columns ``w_t`` apart, the weight pre-packed in blocks of the block's output channels
(``weight_block``), so each multiply-add costs a sixth of a shared load instead of 1.25 (the SASS
counts under ``BLOCKED_COLUMNS``): this is the exact-FP32 path, where torch's TF32 is off.

As a design space (version 2): the block x thread x register tiles of channels, rows and columns and
the reduction chunk are ``sample_perfect_tile`` decisions where the hand tile divides the extent (a
width of 56 under 16-thread rows stays a fixed split), and the cooperative copies are left to
MetaSchedule's ``RewriteCooperativeFetch`` (``postprocess``), their vector width a decision over the
widths that stay aligned (``copy_vectors``; the hand schedule's by default), so that a searched tile's
thread count splits the copies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Tuple

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from targets.cuda import multiprocessors

from .base import (DTYPE_BYTES, GPU_VECTOR_BYTES, ScheduleRule, bind_elementwise, has_block, largest_divisor,
                   tunable_tiles)
from .gpu_verify import first_verified


@dataclass(frozen=True)
class CudaTile:
    co_t: int      # threads along output channels
    h_t: int       # threads along output rows
    w_t: int       # threads along output columns
    co_i: int      # channels per thread (register tile)
    w_i: int       # columns per thread
    rc_i: int      # input channels staged in shared memory per reduction step
    #: a thread's ``w_i`` columns lie ``w_t`` apart (the register-blocked tile: a warp's threads read
    #: consecutive shared words, no bank conflicts) instead of side by side
    strided: bool = False

    @property
    def channels(self) -> int:
        """Output channels per thread block."""
        return self.co_t * self.co_i


#: The register-blocked tile's channels per thread: two 16-byte shared loads of the channel-blocked
#: weight (``weight_block``) per tap and input channel, as 8 registers.
BLOCKED_CHANNELS = 8
#: Its columns per thread at most (strided, ``CudaTile.strided``).  Why a register tile at all: an SM
#: issues 4 warp-FFMAs per cycle (4 schedulers, sm_70 to sm_90) but serves one 128-byte shared-memory
#: wavefront per cycle, so a thread needs about 4 multiply-adds per shared load to be FFMA-bound.
#: The 4-channel x 1-column tile does 4 per 5 loads (SASS of Conv2d(128, 128, 3) on sm_90: 36 FFMA,
#: 45 LDS per input channel); 8 channels x 4 columns with the weight's 8 channels in two LDS.128
#: do 32 per 6.
BLOCKED_COLUMNS = 4
#: Input channels per group the register-blocked tile needs: its 8 channels reuse each staged input
#: value only where they share input channels (a depthwise layer's channels read a plane each).
BLOCKED_MIN_IN_CHANNELS = 8
#: Warps per SM the register-blocked tile must still give the GPU (the tensor-core rule's
#: ``OCCUPANCY_WARPS``, measured there): below it, the 4 x 1-2 tile's 4-8x more threads keep it busy.
BLOCKED_OCCUPANCY_WARPS = 16


def _strided_columns(out_w: int) -> Optional[Tuple[int, int]]:
    """(columns per thread, threads along a row) of the register-blocked tile: 4, 2 or 1 columns per
    thread, the first that divides the width into rows of 16 or fewer threads (28 columns: 7 x 4),
    else into a divisor of them from 8 to 16; None where none does (34 columns: 17 threads of 2, or
    34 of 1).  No ragged block: its predicate would guard every multiply-add."""
    for per_thread in (BLOCKED_COLUMNS, 2, 1):
        if out_w % per_thread == 0:
            threads = out_w // per_thread
            threads = threads if threads <= 16 else largest_divisor(threads, 16, 8)
            if threads:
                return per_thread, threads
    return None


def blocked_tile(out_channels: int, out_h: int, out_w: int, in_per_group: int, element_bytes: int,
                 outputs: int, wanted_threads: int) -> Optional[CudaTile]:
    """The register-blocked tile (``BLOCKED_CHANNELS`` x up to ``BLOCKED_COLUMNS`` strided columns per
    thread, about 256 threads), or None where the layer does not suit it: fewer than
    ``BLOCKED_MIN_IN_CHANNELS`` input channels per group, output channels not in whole blocks of 8,
    or fewer than ``wanted_threads`` threads for the kernel's ``outputs`` elements."""
    if in_per_group < BLOCKED_MIN_IN_CHANNELS or out_channels % BLOCKED_CHANNELS:
        return None
    columns = _strided_columns(out_w)
    if columns is None:
        return None
    w_i, w_t = columns
    # rows: whole rows per block (no ragged block, no predicate in the inner loop) and 128-256
    # threads, with fewer channel threads where the height's divisors need it (14 rows under 7 x 8
    # threads would leave 2 rows, 112 threads, and ptxas spilled that tile of 256 on 14x14: 4 x 7 x 7)
    blocks = out_channels // BLOCKED_CHANNELS
    shapes = ((co_t, largest_divisor(out_h, 256 // (w_t * co_t))) for co_t in (8, 4, 2, 1) if blocks % co_t == 0)
    co_t, h_t = next(((c, h) for c, h in shapes if c * h * w_t >= 128), (largest_divisor(blocks, 8), 1))
    tile = CudaTile(co_t=co_t, h_t=h_t, w_t=w_t, co_i=BLOCKED_CHANNELS, w_i=w_i,
                    rc_i=max(1, min(in_per_group, 32 // element_bytes)), strided=True)
    return tile if outputs // (BLOCKED_CHANNELS * w_i) >= wanted_threads else None


def choose_tile(out_channels: int, out_h: int, out_w: int, in_per_group: int, element_bytes: int,
                max_threads: int) -> CudaTile:
    """About 256 threads (8 warps: enough to hide latency on every preset, and 2+ blocks fit an SM's
    2048-thread limit), 16-32 columns per warp row for coalesced rows, 4 channels per thread so
    each staged input value is reused 4 times from a register; 8 (fp32) or 16 (half) input
    channels per shared stage, i.e. 32-byte rows of the weight slice."""
    w_t = 16 if out_w >= 16 else max(1, out_w)
    w_i = 2 if out_w >= 64 else 1
    co_i = min(4, out_channels)
    co_t = max(1, min(8, -(-out_channels // co_i)))
    h_t = max(1, min(out_h, min(max_threads, 256) // (w_t * co_t)))
    rc_i = max(1, min(in_per_group, 32 // element_bytes))
    return CudaTile(co_t=co_t, h_t=h_t, w_t=w_t, co_i=co_i, w_i=w_i, rc_i=rc_i)


def _shrink(tile: CudaTile) -> Optional[CudaTile]:
    """The next smaller tile to try when the verifier refuses one (shared memory first)."""
    if tile.rc_i > 1:
        return replace(tile, rc_i=tile.rc_i // 2)
    if tile.h_t > 1:
        return replace(tile, h_t=tile.h_t // 2)
    if tile.w_i > 1:
        return replace(tile, w_i=1)
    if tile.co_i > 1:
        return replace(tile, co_i=tile.co_i // 2)
    return None


#: Vector widths of the cooperative copies into shared memory the search may try, where they are
#: provably aligned (``copy_vectors``): a vector load from an address that is not a multiple of its
#: size faults on the GPU, and a fault takes the tuner's CUDA context with it.
COPY_VECTORS = (1, 2, 4)
#: The vector width of the packed weight's copy (``weight_block``): a chunk's weights are one run
#: of ``rc_i * kh * kw * B`` elements starting at a multiple of B (8 channels per thread): 16-byte
#: loads for float32.
PACKED_COPY_VECTOR = 4
#: Most registers per thread along the channels or columns in the search (the hand tile: 4 x 1-2,
#: or the register-blocked 8 x 1-4).
MAX_REGISTER_TILE = 8


def copy_vectors(spec, element_bytes: int, packed: bool) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """The vector widths of ``COPY_VECTORS`` (at most ``GPU_VECTOR_BYTES``) that keep the (input,
    weight) copies aligned whatever the tile.  The input window's rows start wherever the window's
    first column falls (``w0 * stride - pad``): 1.  A packed weight (``weight_block``) is copied as
    runs starting at multiples of its block of 8 or more channels: every width.  Torch's weight: a
    chunk's run starts at a multiple of ``kh * kw`` within rows of ``ci/groups * kh * kw`` elements
    (and TVM proves a vector contiguous only where the run is whole vectors), so the widths dividing
    that row; the transposed form's taps are computed in the copy: 1."""
    fitting = [v for v in COPY_VECTORS if v * element_bytes <= GPU_VECTOR_BYTES]
    if spec.transposed:
        return (1,), (1,)
    if packed:
        return (1,), tuple(fitting)
    co, cpg, kh, kw = spec.weight_shape
    return (1,), tuple(v for v in fitting if cpg * kh * kw % v == 0)


class CudaDirect(ScheduleRule):
    name = "cuda-direct"
    #: 2: the tiles are sampling decisions and the copies are split by RewriteCooperativeFetch;
    #: 3: the register-blocked tile (``blocked_tile``) with channel-blocked weights (``weight_block``);
    #: 4: copy vectors the search may take only where aligned (``copy_vectors``)
    version = 4

    def apply(self, func, workload, target):
        if str(target.kind.name) != "cuda":
            return None
        tile = self.tile(workload, target)
        packed = len(func.params[1].shape) == 5                  # ``weight_block``'s layout
        return first_verified(tile, lambda t: self._schedule(func, workload, t, packed), _shrink, target,
                              self.postprocess)

    def weight_block(self, workload, target):
        """The register-blocked tile's block of output channels (``[co/B, ci/groups, kh, kw, B]``):
        a reduction chunk's weights are then one contiguous run, copied in 16-byte vectors, and a
        thread's 8 channels per tap two 16-byte shared loads.  Conv2d only (the transposed form's
        weight taps are computed in the copy)."""
        if str(target.kind.name) != "cuda" or workload.spec.transposed or workload.layout != "NCHW":
            return None
        tile = self.tile(workload, target)
        return tile.channels if tile.strided else None

    @staticmethod
    def tile(workload, target) -> CudaTile:
        """The hand tile: register-blocked where the layer suits it and the GPU stays busy
        (:func:`blocked_tile`), else :func:`choose_tile`'s."""
        spec = workload.spec
        _, co, *spatial = workload.output_shape
        if spec.transposed:
            # conv is [n, co, ph, pw, qh, qw]: the phase's rows and columns are q
            out_h, out_w = (-(-size // stride) for size, stride in zip(spatial, spec.stride))
        else:
            out_h, out_w = spatial
        element_bytes = DTYPE_BYTES[workload.dtype]
        in_per_group = spec.in_channels // spec.groups
        warp = int(target.attrs.get("thread_warp_size", 32))
        blocked = blocked_tile(co, out_h, out_w, in_per_group, element_bytes, math.prod(workload.output_shape),
                               BLOCKED_OCCUPANCY_WARPS * warp * multiprocessors(target))
        max_threads = int(target.attrs.get("max_threads_per_block", 1024))
        return blocked or choose_tile(co, out_h, out_w, in_per_group, element_bytes, max_threads)

    def postprocess(self, sch):
        """The cooperative copies split over the block's threads (and vectorised as decided)."""
        sch.enter_postproc()
        if not ms.postproc.RewriteCooperativeFetch().apply(sch):
            raise ValueError("cuda-direct: RewriteCooperativeFetch refused the schedule")
        return sch

    @staticmethod
    def _schedule(func, workload, tile: CudaTile, packed: bool = False) -> s_tir.Schedule:
        spec = workload.spec
        sch = s_tir.Schedule(func)
        conv = sch.get_sblock("conv")
        # Step 1. Shared-memory copies of the (padded) input and the weight slice; the pad and the
        # transposed form's zero weight taps are computed inside the copies.
        input_shared = sch.cache_read(conv, 0, "shared")
        weight_shared = sch.cache_read(conv, 1, "shared")
        for stage in ("pad", "weight_pad"):
            if has_block(sch, stage):
                sch.compute_inline(sch.get_sblock(stage))
        # Step 2. Tile the output: block x thread x register, the reduction between.
        loops = sch.get_loops(conv)
        n, co, *rest = loops[:-3]
        rc, rh, rw = loops[-3:]
        *phases, h, w = rest
        co_b, co_t, co_i = tunable_tiles(sch, co, (tile.co_t, tile.co_i), MAX_REGISTER_TILE)
        h_b, h_t = tunable_tiles(sch, h, (tile.h_t,), max(tile.h_t, 32))
        if tile.strided:
            # a thread's columns w_t apart (w = (w_b, w_i, w_t)), w_i a virtual thread: TVM then gives
            # each column its co_i accumulators.  As a loop below the threads, the accumulators'
            # buffer spanned all w_i x w_t columns between them (224 floats on 28 columns, which
            # ptxas put on a 944-byte stack for sm_80).
            w_b, w_i, w_t = tunable_tiles(sch, w, (tile.w_i, tile.w_t), max(tile.w_t, 32))
            vthreads, registers = (w_i,), (co_i,)
        else:
            w_b, w_t, w_i = tunable_tiles(sch, w, (tile.w_t, tile.w_i), MAX_REGISTER_TILE)
            vthreads, registers = (), (co_i, w_i)
        rc_o, rc_i = tunable_tiles(sch, rc, (tile.rc_i,), max(tile.rc_i, 32))
        sch.reorder(*phases, n, co_b, h_b, w_b, *vthreads, co_t, h_t, w_t, rc_o, rc_i, rh, rw, *registers)
        bx = sch.fuse(n, co_b, h_b, w_b)
        tx = sch.fuse(co_t, h_t, w_t)
        for vthread in vthreads:
            sch.bind(vthread, "vthread.x")
        sch.bind(bx, "blockIdx.x")
        # The transposed form's phases get grid axes of their own: fused into blockIdx.x, TVM's
        # region analysis mis-derived the weight taps a phase stages ((pw + 1) % 2 of a fused index
        # came out as pw) and the kernel read unstaged shared memory.
        for phase, axis in zip(phases, ("blockIdx.y", "blockIdx.z")):
            sch.bind(phase, axis)
        sch.bind(tx, "threadIdx.x")
        # Step 3. Stage each reduction chunk cooperatively: the copy's loops fused, split over the
        # block's threads by ``postprocess`` (whatever thread count the tiles give).
        inputs, weights = copy_vectors(spec, DTYPE_BYTES[workload.dtype], packed)
        weight_vector = max(v for v in weights if v <= PACKED_COPY_VECTOR) if packed else 1   # float64: 2
        for cached, vector, vectors in ((input_shared, 1, inputs), (weight_shared, weight_vector, weights)):
            sch.compute_at(cached, rc_o, preserve_unit_loops=True)
            own = sch.get_loops(cached)[3 + len(vthreads) + len(phases):]  # below grid, vthreads, threads, rc_o
            if not own:                              # a one-element window has no loops of its own
                own = [sch.add_unit_loop(cached)]
            if len(own) > 1:
                sch.fuse(*own)
            vector = sch.sample_categorical(list(vectors), [1 / len(vectors)] * len(vectors),
                                            decision=vectors.index(vector))
            sch.annotate(cached, "meta_schedule.cooperative_fetch", vector)
        # Step 4. Accumulate in registers; write back (with bias and cast) from the registers.
        acc = sch.cache_write(conv, 0, "local")
        out = sch.get_sblock("output")
        if spec.transposed:
            # the phases are interleaved into NCHW by a second, elementwise kernel
            sch.compute_inline(sch.get_sblock("interleave"))
            bind_elementwise(sch, out)
        else:
            sch.reverse_compute_inline(out)          # bias and cast written from the registers
        sch.reverse_compute_at(acc, tx)
        for loop in (rh, rw, *registers):
            sch.unroll(loop)
        sch.decompose_reduction(conv, rc_o)
        return sch
