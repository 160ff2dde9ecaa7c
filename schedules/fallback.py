"""The always-applicable CPU schedule: parallel over (batch, channel), vectorised innermost output loop.

Used when no specialised rule matches; it never leaves the naive loop nest in place.
"""
from __future__ import annotations

from tvm import s_tir

from .base import CPU_UNROLL_STEPS, ScheduleRule, has_block, vectorize_if_wide


class CpuFallback(ScheduleRule):
    name = "cpu-fallback"
    #: 2: the auto-unroll depth a decision (``CPU_UNROLL_STEPS``; the same kernel)
    version = 2
    unroll_steps = CPU_UNROLL_STEPS

    def apply(self, func, workload, target):
        sch = s_tir.Schedule(func)
        # Step 1. The padding stage is folded into the reduction's reads.
        if has_block(sch, "pad"):
            sch.compute_inline(sch.get_sblock("pad"))
        if has_block(sch, "interleave"):
            sch.compute_inline(sch.get_sblock("interleave"))
        # Step 2. Parallel over batch x output channels, for the reduction and for the epilogue.
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        loops = sch.get_loops(conv)
        sch.parallel(sch.fuse(loops[0], loops[1]))
        on, oc, _, ow = sch.get_loops(out)
        sch.parallel(sch.fuse(on, oc))
        vectorize_if_wide(sch, ow)
        return sch
