"""Layer + shape + dtype + target -> compiled kernel, cached per process.

The kernel's arguments are ``(input, weight, [bias,] output)`` as contiguous NCHW tensors.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

import tvm
from tvm import s_tir, te
from tvm.target import Target

from schedules import NoRule, Workload, apply_first, rules_for
from schedules.base import finish, schedule_weight_pack

from . import compute, library_cache, progress, records
from .request import NCHW, KernelRequest

ENTRY = "conv"
PACK_ENTRY = "pack_weight"


@dataclass
class Kernel:
    """A compiled convolution and how it was made."""

    function: object                 # tvm_ffi Function taking (input, weight, [bias,] output)
    executable: object               # tvm Executable (export_library, time_evaluator through .mod)
    schedule: str                    # name of the schedule rule (or tuning record) that served it
    target: Target
    request: KernelRequest           # what it computes
    compile_seconds: float
    weight_block: object = None            # set (channels per block, or a PhaseTaps): ``function``
    #                                        takes the weight as ``pack`` wrote it
    pack: Optional[object] = None          # tvm_ffi Function (weight, packed_weight)
    packed_weight_shape: Optional[Tuple[int, ...]] = None
    library: Optional[str] = None          # the cached .so it was loaded from (None: compiled in memory)

    def __call__(self, *args):
        self.function(*args)


class Scheduled(NamedTuple):
    rule: str                      # the rule's name
    mod: tvm.IRModule
    weight_block: object           # the weight argument's packing (``ScheduleRule.weight_block``), or None
    trace: object                  # the schedule's s_tir Trace (what a tuning record stores)


def workload_of(request: KernelRequest) -> Workload:
    """What the schedule rules see of a request."""
    return Workload(spec=request.spec, input_shape=request.input_shape, output_shape=request.output_shape,
                    dtype=request.dtype, accumulate_dtype=compute.ACCUMULATE_DTYPE[request.dtype],
                    epilogue=request.epilogue.steps, operator=request.operator, tf32=request.tf32,
                    layout=request.layout)


def takes(request: KernelRequest, target: Target) -> bool:
    """Whether some rule of ``target``'s chain may take ``request`` (``ScheduleRule.takes``: from the
    workload alone, nothing scheduled; a call asks for a layout other than NCHW only where one may)."""
    workload = workload_of(request)
    return any(rule.takes(workload, target) for rule in rules_for(target))


def prim_func(request: KernelRequest, weight_block=None):
    """The unscheduled PrimFunc of a request (what MetaSchedule and the rules start from).

    With ``weight_block`` its weight argument is pre-packed (``compute.packed_weight_shape``).
    """
    return te.create_prim_func(compute.define(request, weight_block)).with_attr("global_symbol", ENTRY)


def schedule(request: KernelRequest, target: Target, rules=None, prepacked: bool = False) -> Scheduled:
    """The request scheduled by the first hand-written rule that takes it.

    ``prepacked``: the rule may ask for its weights pre-packed (then the module packs them once).
    """
    rule, sch, block = apply_first(rules or rules_for(target), lambda block: prim_func(request, block),
                                   workload_of(request), target, prepacked)
    return Scheduled(rule.name, sch.mod, block, sch.trace)


def alternatives(request: KernelRequest, target: Target) -> List[Scheduled]:
    """The other schedules the rule serving ``request`` offers a search (``ScheduleRule.alternatives``),
    marked and finished as its own."""
    rules = rules_for(target)
    rule, _, _ = apply_first(rules, lambda block: prim_func(request, block), workload_of(request), target)
    return [Scheduled(rule.name, sch.mod, None, sch.trace)
            for sch in (finish(alt, rule)
                        for alt in rule.alternatives(prim_func(request), workload_of(request), target))]


def workload_module(request: KernelRequest) -> tvm.IRModule:
    """The IRModule MetaSchedule tunes and looks records up by (torch-layout weights)."""
    return tvm.IRModule({"main": prim_func(request)})


workload_hash = records.workload_hash


#: A record replaces the hand-written schedule only when it measured at least this much faster than
#: the hand schedule's own record: back-to-back measurements of one kernel on this machine differ by
#: 1-3%, and the hand path keeps its once-per-module weight packing and its short compile.
RECORD_MARGIN = 0.03


def tuned_schedule(request: KernelRequest, target: Target, database_dir) -> Optional[Scheduled]:
    """The database's best search record for exactly this workload, replayed; None when it does not
    beat the record of the hand-written schedule as its rule makes it now by ``RECORD_MARGIN`` (the
    hand path packs weights once instead), or when there is no such hand record to compare with
    (the rule changed since the search: re-measure, see tuning_logs/README.md).  Records of older
    rule versions are never served (:func:`records.classify`)."""
    mod = workload_module(request)
    ranked = records.workload_records(database_dir, target, mod)        # fastest first
    if not ranked:
        return None
    kinds = records.classify(ranked, schedule(request, target).trace, records.rule_versions(target))
    if not kinds.hand or not kinds.searched:
        return None
    record = kinds.searched[0]
    if records.mean_secs(record) > records.mean_secs(kinds.hand[0]) * (1 - RECORD_MARGIN):
        return None
    sch = s_tir.Schedule(mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return Scheduled(f"tuned:{workload_hash(mod)}", sch.mod, None, record.trace)


def _with_weight_pack(mod: tvm.IRModule, request: KernelRequest, block, target: Target) -> tvm.IRModule:
    """``mod`` plus the kernel that packs torch-layout weights for it (on ``target``'s device)."""
    pack = te.create_prim_func(compute.pack_weight(request.spec, request.dtype, block)).with_attr(
        "global_symbol", PACK_ENTRY)
    return tvm.IRModule({ENTRY: mod["main"], PACK_ENTRY: schedule_weight_pack(pack, target).mod["main"]})


def compile_kernel(request: KernelRequest, target: Target, prepacked: bool = False, database=None) -> Kernel:
    """Schedule and compile: the tuning database's record for the exact workload if it has one
    (``database``: a folder, None for the default one, False for none), else the hand-written rule
    chain; ``prepacked`` lets a hand schedule take weights packed by ``Kernel.pack``."""
    start = time.perf_counter()
    chosen = None
    if database is not False:
        chosen = tuned_schedule(request, target, records.database_dir(target, database))
    if chosen is None:
        chosen = schedule(request, target, prepacked=prepacked)
    name, mod, block, _ = chosen
    if block:
        mod = _with_weight_pack(mod, request, block, target)
    # host CPU: a cached shared library whose parallel loops run on torch's OpenMP threads (threads.py)
    executable, library = library_cache.load(mod, target)
    return Kernel(function=executable[ENTRY], executable=executable, schedule=name, target=target,
                  request=request, compile_seconds=time.perf_counter() - start, weight_block=block,
                  pack=executable[PACK_ENTRY] if block else None,
                  packed_weight_shape=compute.packed_weight_shape(request.spec, block) if block else None,
                  library=str(library) if library else None)


_CACHE: Dict[tuple, Kernel] = {}
_LOCK = threading.Lock()


def _cache_key(request: KernelRequest, target: Target, prepacked: bool, database) -> tuple:
    db = False if database is False else str(records.database_dir(target, database))
    return (request, str(target), prepacked, db)


def cached(request: KernelRequest, target: Target, prepacked: bool = False, database=None) -> bool:
    """Whether :func:`get_kernel` has this kernel already (in this process)."""
    with _LOCK:
        return _cache_key(request, target, prepacked, database) in _CACHE


def get_kernel(request: KernelRequest, target: Target, prepacked: bool = False, database=None) -> Kernel:
    """The cached kernel for (request, target, database), compiled on first use.  A request in
    another layout than NCHW that every rule declines gets the NCHW kernel (``kernel.request`` says
    which layout its arguments take)."""
    key = _cache_key(request, target, prepacked, database)
    with _LOCK:
        kernel = _CACHE.get(key)
        if kernel is None:
            with progress.step(f"compiling {request.describe()} for {records.target_key(target)}"):
                try:
                    kernel = compile_kernel(request, target, prepacked, database)
                except NoRule:
                    if request.layout == NCHW:
                        raise
                    nchw = dataclasses.replace(request, layout=NCHW)
                    nchw_key = _cache_key(nchw, target, prepacked, database)
                    kernel = _CACHE.get(nchw_key) or compile_kernel(nchw, target, prepacked, database)
                    _CACHE[nchw_key] = kernel
            _CACHE[key] = kernel
    return kernel


_GENERATION = [0]


def generation() -> int:
    """Bumped by :func:`clear_cache`: per-module dispatch memos made before it are stale."""
    return _GENERATION[0]


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
        _GENERATION[0] += 1
