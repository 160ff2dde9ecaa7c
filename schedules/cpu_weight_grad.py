"""The weight gradient on LLVM CPUs: ``grad_w[co, ci, r, s] = sum over pixels of pad(x) * gy``.

The output is weight-sized and the reduction runs over every pixel of the batch, so this is a GEMM
of ``C_out x (C_in/groups * kh * kw)`` outputs over ``N * OH * OW`` pixels.  Two schedules:

- channel vectors (output channels per group a multiple of the vector): a task per vector of
  output channels; per chunk of output rows it packs its slice of ``gy`` pixel-major
  (``[rows, ow, V]``: one vector load per pixel) and sweeps every tile of input channels x kernel
  columns (x kernel row) with it: a register tile of ``V`` output channels x ``tile`` taps takes one
  broadcast of the (padded) input per tap and pixel.  The sums live channel-vector-last,
  ``[co/V, ci, r, s, V]``, across chunks; the task writes its slice of torch's layout at the end.
- otherwise (depthwise, a few output channels): a task per output channel, the pixels' columns
  split into vectors whose partial sums (``rfactor``) are added up at the end, kernel taps unrolled
  so that neighbouring taps share their loads.
"""
from __future__ import annotations

from tvm import s_tir

from targets.cpu import cpu_info

from .base import (ScheduleRule, accumulator_lanes, has_block, native_lanes, registers_per_vector, schedule_pad,
                   vectorize_if_wide)

#: Bytes of the packed ``gy`` chunk a task sweeps all its tiles with: half of a 32 KiB L1 data
#: cache (the input rows the tile reads take the rest).
CHUNK_BYTES = 16 * 1024
DTYPE_BYTES = {"float32": 4, "float64": 8}


def _divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, max(1, limit)) + 1) if n % d == 0)


def tap_tile(in_per_group: int, kernel_width: int, registers: int) -> tuple:
    """(input channels, kernel columns) of the register tile: as many accumulator vectors as the
    register file holds beside the ``gy`` vector and a broadcast, kernel columns whole when they fit."""
    budget = max(1, registers - 2)
    columns = kernel_width if kernel_width <= budget else _divisor_at_most(kernel_width, budget)
    channels = _divisor_at_most(in_per_group, budget // columns)
    return channels, columns


class CpuWeightGrad(ScheduleRule):
    name = "cpu-weight-grad"
    operators = ("weight_grad",)

    def apply(self, func, workload, target):
        if str(target.kind) != "llvm":
            return None
        spec = workload.spec
        lanes = accumulator_lanes(workload, target)
        if not spec.transposed and (spec.out_channels // spec.groups) % lanes == 0:
            return self._apply_channel_vector(func, workload, target, lanes)
        if spec.transposed and (spec.in_channels // spec.groups) % lanes == 0:
            return self._apply_channel_vector(func, workload, target, lanes)
        return self._apply_columns(func, workload, target)

    def _apply_channel_vector(self, func, workload, target, lanes):
        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        extent = lambda loop: int(sch.get(loop).extent)  # noqa: E731
        co, ci, r, c, rn, roh, row = sch.get_loops(conv)
        registers = cpu_info(target).vector_registers // registers_per_vector(workload, target, lanes)
        ci_tile, c_tile = tap_tile(extent(ci), extent(c), registers)
        acc_bytes = DTYPE_BYTES[workload.accumulate_dtype]
        rows = _divisor_at_most(extent(roh), CHUNK_BYTES // max(1, extent(row) * lanes * acc_bytes))
        # Step 1. The padded input materialised once, in parallel (the tile reads it by broadcasts).
        schedule_pad(sch, workload)
        # Step 2. A task per channel vector; the pixels in chunks of rows, every tap tile inside.
        co_o, co_v = sch.split(co, factors=[None, lanes])
        ci_o, ci_i = sch.split(ci, factors=[None, ci_tile])
        c_o, c_i = sch.split(c, factors=[None, c_tile])
        roh_o, roh_i = sch.split(roh, factors=[None, rows])
        sch.reorder(co_o, rn, roh_o, ci_o, r, c_o, roh_i, row, ci_i, c_i, co_v)
        sch.parallel(co_o)
        # Step 3. The chunk's gy packed pixel-major, channel vector last, just before it is used.
        pack = sch.cache_read(conv, "input" if workload.spec.transposed else "grad_output", "global")
        sch.transform_layout(pack, ("write", 0), lambda n, k, y, x: (k // lanes, n, y, x, k % lanes))
        sch.compute_at(pack, roh_o)
        # Step 4. The sums channel-vector-last across chunks; torch's layout written per task.
        sch.transform_layout(conv, ("write", 0), lambda k, i, y, x: (k // lanes, i, y, x, k % lanes))
        sch.reverse_compute_at(out, co_o)
        # Step 5. Register tile: a vector of output channels x the tap tile, unrolled.
        sch.vectorize(co_v)
        for loop in (ci_i, c_i):
            if extent(loop) > 1:
                sch.unroll(loop)
        sch.decompose_reduction(conv, rn)
        init = sch.get_sblock("conv_init")
        vectorize_if_wide(sch, sch.get_loops(init)[-1])
        return sch

    def _apply_columns(self, func, workload, target):
        lanes = native_lanes(workload, target)
        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        extent = lambda loop: int(sch.get(loop).extent)  # noqa: E731
        if has_block(sch, "pad"):
            sch.compute_inline(sch.get_sblock("pad"))
        co, ci, r, c, rn, roh, row = sch.get_loops(conv)
        width = _divisor_at_most(extent(row), lanes)
        if 2 * width < min(lanes, extent(row)):
            width = min(lanes, extent(row))           # a predicated vector beats a narrow one
        row_o, row_i = sch.split(row, factors=[None, width])
        # Step 1. Partial sums per column lane (rfactor), the lanes added up per output at the end.
        partial = sch.rfactor(row_i, factor_axis=4)
        co, ci, r, c, rn, roh, row_o, lane = sch.get_loops(partial)
        sch.reorder(co, ci, rn, roh, row_o, r, c, lane)
        task = sch.fuse(co, ci)
        sch.parallel(task)
        # Step 2. Taps unrolled around the column vector.
        sch.vectorize(lane)
        for loop in (r, c):
            if extent(loop) > 1 and extent(loop) * extent(c) <= 49:
                sch.unroll(loop)
        sch.decompose_reduction(partial, rn)
        # Step 3. The lanes reduced and rounded per task.
        sch.reverse_compute_at(conv, task)
        sch.reverse_compute_at(out, task)
        return sch
