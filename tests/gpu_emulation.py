"""Run a CUDA-scheduled kernel on the CPU, to check its numbers where there is no GPU.

The scheduled TIR (after every schedule primitive, so with the regions TVM derived for the shared
memory stages) is kept as it is, except that each thread binding becomes a serial loop and shared
and local buffers become ordinary ones.  Every (block, thread) pair then runs in turn: each thread
stages its block's whole shared window itself before its own multiply-adds, which is what the
block's threads do together between two barriers.  So a wrong staged region, a wrong tap index or
a wrong tile split shows up as wrong numbers here; races and missing barriers do not (TVM inserts
the barriers itself, and those need a GPU to observe), nor does MetaSchedule's software pipelining,
which is dropped.
"""
from __future__ import annotations

import re

import tvm
from tvm.target import Target

from compiler import build
from compiler.request import KernelRequest
from compiler.spec import ConvSpec
from targets import host_target

_THREAD_LOOP = re.compile(r'T\.thread_binding\(([^()]*?), thread="[^"]+"')   # annotations may follow
_GPU_SCOPE = re.compile(r', scope="(shared|shared\.dyn|local)"')
# MetaSchedule's software pipelining (async copies into shared memory) reorders the stages of a
# loop without changing what it computes, and lowers to GPU-only intrinsics: dropped here.
_PIPELINE = re.compile(r', annotations=\{[^{}]*"software_pipeline[^{}]*\}')


def serialised(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with thread bindings as serial loops and GPU memory scopes as global memory."""
    text = mod.script()
    if "T.thread_binding" not in text:
        raise ValueError("the module is not bound to GPU threads")
    text = _PIPELINE.sub("", _GPU_SCOPE.sub("", _THREAD_LOOP.sub(r"T.serial(\1", text)))
    return tvm.script.from_source(text)


def compile_serialised(mod: tvm.IRModule):
    """A CUDA-scheduled module's entry, compiled for the host CPU: it takes ``(input, weight,
    [bias,] output)`` as the GPU kernel does."""
    (entry,) = [gv.name_hint for gv in mod.get_global_vars()]
    return tvm.compile(serialised(mod), target=host_target())[entry]


def emulate(spec: ConvSpec, input_shape, dtype: str, gpu: Target, output_padding=None, rules=None):
    """The hand-written CUDA schedule for ``gpu`` (of ``rules``, default the CUDA chain), compiled for
    the host CPU: (rule name, function).  Tensorized schedules need their intrinsics' descriptions
    instead of the PTX: ``tests/test_tensorcore.py`` replays them without ``Tensorize``."""
    scheduled = build.schedule(KernelRequest(spec, input_shape, dtype, output_padding), gpu, rules=rules)
    if scheduled.weight_block:
        raise ValueError("GPU schedules take torch-layout weights")
    return scheduled.rule, compile_serialised(scheduled.mod)
