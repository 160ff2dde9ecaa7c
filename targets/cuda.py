"""NVIDIA GPU targets by architecture, with the per-block limits schedules and TVM's verifier check.

Limits are the CUDA programming guide's per-compute-capability table (Technical Specifications):
1024 threads per block and warps of 32 everywhere; 64 Ki 32-bit registers per block; shared memory
per block is the 48 KiB static limit (what TVM's own tags carry).  Each preset also knows its
architecture's opt-in maximum (64-227 KiB of dynamic shared memory: ``opt_in_shared_memory``), which
TVM's CUDA runtime grants a kernel when a launch asks for more than 48 KiB (it sets the function's
maximum dynamic shared memory attribute): the rules that stage more say so themselves
(``with_shared_memory`` gives TVM's verifier the raised limit).  ``l2`` is the largest part of that
architecture in common use (V100, T4, A100, A10/RTX 30, L4/RTX 40, H100).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import contextlib

import tvm
from tvm import tirx
from tvm.target import Target

from .cpu import host_target


@dataclass(frozen=True)
class GpuPreset:
    arch: str                       # sm_XX, what nvcc and TVM's codegen take
    name: str                       # a typical part of that architecture
    max_threads_per_block: int = 1024
    max_shared_memory_per_block: int = 48 * 1024
    #: dynamic shared memory a kernel may opt into (the programming guide's "maximum amount of shared
    #: memory per thread block" per compute capability)
    opt_in_shared_memory: int = 48 * 1024
    registers_per_block: int = 64 * 1024
    thread_warp_size: int = 32
    l2_cache_size_bytes: int = 6 * 1024 * 1024
    multiprocessors: int = 80       # SMs of the typical part (TVM's targets carry no such attribute)

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


def arch_number(target: Target) -> int:
    """The compute capability of a CUDA target as a number (``sm_90`` -> 90; 0 if it names none)."""
    arch = str(target.attrs.get("arch", ""))
    return int(arch[3:].rstrip("a")) if arch.startswith("sm_") else 0


#: Ampere, the first architecture with TF32 tensor cores and cp.async (before it torch's TF32 setting
#: changes nothing)
AMPERE = 80


def has_tf32(target: Target) -> bool:
    """Whether ``target`` is a GPU with TF32 tensor cores (where torch's TF32 setting applies)."""
    return str(target.kind.name) == "cuda" and arch_number(target) >= AMPERE


def compile_context(target: Target):
    """The PassContext a kernel for ``target`` is compiled in: on sm_80+ copies that a schedule's
    software pipeline marks asynchronous become ``cp.async`` (``tirx.use_async_copy``; schedules
    without such marks are unchanged); elsewhere the caller's context."""
    if not (str(target.kind.name) == "cuda" and arch_number(target) >= AMPERE):
        return contextlib.nullcontext()
    return tvm.transform.PassContext(config={"tirx.use_async_copy": True})


def round_to_tf32(x):
    """The float32 TIR value ``x`` rounded to TF32 (8 exponent bits, 10 stored mantissa bits: unit
    roundoff 2**-11), as ``cvt.rna.tf32.f32`` does it on sm_80+ (round to nearest, ties away from
    zero): finite values get half a unit of the 13 dropped bits added to their magnitude (a carry
    into the exponent is the correct rounding), then the dropped bits cleared; infinities and NaNs
    are only cleared.  ptxas lowers the instruction to exactly this (FSETP |x| < inf, IADD 0x1000,
    LOP3 0xffffe000).  The one definition of TF32 operands: the compute of a TF32 request rounds its
    products' operands with it, and the tensor-core intrinsics' descriptions must match that."""
    bits = tirx.reinterpret("uint32", x)
    finite = (bits & tirx.const(0x7FFFFFFF, "uint32")) < tirx.const(0x7F800000, "uint32")
    rounded = tirx.Select(finite, bits + tirx.const(0x1000, "uint32"), bits) & tirx.const(0xFFFFE000, "uint32")
    return tirx.reinterpret("float32", rounded)


KiB, MiB = 1024, 1024 * 1024
#: By architecture; sm_86 and sm_89 differ from sm_80/sm_90 in L2, SM count and opt-in shared memory, not in
#: the static block limits.
PRESETS: Dict[str, GpuPreset] = {p.arch: p for p in (
    GpuPreset("sm_70", "Tesla V100", l2_cache_size_bytes=6 * MiB, multiprocessors=80, opt_in_shared_memory=96 * KiB),
    GpuPreset("sm_75", "Tesla T4", l2_cache_size_bytes=4 * MiB, multiprocessors=40, opt_in_shared_memory=64 * KiB),
    GpuPreset("sm_80", "A100", l2_cache_size_bytes=40 * MiB, multiprocessors=108, opt_in_shared_memory=163 * KiB),
    GpuPreset("sm_86", "A10 / RTX 30", l2_cache_size_bytes=6 * MiB, multiprocessors=72, opt_in_shared_memory=99 * KiB),
    GpuPreset("sm_89", "L4 / RTX 40", l2_cache_size_bytes=48 * MiB, multiprocessors=58, opt_in_shared_memory=99 * KiB),
    GpuPreset("sm_90", "H100", l2_cache_size_bytes=50 * MiB, multiprocessors=132, opt_in_shared_memory=227 * KiB),
)}


def multiprocessors(target: Target) -> int:
    """SMs of the typical part of ``target``'s architecture (the preset's), 80 for another one."""
    preset = PRESETS.get(str(target.attrs.get("arch", "")))
    return preset.multiprocessors if preset else GpuPreset.multiprocessors


def opt_in_shared_memory(target: Target) -> int:
    """Dynamic shared memory per block a kernel for ``target`` may use by opting in (the preset's;
    for an architecture without one, the target's own limit: nothing is assumed)."""
    preset = PRESETS.get(str(target.attrs.get("arch", "")))
    static = int(target.attrs.get("max_shared_memory_per_block", 48 * 1024))
    return max(static, preset.opt_in_shared_memory) if preset else static


def with_shared_memory(target: Target, limit: int) -> Target:
    """``target`` with ``max_shared_memory_per_block`` at ``limit`` (what TVM's GPU verifier checks a
    kernel that opts into more shared memory against); ``target`` itself where that is its limit."""
    if int(target.attrs.get("max_shared_memory_per_block", 0)) == limit:
        return target
    config = dict(target.export())
    config["max_shared_memory_per_block"] = limit
    return Target(config)


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
