"""Design spaces of a kernel request: ours (the hand-written rule's schedule, its tunable numbers as
MetaSchedule sampling decisions whose default is the hand choice) and MetaSchedule's generic one
(its post-order-apply schedule rules), what ``tune --space`` searches and ``compiler space`` shows.

A design space is a schedule whose trace holds sampling instructions (``sample_perfect_tile``,
``sample_categorical``, ``sample_compute_location``); the search replays the trace with other
decisions.  :func:`decision_points` lists each one with its loop, default decision and number of
choices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Tuple

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from . import build
from .request import KernelRequest
from .search import SPACES


def ours(request: KernelRequest, target: Target) -> ms.space_generator.ScheduleFn:
    """The hand-written rule's design spaces: its schedule, marked with the rule's name and version,
    replayed onto the task's workload (the decisions it samples keep their hand defaults), then each
    of the rule's ``alternatives`` (e.g. other tensor-core tiles), all up to their postprocessing
    steps, which MetaSchedule's own postprocessors take on every candidate (e.g. ``cuda-direct``'s
    cooperative copies, split over whatever thread count a candidate's tiles give)."""
    hand = build.schedule(request, target)
    others = build.alternatives(request, target)

    def schedule(sch: s_tir.Schedule) -> List[s_tir.Schedule]:
        spaces = [sch] + [s_tir.Schedule(sch.mod) for _ in others]
        for space, made in zip(spaces, [hand, *others]):
            made.trace.apply_to_schedule(space, remove_postproc=True)
        return spaces

    return ms.space_generator.ScheduleFn(schedule, sch_rules=[], postprocs="from-target",
                                         mutator_probs="from-target")


def generator(request: KernelRequest, target: Target, space: str = "both") -> ms.space_generator.SpaceGenerator:
    """The space generator of ``space``: ``ours``, ``generic`` (MetaSchedule's post-order-apply)
    or ``both`` (their union: the search draws its population from both)."""
    if space not in SPACES:
        raise ValueError(f"design space {space!r}: expected one of {', '.join(SPACES)}")
    if space == "ours":
        return ours(request, target)
    if space == "generic":
        return ms.space_generator.PostOrderApply()
    return ms.space_generator.SpaceGeneratorUnion([ours(request, target), ms.space_generator.PostOrderApply()])


@dataclass
class DecisionPoint:
    """One sampling instruction of a design space."""

    index: int                     # of the instruction in the trace
    kind: str                      # SamplePerfectTile, SampleCategorical, ...
    where: str                     # the loop it tiles (name and extent) or the values it picks from
    default: object                # the decision the space's trace holds
    choices: Optional[int]         # how many decisions there are (None: not counted)


@dataclass
class DesignSpace:
    origin: str                    # "ours (rule:version)" or "generic"
    schedule: s_tir.Schedule
    points: List[DecisionPoint]

    @property
    def size(self) -> Optional[int]:
        """Schedules the decisions span (the product of the choices; None if one is uncounted)."""
        counts = [p.choices for p in self.points]
        return None if None in counts else math.prod(counts)


def design_spaces(request: KernelRequest, target: Target, space: str = "both") -> List[DesignSpace]:
    """Every design space of ``space`` for the request, ours first, with its decision points."""
    from .records import rule_mark
    mod = build.workload_module(request)
    spaces = []
    for part in (("ours", "generic") if space == "both" else (space,)):
        context = ms.TuneContext(mod=mod, target=target, space_generator=generator(request, target, part),
                                 task_name="space", num_threads=1, rand_state=0)
        for sch in context.generate_design_space():
            mark = rule_mark(sch.trace)
            origin = f"ours ({mark.rule}:{mark.version})" if part == "ours" and mark else part
            spaces.append(DesignSpace(origin, sch, decision_points(mod, sch.trace)))
    return spaces


def decision_points(mod, trace) -> List[DecisionPoint]:
    """The sampling instructions of ``trace`` (replayed on ``mod`` to read each tiled loop's extent)."""
    points: List[DecisionPoint] = []
    sch = s_tir.Schedule(mod)

    def visit(inst, inputs, attrs, decision):
        kind = inst.kind.name
        if kind.startswith("Sample"):
            where, choices = _describe(sch, kind, inputs, attrs)
            points.append(DecisionPoint(len(points), kind, where, _plain(decision), choices))
        return decision

    trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=visit)
    return points


def _plain(value):
    if isinstance(value, (list, tuple)) or type(value).__name__ == "Array":
        return [_plain(v) for v in value]
    return int(value) if hasattr(value, "value") or isinstance(value, int) else value


def _describe(sch: s_tir.Schedule, kind: str, inputs, attrs) -> Tuple[str, Optional[int]]:
    if kind == "SamplePerfectTile":
        loop = sch.get(inputs[0])
        extent, parts, innermost = int(loop.extent), int(attrs[0]), int(attrs[1])
        limit = f", innermost <= {innermost}" if innermost > 0 else ""
        return (f"loop {loop.loop_var.name} (extent {extent}) into {parts}{limit}",
                perfect_tilings(extent, parts, innermost))
    if kind == "SampleCategorical":
        values = [int(v) for v in attrs[0]]
        return f"one of {values}", len(values)
    if kind == "SampleComputeLocation":
        return f"compute location of block {sch.get(inputs[0]).name_hint}", None
    return ", ".join(map(str, attrs)), None


@lru_cache(maxsize=None)
def perfect_tilings(extent: int, parts: int, max_innermost: int = -1) -> int:
    """Ways to write ``extent`` as an ordered product of ``parts`` factors whose innermost is at
    most ``max_innermost`` (<= 0: any): what ``sample_perfect_tile`` chooses from."""
    divisors = [d for d in range(1, extent + 1) if extent % d == 0]
    if parts == 1:
        return 1 if max_innermost <= 0 or extent <= max_innermost else 0
    return sum(perfect_tilings(extent // d, parts - 1, max_innermost) for d in divisors)


def describe(request: KernelRequest, target: Target, space: str = "both") -> str:
    """Each design space's trace, then its decision points (default decision, number of choices)."""
    from targets import target_key
    spaces = design_spaces(request, target, space)
    lines = [f"{request.describe()} for {target_key(target)}: {len(spaces)} design space(s)"]
    for number, design in enumerate(spaces, 1):
        size = f"{design.size} schedules" if design.size is not None else "schedules not counted"
        lines += ["", f"== space {number}/{len(spaces)}: {design.origin}, {len(design.points)} decision "
                      f"point(s), {size}", str(design.schedule.trace).rstrip(), "", "decision points:"]
        if not design.points:
            lines.append("  (none: one schedule)")
        for p in design.points:
            choices = "-" if p.choices is None else str(p.choices)
            lines.append(f"  {p.index + 1:>2}. {p.kind:<22} {p.where:<48} default {str(p.default):<16} "
                         f"choices {choices}")
    return "\n".join(lines) + "\n"


__all__ = ["SPACES", "ours", "generator", "design_spaces", "decision_points", "describe", "perfect_tilings",
           "DesignSpace", "DecisionPoint"]
