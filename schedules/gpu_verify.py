"""TVM's GPU verifier (MetaSchedule's VerifyGPUCode postprocessor) on a scheduled module."""
from __future__ import annotations

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms


def passes_gpu_verification(mod, target) -> bool:
    """True if the kernel fits ``target``'s threads-per-block, shared-memory and vector limits,
    as checked after the lowering passes MetaSchedule runs before it (VerifyGPUCode)."""
    ctx = ms.TuneContext(mod=mod, target=target, space_generator=ms.space_generator.PostOrderApply(
        sch_rules=[], postprocs=[ms.postproc.VerifyGPUCode()], mutator_probs={}), task_name="verify")
    (postproc,) = ctx.space_generator.postprocs
    return bool(postproc.apply(s_tir.Schedule(mod)))
