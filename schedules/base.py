"""The schedule-rule interface (as TVM dlight's): ``apply`` returns a Schedule, or None for "not mine"."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from tvm import s_tir, tirx
from tvm.target import Target

from targets.cpu import cpu_info, vector_lanes


@dataclass(frozen=True)
class Workload:
    """What a rule may look at besides the PrimFunc: the layer, its shapes and dtype."""

    spec: "object"            # compiler.spec.ConvSpec (kept untyped: schedules must not import compiler)
    input_shape: Tuple[int, int, int, int]
    output_shape: Tuple[int, int, int, int]
    dtype: str
    accumulate_dtype: str
    #: the request's epilogue steps after the bias (a residual "add", activations): stage ``output``
    epilogue: Tuple[str, ...] = ()
    #: what the kernel computes (``compiler.request.OPERATORS``): "forward", "weight_grad", "pad_grad"
    operator: str = "forward"
    #: a float32 request computed with TF32 operands (the compute rounds them): tensor cores may serve
    tf32: bool = False
    #: the activations' memory layout (``compiler.request.LAYOUTS``): "NCHW", or "NHWC" (channels_last
    #: bytes, the weight ``[co, kh, kw, ci/groups]``; ``input_shape``/``output_shape`` stay NCHW)
    layout: str = "NCHW"


def _accumulator_bits(workload: Workload) -> int:
    return 64 if workload.accumulate_dtype == "float64" else 32


def accumulator_lanes(workload: Workload, target: Target) -> int:
    """SIMD lanes of the accumulation type (float32 for the half types) on ``target``."""
    return vector_lanes(target, _accumulator_bits(workload))


def native_vector_bits(target: Target) -> int:
    """Bits of one architectural vector register of ``target``.

    LLVM's preferred width (``cpu_info().vector_bits``, the rules' vector) can be wider than the
    registers: TVM 0.27 reports 512 bits for AVX2-only x86 CPUs (znver3, haswell), whose 16
    registers hold 256 bits each, so there a 16-lane float32 vector occupies two registers.
    """
    bits = cpu_info(target).vector_bits
    try:
        from tvm.target import codegen
        if codegen.llvm_cpu_has_features(["avx"], target) and \
                not codegen.llvm_cpu_has_features(["avx512f"], target):
            return min(bits, 256)
    except Exception:  # noqa: BLE001 - a target LLVM cannot query features of keeps its width
        pass
    return bits


def registers_per_vector(workload: Workload, target: Target, lanes: Optional[int] = None) -> int:
    """Architectural registers one vector of ``lanes`` (default :func:`accumulator_lanes`) occupies
    (1, or 2 for 16 float32 lanes on AVX2)."""
    return max(1, (lanes or accumulator_lanes(workload, target)) // native_lanes(workload, target))


def native_lanes(workload: Workload, target: Target) -> int:
    """Accumulator lanes of one architectural vector register (8 float32 on AVX2)."""
    return max(1, native_vector_bits(target) // _accumulator_bits(workload))


class ScheduleRule:
    """A hand-written schedule for one pattern of convolution on one kind of target.

    ``version``: bumped whenever the schedules the rule makes change (tiles, loop order, which
    workloads it takes).  Every schedule carries ``name:version`` (:func:`mark_rule`), so tuning
    records made by an older version are recognised and never shadow the rule as it is now
    (policy: tuning_logs/README.md; ``tests/test_rule_versions.py`` fails on an unbumped change).
    """

    name = "rule"
    version = 1
    #: the request operators whose compute this rule knows (``Workload.operator``); ``apply_first``
    #: never offers it another's
    operators: Tuple[str, ...] = ("forward",)
    #: the activation layouts (``Workload.layout``) whose compute this rule knows
    layouts: Tuple[str, ...] = ("NCHW",)
    #: auto-unroll depths a search in the rule's design space may give its loop nests (a decision of
    #: its trace, ``tunable_unroll``; the first, 0, is the hand choice); () for none
    unroll_steps: Tuple[int, ...] = ()

    def takes(self, workload: Workload, target: Target) -> bool:
        """Whether the rule may take the workload, from what it is, without scheduling it (a call
        asks for a layout only where some rule may read it; ``apply`` may still decline)."""
        return workload.operator in self.operators and workload.layout in self.layouts

    def weight_block(self, workload: Workload, target: Target):
        """How this rule wants the weight pre-packed (once, outside the kernel), else None: output
        channels per block of ``[co/block, ci, kh, kw, block]``, or a ``compiler.compute.PhaseTaps``
        (a transposed layer's per-phase GEMM rows)."""
        return None

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> Optional[s_tir.Schedule]:
        raise NotImplementedError

    def alternatives(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> List[s_tir.Schedule]:
        """Other whole schedules of this rule for the workload, offered to a search as design spaces
        of their own beside ``apply``'s (choices a trace cannot sample, e.g. a tile that decides the
        staging's shapes in Python).  None by default: the rule's space is its own trace."""
        return []

    def postprocess(self, sch: s_tir.Schedule) -> s_tir.Schedule:
        """Steps after the rule's mark that MetaSchedule's own postprocessors take (after
        ``enter_postproc``: a search re-runs them on every candidate of the rule's design space).
        Nothing by default."""
        return sch


#: The root-block annotation naming the rule (and its version) that made a schedule.
RULE_ANNOTATION = "tvm_conv.rule"

#: Auto-unroll depths a search may choose for a CPU rule's loop nests: MetaSchedule's own choices for
#: llvm targets (``ParallelizeVectorizeUnroll``'s ``unroll_max_steps``), 0 (the rules' own explicit
#: unrolling of their register tiles, nothing more) the hand choice.  Measured on znver4 (2 threads,
#: the hand schedules of examples/off_suite_layers.txt with each depth): 1.00-1.02x on the dense and
#: transposed layers, and 1.3-1.8x slower on a 5x5 stride-2 and a 3x3 depthwise layer (16-512), so no
#: depth is a better default: a decision for the search (tuning_logs/README.md, experiments/).
CPU_UNROLL_STEPS = (0, 16, 64, 512)


def tunable_unroll(sch: s_tir.Schedule, steps: Sequence[int]) -> s_tir.Schedule:
    """Declare the auto-unroll depth of ``sch``'s reduction loop nests as a decision
    (``sample_categorical`` over ``steps``, default the first, 0): the outermost loop of every block
    that reduces gets ``pragma_auto_unroll_max_step`` (explicit unrolling, as MetaSchedule's
    ``RewriteParallelVectorizeUnroll`` gives it), so TVM unrolls each inner loop nest of up to that
    many steps.  Annotated here rather than through that postprocessor, which reaches only the
    root's child blocks (not the pieces of a partitioned loop) and which the hand path, compiling
    without postprocessors, never runs.  The root block carries the depth as MetaSchedule's own
    annotation too (``meta_schedule.unroll_explicit``): its ``MutateUnroll`` mutates only decisions
    so annotated, and its postprocessor then annotates the same loops alike.  At 0 the kernel is the
    rule's own (the same machine code)."""
    if not steps:
        return sch
    assert steps[0] == 0, "the hand choice (the default decision) must be no auto-unroll"
    depth = sch.sample_categorical(list(steps), [1 / len(steps)] * len(steps), decision=0)
    sch.annotate(sch.get_sblock("root"), "meta_schedule.unroll_explicit", depth)
    annotated = []
    for block in _nested_blocks(sch, sch.get_sblock("root")):
        if all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars):
            continue                                    # spatial (copies, the epilogue): nothing to gain
        loops = sch.get_loops(block)
        if not loops or any(sch.get(loops[0]).same_as(sch.get(done)) for done in annotated):
            continue
        sch.annotate(loops[0], "pragma_auto_unroll_max_step", depth)
        sch.annotate(loops[0], "pragma_unroll_explicit", 1)
        annotated.append(loops[0])
    return sch


def _nested_blocks(sch: s_tir.Schedule, parent):
    """Every block under ``parent``, depth first (loop partitions nest their pieces in blocks)."""
    for block in sch.get_child_blocks(parent):
        yield block
        yield from _nested_blocks(sch, block)


def finish(sch: s_tir.Schedule, rule: "ScheduleRule") -> s_tir.Schedule:
    """A rule's schedule as it is served and searched: its unroll decision, its mark, then its
    ``postprocess`` steps."""
    return rule.postprocess(mark_rule(tunable_unroll(sch, rule.unroll_steps), rule))


def mark_rule(sch: s_tir.Schedule, rule: ScheduleRule) -> s_tir.Schedule:
    """Annotate ``sch``'s root block with ``name:version`` of ``rule``, the last step of its trace,
    so a tuning record of this schedule says which rule, at which version, made it."""
    sch.annotate(sch.get_sblock("root"), RULE_ANNOTATION, f"{rule.name}:{rule.version}")
    return sch


class NoRule(ValueError):
    """No rule of a chain accepts the workload (a caller may then ask for another form of it, e.g. NCHW)."""


def apply_first(rules: Sequence[ScheduleRule], make_func: Callable[[Optional[int]], tirx.PrimFunc],
                workload: Workload, target: Target, prepacked: bool = False
                ) -> Tuple[ScheduleRule, s_tir.Schedule, Optional[int]]:
    """Apply the first rule in ``rules`` that accepts the workload: (rule, schedule, weight block).

    ``make_func(weight_block)`` gives the PrimFunc with torch-layout weights (None) or pre-packed
    ones; rules are offered pre-packed weights only when ``prepacked``.
    """
    for rule in rules:
        if not rule.takes(workload, target):
            continue
        block = rule.weight_block(workload, target) if prepacked else None
        sch = rule.apply(make_func(block), workload, target)
        if sch is not None:
            return rule, finish(sch, rule), block
    raise NoRule(f"no schedule rule accepts {workload}")


#: Bytes per element of each layer dtype (weights are packed in the layer's dtype).
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
#: Bytes of the GPU's widest load and store (``LDG.E.128``, ``cp.async`` 16): a vector of a copy.
GPU_VECTOR_BYTES = 16

#: Threads per block of the GPU's elementwise and gradient passes (the transposed form's phase
#: interleave, split-K's sum, weight packing, the gradient folds): 8 warps, as the direct rule's blocks.
GPU_THREADS = 256


def bind_elementwise(sch: s_tir.Schedule, block, threads: int = GPU_THREADS):
    """An elementwise GPU kernel of ``block``: its loop nest fused, one thread per element, ``threads``
    a thread block.  Returns the thread loop."""
    blocks, thread = sch.split(sch.fuse(*sch.get_loops(block)), [None, threads])
    sch.bind(blocks, "blockIdx.x")
    sch.bind(thread, "threadIdx.x")
    return thread


def schedule_weight_pack(func: tirx.PrimFunc, target: Optional[Target] = None) -> s_tir.Schedule:
    """The packing kernel: on a CPU parallel over its outermost axis (channel blocks), the innermost
    vectorised; on a GPU one thread per packed element (it runs once per weight change)."""
    sch = s_tir.Schedule(func)
    if target is not None and str(target.kind.name) == "cuda":
        bind_elementwise(sch, sch.get_sblock("packed_weight"))
        return sch
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


def tunable_split(sch: s_tir.Schedule, loop, tile: int, max_tile: int):
    """Split ``loop`` into ``[outer, tile]`` as a MetaSchedule decision: ``sample_perfect_tile`` into
    two, the hand choice ``[extent / tile, tile]`` its default and inner tiles up to ``max_tile`` its
    range, so a search in the rule's design space (``tune --space ours``) tries other tiles around
    it.  A tile that does not divide the extent stays a fixed split (the search's tiles are perfect)."""
    return tunable_tiles(sch, loop, (tile,), max_tile)


def tunable_tiles(sch: s_tir.Schedule, loop, tiles: Sequence[int], max_innermost: int):
    """:func:`tunable_split` into ``1 + len(tiles)`` loops: ``[outer, *tiles]`` (e.g. blocks x threads
    x registers), the innermost tile at most ``max_innermost`` in the search."""
    extent, inner = sch.get(loop).extent, math.prod(tiles)
    if not isinstance(extent, tirx.IntImm) or int(extent) % inner or tiles[-1] > max_innermost:
        return sch.split(loop, factors=[None, *tiles])
    factors = sch.sample_perfect_tile(loop, n=1 + len(tiles), max_innermost_factor=max_innermost,
                                      decision=[int(extent) // inner, *tiles])
    return sch.split(loop, factors=factors)


def largest_divisor(n: int, at_most: int, at_least: int = 1) -> Optional[int]:
    """The largest divisor of ``n`` from ``at_least`` to ``at_most`` (at least 1), None if there is none
    (never with ``at_least`` 1)."""
    return next((d for d in range(min(n, max(1, at_most)), at_least - 1, -1) if n % d == 0), None)


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


def vectorize_pieces(sch: s_tir.Schedule, loop, lanes: int) -> None:
    """Vectorise ``loop`` a register at a time (its largest divisor up to ``lanes``): a strided
    gather as wide as a 128-column row took LLVM 0.9 s to compile (0.1 s in register-wide pieces)."""
    extent = int(sch.get(loop).extent)
    piece = max(f for f in range(1, min(lanes, extent) + 1) if extent % f == 0)
    vectorize_if_wide(sch, sch.split(loop, factors=[None, piece])[1])
