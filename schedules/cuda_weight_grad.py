"""The weight gradient on NVIDIA GPUs: a thread block per weight element, its threads sharing the
sum over pixels (TVM's cross-thread reduction: each thread sums a strided share, then the block
combines them through warp shuffles and shared memory).

Consecutive threads take consecutive pixels, so both the input and ``gy`` are read coalesced (at
stride 1); the weight has tens of thousands of elements, so the grid fills any GPU.  Half types
accumulate in float32 (the compute's ``conv`` stage).  A register-tiled GEMM form (several taps per
block, staged through shared memory) is the next step for speed.
"""
from __future__ import annotations

from tvm import s_tir

from .base import GPU_THREADS, ScheduleRule, has_block


class CudaWeightGrad(ScheduleRule):
    name = "cuda-weight-grad"
    operators = ("weight_grad",)

    def apply(self, func, workload, target):
        if str(target.kind.name) != "cuda":
            return None
        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        if has_block(sch, "pad"):
            sch.compute_inline(sch.get_sblock("pad"))
        co, ci, r, c, rn, roh, row = sch.get_loops(conv)
        pixels = sch.fuse(rn, roh, row)
        threads = min(GPU_THREADS, int(target.attrs.get("max_threads_per_block", 1024)))
        _, tx = sch.split(pixels, factors=[None, threads])
        element = sch.fuse(co, ci, r, c)
        sch.bind(element, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        sch.reverse_compute_at(out, element)
        sch.set_scope(conv, 0, "local")          # the block's sum, rounded and written by one thread
        return sch
