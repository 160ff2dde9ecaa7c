"""Direct NCHW convolution for LLVM CPUs: register tiles of output channels x output columns.

The accumulator tile ``[co_tile, ow_tile]`` lives in vector registers (``ow`` is the SIMD axis, so
stride-1 layers read the padded input with contiguous vector loads and weights are broadcast),
the reduction ``rc, rh, rw`` runs around it, and the bias/cast epilogue is written straight from
the tile.  The padded input is materialised once, in parallel, so the inner loop has no bounds tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tvm import s_tir

from targets.cpu import cpu_info

from .base import (CPU_UNROLL_STEPS, ScheduleRule, accumulator_lanes, native_lanes, registers_per_vector, schedule_pad,
                   tunable_split, vectorize_if_wide, vectorize_pieces)
from .cpu_tiles import tile_extent


@dataclass(frozen=True)
class DirectConfig:
    co_tile: int   # output channels per register tile
    ow_tile: int   # output columns per register tile (a multiple of the vector lanes when possible)


def choose_config(out_channels: int, out_width: int, lanes: int, registers: int,
                  native: Optional[int] = None) -> DirectConfig:
    """A column tile of at most one vector (:func:`column_tile`) x as many output channels as half
    the register file holds in accumulators.

    Measured on znver4 (2 cores, Conv2d 3x3 on 56x56/28x28/14x14): a column tile that divides the
    output width and fits one vector (14 of 16 lanes) with 16 channel rows runs at 180-200 GFLOP/s;
    tiles spanning two vectors (28, 56) or leaving a remainder (16 on 56) fall to 25-60 GFLOP/s,
    because LLVM then spills the accumulators or predicates every vector.  The other half of the
    register file holds the input vector and the broadcast weights.  (Grouped layers lost 30-40% with
    8 rows; depthwise layers have a rule of their own, ``cpu_depthwise``.)  ``registers`` counts
    vectors of ``lanes`` (``vector_registers``), ``native`` the lanes of one architectural register
    (default ``lanes``): on AVX2 a 16-lane vector takes two of the 16 registers, and 8 rows of them
    (16 accumulators) spilled: 4 rows ran 1.5-2.1x faster on znver3 (Conv2d(256, 256, 3, groups=32)
    on 28x28: 3.4 -> 1.6 ms; 256 channels on 32x32: 25.7 -> 16.7 ms).  A column tile of one native
    register takes 8 rows there (the same 8 accumulators).
    """
    native = native or lanes
    ow_tile = column_tile(out_width, lanes, native)
    accumulators = registers * max(1, lanes // native) // 2             # architectural registers
    # the channels' largest divisor within the budget if it fills half of it (``tile_extent``): no
    # partial tile, and the tile stays a search decision (``tunable_split`` samples perfect tiles).
    # Measured level with the full budget on znver3 (6 or 5 rows instead of 8: 0.92-1.13x on
    # Conv2d(24, 12, 3), (20, 30, 3) and (12, 20, 3), single-threaded).
    co_tile = tile_extent(out_channels, max(1, accumulators // -(-ow_tile // native)))
    return DirectConfig(co_tile=co_tile, ow_tile=ow_tile)


def column_tile(out_width: int, lanes: int, native: Optional[int] = None) -> int:
    """Whole architectural registers (``native`` lanes) dividing the width, up to one vector of
    ``lanes``; else the largest divisor of the width that fills at least half a native register;
    else that of a ``lanes`` vector, else one full vector.

    Measured on znver3 (AVX2: 16-lane vectors of two 8-lane registers, 1 thread): a 14-column tile
    (1.75 registers, the last one masked) on 56-wide layers ran 1.8-2.4x slower than 8 columns with
    twice the rows (Conv2d(20, 30, 3) on 56x56: 1.53 vs 0.64 ms), 1.7x on 28-wide ones against 7
    columns (Conv2d(12, 20, 3): 0.16 vs 0.10 ms); 16 columns on 32- and 112-wide layers stayed
    1.2-1.5x faster than 8 (Conv2d(36, 36, 3) on 32x32: 1.12 vs 1.40 ms); on 13-wide outputs 8
    columns (a remainder) were 3x slower than 13."""
    native = native or lanes
    whole = [t for t in range(lanes - lanes % native, 0, -native) if out_width % t == 0]
    if whole:
        return whole[0]
    for vector in (native, lanes):
        tile = tile_extent(out_width, vector)
        if out_width % tile == 0:
            return tile
    return min(lanes, out_width)


def vector_registers(workload, target) -> int:
    """How many vectors of the accumulator's lanes the register file holds."""
    return cpu_info(target).vector_registers // registers_per_vector(workload, target)


