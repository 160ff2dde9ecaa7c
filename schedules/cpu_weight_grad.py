"""The weight gradient on LLVM CPUs: ``grad_w[co, ci, r, s] = sum over pixels of pad(x) * gy``.

The output is weight-sized and the reduction runs over every pixel of the batch, so this is a GEMM
of ``C_out x (C_in/groups * kh * kw)`` outputs over ``N * OH * OW`` pixels.  Two schedules:

- channel vectors (output channels per group a multiple of the vector): a task per vector of
  output channels; per chunk of output rows it packs its slice of ``gy`` pixel-major
  (``[rows, ow, V]``: one vector load per pixel) and sweeps every tile of input channels x kernel
  columns (x kernel row) with it: a register tile of ``V`` output channels x ``tile`` taps takes one
  broadcast of the (padded) input per tap and pixel.  The sums live channel-vector-last,
  ``[co/V, ci, r, s, V]``, across chunks; the task writes its slice of torch's layout at the end.
- otherwise (depthwise with taps few enough, a few output channels): a task per output channel,
  the pixels' columns split into vectors whose partial sums (``rfactor``) are added up at the end,
  kernel taps unrolled so that neighbouring taps share their loads.
"""
from __future__ import annotations

from tvm import s_tir

from targets.cpu import cpu_info

from .base import (DTYPE_BYTES, ScheduleRule, accumulator_lanes, has_block, largest_divisor, native_lanes, registers_per_vector,
                   schedule_pad, vectorize_if_wide)

#: Bytes of the packed ``gy`` chunk a task sweeps all its tiles with: half of a 32 KiB L1 data
#: cache (the input rows the tile reads take the rest).
CHUNK_BYTES = 16 * 1024


