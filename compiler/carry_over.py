"""Carry a hand record over to its rule's new version where the kernel did not change.

A rule's version is bumped whenever the schedule it makes changes (tuning_logs/README.md), and that
includes its *trace*: making a hand tile a sampling decision (so a search can mutate it) changes the
trace but not the kernel.  The hand records measured before then are stale, and the rule's search
records can no longer be compared with a hand record, until the hand schedule is re-measured on the
target, which is impossible where the records came from another machine (the shipped
``llvm-znver4`` records on a Zen 3).

Here the measurement is carried instead of repeated, and only where it is the same kernel: a stale
record without sampling decisions or with its rule's default ones (an older version's hand
schedule, not a search around it) whose schedule compiles, for the record's own target, to the
same machine code as the rule's current schedule (the host assembly and a GPU kernel's PTX,
compared without assembler directives: :func:`machine_code`) is committed again under the current
trace with the measured times it had.  Anything else stays stale
until a ``tune --trials 0`` on the target re-measures it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from . import build, records


@dataclass(frozen=True)
class Carried:
    """One hand record committed again under its rule's current trace."""

    layer: str
    rule: str               # "name:version" of the current hand schedule
    was: str                # the stale record's mark ("name:version", or "unmarked")
    ms: float               # its measured mean time


def machine_code(mod: tvm.IRModule, target: Target) -> str:
    """What ``mod`` compiles to for ``target``: the host assembly and each CUDA module's PTX (nvcc
    on its source: the source names loop variables, which a unit loop more or less renames), without
    assembler directives and comments (section names, register declarations, debug and file
    metadata), which name the build rather than the kernel."""
    from .cuda_binary import compile_device_code
    executable = tvm.compile(mod, target=target)
    parts, pending = [], [executable.mod]
    while pending:
        module = pending.pop()
        pending.extend(module.imports)
        try:
            if module.kind == "cuda":
                text = compile_device_code(module.inspect_source(), target, "ptx").decode()
            else:
                text = module.inspect_source("asm" if module.kind == "llvm" else "")
        except (RuntimeError, ValueError, AttributeError):   # a module without code to show
            continue
        parts.append("\n".join(line for line in text.splitlines()
                               if not line.strip().startswith((".", "#", ";", "//")) or line.strip().startswith(".L")))
    return "\n\n".join(parts)


def _decisions(trace) -> List[str]:
    """A trace's sampling decisions, in order, each as JSON."""
    _, decisions = trace.as_json(remove_postproc=True)
    return [json.dumps(d, default=records._plain) for _, d in decisions]


def _defaults_of_older_version(decisions: List[str], defaults: List[str]) -> bool:
    """Whether ``decisions`` can be an older version's hand schedule's: its rule's default decisions
    then, which are the current defaults less the decisions later versions added (e.g. the unroll
    depth): a subsequence of them."""
    remaining = iter(defaults)
    return all(d in remaining for d in decisions)


def _replayed(trace, mod: tvm.IRModule) -> tvm.IRModule:
    sch = s_tir.Schedule(mod)
    trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod


def carry_over(db_dir, target: Target, requests: Optional[Dict[str, object]] = None) -> List[Carried]:
    """Carry over, into a run folder of ``db_dir``, every hand record of the workloads of ``requests``
    (workload hash -> KernelRequest; default: those :func:`compiler.report.known_requests` names)
    whose rule changed its trace but not its kernel (see the module docstring).  Workloads that
    already have a record of their current hand schedule are left alone."""
    from .report import describe, known_requests
    db_dir = Path(db_dir)
    requests = known_requests(db_dir) if requests is None else requests
    versions = records.rule_versions(target)
    carried: List[Carried] = []
    for request in requests.values():
        mod = build.workload_module(request)
        ranked = records.workload_records(db_dir, target, mod)
        if not ranked:
            continue
        hand = build.schedule(request, target)
        kinds = records.classify(ranked, hand.trace, versions)
        defaults = _decisions(hand.trace)
        old_hands = [r for r in kinds.stale if _defaults_of_older_version(_decisions(r.trace), defaults)]
        if kinds.hand or not old_hands:
            continue
        current = machine_code(hand.mod, target)
        same: Dict[str, bool] = {}
        matching = []
        for record in old_hands:
            key = records.trace_key(record.trace)
            if key not in same:
                same[key] = machine_code(_replayed(record.trace, mod), target) == current
            if same[key]:
                matching.append(record)
        if not matching:
            continue
        mark = records.rule_mark(hand.trace)
        with records.RunFolder(db_dir) as run:
            writer = run.database()
            workload = writer.commit_workload(mod)
            for record in matching:
                writer.commit_tuning_record(ms.database.TuningRecord(
                    hand.trace, workload, record.run_secs, target, record.args_info))
                was = records.rule_mark(record.trace)
                carried.append(Carried(describe(request), f"{mark.rule}:{mark.version}",
                                       f"{was.rule}:{was.version}" if was else "unmarked",
                                       records.mean_secs(record) * 1e3))
    return carried


__all__ = ["carry_over", "machine_code", "Carried"]
