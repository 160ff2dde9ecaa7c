"""The schedule-rule interface (as TVM dlight's): ``apply`` returns a Schedule, or None for "not mine"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

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

    def weight_block(self, workload: Workload, target: Target) -> Optional[int]:
        """Output channels per block if this rule wants the weight pre-packed into
        ``[co/block, ci, kh, kw, block]`` (once, outside the kernel), else None."""
        return None

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> Optional[s_tir.Schedule]:
        raise NotImplementedError


def apply_first(rules: Sequence[ScheduleRule], make_func: Callable[[Optional[int]], tirx.PrimFunc],
                workload: Workload, target: Target, prepacked: bool = False
                ) -> Tuple[ScheduleRule, s_tir.Schedule, Optional[int]]:
    """Apply the first rule in ``rules`` that accepts the workload: (rule, schedule, weight block).

    ``make_func(weight_block)`` gives the PrimFunc with torch-layout weights (None) or pre-packed
    ones; rules are offered pre-packed weights only when ``prepacked``.
    """
    for rule in rules:
        block = rule.weight_block(workload, target) if prepacked else None
        sch = rule.apply(make_func(block), workload, target)
        if sch is not None:
            return rule, sch, block
    raise ValueError(f"no schedule rule accepts {workload}")


def schedule_weight_pack(func: tirx.PrimFunc) -> s_tir.Schedule:
    """The packing kernel: parallel over channel blocks, the block's channels vectorised."""
    sch = s_tir.Schedule(func)
    loops = sch.get_loops(sch.get_sblock("packed_weight"))
    sch.parallel(loops[0])
    vectorize_if_wide(sch, loops[-1])
    return sch


def schedule_pad(sch: s_tir.Schedule, workload: Workload, by_rows: bool = False) -> None:
    """Materialise the padded input once, parallel over (batch, channel) planes, or over their rows
    (``by_rows``: a 3-channel stem has 3 planes for the cores to share; 3% faster on the 7x7 stem).

    Rows are vectorised only for zero padding (a plain copy): the index maps of reflect, replicate
    and circular padding turn a vectorised row into a gather of the whole row, which took LLVM 2.8 s
    to compile for the 262-wide rows of a 7x7 layer on 256x256, for a pass that is ~1% of the run.
    """
    if not has_block(sch, "pad"):
        return
    pn, pc, ph, pw = sch.get_loops(sch.get_sblock("pad"))
    sch.parallel(sch.fuse(pn, pc, ph) if by_rows else sch.fuse(pn, pc))
    if workload.spec.padding_mode == "zeros":
        vectorize_if_wide(sch, pw)


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