def tap_tile(in_per_group: int, kernel: tuple, taps: int) -> tuple:
    """(input channels, kernel rows, kernel columns) of the register tile, at most ``taps`` of them:
    kernel columns whole when they fit, then input channels, then kernel rows (only once every
    input channel of the group is in the tile: the depthwise case)."""
    kh, kw = kernel
    columns = largest_divisor(kw, taps)
    channels = largest_divisor(in_per_group, taps // columns)
    rows = largest_divisor(kh, taps // (columns * channels)) if channels == in_per_group else 1
    return channels, rows, columns


def tile_taps(registers: int, registers_per_vector: int) -> int:
    """Accumulator vectors of the register tile: the register file less the ``gy`` vector, a
    broadcast and two spares.  Measured single-threaded on znver3 (16 ymm registers, 16-lane vectors
    in two), Conv2d(128, 128, 3) on 28x28: 6 accumulators (12 registers) spilled in the inner loop,
    22 GFLOP/s; see the module's measurements for the tile this gives."""
    return max(1, (registers - 3 * registers_per_vector) // registers_per_vector)


def channel_lanes(workload, target, channels: int) -> int:
    """Output channels per vector: the accumulator's lanes where they divide ``channels``, else one
    register's (AVX2: 120 channels take 8-lane vectors); 0 where neither divides."""
    for lanes in (accumulator_lanes(workload, target), native_lanes(workload, target)):
        if channels % lanes == 0:
            return lanes
    return 0


class CpuWeightGrad(ScheduleRule):
    name = "cpu-weight-grad"
    operators = ("weight_grad",)
    #: 2: depthwise layers whose taps fit the register file take the columns form, each task
    #: padding its own plane and summing in registers (``_apply_columns``)
    version = 2

    def apply(self, func, workload, target):
        if str(target.kind) != "llvm":
            return None
        spec = workload.spec
        # The transposed layer's gradient is its Conv2d adjoint's (compute.weight_grad), whose
        # output channels are the transposed layer's input channels.
        out_channels, in_channels = (spec.in_channels, spec.out_channels) if spec.transposed else \
            (spec.out_channels, spec.in_channels)
        depthwise = in_channels == out_channels == spec.groups
        # Depthwise, a tap's sum per register where the taps fit the register file (3x3 on AVX2;
        # 5x5 too on AVX-512, by the same count, unmeasured): each task reads its own channel's planes as they are, where the
        # channel-vector form transposes a vector of planes channel-last, lane by lane, first.
        # Measured on znver3, 2 threads (ms, channel vectors -> columns; torch 2.13 in brackets):
        # (32, 32, 3) on 1x32x112x112 0.34 -> 0.08 (0.24), (144, 144, 3, stride=2) on 1x144x56x56
        # 0.23 -> 0.12 (0.20), (64, 64, 3, stride=2) on 1x64x112x112 0.55 -> 0.22 (0.25), (96, 96,
        # 3) on 8x96x28x28 0.48 -> 0.30; 5x5 (25 sums, spilled) 0.28 -> 0.26, 7x7 0.09 -> 0.21.
        if depthwise and spec.kernel_size[0] * spec.kernel_size[1] <= tile_taps(
                cpu_info(target).vector_registers, 1):
            return self._apply_columns(func, workload, target, planes_in_task=True)
        # A vector of output channels reads one input channel (a group's), or depthwise one each.
        lanes = channel_lanes(workload, target, out_channels if depthwise else out_channels // spec.groups)
        if lanes:
            return self._apply_channel_vector(func, workload, target, lanes, depthwise)
        return self._apply_columns(func, workload, target)

    def _apply_channel_vector(self, func, workload, target, lanes, depthwise):
        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        extent = lambda loop: int(sch.get(loop).extent)  # noqa: E731
        co, ci, r, c, rn, roh, row = sch.get_loops(conv)
        per_vector = registers_per_vector(workload, target, lanes)
        taps = tile_taps(cpu_info(target).vector_registers, per_vector)
        ci_tile, r_tile, c_tile = tap_tile(extent(ci), (extent(r), extent(c)), taps)
        acc_bytes = DTYPE_BYTES[workload.accumulate_dtype]
        rows = largest_divisor(extent(roh), CHUNK_BYTES // max(1, extent(row) * lanes * acc_bytes))
        data, cotangent = ("grad_output", "input") if workload.spec.transposed else ("input", "grad_output")
        co_o, co_v = sch.split(co, factors=[None, lanes])
        # Step 1. A task per channel vector; the pixels in chunks of rows, every tap tile inside.
        ci_o, ci_i = sch.split(ci, factors=[None, ci_tile])
        r_o, r_i = sch.split(r, factors=[None, r_tile])
        c_o, c_i = sch.split(c, factors=[None, c_tile])
        roh_o, roh_i = sch.split(roh, factors=[None, rows])
        sch.reorder(co_o, rn, roh_o, ci_o, r_o, c_o, roh_i, row, ci_i, r_i, c_i, co_v)
        sch.parallel(co_o)
        # Step 2. The padded input: materialised once, in parallel, read by broadcasts; depthwise,
        # each task packs its channel vector's planes channel-last (a vector load per tap).
        if depthwise:
            pad = sch.get_sblock("pad") if has_block(sch, "pad") else sch.cache_read(conv, data, "global")
            sch.transform_layout(pad, ("write", 0), lambda n, k, y, x: (k // lanes, n, y, x, k % lanes))
            sch.compute_at(pad, co_o)
        else:
            schedule_pad(sch, workload)
        # Step 3. The chunk's gy packed pixel-major, channel vector last, just before it is used.
        pack = sch.cache_read(conv, cotangent, "global")
        sch.transform_layout(pack, ("write", 0), lambda n, k, y, x: (k // lanes, n, y, x, k % lanes))
        sch.compute_at(pack, roh_o)
        # Step 4. The sums channel-vector-last across chunks; torch's layout written per task.
        sch.transform_layout(conv, ("write", 0), lambda k, i, y, x: (k // lanes, i, y, x, k % lanes))
        sch.reverse_compute_at(out, co_o)
        # Step 5. Register tile: a vector of output channels x the tap tile, unrolled.
        sch.vectorize(co_v)
        for loop in (ci_i, r_i, c_i):
            if extent(loop) > 1:
                sch.unroll(loop)
        sch.decompose_reduction(conv, rn)
        init = sch.get_sblock("conv_init")
        vectorize_if_wide(sch, sch.get_loops(init)[-1])
        return sch

    def _apply_columns(self, func, workload, target, planes_in_task: bool = False):
        """``planes_in_task`` (depthwise): each task pads its channel's planes (else the padding is
        read through its index map, a select per lane) and keeps its sums in registers."""
        lanes = native_lanes(workload, target)
        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        extent = lambda loop: int(sch.get(loop).extent)  # noqa: E731
        if has_block(sch, "pad") and not planes_in_task:
            sch.compute_inline(sch.get_sblock("pad"))
        co, ci, r, c, rn, roh, row = sch.get_loops(conv)
        width = largest_divisor(extent(row), lanes)
        if 2 * width < min(lanes, extent(row)):
            width = min(lanes, extent(row))           # a predicated vector beats a narrow one
        row_o, row_i = sch.split(row, factors=[None, width])
        # Step 1. Partial sums per column lane (rfactor), the lanes added up per output at the end.
        partial = sch.rfactor(row_i, factor_axis=4)
        co, ci, r, c, rn, roh, row_o, lane = sch.get_loops(partial)
        sch.reorder(co, ci, rn, roh, row_o, r, c, lane)
        task = sch.fuse(co, ci)
        sch.parallel(task)
        if planes_in_task:
            if has_block(sch, "pad"):
                sch.compute_at(sch.get_sblock("pad"), task)
            sch.reverse_compute_at(sch.cache_write(partial, 0, "local"), task)
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
