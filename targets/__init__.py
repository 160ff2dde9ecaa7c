"""Where kernels run: TVM target descriptions (host CPU; GPU presets come with the CUDA work)."""
from .cpu import CpuInfo, cpu_info, host_cpu, host_target, vector_lanes

__all__ = ["CpuInfo", "cpu_info", "host_cpu", "host_target", "vector_lanes"]
