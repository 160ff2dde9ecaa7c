"""NVIDIA GPU targets by architecture, with the per-block limits schedules and TVM's verifier check.

Limits are the CUDA programming guide's per-compute-capability table (Technical Specifications):
1024 threads per block and warps of 32 everywhere; 64 Ki 32-bit registers per block; shared memory
per block is the 48 KiB static limit (what TVM's own tags carry; the opt-in maxima of 96-227 KiB
need a dynamic-shared-memory launch attribute the schedules do not use).  ``l2`` is the largest
part of that architecture in common use (V100, T4, A100, A10/RTX 30, L4/RTX 40, H100).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from tvm.target import Target

from .cpu import host_target


@dataclass(frozen=True)
class GpuPreset:
    arch: str                       # sm_XX, what nvcc and TVM's codegen take
    name: str                       # a typical part of that architecture
    max_threads_per_block: int = 1024
    max_shared_memory_per_block: int = 48 * 1024
    registers_per_block: int = 64 * 1024
    thread_warp_size: int = 32
    l2_cache_size_bytes: int = 6 * 1024 * 1024

    @property
    def short_name(self) -> str:
        return f"cuda/{self.arch}"

    def target(self, host: Optional[Target] = None) -> Target:
        """The TVM target for this architecture, with the host CPU as its host."""
        return Target({"kind": "cuda", "arch": self.arch, "max_num_threads": self.max_threads_per_block,
                       "max_threads_per_block": self.max_threads_per_block,
                       "max_shared_memory_per_block": self.max_shared_memory_per_block,
                       "registers_per_block": self.registers_per_block,
                       "thread_warp_size": self.thread_warp_size,
                       "l2_cache_size_bytes": self.l2_cache_size_bytes},
                      host=host or host_target())


MiB = 1024 * 1024
#: By architecture; sm_86 and sm_89 differ from sm_80/sm_90 in L2 and SM count, not in block limits.
PRESETS: Dict[str, GpuPreset] = {p.arch: p for p in (
    GpuPreset("sm_70", "Tesla V100", l2_cache_size_bytes=6 * MiB),
    GpuPreset("sm_75", "Tesla T4", l2_cache_size_bytes=4 * MiB),
    GpuPreset("sm_80", "A100", l2_cache_size_bytes=40 * MiB),
    GpuPreset("sm_86", "A10 / RTX 30", l2_cache_size_bytes=6 * MiB),
    GpuPreset("sm_89", "L4 / RTX 40", l2_cache_size_bytes=48 * MiB),
    GpuPreset("sm_90", "H100", l2_cache_size_bytes=50 * MiB),
)}


def preset(name: str) -> GpuPreset:
    """``cuda/sm_90``, ``sm_90`` or ``cuda`` (the local GPU's architecture)."""
    arch = name.split("/", 1)[1] if name.startswith("cuda/") else name
    if arch == "cuda":
        arch = local_arch()
        if arch is None:
            raise ValueError("target 'cuda' needs a local NVIDIA GPU to detect the architecture; "
                             f"name one instead: {', '.join(p.short_name for p in PRESETS.values())}")
    if arch not in PRESETS:
        raise ValueError(f"unknown CUDA target {name!r}; presets: "
                         f"{', '.join(p.short_name for p in PRESETS.values())}")
    return PRESETS[arch]


def local_arch() -> Optional[str]:
    """The first local GPU's sm_XX, or None without a GPU (asks torch, which asks the driver)."""
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"sm_{major}{minor}"
    except Exception:  # noqa: BLE001 - no driver, no CUDA build of torch: no local GPU
        pass
    return None
