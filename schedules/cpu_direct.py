"""Direct NCHW convolution for LLVM CPUs: register tiles of output channels x output columns.

The accumulator tile ``[co_tile, ow_tile]`` lives in vector registers (``ow`` is the SIMD axis, so
stride-1 layers read the padded input with contiguous vector loads and weights are broadcast),
the reduction ``rc, rh, rw`` runs around it, and the bias/cast epilogue is written straight from
the tile.  The padded input is materialised once, in parallel, so the inner loop has no bounds tests.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir

from targets.cpu import cpu_info

from .base import ScheduleRule, accumulator_lanes, has_block, schedule_pad, vectorize_if_wide


@dataclass(frozen=True)
class DirectConfig:
    co_tile: int   # output channels per register tile
    ow_tile: int   # output columns per register tile (a multiple of the vector lanes when possible)


def choose_config(out_channels: int, out_width: int, lanes: int, registers: int,
                  depthwise: bool = False) -> DirectConfig:
    """One vector of output columns x as many output channels as half the register file holds
    (a quarter for depthwise layers).

    Measured on znver4 (2 cores, Conv2d 3x3 on 56x56/28x28/14x14): a column tile that divides the
    output width and fits one vector (14 of 16 lanes) with 16 channel rows runs at 180-200 GFLOP/s;
    tiles spanning two vectors (28, 56) or leaving a remainder (16 on 56) fall to 25-60 GFLOP/s,
    because LLVM then spills the accumulators or predicates every vector.  The other half of the
    register file holds the input vector and the broadcast weights.
    A depthwise tile shares no input vector between its channel rows, so more rows buy nothing but
    a longer unrolled body and fewer parallel tasks: 8 rows (of 32 registers) measured 10% faster
    than 16 on 3x3 stride-1 and 27% on 3x3 stride-2 depthwise layers; 4 was no better than 8.
    Dense and grouped layers lost 30-40% with 8 rows.  (AVX2's 4 of 16 is by the same ratio, not
    measured.)
    """
    candidates = range(min(lanes, out_width), 0, -1)
    divisors = [t for t in candidates if out_width % t == 0 and 2 * t >= min(lanes, out_width)]
    ow_tile = divisors[0] if divisors else min(lanes, out_width)
    co_tile = max(1, min(out_channels, registers // (4 if depthwise else 2)))
    return DirectConfig(co_tile=co_tile, ow_tile=ow_tile)


def deinterleave_columns(sch: s_tir.Schedule, pad_block, stride: int) -> None:
    """Store the padded input's columns by phase (``[.., j % stride, j // stride]``) so that every
    tap of a strided layer reads a contiguous vector instead of a gather.

    Measured on znver4 (depthwise, stride 2, 56-64 wide): 1.5-1.6x faster with 5x5 and 7x7 kernels,
    but 5-25% slower with 3x3 (the pad pass's scattered stores cost more than 3 gathers a row), and
    2x slower at stride 3; dense layers lost 15-20%.  So only depthwise, stride 2, kernels >= 5 wide.
    """
    width = int(sch.get(pad_block).writes[0].source.shape[-1])
    if width % stride:
        return
    sch.transform_layout(pad_block, ("write", 0),
                         lambda n, c, i, j: (n, c, i, j % stride, j // stride))


class CpuDirect(ScheduleRule):
    name = "cpu-direct"

    def apply(self, func, workload, target):
        if str(target.kind) != "llvm" or workload.spec.transposed:
            return None
        info = cpu_info(target)
        lanes = accumulator_lanes(workload, target)
        _, out_channels, _, out_width = workload.output_shape
        spec = workload.spec
        depthwise = spec.in_channels == spec.groups
        cfg = choose_config(out_channels, out_width, lanes, info.vector_registers, depthwise)

        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        # Step 1. Materialise the padded input once, in parallel.
        schedule_pad(sch, workload)
        if depthwise and spec.stride[1] == 2 and spec.kernel_size[1] >= 5 and has_block(sch, "pad"):
            deinterleave_columns(sch, sch.get_sblock("pad"), 2)
        # Step 2. Tile output channels and columns; the reduction runs around the register tile.
        n, co, oh, ow, rc, rh, rw = sch.get_loops(conv)
        co_o, co_i = sch.split(co, factors=[None, cfg.co_tile])
        ow_o, ow_i = sch.split(ow, factors=[None, cfg.ow_tile])
        sch.reorder(n, co_o, oh, ow_o, rc, rh, rw, co_i, ow_i)
        sch.parallel(sch.fuse(n, co_o, oh))
        # Step 3. The epilogue (bias, cast) writes each tile as soon as it is complete.
        sch.reverse_compute_at(out, ow_o)
        sch.set_scope(conv, 0, "local")
        # Step 4. Vectorise columns, unroll channels (vectorise before decompose_reduction).
        vectorize_if_wide(sch, ow_i)
        sch.unroll(co_i)
        sch.decompose_reduction(conv, rc)
        vectorize_if_wide(sch, sch.get_loops(out)[-1])
        return sch
