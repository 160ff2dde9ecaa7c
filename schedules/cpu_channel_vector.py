"""Dense NCHW convolution for LLVM CPUs with output channels on the SIMD axis.

Weights are packed (once per weight change by the modules, or inside the kernel when it is
given torch's layout, e.g. in exported libraries) to ``[co/V, ci, kh, kw, V]`` so that a vector
of ``V`` output channels' weights is one contiguous load; each input pixel is a scalar broadcast,
so strided and dilated layers read the input as cheaply as stride-1 ones.  The register tile is
``V`` channels x 5-16 output columns; the bias/cast epilogue writes the tile back to NCHW.
Applies when every vector of channels stays inside one group (``out_channels/groups % V == 0``)
and a good column tile divides the output width, or, where a vector takes two registers (AVX2),
whatever the width, through the blocked variant.

NHWC (channels_last tensors, read and written in place): the same schedules, on the NHWC compute's
``conv`` looped and indexed in NCHW order (``_schedule``); the padded input stays NHWC (each
broadcast reads it as cheaply), and the epilogue's vectors are then contiguous runs of channels.
Taps reading zero padding are not dropped there (the analysis reads NCHW iteration variables).

The blocked variant (``cpu_tiles``: a task per channel vector, the reduction in L1-sized chunks, a
register tile sized to the register file, taps reading zero padding dropped) serves, whatever their
width, deep reductions (ASPP's 2048 input channels x 3x3: 1.2 MB of weights per channel vector),
layers whose zero padding holds a good share of the multiply-adds (large dilations), and layers
whose plain tile would not fit the registers (AVX2).
"""
from __future__ import annotations

from tvm import s_tir

from targets.cpu import cpu_info

from .base import (CPU_UNROLL_STEPS, ScheduleRule, accumulator_lanes, native_lanes, registers_per_vector, schedule_pad,
                   tunable_split, vectorize_if_wide, vectorize_pieces)
