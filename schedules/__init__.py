"""How kernels are scheduled: hand-written rules, tried in one ordered list (specialised first)."""
from .base import ScheduleRule, Workload, apply_first
from .cpu_channel_vector import CpuChannelVector
from .cpu_direct import CpuDirect
from .cpu_transposed import CpuTransposed
from .fallback import CpuFallback

#: The CPU rule chain, most specialised first; the fallback accepts everything.
CPU_RULES = (CpuTransposed(), CpuChannelVector(), CpuDirect(), CpuFallback())

__all__ = ["ScheduleRule", "Workload", "apply_first", "CPU_RULES", "CpuChannelVector", "CpuDirect", "CpuTransposed", "CpuFallback"]
