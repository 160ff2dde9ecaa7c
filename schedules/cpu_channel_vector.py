"""Dense NCHW convolution for LLVM CPUs with output channels on the SIMD axis.

Weights are packed (once per weight change by the modules, or inside the kernel when it is
given torch's layout, e.g. in exported libraries) to ``[co/V, ci, kh, kw, V]`` so that a vector
of ``V`` output channels' weights is one contiguous load; each input pixel is a scalar broadcast,
so strided and dilated layers read the input as cheaply as stride-1 ones.  The register tile is
``V`` channels x 5-16 output columns; the bias/cast epilogue writes the tile back to NCHW.
Applies when every vector of channels stays inside one group (``out_channels/groups % V == 0``)
and a good column tile divides the output width.
"""
from __future__ import annotations

from tvm import s_tir

from targets.cpu import cpu_info

from .base import ScheduleRule, accumulator_lanes, schedule_pad, vectorize_if_wide


def column_tile(out_width: int, stride: int, lanes: int, registers: int):
    """Output columns per register tile, or None (the rule declines): the largest divisor of the
    width in [5, registers / 2], provided one in [5, 7] exists.

    Measured on znver4 (2 cores; 3x3, 1x1 and 7x7 layers 14-112 wide) with the accumulator tile
    stored channel-vector-last (see ``apply``): 14-16 columns ran 2-12% faster than 7 (the 7x7 stem,
    112 wide: 1.21 -> 1.13 ms; 64 channels on 56x56: 1.14 -> 1.06 ms).  Widths without a divisor in
    [5, 7] (e.g. 64, 256), and stride-1 layers whose width is whole vectors (e.g. 224), ran 2-30%
    faster with cpu-direct, which puts full vectors of columns on the SIMD axis instead.
    """
    if stride == 1 and out_width % lanes == 0:
        return None
    if not any(out_width % t == 0 for t in (5, 6, 7)):
        return None
    return max(t for t in range(5, max(5, registers // 2) + 1) if out_width % t == 0)


class CpuChannelVector(ScheduleRule):
    name = "cpu-channel-vector"

    def _tile(self, workload, target):
        """(channel-vector width, columns per tile) if the rule applies, else None."""
        spec = workload.spec
        if str(target.kind) != "llvm" or spec.transposed:
            return None
        lanes = accumulator_lanes(workload, target)
        if (spec.out_channels // spec.groups) % lanes != 0:
            return None
        columns = column_tile(workload.output_shape[3], spec.stride[1], lanes, cpu_info(target).vector_registers)
        return None if columns is None else (lanes, columns)

    def weight_block(self, workload, target):
        tile = self._tile(workload, target)
        return tile and tile[0]

    def apply(self, func, workload, target):
        tile = self._tile(workload, target)
        if tile is None:
            return None
        lanes, ow_tile = tile
        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        # Step 1. Padded input materialised once, in parallel; weights packed channel-vector-last
        # here unless the caller passes them pre-packed (the modules do, once per weight change).
        schedule_pad(sch, workload, by_rows=True)
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
        # Step 3. Accumulate in registers, stored channel-vector-last: in NCHW order a tile's vector
        # of channels is strided in the accumulator, and LLVM then keeps the tile in memory and
        # assembles every vector lane by lane once the tile has 8 columns (measured 10-13x slower).
        sch.reverse_compute_at(out, ow_o)
        sch.set_scope(conv, 0, "local")
        sch.transform_layout(conv, ("write", 0), lambda n, c, h, w: (n, c // lanes, h, w, c % lanes))
        sch.vectorize(co_i)
        sch.unroll(ow_i)
        sch.decompose_reduction(conv, rc)
        # Step 4. The epilogue writes each channel's row of the tile as one vector.
        vectorize_if_wide(sch, sch.get_loops(out)[-1])
        return sch
