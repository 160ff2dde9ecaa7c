"""How kernels are scheduled: hand-written rules, tried in one ordered list (specialised first)."""
from .base import ScheduleRule, Workload, apply_first
from .cpu_channel_vector import CpuChannelVector
from .cpu_depthwise import CpuDepthwise
from .cpu_direct import CpuDirect
from .cpu_pointwise import CpuPointwise
from .cpu_transposed import CpuTransposed
from .cuda_direct import CudaDirect
from .cuda_tensorcore import CudaTensorCore
from .fallback import CpuFallback

#: The CPU rule chain, most specialised first; the fallback accepts everything.
CPU_RULES = (CpuTransposed(), CpuDepthwise(), CpuPointwise(), CpuChannelVector(), CpuDirect(), CpuFallback())
#: The CUDA rule chain: tensor cores for the half types on sm_80+ (16+ channels per group on both
#: sides), then the direct rule, which covers every variant.
CUDA_RULES = (CudaTensorCore(), CudaDirect())


def rules_for(target):
    """The rule chain for a target kind."""
    kind = str(target.kind.name)
    if kind == "llvm":
        return CPU_RULES
    if kind == "cuda":
        return CUDA_RULES
    raise ValueError(f"no hand-written schedules for target kind {kind!r} (llvm and cuda have them)")

__all__ = ["ScheduleRule", "Workload", "apply_first", "CPU_RULES", "CUDA_RULES", "rules_for", "CudaDirect", "CudaTensorCore", "CpuChannelVector", "CpuDepthwise", "CpuDirect", "CpuPointwise", "CpuTransposed", "CpuFallback"]
