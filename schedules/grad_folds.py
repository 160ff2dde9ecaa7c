"""Schedules of the small gradient kernels: the padded input gradient folded back (``pad_grad``)
and the bias gradient (a sum per channel), on CPUs and NVIDIA GPUs.

Both are memory-bound passes over a tensor of the input's or the output's size: CPUs take a plane
(image x channel) per task with the rows vectorised; GPUs a thread per element (the fold) or a
block per channel whose threads share the sum (the bias).
"""
from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.meta_schedule.arg_info import ArgInfo

from .base import GPU_THREADS, ScheduleRule, accumulator_lanes, bind_elementwise, native_vector_bits, vectorize_pieces


#: Architectural vector registers of partial sums per channel in the CPU bias gradient: four
#: independent vector adds a step hide the add's latency (3 cycles, 2 ports on Zen 3).  Measured on
#: znver3, 2 threads: 1x32x112x112 0.200 -> 0.030 ms (torch 0.032), 1x144x28x28 0.060 -> 0.007 ms.
BIAS_REGISTERS = 4


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
            bind_elementwise(sch, out)
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
    sum a share of the pixels and then combine (TVM's cross-thread reduction).

    On CPUs a channel's plane (contiguous) is summed as a vector of partial sums (``rfactor``), of
    :data:`BIAS_REGISTERS` registers' lanes or the plane's largest divisor below that, and the
    lanes then added: a scalar running sum (one dependent add per element) took 8x longer."""
    sch = s_tir.Schedule(func)
    total, out = sch.get_sblock("sum"), sch.get_sblock("output")
    c, rn, rh, rw = sch.get_loops(total)
    if str(target.kind.name) == "cuda":
        _, tx = sch.split(sch.fuse(rn, rh, rw), factors=[None, GPU_THREADS])
        sch.bind(c, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        sch.reverse_compute_at(out, c)
        sch.set_scope(total, 0, "local")        # the block's sum, rounded and written by one thread
        return sch
    sch.fuse(rh, rw)
    channel = _vector_partial_sums(sch, total, target)
    sch.reverse_compute_at(out, channel)
    sch.parallel(channel)
    return sch


def _vector_partial_sums(sch: s_tir.Schedule, total, target):
    """Sum each image's plane of ``total`` (loops channel, image, pixels) into a register vector of
    partial sums, added up per channel after the last image; returns the outermost channel loop."""
    _, _, pixels = sch.get_loops(total)
    plane = int(sch.get(pixels).extent)
    grad_output = ArgInfo.from_prim_func(sch.mod["main"])[0]
    bits = 64 if str(grad_output.dtype) == "float64" else 32     # the half types sum in float32
    most = BIAS_REGISTERS * max(1, native_vector_bits(target) // bits)
    lanes = max(f for f in range(1, min(most, plane) + 1) if plane % f == 0)
    if lanes == 1:
        return sch.get_loops(total)[0]
    partial = sch.rfactor(sch.split(pixels, factors=[None, lanes])[1], factor_axis=1)
    sch.reverse_compute_at(total, sch.get_loops(partial)[0])
    sch.set_scope(partial, 0, "local")
    sch.vectorize(sch.get_loops(partial)[-1])
    return sch.get_loops(partial)[0]
