"""Where kernels run: TVM target descriptions (the host CPU, NVIDIA GPU presets) and their names."""
from __future__ import annotations

import platform
from typing import Union

from tvm.target import Target

from .cpu import CpuInfo, cpu_info, host_cpu, host_target, vector_lanes
from .cuda import PRESETS, GpuPreset, local_arch, preset

TargetLike = Union[None, str, dict, Target]


def resolve(target: TargetLike = None) -> Target:
    """A TVM target from what users write: None or ``"llvm"`` (the host CPU), ``"cuda/sm_90"``,
    ``"cuda"`` (the local GPU), a JSON-dict target, or a Target."""
    if target is None or target == "llvm":
        return host_target()
    if isinstance(target, Target):
        return target
    if isinstance(target, dict):
        target = dict(target)
        if target.get("kind") == "llvm" and "num-cores" not in target:
            target["num-cores"] = host_cpu().num_cores       # MetaSchedule needs it
        return Target(target)
    if isinstance(target, str) and (target == "cuda" or target.startswith(("cuda/", "sm_"))):
        return preset(target).target()
    raise ValueError(f"unknown target {target!r}: use 'llvm', 'cuda/sm_XX' "
                     f"({', '.join(PRESETS)}), 'cuda', or a JSON-dict target")


def target_key(target: Target) -> str:
    """The exact name of a target, used for tuning-log folders: ``llvm-znver4``,
    ``llvm-aarch64-linux-gnu-neoverse-v1`` for a foreign triple, ``cuda-sm_90``."""
    kind = str(target.kind.name)
    if kind == "cuda":
        return f"cuda-{target.attrs.get('arch', 'sm_50')}"
    if kind == "llvm":
        triple = str(target.attrs.get("mtriple", ""))
        arch = triple.split("-")[0] if triple else ""
        host_arch = platform.machine()
        prefix = f"llvm-{triple}-" if triple and arch != host_arch else "llvm-"
        return prefix + str(target.attrs.get("mcpu", "generic"))
    return kind


__all__ = ["CpuInfo", "cpu_info", "host_cpu", "host_target", "vector_lanes", "PRESETS", "GpuPreset",
           "local_arch", "preset", "resolve", "target_key", "TargetLike"]
