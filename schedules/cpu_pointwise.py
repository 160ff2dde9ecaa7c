"""Pointwise (1x1, stride 1, unpadded) NCHW convolution with a small weight matrix, for LLVM CPUs.

Such a layer is a GEMM whose pixel axis is contiguous in both input and output: a register tile of
``C`` output channels x ``R`` rows x one vector of columns accumulates with one vector load of the
input and ``C`` broadcast weights per input channel, and is stored straight into the NCHW output,
with no transposition (the channel-vector rule's tiles keep channels on the SIMD axis, and for a
layer of few input channels their write-back to NCHW is most of the run).  Tasks run row-major
(all channel tiles of a row band in turn), so a band of input rows stays in L1 across them; every
tile reads the whole weight matrix, so this rule takes only layers whose weights fit L1.

The expansions and projections of MobileNetV3 / EfficientNet / RegNet on 56- and 112-wide planes
are these layers.  Measured single-threaded on znver3 (AVX2, kernel calls, ms, torch / blocked
channel vectors / this rule): Conv2d(16, 96, 1) on 112x112 0.73 / 1.89 / 0.71; (24, 144, 1) on
56x56 0.38 / 0.76 / 0.34; (96, 24, 1) on 56x56 0.23 / 0.33 / 0.19; (144, 24, 1) 0.33 / 0.47 / 0.29.
Layers with 64 KB of weights and more (64 -> 256 on 56x56) ran 1.2-1.5x faster with channel vectors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tvm import s_tir

from targets.cpu import cpu_info

from .base import CPU_UNROLL_STEPS, DTYPE_BYTES, ScheduleRule, native_lanes, tunable_split, vectorize_if_wide

#: Weight bytes up to which every tile may re-read the whole weight matrix: a 32 KB L1 data cache
#: (Zen 2/3/4, Intel since Sandy Bridge).  Measured: 6-14 KB layers ran 1.1-2.7x faster than with
#: channel vectors, 64 KB ones 1.2-1.5x slower (see the module docstring).
L1_WEIGHT_BYTES = 32 * 1024


@dataclass(frozen=True)
class PointwiseTile:
    channels: int    # output channels per register tile (broadcast weights)
    rows: int        # output rows per register tile
    lanes: int       # columns per register tile: one architectural vector


def choose_tile(out_channels: int, out_height: int, lanes: int, registers: int) -> Optional[PointwiseTile]:
    """Accumulators for three quarters of the register file (AVX2: 12 of 16; the rest hold the
    input vector and broadcasts), as channels x rows with the channels dividing the layer's.

    Measured on znver3 (AVX2, 8-lane vectors, the layers of the module docstring): 6 channels x 2
    rows ran 1.3-2.1x faster than 8 x 1 and 12 x 1, and 1.2-1.8x faster than 4 x 3 except on
    Conv2d(32, 16, 1) on 112x112, whose 16 channels 6 does not divide (4 x 3 there: 1.21x torch).
    """
    accumulators = registers * 3 // 4
    for channels in (6, 4, 3, 2, 1):
        if out_channels % channels == 0 and accumulators % channels == 0:
            rows = min(out_height, accumulators // channels)
            return PointwiseTile(channels, rows, lanes)
    return None                                                       # pragma: no cover - 1 divides


class CpuPointwise(ScheduleRule):
    name = "cpu-pointwise"
    #: 2: the channel and row tiles are sampling decisions (their hand values the defaults); 3: the
    #: auto-unroll depth too (``CPU_UNROLL_STEPS``; the same kernels)
    version = 3
    unroll_steps = CPU_UNROLL_STEPS

    def apply(self, func, workload, target):
        spec = workload.spec
        if str(target.kind) != "llvm" or spec.transposed or spec.groups != 1:
            return None
        if spec.kernel_size != (1, 1) or spec.stride != (1, 1) or any(spec.pads):
            return None
        lanes = native_lanes(workload, target)
        _, out_channels, out_height, out_width = workload.output_shape
        weight_bytes = spec.in_channels * out_channels * DTYPE_BYTES[workload.dtype]
        # Whole vectors of columns only: a partial vector is predicated on every multiply-add (28-wide
        # planes ran 3-5x slower than with channel vectors).
        if out_width % lanes or weight_bytes > L1_WEIGHT_BYTES:
            return None
        registers = cpu_info(target).vector_registers
        tile = choose_tile(out_channels, out_height, lanes, registers)

        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        n, co, oh, ow, rc, rh, rw = sch.get_loops(conv)
        # The channel and row tiles are the design space's decisions (a search tries others that
        # fit the register file); the columns stay one register.
        co_o, co_i = tunable_split(sch, co, tile.channels, max_tile=registers)
        oh_o, oh_i = tunable_split(sch, oh, tile.rows, max_tile=registers)
        ow_o, ow_i = sch.split(ow, factors=[None, tile.lanes])
        # Step 1. Row bands outside, channel tiles inside: a band's input rows stay in L1 while every
        # channel tile reads them.
        sch.reorder(n, oh_o, co_o, ow_o, rc, rh, rw, co_i, oh_i, ow_i)
        sch.parallel(sch.fuse(n, oh_o, co_o))
        # Step 2. The tile accumulates in registers and its epilogue (bias, fused steps, cast) writes
        # it to NCHW as soon as it is complete.
        sch.reverse_compute_at(out, ow_o, preserve_unit_loops=True)   # the same loops whatever the tiles
        sch.set_scope(conv, 0, "local")
        vectorize_if_wide(sch, ow_i)
        sch.unroll(co_i)
        sch.unroll(oh_i)
        sch.decompose_reduction(conv, rc)
        vectorize_if_wide(sch, sch.get_loops(out)[-1])
        return sch
