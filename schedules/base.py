"""The schedule-rule interface (as TVM dlight's): ``apply`` returns a Schedule, or None for "not mine"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from tvm import s_tir, tirx
from tvm.target import Target

from targets.cpu import vector_lanes


@dataclass(frozen=True)
class Workload:
    """What a rule may look at besides the PrimFunc: the layer, its shapes and dtype."""

    spec: "object"            # compiler.spec.ConvSpec (kept untyped: schedules must not import compiler)
    input_shape: Tuple[int, int, int, int]
    output_shape: Tuple[int, int, int, int]
    dtype: str
    accumulate_dtype: str


def accumulator_lanes(workload: Workload, target: Target) -> int:
    """SIMD lanes of the accumulation type (float32 for the half types) on ``target``."""
    return vector_lanes(target, 64 if workload.accumulate_dtype == "float64" else 32)


class ScheduleRule:
    """A hand-written schedule for one pattern of convolution on one kind of target."""

    name = "rule"

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> Optional[s_tir.Schedule]:
        raise NotImplementedError


def apply_first(rules: Sequence[ScheduleRule], func: tirx.PrimFunc, workload: Workload,
                target: Target) -> Tuple[ScheduleRule, s_tir.Schedule]:
    """Apply the first rule in ``rules`` that accepts the workload."""
    for rule in rules:
        sch = rule.apply(func, workload, target)
        if sch is not None:
            return rule, sch
    raise ValueError(f"no schedule rule accepts {workload}")


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001 - TVM raises a generic ScheduleError subclass
        return False


def vectorize_if_wide(sch: s_tir.Schedule, loop) -> None:
    """Vectorise ``loop`` unless it has a single iteration (TVM refuses those)."""
    extent = sch.get(loop).extent
    if not isinstance(extent, tirx.IntImm) or extent.value > 1:
        sch.vectorize(loop)