class CpuDirect(ScheduleRule):
    name = "cpu-direct"
    #: 2: the channel and column tiles are sampling decisions (their hand values the defaults);
    #: 3: column tiles of whole architectural registers (AVX2: 8 columns x 8 rows on 56-wide layers);
    #: 4: a last, partial column tile is a piece of its own (``partial_tile_pieces``); 5: the
    #: auto-unroll depth a decision (``CPU_UNROLL_STEPS``; the same kernels)
    version = 5
    unroll_steps = CPU_UNROLL_STEPS

    def apply(self, func, workload, target):
        if str(target.kind) != "llvm" or workload.spec.transposed:
            return None
        lanes = accumulator_lanes(workload, target)
        _, out_channels, _, out_width = workload.output_shape
        registers = vector_registers(workload, target)
        cfg = choose_config(out_channels, out_width, lanes, registers, native_lanes(workload, target))

        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        # Step 1. Materialise the padded input once, in parallel.
        schedule_pad(sch, workload)
        # Step 2. Tile output channels and columns; the reduction runs around the register tile.
        # Both tiles are the design space's decisions (a search tries register-file-sized others).
        n, co, oh, ow, rc, rh, rw = sch.get_loops(conv)
        co_o, co_i = tunable_split(sch, co, cfg.co_tile, max_tile=max(registers, cfg.co_tile))
        ow_o, ow_i = tunable_split(sch, ow, cfg.ow_tile, max_tile=2 * lanes)
        sch.reorder(n, co_o, oh, ow_o, rc, rh, rw, co_i, ow_i)
        sch.parallel(sch.fuse(n, co_o, oh))
        if out_width % cfg.ow_tile:
            # Step 3'. A last, partial column tile: the tile loop in pieces, each accumulating in
            # registers and writing the intermediate sums; the epilogue is a pass of its own.
            for piece in partial_tile_pieces(sch, conv, ow_o, out_width, cfg.ow_tile):
                accumulate_in_registers(sch, piece)
            epilogue_pass(sch, out, lanes)
            return sch
        # Step 3. The epilogue (bias, cast) writes each tile as soon as it is complete.
        sch.reverse_compute_at(out, ow_o, preserve_unit_loops=True)   # the same loops whatever the tiles
        sch.set_scope(conv, 0, "local")
        # Step 4. Vectorise columns, unroll channels (vectorise before decompose_reduction).
        vectorize_if_wide(sch, ow_i)
        sch.unroll(co_i)
        sch.decompose_reduction(conv, rc)
        vectorize_if_wide(sch, sch.get_loops(out)[-1])
        return sch


def partial_tile_pieces(sch: s_tir.Schedule, block, tile_loop, extent: int, tile: int) -> list:
    """The copies of ``block`` after cutting ``tile_loop`` (``ceil(extent / tile)`` tiles) before its
    last, partial tile.  A partial tile's predicate (``T.where``) under the reduction keeps its
    accumulators out of registers: Conv2d(64, 3, 7, padding=6) on 256x256 (262 columns, no divisor
    near a vector, 16-column tiles) ran 159 ms predicated, 17 ms in two pieces (2 threads, znver3),
    since in the first piece the predicate folds away."""
    if extent % tile == 0 or extent < tile:
        return [block]
    pieces = sch.loop_partition(tile_loop, [extent // tile, None])
    return [sch.get_child_blocks(piece)[0] for piece in pieces]


def accumulate_in_registers(sch: s_tir.Schedule, block) -> None:
    """The register tile of ``block``, whose loops end ``tile, reduction (3 loops), rows, columns``
    (rows: of output channels, or of output rows): sums in a local cache written back per tile,
    columns vectorised, rows unrolled."""
    loops = sch.get_loops(block)
    tile, reduction, rows, columns = loops[-6], loops[-5], loops[-2], loops[-1]
    written = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(written, tile, preserve_unit_loops=True)    # the same loops whatever the tiles
    vectorize_if_wide(sch, columns)
    sch.unroll(rows)
    sch.decompose_reduction(block, reduction)
    vectorize_if_wide(sch, sch.get_loops(written)[-1])


def epilogue_pass(sch: s_tir.Schedule, out, lanes: int) -> None:
    """The ``output`` stage as a pass of its own over the sums (where partial tiles keep it out of
    the tiles): parallel over images, channels and rows, each row vectorised a register at a time."""
    on, oc, oh, ow = sch.get_loops(out)
    sch.parallel(sch.fuse(on, oc, oh))
    vectorize_pieces(sch, ow, lanes)
