"""How kernels are scheduled: hand-written rules, tried in one ordered list (specialised first)."""
from .base import NoRule, ScheduleRule, Workload, apply_first
from .cpu_channel_vector import CpuChannelVector
from .cpu_depthwise import CpuDepthwise
from .cpu_depthwise_nhwc import CpuDepthwiseNhwc
from .cpu_direct import CpuDirect
from .cpu_pointwise import CpuPointwise
from .cpu_transposed import CpuTransposed
from .cpu_weight_grad import CpuWeightGrad
from .cuda_depthwise_nhwc import CudaDepthwiseNhwc
from .cuda_direct import CudaDirect
from .cuda_tensorcore import CudaTensorCore
from .cuda_weight_grad import CudaWeightGrad
from .fallback import CpuFallback
from .grad_folds import PadGrad, schedule_bias_grad

#: The CPU rule chain, most specialised first; the fallback accepts every forward request.  Rules
#: serve the request operators they name (``ScheduleRule.operators``): the gradient kernels' rules
#: come first, and the forward rules are never offered a gradient kernel.
CPU_RULES = (CpuWeightGrad(), PadGrad(), CpuTransposed(), CpuDepthwiseNhwc(), CpuDepthwise(), CpuPointwise(),
             CpuChannelVector(), CpuDirect(), CpuFallback())
#: The CUDA rule chain: the gradient kernels' rules, then tensor cores for the half types on sm_80+
#: (16+ channels per group on both sides), channels_last depthwise layers in channel vectors, then
#: the direct rule, which covers every forward variant.
CUDA_RULES = (CudaWeightGrad(), PadGrad(), CudaTensorCore(), CudaDepthwiseNhwc(), CudaDirect())


def rules_for(target):
    """The rule chain for a target kind."""
    kind = str(target.kind.name)
    if kind == "llvm":
        return CPU_RULES
    if kind == "cuda":
        return CUDA_RULES
    raise ValueError(f"no hand-written schedules for target kind {kind!r} (llvm and cuda have them)")

__all__ = ["NoRule", "ScheduleRule", "Workload", "apply_first", "CPU_RULES", "CUDA_RULES", "rules_for", "CudaDepthwiseNhwc", "CudaDirect", "CudaTensorCore", "CpuChannelVector", "CpuDepthwise", "CpuDepthwiseNhwc", "CpuDirect", "CpuPointwise", "CpuTransposed", "CpuFallback", "CpuWeightGrad", "CudaWeightGrad", "PadGrad",
           "schedule_bias_grad"]
