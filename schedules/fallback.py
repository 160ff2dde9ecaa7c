"""The always-applicable CPU schedule: parallel over (batch, channel), vectorised innermost output loop.

Used when no specialised rule matches; it never leaves the naive loop nest in place.
"""
from __future__ import annotations

from tvm import s_tir

from .base import ScheduleRule, has_block, vectorize_if_wide


class CpuFallback(ScheduleRule):
    name = "cpu-fallback"

    def apply(self, func, workload, target):
        sch = s_tir.Schedule(func)
        # Step 1. The padding stage is folded into the reduction's reads.
        if has_block(sch, "pad"):
            sch.compute_inline(sch.get_sblock("pad"))
        # Step 2. Parallel over batch x output channels; the epilogue stays beside each row.
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        n, co, oh, ow, *_ = sch.get_loops(conv)
        sch.parallel(sch.fuse(n, co))
        sch.reverse_compute_at(out, oh)
        vectorize_if_wide(sch, sch.get_loops(out)[-1])
        return sch
