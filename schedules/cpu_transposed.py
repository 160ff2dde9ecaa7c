"""Phase-decomposed transposed convolution for LLVM CPUs.

The compute gives ``conv[n, co, phase_h, phase_w, q_h, q_w]``: within one phase every output pixel
uses the same taps, a dense sub-convolution.  Two schedules:

- channel vectors (output channels per group a multiple of the vector): the ``cpu-channel-vector``
  scheme on each phase.  A task owns a vector of output channels for every image and phase; it
  packs its weights chunk by chunk of input channels (``[ci, kh, kw, V]``, L1-sized: torch's
  ``[ci, co, kh, kw]`` holds a channel vector's weights 16 floats apart) and sweeps all phases'
  pixel tiles with the chunk; register tiles of one channel vector x up to 6 (AVX2) / 16 (AVX-512)
  pixels take a broadcast input.  Where the zero margins or the zero taps past the kernel's edge
  (3x3 at stride 2: 7 of 16 phase taps) hold a good share of the multiply-adds, the phases are
  unrolled and the pixel loops split at the margins, so those taps vanish at compile time.
- otherwise (e.g. 3 output channels), the phase loops outermost and ``cpu-direct``'s register tile
  (output channels x a vector of ``q_w``), reading the input with contiguous vector loads.

Either way the phases are interleaved back into NCHW, with the bias, by the epilogue.
"""
from __future__ import annotations

from tvm import s_tir

from targets.cpu import cpu_info

from .base import (CPU_UNROLL_STEPS, ScheduleRule, accumulator_lanes, has_block, native_lanes, schedule_pad,
                   tunable_split, vectorize_if_wide, vectorize_pieces)
from .cpu_direct import accumulate_in_registers, choose_config, partial_tile_pieces, vector_registers
from .cpu_tiles import (DTYPE_BYTES, SUMS_BYTES, blocked_tiles, partition_pieces, pixel_tile_limit, register_tile,
                        split_blocked_tiles)


#: Tasks (images x channel tiles) per core from which the direct form runs a task per channel tile
#: and image, phases and interleave inside: fewer would leave cores idle at the end.  Measured on
#: znver3, 2 threads, input gradients of depthwise layers (ms, rows of tasks -> tasks of planes):
#: (64, 64, 3, stride=2) on 1x64x112x112 0.52 -> 0.39, (96, 96, 5, stride=2) on 2x96x56x56 0.82 ->
#: 0.54, (32, 32, 3) on 1x32x112x112 0.24 -> 0.18.
PLANE_TASKS_PER_CORE = 4


