"""The host CPU as a TVM LLVM target.

``mcpu`` is the name LLVM detects for this processor (never "native": TVM 0.27 accepts it but
silently builds generic code), ``num-cores`` the cores this process may run on (MetaSchedule
requires it), and the vector width is what LLVM reports for that mcpu.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from tvm.target import Target, codegen


@dataclass(frozen=True)
class CpuInfo:
    """What schedules need to know about a CPU target."""

    mcpu: str
    num_cores: int
    vector_bits: int
    #: architectural vector registers (32 with AVX-512, 16 with AVX2/SSE; NEON has 32)
    vector_registers: int

    @property
    def key(self) -> str:
        """A short, exact name for this target (used for tuning-log folders)."""
        return f"llvm-{self.mcpu}"


def usable_cores() -> int:
    """Cores this process may use (affinity-aware, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def host_target(num_cores: int = 0) -> Target:
    """The host CPU as a TVM target dict: detected mcpu, core count."""
    return Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(),
                   "num-cores": num_cores or usable_cores()})


def cpu_info(target: Target) -> CpuInfo:
    bits = int(codegen.llvm_get_vector_width(target))
    mcpu = str(target.attrs.get("mcpu", "generic"))
    has_avx512 = bool(codegen.llvm_cpu_has_features(["avx512f"], target))
    is_arm = "aarch64" in str(target.attrs.get("mtriple", ""))
    registers = 32 if (has_avx512 or is_arm) else 16
    cores = int(target.attrs.get("num-cores", usable_cores()))
    return CpuInfo(mcpu=mcpu, num_cores=cores, vector_bits=bits, vector_registers=registers)


def host_cpu() -> CpuInfo:
    return cpu_info(host_target())


def vector_lanes(target: Target, element_bits: int) -> int:
    """SIMD lanes for elements of ``element_bits`` on ``target``."""
    return max(1, cpu_info(target).vector_bits // element_bits)
