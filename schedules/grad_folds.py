"""Schedules of the small gradient kernels: the padded input gradient folded back (``pad_grad``)
and the bias gradient (a sum per channel), on CPUs and NVIDIA GPUs.

Both are memory-bound passes over a tensor of the input's or the output's size: CPUs take a plane
(image x channel) per task with the rows vectorised; GPUs a thread per element (the fold) or a
block per channel whose threads share the sum (the bias).
"""
from __future__ import annotations

from tvm import s_tir

from .base import ScheduleRule, accumulator_lanes, vectorize_pieces

#: Threads per block of the GPU passes: 8 warps, as the direct rule's blocks.
GPU_THREADS = 256


class PadGrad(ScheduleRule):
    """The fold of ``compute.pad_grad``: a plane per task (CPU) or an element per thread (GPU); the
    column fold is computed per plane, right before the row fold reads it."""

    name = "pad-grad"
    operators = ("pad_grad",)

    def apply(self, func, workload, target):
        sch = s_tir.Schedule(func)
        fold_w, fold_h, out = (sch.get_sblock(name) for name in ("fold_w", "fold_h", "output"))
        sch.compute_inline(fold_h)
        if str(target.kind.name) == "cuda":
            sch.compute_inline(fold_w)
            bx, tx = sch.split(sch.fuse(*sch.get_loops(out)), factors=[None, GPU_THREADS])
            sch.bind(bx, "blockIdx.x")
            sch.bind(tx, "threadIdx.x")
            return sch
        if str(target.kind.name) != "llvm":
            return None
        n, c, _, w = sch.get_loops(out)
        plane = sch.fuse(n, c)
        sch.parallel(plane)
        sch.compute_at(fold_w, plane)
        lanes = accumulator_lanes(workload, target)
        vectorize_pieces(sch, w, lanes)
        vectorize_pieces(sch, sch.get_loops(fold_w)[-1], lanes)
        return sch


def schedule_bias_grad(func, target) -> s_tir.Schedule:
    """``compute.bias_grad``: CPUs a task per channel, GPUs a block per channel whose threads each
    sum a share of the pixels and then combine (TVM's cross-thread reduction)."""
    sch = s_tir.Schedule(func)
    total, out = sch.get_sblock("sum"), sch.get_sblock("output")
    c, rn, rh, rw = sch.get_loops(total)
    pixels = sch.fuse(rn, rh, rw)
    if str(target.kind.name) == "cuda":
        _, tx = sch.split(pixels, factors=[None, GPU_THREADS])
        sch.bind(c, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        sch.reverse_compute_at(out, c)
        sch.set_scope(total, 0, "local")        # the block's sum, rounded and written by one thread
        return sch
    sch.parallel(c)
    sch.reverse_compute_at(out, c)
    return sch