class CpuTransposed(ScheduleRule):
    name = "cpu-transposed-phase"
    #: 2: the direct form's channel and column tiles are sampling decisions (the hand's the defaults);
    #: 3: the channel-vector form's chunk and pixel tiles too;
    #: 4: the direct form's last, partial column tile a piece of its own (``partial_tile_pieces``),
    #: and its column tile of whole architectural registers as cpu-direct's (AVX2: 8 columns);
    #: 5: the direct form a task per channel tile and image where there are tasks enough
    #: (``PLANE_TASKS_PER_CORE``), its interleave inside, scalar where there are several phases;
    #: 6: the auto-unroll depth a decision (``CPU_UNROLL_STEPS``; the same kernels)
    version = 6
    unroll_steps = CPU_UNROLL_STEPS

    def apply(self, func, workload, target):
        if str(target.kind) != "llvm" or not workload.spec.transposed:
            return None
        spec = workload.spec
        if (spec.out_channels // spec.groups) % accumulator_lanes(workload, target) == 0:
            return self._apply_channel_vector(func, workload, target)
        return self._apply_direct(func, workload, target)

    def _apply_channel_vector(self, func, workload, target):
        spec = workload.spec
        lanes = accumulator_lanes(workload, target)
        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        n, co, ph, pw, qh, qw, rc, rh, rw = sch.get_loops(conv)
        extent = lambda loop: int(sch.get(loop).extent)  # noqa: E731
        phases, taps = (extent(ph), extent(pw)), (extent(rh), extent(rw))
        pixels = (extent(qh), extent(qw))
        # A task holds one channel vector's sums for every image (each chunk of weights is packed
        # once) unless they outgrow the cache or there are fewer channel vectors than cores.
        vectors, kh, kw = spec.out_channels // lanes, *spec.kernel_size
        sums = phases[0] * phases[1] * pixels[0] * pixels[1] * lanes * DTYPE_BYTES[workload.accumulate_dtype]
        every_image = vectors >= cpu_info(target).num_cores and extent(n) * sums <= SUMS_BYTES
        tiles = blocked_tiles(sch, workload, target, lanes, extent(rc), taps, pixels,
                              extent(n) * sums if every_image else sums, phases=phases, packed_taps=kh * kw)
        # Step 1. Zero margins and zero taps: read through their index maps where dead taps are
        # dropped (step 6), else the margins materialised in parallel.
        if tiles.skips_dead_taps:
            for stage in ("pad", "weight_pad"):
                if has_block(sch, stage):
                    sch.compute_inline(sch.get_sblock(stage))
        else:
            schedule_pad(sch, workload)
        # Step 2. A task per channel vector (and image, unless ``every_image``); the reduction in
        # chunks of input channels, all phases inside (the chunk and the pixel tile: the design
        # space's decisions, ``split_blocked_tiles``).
        co_o, co_i = sch.split(co, factors=[None, lanes])
        (rc_o, rc_i), (qh_o, qh_i), (qw_o, qw_i) = split_blocked_tiles(sch, tiles, rc, (qh, qw),
                                                                       pixel_tile_limit(workload, target, lanes))
        if every_image:
            sch.reorder(co_o, rc_o, n, ph, pw, qh_o, qw_o, rc_i, rh, rw, qh_i, qw_i, co_i)
            task = co_o
        else:
            sch.reorder(n, co_o, rc_o, ph, pw, qh_o, qw_o, rc_i, rh, rw, qh_i, qw_i, co_i)
            task = sch.fuse(n, co_o)
        sch.parallel(task)
        # Step 3. Each chunk's weights packed channel-vector-last just before it is used.
        pack_block = sch.get_sblock("weight_pad") if has_block(sch, "weight_pad") else \
            sch.cache_read(conv, "weight", "global")
        sch.transform_layout(pack_block, ("write", 0), lambda i, o, r, c: (o // lanes, i, r, c, o % lanes))
        sch.compute_at(pack_block, rc_o, preserve_unit_loops=True)    # the same loops whatever the chunk
        vectorize_if_wide(sch, sch.get_loops(pack_block)[-1])
        # Step 4. The task's sums channel-vector-last across chunks; the epilogue interleaves the
        # phases into NCHW (with the bias) once the task is complete.
        sch.transform_layout(conv, ("write", 0),
                             lambda b, c, i, j, y, x: (b, c // lanes, i, j, y, x, c % lanes))
        sch.compute_inline(sch.get_sblock("interleave"))
        sch.reverse_compute_at(out, task)
        vectorize_pieces(sch, sch.get_loops(out)[-1], lanes)
        # Step 5. One channel vector x the pixel tile in registers (taps unrolled to drop dead ones).
        register_tile(sch, co_i, (qh_i, qw_i), (rh, rw) if tiles.skips_dead_taps else ())
        init = sch.decompose_reduction(conv, rc_o)
        vectorize_if_wide(sch, sch.get_loops(init)[-1])
        # Step 6. Pieces: phases one by one, then tiles straddling a margin, and partial tiles.
        partition_pieces(sch, tiles, pixels, tile_loops=(-8, -7), phase_loops=((-10, phases[0]), (-9, phases[1])))
        return sch

    def _apply_direct(self, func, workload, target):
        lanes = accumulator_lanes(workload, target)
        sch = s_tir.Schedule(func)
        conv = sch.get_sblock("conv")
        # Step 0. The zero margins of the input are materialised once, in parallel.
        schedule_pad(sch, workload)
        if has_block(sch, "weight_pad"):
            sch.parallel(sch.get_loops(sch.get_sblock("weight_pad"))[0])
        n, co, ph, pw, qh, qw, rc, rh, rw = sch.get_loops(conv)
        extent = lambda loop: int(sch.get(loop).extent)  # noqa: E731
        registers = vector_registers(workload, target)
        # Whole architectural registers of columns, as cpu-direct's (measured on znver3, 2 threads,
        # 16- -> 8-column tiles: ConvTranspose2d(256, 256, 3, padding=1, groups=32) on 28x28 0.94 ->
        # 0.60 ms, (64, 64, 3, padding=1, groups=64) on 56x56 0.46 -> 0.22, (96, 12, 3, stride=2,
        # padding=1) on 28x28 1.44 -> 0.84; the depthwise stride-2 (144, 144, 3) on 28x28 0.54 -> 0.65)
        columns, one_phase = extent(qw), extent(ph) * extent(pw) == 1
        cfg = choose_config(extent(co), columns, lanes, registers, native_lanes(workload, target))
        # Step 1. Register tile of output channels x phase columns; both tiles are the design
        # space's decisions (a search tries register-file-sized others).  With tasks enough, a task
        # is a tile of channels of an image, all its phases and its interleave inside (the phases
        # stay in L1/L2 for the interleave to read); else phases outermost, a task per row of tiles.
        co_o, co_i = tunable_split(sch, co, cfg.co_tile, max_tile=registers)
        qw_o, qw_i = tunable_split(sch, qw, cfg.ow_tile, max_tile=2 * lanes)
        # The phase loops stay serial, never fused into the parallel loop: fusing them made TVM 0.27
        # lower wrong input indices for some shapes (seen with 1x1 kernels, stride 2).
        tasks = extent(n) * extent(co_o)
        per_plane = tasks >= PLANE_TASKS_PER_CORE * cpu_info(target).num_cores
        if per_plane:
            sch.reorder(n, co_o, ph, pw, qh, qw_o, rc, rh, rw, co_i, qw_i)
            task = sch.fuse(n, co_o)
        else:
            sch.reorder(ph, pw, n, co_o, qh, qw_o, rc, rh, rw, co_i, qw_i)
            task = sch.fuse(n, co_o, qh)
        sch.parallel(task)
        # Step 2. Accumulate in registers; write the tile back once (a last, partial tile of
        # columns on its own: ``partial_tile_pieces``).
        for piece in partial_tile_pieces(sch, conv, qw_o, columns, cfg.ow_tile):
            accumulate_in_registers(sch, piece)
        # Step 3. Interleave the phases into NCHW with the bias: per task, while its phases are in
        # cache, or as a parallel pass of its own.  One phase (stride 1) is a copy, its rows
        # vectorised a register at a time; with more, a vector would gather lane by lane from the
        # phases, and scalar code ran faster (znver3, 2 threads, input gradients of depthwise
        # layers: (144, 144, 3, stride=2) on 1x144x56x56 0.38 -> 0.29 ms, (64, 64, 3, stride=2) on
        # 1x64x112x112 0.38 -> 0.22; ConvTranspose2d(32, 3, 4, stride=2) on 64x64 0.25 -> 0.16).
        sch.compute_inline(sch.get_sblock("interleave"))
        out = sch.get_sblock("output")
        if per_plane:
            sch.reverse_compute_at(out, task)
            row = sch.get_loops(out)[-1]
        else:
            on, oc, _, row = sch.get_loops(out)
            sch.parallel(sch.fuse(on, oc))
        if one_phase:
            vectorize_pieces(sch, row, lanes)
        return sch
