"""TVM's GPU verifier (MetaSchedule's VerifyGPUCode postprocessor) on a scheduled module."""
from __future__ import annotations

from typing import Callable, Optional, TypeVar

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms


def passes_gpu_verification(mod, target) -> bool:
    """True if the kernel fits ``target``'s threads-per-block, shared-memory and vector limits,
    as checked after the lowering passes MetaSchedule runs before it (VerifyGPUCode)."""
    ctx = ms.TuneContext(mod=mod, target=target, space_generator=ms.space_generator.PostOrderApply(
        sch_rules=[], postprocs=[ms.postproc.VerifyGPUCode()], mutator_probs={}), task_name="verify")
    (postproc,) = ctx.space_generator.postprocs
    return bool(postproc.apply(s_tir.Schedule(mod)))


Config = TypeVar("Config")


def first_verified(config: Optional[Config], schedule: Callable[[Config], s_tir.Schedule],
                   smaller: Callable[[Config], Optional[Config]], target,
                   finish: Optional[Callable[[s_tir.Schedule], s_tir.Schedule]] = None) -> Optional[s_tir.Schedule]:
    """``schedule(config)`` for the first of ``config``, ``smaller(config)``, ... that TVM can
    schedule and whose kernel passes the verifier on ``target``; None when every size fails.
    (A tile size that some schedule primitive refuses, e.g. a GEMM padding the transposed form's
    phase interleave cannot be inlined over, is a size that fails.)  ``finish``: the steps still to
    come on the schedule (the rule's ``postprocess``), applied to a copy for the verifier."""
    while config is not None:
        try:
            sch = schedule(config)
        except s_tir.ScheduleError:
            sch = None
        if sch is not None and passes_gpu_verification((finish(sch.copy()) if finish else sch).mod, target):
            return sch
        config = smaller(config)
    return None
