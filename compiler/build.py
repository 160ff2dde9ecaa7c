"""Layer + shape + dtype + target -> compiled kernel, cached per process.

The kernel's arguments are ``(input, weight, [bias,] output)`` as contiguous NCHW tensors.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import tvm
from tvm import te
from tvm.target import Target

from schedules import CPU_RULES, Workload, apply_first

from . import compute
from .spec import ConvSpec

ENTRY = "conv"


@dataclass
class Kernel:
    """A compiled convolution and how it was made."""

    function: object                 # tvm_ffi Function taking (input, weight, [bias,] output)
    executable: object               # tvm Executable (export_library, time_evaluator through .mod)
    schedule: str                    # name of the schedule rule (or tuning record) that served it
    target: Target
    input_shape: Tuple[int, int, int, int]
    output_shape: Tuple[int, int, int, int]
    dtype: str
    compile_seconds: float

    def __call__(self, *args):
        self.function(*args)


def workload_of(spec: ConvSpec, input_shape, dtype: str, output_padding=None) -> Workload:
    out_shape = spec.output_shape(input_shape, output_padding)
    return Workload(spec=spec, input_shape=tuple(input_shape), output_shape=tuple(out_shape),
                    dtype=dtype, accumulate_dtype=compute.ACCUMULATE_DTYPE[dtype])


def prim_func(spec: ConvSpec, input_shape, dtype: str, output_padding=None):
    """The unscheduled PrimFunc of a layer (what MetaSchedule and the rules start from)."""
    tensors = compute.define(spec, input_shape, dtype, output_padding)
    return te.create_prim_func(tensors).with_attr("global_symbol", ENTRY)


def schedule(spec: ConvSpec, input_shape, dtype: str, target: Target, output_padding=None, rules=None):
    """(rule name, scheduled IRModule) for the layer, from the hand-written rule chain."""
    func = prim_func(spec, input_shape, dtype, output_padding)
    rule, sch = apply_first(rules or CPU_RULES, func, workload_of(spec, input_shape, dtype, output_padding),
                            target)
    return rule.name, sch.mod


def compile_kernel(spec: ConvSpec, input_shape: Sequence[int], dtype: str, target: Target,
                   output_padding=None) -> Kernel:
    start = time.perf_counter()
    name, mod = schedule(spec, input_shape, dtype, target, output_padding)
    executable = tvm.compile(mod, target=target)
    return Kernel(function=executable[ENTRY], executable=executable, schedule=name, target=target,
                  input_shape=tuple(input_shape),
                  output_shape=tuple(spec.output_shape(input_shape, output_padding)), dtype=dtype,
                  compile_seconds=time.perf_counter() - start)


_CACHE: Dict[tuple, Kernel] = {}
_LOCK = threading.Lock()


def get_kernel(spec: ConvSpec, input_shape: Sequence[int], dtype: str, target: Target,
               output_padding=None) -> Kernel:
    """The cached kernel for (layer, shape, dtype, target), compiled on first use."""
    op = tuple(output_padding) if spec.transposed else None
    key = (spec.forward_key(), op, tuple(input_shape), dtype, str(target))
    with _LOCK:
        kernel = _CACHE.get(key)
        if kernel is None:
            kernel = compile_kernel(spec, input_shape, dtype, target, output_padding)
            _CACHE[key] = kernel
    return kernel


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
