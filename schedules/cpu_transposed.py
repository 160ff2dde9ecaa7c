"""Phase-decomposed transposed convolution for LLVM CPUs.

The compute gives ``conv[n, co, phase_h, phase_w, q_h, q_w]``: within one phase every output pixel
uses the same taps, so the phase loops go outermost and the rest is the direct schedule's register
tile (output channels x a vector of ``q_w``), reading the input with contiguous vector loads.  The
phases are interleaved back into NCHW, with the bias, in one parallel vectorised pass.
"""
from __future__ import annotations

from tvm import s_tir

from targets.cpu import cpu_info

from .base import ScheduleRule, accumulator_lanes, has_block, schedule_pad, vectorize_if_wide
from .cpu_direct import choose_config


class CpuTransposed(ScheduleRule):
    name = "cpu-transposed-phase"

    def apply(self, func, workload, target):
        if str(target.kind) != "llvm" or not workload.spec.transposed:
            return None
        info = cpu_info(target)
        lanes = accumulator_lanes(workload, target)
        sch = s_tir.Schedule(func)
        conv = sch.get_sblock("conv")
        # Step 0. The zero margins of the input are materialised once, in parallel.
        schedule_pad(sch, workload)
        if has_block(sch, "weight_pad"):
            sch.parallel(sch.get_loops(sch.get_sblock("weight_pad"))[0])
        n, co, ph, pw, qh, qw, rc, rh, rw = sch.get_loops(conv)
        extent = lambda loop: int(sch.get(loop).extent)  # noqa: E731
        cfg = choose_config(extent(co), extent(qw), lanes, info.vector_registers)
        # Step 1. Register tile of output channels x phase columns, phases outermost.
        co_o, co_i = sch.split(co, factors=[None, cfg.co_tile])
        qw_o, qw_i = sch.split(qw, factors=[None, cfg.ow_tile])
        # The phase loops stay serial outside the parallel loop: fusing them into it made TVM 0.27
        # lower wrong input indices for some shapes (seen with 1x1 kernels, stride 2).
        sch.reorder(ph, pw, n, co_o, qh, qw_o, rc, rh, rw, co_i, qw_i)
        sch.parallel(sch.fuse(n, co_o, qh))
        # Step 2. Accumulate in registers; write the tile back once.
        cw = sch.cache_write(conv, 0, "local")
        sch.reverse_compute_at(cw, qw_o)
        vectorize_if_wide(sch, qw_i)
        sch.unroll(co_i)
        sch.decompose_reduction(conv, rc)
        vectorize_if_wide(sch, sch.get_loops(cw)[-1])
        # Step 3. Interleave the phases into NCHW with the bias, in parallel.
        sch.compute_inline(sch.get_sblock("interleave"))
        # Rows are vectorised a register at a time: each vector gathers from the phases, and a gather
        # as wide as a 128-column row took LLVM 0.9 s to compile (0.1 s in register-wide pieces).
        on, oc, oh, ow = sch.get_loops(sch.get_sblock("output"))
        sch.parallel(sch.fuse(on, oc))
        width = extent(ow)
        piece = max(f for f in range(1, min(lanes, width) + 1) if width % f == 0)
        vectorize_if_wide(sch, sch.split(ow, factors=[None, piece])[1])
        return sch
