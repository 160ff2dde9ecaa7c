"""Direct convolution for NVIDIA GPUs, every variant (dense, 1x1, strided, dilated, grouped,
depthwise, and the phase-decomposed transposed form): one thread block per output tile.

Each block owns ``co_t*co_i`` output channels x ``h_t*h_i`` rows x ``w_t*w_i`` columns (for the
transposed form, of one phase); each thread accumulates ``co_i x h_i x w_i`` outputs in registers.
The reduction runs in chunks of ``rc_i`` input channels: per chunk the block stages the (padded)
input window and the weight slice in shared memory with all its threads (the pad is computed in
that copy, so global reads stay in bounds), then every thread runs the unrolled taps on it.
Half types are loaded as such and accumulated in float32 (the compute's ``conv`` stage).
Tiles shrink until TVM's GPU verifier accepts the kernel for the target's limits.

As a design space (version 2): the block x thread x register tiles of channels, rows and columns and
the reduction chunk are ``sample_perfect_tile`` decisions where the hand tile divides the extent (a
width of 56 under 16-thread rows stays a fixed split), and the cooperative copies are left to
MetaSchedule's ``RewriteCooperativeFetch`` (``postprocess``), their vector width a decision (1 by
default), so that a searched tile's thread count splits the copies.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from .base import ScheduleRule, bind_elementwise, has_block, tunable_tiles
from .gpu_verify import first_verified


@dataclass(frozen=True)
class CudaTile:
    co_t: int      # threads along output channels
    h_t: int       # threads along output rows
    w_t: int       # threads along output columns
    co_i: int      # channels per thread (register tile)
    w_i: int       # columns per thread
    rc_i: int      # input channels staged in shared memory per reduction step


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


#: Vector widths of the cooperative copies into shared memory the search may try (the hand
#: schedule's: 1, what the copies' rows allow for every layer: a padded window's rows are not aligned).
COPY_VECTORS = (1, 2, 4)
#: Most registers per thread along the channels or columns in the search (the hand tile: 4 x 1-2).
MAX_REGISTER_TILE = 8


class CudaDirect(ScheduleRule):
    name = "cuda-direct"
    #: 2: the tiles are sampling decisions and the copies are split by RewriteCooperativeFetch
    version = 2

    def apply(self, func, workload, target):
        if str(target.kind.name) != "cuda":
            return None
        spec = workload.spec
        _, co, *spatial = workload.output_shape
        if spec.transposed:
            # conv is [n, co, ph, pw, qh, qw]: the phase's rows and columns are q
            qh = -(-spatial[0] // spec.stride[0])
            qw = -(-spatial[1] // spec.stride[1])
            out_h, out_w = qh, qw
        else:
            out_h, out_w = spatial
        element_bytes = 2 if workload.dtype in ("float16", "bfloat16") else int(workload.dtype[-2:]) // 8
        max_threads = int(target.attrs.get("max_threads_per_block", 1024))
        tile = choose_tile(co, out_h, out_w, spec.in_channels // spec.groups, element_bytes, max_threads)
        return first_verified(tile, lambda t: self._schedule(func, spec, t), _shrink, target, self.postprocess)

    def postprocess(self, sch):
        """The cooperative copies split over the block's threads (and vectorised as decided)."""
        sch.enter_postproc()
        if not ms.postproc.RewriteCooperativeFetch().apply(sch):
            raise ValueError("cuda-direct: RewriteCooperativeFetch refused the schedule")
        return sch

    @staticmethod
    def _schedule(func, spec, tile: CudaTile) -> s_tir.Schedule:
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
        w_b, w_t, w_i = tunable_tiles(sch, w, (tile.w_t, tile.w_i), MAX_REGISTER_TILE)
        rc_o, rc_i = tunable_tiles(sch, rc, (tile.rc_i,), max(tile.rc_i, 32))
        sch.reorder(*phases, n, co_b, h_b, w_b, co_t, h_t, w_t, rc_o, rc_i, rh, rw, co_i, w_i)
        bx = sch.fuse(n, co_b, h_b, w_b)
        tx = sch.fuse(co_t, h_t, w_t)
        sch.bind(bx, "blockIdx.x")
        # The transposed form's phases get grid axes of their own: fused into blockIdx.x, TVM's
        # region analysis mis-derived the weight taps a phase stages ((pw + 1) % 2 of a fused index
        # came out as pw) and the kernel read unstaged shared memory.
        for phase, axis in zip(phases, ("blockIdx.y", "blockIdx.z")):
            sch.bind(phase, axis)
        sch.bind(tx, "threadIdx.x")
        # Step 3. Stage each reduction chunk cooperatively: the copy's loops fused, split over the
        # block's threads by ``postprocess`` (whatever thread count the tiles give).
        for cached in (input_shared, weight_shared):
            sch.compute_at(cached, rc_o, preserve_unit_loops=True)
            own = sch.get_loops(cached)[3 + len(phases):]     # below the grid, threadIdx and rc_o
            if not own:                              # a one-element window has no loops of its own
                own = [sch.add_unit_loop(cached)]
            if len(own) > 1:
                sch.fuse(*own)
            vector = sch.sample_categorical(list(COPY_VECTORS), [1 / len(COPY_VECTORS)] * len(COPY_VECTORS),
                                            decision=0)
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
        for loop in (rh, rw, co_i, w_i):
            sch.unroll(loop)
        sch.decompose_reduction(conv, rc_o)
        return sch
