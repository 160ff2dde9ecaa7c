"""Dense NCHW convolution for LLVM CPUs with output channels on the SIMD axis.

Weights are packed (once per weight change by the modules, or inside the kernel when it is
given torch's layout, e.g. in exported libraries) to ``[co/V, ci, kh, kw, V]`` so that a vector
of ``V`` output channels' weights is one contiguous load; each input pixel is a scalar broadcast,
so strided and dilated layers read the input as cheaply as stride-1 ones.  The register tile is
``V`` channels x a few output columns; the bias/cast epilogue writes the tile back to NCHW.
Applies when every vector of channels stays inside one group (``out_channels/groups % V == 0``)
and a good column tile divides the output width.
"""
from __future__ import annotations

from tvm import s_tir

from .base import ScheduleRule, accumulator_lanes, schedule_pad


def column_tile(out_width: int):
    """Output columns per register tile: a divisor of the width in [5, 7], or None (rule declines).

    Measured on znver4 (2 cores, 64/128-channel 3x3 layers on 56x56, the 7x7 stem): 16 channels x 7
    columns ran at ~200 GFLOP/s; x 4 was 40-60% slower than the cpu-direct rule; x 8, x 14, or a
    tile leaving a remainder fell to ~15 GFLOP/s (LLVM no longer keeps the unrolled tile in registers).
    """
    for tile in (7, 6, 5):
        if out_width % tile == 0:
            return tile
    return None


class CpuChannelVector(ScheduleRule):
    name = "cpu-channel-vector"

    def _lanes(self, workload, target):
        """The channel-vector width if the rule applies, else None."""
        spec = workload.spec
        if str(target.kind) != "llvm" or spec.transposed:
            return None
        lanes = accumulator_lanes(workload, target)
        if (spec.out_channels // spec.groups) % lanes != 0 or column_tile(workload.output_shape[3]) is None:
            return None
        return lanes

    def weight_block(self, workload, target):
        return self._lanes(workload, target)

    def apply(self, func, workload, target):
        lanes = self._lanes(workload, target)
        if lanes is None:
            return None
        ow_tile = column_tile(workload.output_shape[3])
        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        # Step 1. Padded input materialised once, in parallel; weights packed channel-vector-last
        # here unless the caller passes them pre-packed (the modules do, once per weight change).
        schedule_pad(sch, workload)
        weight = next(r.source for r in sch.get(conv).reads if r.source.name == "weight")
        if len(weight.shape) == 4:
            packed = sch.cache_read(conv, 1, "global")
            sch.transform_layout(packed, ("write", 0),
                                 lambda co, ci, kh, kw: (co // lanes, ci, kh, kw, co % lanes))
            sch.parallel(sch.get_loops(packed)[0])
        # Step 2. Register tile: a vector of channels x ow_tile columns, the reduction around it.
        n, co, oh, ow, rc, rh, rw = sch.get_loops(conv)
        co_o, co_i = sch.split(co, factors=[None, lanes])
        ow_o, ow_i = sch.split(ow, factors=[None, ow_tile])
        sch.reorder(n, co_o, oh, ow_o, rc, rh, rw, ow_i, co_i)
        sch.parallel(sch.fuse(n, co_o, oh))
        # Step 3. Accumulate in registers; the epilogue writes each finished tile.
        sch.reverse_compute_at(out, ow_o)
        sch.set_scope(conv, 0, "local")
        sch.vectorize(co_i)
        sch.unroll(ow_i)
        sch.decompose_reduction(conv, rc)
        return sch
