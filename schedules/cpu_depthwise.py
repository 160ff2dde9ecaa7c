"""Depthwise NCHW convolution for LLVM CPUs (one input channel per group): a channel at a time.

Each task pads one channel plane into a buffer of its own (L1/L2-resident, written just before it
is read, instead of a full padded copy of the input in memory) and sweeps it with register tiles of
``rows`` output rows x one vector of output columns.  The taps are unrolled, so the input vectors a
tile's rows share (output row ``r`` tap ``kh`` reads the same input row as row ``r + 1`` tap
``kh - 1`` at stride 1) are loaded once, and the channel's weights stay in registers.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir

from .base import (CPU_UNROLL_STEPS, ScheduleRule, accumulator_lanes, has_block, largest_divisor, native_lanes,
                   tunable_split, vectorize_if_wide)
from .cpu_direct import accumulate_in_registers, column_tile, epilogue_pass, partial_tile_pieces

#: Taps above which the kernel-row loop stays rolled (the unrolled body would be rows x taps FMAs).
MAX_UNROLLED_TAPS = 49


@dataclass(frozen=True)
class DepthwiseConfig:
    rows: int      # output rows per register tile
    columns: int   # output columns per register tile (the vector)


def choose_config(out_height: int, out_width: int, stride: int, lanes: int) -> DepthwiseConfig:
    """Tile sizes that divide the output (a remainder costs predicated vectors or a scalar tail).

    Measured on znver4 (2 cores, 3x3 and 5x5 depthwise layers, 14-112 wide), against the cpu-direct
    rule's 8-channel x 16-column tiles over a fully padded input copy:
    - stride 1: the cpu-direct rule's column tile (one vector, or the largest divisor of the width
      filling at least half of one) and up to 8 rows: 1.3-1.9x faster (32 channels on 112x112: 108 -> 59 us).
      1-2 rows lost 10-40%; 4, 7 and 8 were within 5% of each other; half a vector lost 25-40%.
    - stride 2: the columns of a vector are a strided gather (LLVM builds them lane by lane), so
      short tiles: at most half a vector of columns and 4 rows, 1.1-1.7x faster (144 channels,
      56 -> 28: 121 -> 68-74 us).  Storing the padded plane by column phase, to make those loads
      contiguous, was 1.3-1.5x slower: its stride-2 reads became gathers in the copy instead.
    """
    if stride == 1:
        pairs = [d for d in range(2 * lanes - 1, (3 * lanes + 1) // 2 - 1, -1) if out_width % d == 0]
        if out_width % lanes and pairs:
            # Two registers of columns, the second at least half full, x 2 rows, where no whole
            # registers divide the width: on znver3 (8 lanes) 14-wide planes ran 1.05-1.5x faster
            # than 7 rows of 7-column vectors (single-threaded, 7x7 on 384x14x14: 0.28 -> 0.19 ms,
            # 5x5 on 672x14x14: 0.33 -> 0.27), 28-wide ones as two 14-column tiles 1.2-1.5x (2
            # threads, 7x7 on 192x28x28: 0.53 -> 0.35 ms, 5x5 on 240x28x28 0.40 -> 0.34 (4 rows:
            # 0.26), 3x3 on 144x28x28 0.17 -> 0.14).  More rows spill; on 56-wide planes 7 rows of
            # one register stayed 1.1-1.4x faster.
            return DepthwiseConfig(rows=largest_divisor(out_height, 2), columns=pairs[0])
        return DepthwiseConfig(rows=largest_divisor(out_height, 8), columns=column_tile(out_width, lanes))
    return DepthwiseConfig(rows=largest_divisor(out_height, 4),
                           columns=largest_divisor(out_width, max(1, lanes // 2)))


def tasks_pad_their_planes(sch: s_tir.Schedule, images, channels):
    """One parallel task per (image, channel block): each pads the plane it reads into a buffer of
    its own (written just before it is read, cache-resident) instead of a padded copy of the input."""
    task = sch.fuse(images, channels)
    sch.parallel(task)
    if has_block(sch, "pad"):
        pad = sch.get_sblock("pad")
        sch.compute_at(pad, task)
        vectorize_if_wide(sch, sch.get_loops(pad)[-1])
    return task


class CpuDepthwise(ScheduleRule):
    name = "cpu-depthwise"
    #: 2: planes 1.5-2 registers wide take whole rows x 2 rows; 3: rows and columns per register
    #: tile are sampling decisions (the hand's the defaults); 4: two registers of columns wherever no
    #: whole registers divide the width (28-wide planes: 2 rows x 14 columns), a last, partial
    #: column tile a piece of its own (``partial_tile_pieces``); 5: the auto-unroll depth a decision
    #: (``CPU_UNROLL_STEPS``; the same kernels)
    version = 5
    unroll_steps = CPU_UNROLL_STEPS

    def apply(self, func, workload, target):
        spec = workload.spec
        if str(target.kind) != "llvm" or spec.transposed or spec.in_channels != spec.groups:
            return None
        _, _, out_height, out_width = workload.output_shape
        # Column vectors of one register at stride 1: where a 16-lane vector takes two (AVX2), 8 rows
        # of them filled the 16 registers.  Single-threaded on znver3, 8-lane columns: depthwise 3x3
        # on 32x112x112 0.49 -> 0.31 ms, 7x7 on 192x28x28 0.89 -> 0.77, on 96x56x56 1.37 -> 1.25;
        # stride 2 (half-vector columns already) unchanged or slower (5x5 on 144x56x56 0.66 -> 0.72).
        lanes = native_lanes(workload, target) if spec.stride[1] == 1 else accumulator_lanes(workload, target)
        cfg = choose_config(out_height, out_width, spec.stride[1], lanes)
        (kh, kw) = spec.kernel_size

        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        n, co, oh, ow, rc, rh, rw = sch.get_loops(conv)
        # The register tile is the design space's decision: up to 8 rows (the most measured) x
        # two vectors of columns.
        oh_o, oh_i = tunable_split(sch, oh, cfg.rows, max_tile=max(8, cfg.rows))
        ow_o, ow_i = tunable_split(sch, ow, cfg.columns, max_tile=max(2 * lanes, cfg.columns))
        sch.reorder(n, co, oh_o, ow_o, rc, rh, rw, oh_i, ow_i)
        # Step 1. One task per (image, channel); it pads its channel plane into its own buffer.
        tasks_pad_their_planes(sch, n, co)
        # Step 2. Accumulate the tile in registers; the epilogue writes it when it is complete (a
        # last, partial column tile: a piece of its own, and the epilogue a pass of its own).
        if out_width % cfg.columns:
            for piece in partial_tile_pieces(sch, conv, ow_o, out_width, cfg.columns):
                rh, rw = sch.get_loops(piece)[-4:-2]
                self._unroll_taps(sch, rh, rw, (kh, kw))
                accumulate_in_registers(sch, piece)
            epilogue_pass(sch, out, lanes)
            return sch
        sch.reverse_compute_at(out, ow_o, preserve_unit_loops=True)   # the same loops whatever the tiles
        sch.set_scope(conv, 0, "local")
        vectorize_if_wide(sch, ow_i)
        # Step 3. Unroll rows and taps so that shared input vectors are loaded once (LLVM's GVN).
        sch.unroll(oh_i)
        self._unroll_taps(sch, rh, rw, (kh, kw))
        sch.decompose_reduction(conv, rc)
        vectorize_if_wide(sch, sch.get_loops(out)[-1])
        return sch

    @staticmethod
    def _unroll_taps(sch, rh, rw, kernel) -> None:
        sch.unroll(rw)
        if kernel[0] * kernel[1] <= MAX_UNROLLED_TAPS:
            sch.unroll(rh)