from .cpu_tiles import (DTYPE_BYTES, BlockedTiles, blocked_tiles, partition_pieces, pixel_tile_limit,
                        register_tile, split_blocked_tiles)


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
    layouts = ("NCHW", "NHWC")
    #: 2: its column tile, and the blocked variant's chunk and pixel tiles, are sampling decisions
    #: (the hand's the defaults); 3: the blocked variant's tasks take rows of tiles too where
    #: images x channel vectors are fewer than the cores (``row_bands``); 4: the auto-unroll depth a
    #: decision (``CPU_UNROLL_STEPS``; the same kernels)
    version = 4
    unroll_steps = CPU_UNROLL_STEPS

    def weight_block(self, workload, target):
        """The channel vector: the accumulator's lanes, or one register's where only those divide the
        group's output channels (AVX2: 24, 40, 56, ... channels take 8-lane vectors; on znver3,
        single-threaded, Conv2d(96, 24, 1) on 56x56 ran 5 GFLOP/s with cpu-direct)."""
        spec = workload.spec
        if str(target.kind) != "llvm" or spec.transposed:
            return None
        per_group = spec.out_channels // spec.groups
        for lanes in (accumulator_lanes(workload, target), native_lanes(workload, target)):
            if per_group % lanes == 0:
                return lanes
        return None

    def apply(self, func, workload, target):
        lanes = self.weight_block(workload, target)
        if lanes is None:
            return None
        spec = workload.spec
        _, _, height, width = workload.output_shape
        sums = height * width * lanes * DTYPE_BYTES[workload.accumulate_dtype]
        tiles = blocked_tiles(s_tir.Schedule(func), workload, target, lanes, spec.in_channels // spec.groups,
                              spec.kernel_size, (height, width), sums,
                              zero_padding=spec.padding_mode == "zeros" and workload.layout == "NCHW")
        ow_tile = column_tile(workload.output_shape[3], spec.stride[1], lanes, cpu_info(target).vector_registers)
        # The plain tile can spill (AVX2: 7-8 columns x a 16-lane vector are 14-16 of the 16
        # registers); the blocked variant's tile fits them, measured 2x faster on znver3 for the
        # 7x7 stem, 64 channels on 56x56 and 256 on 14x14 (6.6 -> 3.0 ms single-threaded).
        # Where the plain tile does not apply (widths 32, 64, 1), cpu-direct's columns-on-SIMD tile
        # ran 0.4-0.8x torch on znver3 (vectors of two registers) and the blocked one 0.7-1.2x
        # (single-threaded: Conv2d(2048, 512, 1) on 32x32 203 -> 42 ms, (1024, 512, 1) 34 -> 20,
        # (512, 512, 3, dilation=2) 82 -> 64, (256, 128, 1) on 64x64 8.2 -> 6.1, ASPP's pooled
        # (2048, 256, 1) on 1x1 0.22 -> 0.11); on AVX-512 cpu-direct keeps them (see column_tile).
        spills = ow_tile is not None and ow_tile > pixel_tile_limit(workload, target, lanes)
        two_register_vectors = registers_per_vector(workload, target) > 1
        if tiles.deep or tiles.skips_dead_taps or spills or (ow_tile is None and two_register_vectors):
            return self._apply_blocked(func, workload, target, lanes, tiles)
        if ow_tile is None:
            return None
        sch = _schedule(func, workload)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        # Step 1. Padded input materialised once, in parallel; weights packed channel-vector-last
        # here unless the caller passes them pre-packed (the modules do, once per weight change).
        schedule_pad(sch, workload, by_rows=True)
        pack_weights_at_root(sch, conv, lanes, workload.layout)
        # Step 2. Register tile: a vector of channels x ow_tile columns, the reduction around it.
        # The column tile is the design space's decision (up to a column per register).
        n, co, oh, ow, rc, rh, rw = sch.get_loops(conv)
        co_o, co_i = sch.split(co, factors=[None, lanes])
        ow_o, ow_i = tunable_split(sch, ow, ow_tile, max_tile=cpu_info(target).vector_registers)
        sch.reorder(n, co_o, oh, ow_o, rc, rh, rw, ow_i, co_i)
        sch.parallel(sch.fuse(n, co_o, oh))
        # Step 3. Accumulate in registers, stored channel-vector-last: in NCHW order a tile's vector
        # of channels is strided in the accumulator, and LLVM then keeps the tile in memory and
        # assembles every vector lane by lane once the tile has 8 columns (measured 10-13x slower).
        sch.reverse_compute_at(out, ow_o, preserve_unit_loops=True)   # the same loops whatever the tiles
        sch.set_scope(conv, 0, "local")
        sch.transform_layout(conv, ("write", 0), lambda n, c, h, w: (n, c // lanes, h, w, c % lanes))
        sch.vectorize(co_i)
        sch.unroll(ow_i)
        sch.decompose_reduction(conv, rc)
        # Step 4. The epilogue writes each channel's row of the tile as one vector.
        vectorize_if_wide(sch, sch.get_loops(out)[-1])
        return sch

    def _apply_blocked(self, func, workload, target, lanes: int, tiles: BlockedTiles):
        sch = _schedule(func, workload)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        # Step 1. The padding: materialised in parallel, or read through its index map where the
        # taps that read only zeros are dropped (step 4).
        if tiles.skips_dead_taps:
            sch.compute_inline(sch.get_sblock("pad"))
        else:
            schedule_pad(sch, workload, by_rows=True)
        pack_weights_at_root(sch, conv, lanes, workload.layout)
        # Step 2. A task per (image, channel vector); the reduction in chunks of input channels,
        # each chunk's weights reused by every pixel tile of the task (the chunk and the pixel
        # tile: the design space's decisions, ``split_blocked_tiles``).
        n, co, oh, ow, rc, rh, rw = sch.get_loops(conv)
        co_o, co_i = sch.split(co, factors=[None, lanes])
        (rc_o, rc_i), (oh_o, oh_i), (ow_o, ow_i) = split_blocked_tiles(sch, tiles, rc, (oh, ow),
                                                                       pixel_tile_limit(workload, target, lanes))
        # Fewer (image, channel vector) tasks than cores (e.g. a 16-channel stem on AVX2 at batch 1):
        # a task per row of tiles too, the chunks inside it.
        bands = row_bands(workload, target, lanes, tiles)
        if bands:
            sch.reorder(n, co_o, oh_o, rc_o, ow_o, rc_i, rh, rw, oh_i, ow_i, co_i)
            task = sch.fuse(n, co_o, oh_o)
        else:
            sch.reorder(n, co_o, rc_o, oh_o, ow_o, rc_i, rh, rw, oh_i, ow_i, co_i)
            task = sch.fuse(n, co_o)
        sch.parallel(task)
        # Step 3. The task's sums live channel-vector-last in a buffer of its own (L2-sized) across
        # chunks, in registers within one; its epilogue writes them to NCHW when it is complete.
        sch.transform_layout(conv, ("write", 0), lambda n, c, h, w: (n, c // lanes, h, w, c % lanes))
        sch.reverse_compute_at(out, task)
        vectorize_pieces(sch, sch.get_loops(out)[-1], lanes)
        register_tile(sch, co_i, (oh_i, ow_i), (rh, rw) if tiles.skips_dead_taps else ())
        init = sch.decompose_reduction(conv, rc_o)
        vectorize_if_wide(sch, sch.get_loops(init)[-1])
        # Step 4. Tiles that straddle a padding edge, and the last partial tiles, become pieces of
        # their own; in each, a tap reads the image everywhere or nowhere (row bands: whole row
        # tiles, no dead taps, so only a partial column tile).
        partition_pieces(sch, tiles, workload.output_shape[2:], tile_loops=(None, -7) if bands else (-8, -7))
        return sch


def row_bands(workload, target, lanes: int, tiles: BlockedTiles) -> bool:
    """Whether the blocked variant's tasks take a row of pixel tiles each, besides an image and a
    channel vector: where those two give fewer tasks than cores, the row tiles divide the height and
    no dead taps are dropped (their pieces are cut along the rows).  Measured on znver3, 2 threads
    (one 16-channel vector, so one task before): MobileNetV3's stem Conv2d(3, 16, 3, stride=2,
    padding=1) on 1x3x224x224 0.49 -> 0.22 ms (torch 0.30-0.34), Conv2d(3, 16, 3, padding=1) on
    1x3x227x227 2.06 -> 0.89, Conv2d(8, 16, 5, padding=2) on 1x8x64x64 0.44 -> 0.27."""
    n, _, height, _ = workload.output_shape
    tasks = n * (workload.spec.out_channels // lanes)
    return tasks < cpu_info(target).num_cores and height % tiles.rows == 0 and not tiles.skips_dead_taps


def _schedule(func, workload) -> s_tir.Schedule:
    """A Schedule of ``func`` whose ``conv`` loops run ``n, co, oh, ow, rc, rh, rw`` over sums indexed
    ``[n, co, oh, ow]``, as the rule's steps expect: NHWC's conv (looped and stored ``n, oh, ow, co``,
    reducing ``rh, rw, rc``) reordered and re-indexed; NCHW's as it is (its traces unchanged)."""
    sch = s_tir.Schedule(func)
    if workload.layout == "NHWC":
        conv = sch.get_sblock("conv")
        _, oh, ow, co, rh, rw, rc = sch.get_loops(conv)
        sch.reorder(co, oh, ow, rc, rh, rw)
        sch.transform_layout(conv, ("write", 0), lambda n, h, w, c: (n, c, h, w))
    return sch


def pack_weights_at_root(sch: s_tir.Schedule, conv, lanes: int, layout: str = "NCHW") -> None:
    """Pack torch-layout conv2d weights (NHWC: ``[co, kh, kw, ci]``) channel-vector-last inside the
    kernel (exported libraries); pre-packed weights (5-d) are left alone."""
    weight = next(r.source for r in sch.get(conv).reads if r.source.name == "weight")
    if len(weight.shape) == 4:
        packed = sch.cache_read(conv, "weight", "global")
        blocks = (lambda co, kh, kw, ci: (co // lanes, ci, kh, kw, co % lanes)) if layout == "NHWC" else \
            (lambda co, ci, kh, kw: (co // lanes, ci, kh, kw, co % lanes))
        sch.transform_layout(packed, ("write", 0), blocks)
        sch.parallel(sch.get_loops(packed)[0])
