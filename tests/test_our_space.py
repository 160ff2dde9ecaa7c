"""Our rules as MetaSchedule design spaces: cpu-direct's tiles are sampling decisions whose defaults
are the hand choices, and ``tune --space ours`` mutates around the hand schedule (a tiny search)."""
import io
import json

import pytest
import torch
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

import compiler
import compiler.layers
from compiler import build, records, space
from compiler.request import KernelRequest
from compiler.spec import ConvSpec
from compiler.tuning import tune
from reference import assert_matches_torch
from schedules import CPU_RULES, CpuDirect
from schedules.base import CPU_UNROLL_STEPS
from targets import host_target

LAYER, SHAPE = "Conv2d(4, 12, 3, padding=1)", (1, 4, 12, 12)      # cpu-direct on every CPU
REQUEST = KernelRequest(ConvSpec.conv2d(4, 12, 3, padding=1), SHAPE, "float32")


def _defaults(trace):
    """The decisions of a trace's SamplePerfectTile instructions, in order."""
    insts, decisions = trace.as_json(remove_postproc=True)
    return [[int(v) for v in d] for i, d in decisions if insts[int(i)][0] == "SamplePerfectTile"]


def _unroll(trace) -> int:
    """The auto-unroll depth a trace's SampleCategorical decision chose (``schedules.base.tunable_unroll``)."""
    insts, decisions = trace.as_json(remove_postproc=True)
    (index,) = [int(d) for i, d in decisions if insts[int(i)][0] == "SampleCategorical"]
    return CPU_UNROLL_STEPS[index]


TRANSPOSED = KernelRequest(ConvSpec.conv_transpose2d(16, 3, 3, stride=2, padding=1), (1, 16, 12, 12), "float32",
                           (0, 0))                             # cpu-transposed-phase's direct form


POINTWISE = KernelRequest(ConvSpec.conv2d(16, 96, 1), (1, 16, 12, 16), "float32")      # cpu-pointwise


@pytest.mark.parametrize("request_,rule,loops", [(REQUEST, "cpu-direct", ["loop co", "loop ow"]),
                                                 (TRANSPOSED, "cpu-transposed-phase", ["loop co", "loop qw"]),
                                                 (POINTWISE, "cpu-pointwise", ["loop co", "loop oh"])],
                         ids=["direct", "transposed", "pointwise"])
def test_the_hand_schedule_is_the_default_of_its_decisions(request_, rule, loops):
    hand = build.schedule(request_, host_target())
    assert hand.rule == rule and records.rule_mark(hand.trace).version == records.rule_versions(host_target())[rule]
    (ours,) = space.design_spaces(request_, host_target(), "ours")
    tiles = [p for p in ours.points if p.kind == "SamplePerfectTile"]
    assert [p.where.split(" (")[0] for p in tiles] == loops
    assert [p.default for p in tiles] == _defaults(hand.trace)
    assert all(p.choices >= 1 for p in tiles) and ours.size > 1
    # the defaults are the hand-written tiles: the space's default schedule is the hand schedule
    assert records.trace_key(ours.schedule.trace) == records.trace_key(hand.trace)


def test_search_in_our_space_mutates_around_the_hand_schedule(tmp_path):
    db = tmp_path / "db"
    result = tune(LAYER, SHAPE, trials=6, trials_per_iter=3, work_dir=db, space="ours", seed=0, population=16,
                  final_check=1, out=io.StringIO())
    assert result.trials_run == 6
    hand = build.schedule(REQUEST, host_target())
    mod = build.workload_module(REQUEST)
    kinds = records.classify(records.workload_records(db, host_target(), mod), hand.trace,
                             records.rule_versions(host_target()))
    assert kinds.hand and kinds.searched and not kinds.stale
    hand_tiles = _defaults(hand.trace)
    for record in kinds.searched:    # every candidate is our rule's schedule, other tiles or unroll depth
        assert records.rule_mark(record.trace) == records.RuleMark("cpu-direct", CpuDirect.version)
        tiles = _defaults(record.trace)
        assert len(tiles) == 2 and (tiles, _unroll(record.trace)) != (hand_tiles, 0)
        assert [a * b for a, b in tiles] == [a * b for a, b in hand_tiles]       # perfect tiles of co, ow
        assert _unroll(record.trace) in CPU_UNROLL_STEPS
    # the curve says which space was searched
    assert json.loads(result.curve_path.read_text())["search"]["space"] == "ours"
    # a mutated schedule computes torch's numbers: serve the fastest search record
    _serve_as_record(compiler.Conv2d(4, 12, 3, padding=1), REQUEST, hand.trace, kinds.searched[0].trace, db, SHAPE)


def _serve_as_record(module, request, hand_trace, trace, db, shape):
    """``trace`` committed beside the hand schedule's record as if a search had measured it much
    faster: the module then serves it (``tuned:``), and its output must match torch's."""
    target, mod = host_target(), build.workload_module(request)
    with records.RunFolder(db) as run:
        writer = run.database()
        workload, args = writer.commit_workload(mod), ms.arg_info.ArgInfo.from_prim_func(mod["main"])
        writer.commit_tuning_record(ms.database.TuningRecord(hand_trace, workload, [1.0], target, args))
        writer.commit_tuning_record(ms.database.TuningRecord(trace, workload, [1e-9], target, args))
    build.clear_cache()
    module.tuning_database = db
    assert_matches_torch(module, torch.randn(*shape))
    assert module.schedule.startswith("tuned:"), module.schedule
    build.clear_cache()


#: Layers of the rules made searchable second: cpu-channel-vector (its column tile; where its blocked
#: tiles serve, e.g. on AVX2, the chunk and pixel tile; with dead taps dropped, the chunk alone),
#: cpu-depthwise at stride 1 and 2, and cpu-transposed-phase's channel-vector form.
SAMPLED_LAYERS = [("Conv2d(16, 16, 3, padding=1)", (1, 16, 12, 12)),
                  ("Conv2d(32, 16, 3, padding=1)", (1, 32, 8, 8)),
                  ("Conv2d(16, 16, 3, padding=4, dilation=4)", (1, 16, 12, 12)),
                  ("Conv2d(16, 16, 3, padding=1, groups=16)", (1, 16, 16, 16)),
                  ("Conv2d(16, 16, 5, stride=2, padding=2, groups=16)", (2, 16, 18, 18)),
                  ("ConvTranspose2d(32, 16, 2, stride=2)", (1, 32, 6, 6)),
                  ("ConvTranspose2d(16, 16, 4, stride=2, padding=1)", (1, 16, 5, 5))]


def _random_tiles(trace, mod, rng, keep_schedule=False):
    """``trace`` replayed with each SamplePerfectTile decision replaced by a random perfect tile within
    the instruction's limit and each SampleCategorical by a random choice (what a search's mutation
    draws): the trace (or the schedule), and the tiles drawn."""
    sch = s_tir.Schedule(mod)
    chosen = []

    def provide(inst, inputs, attrs, decision):
        if inst.kind.name == "SampleCategorical":
            return rng.randrange(len(attrs[0]))
        if inst.kind.name != "SamplePerfectTile":
            return decision
        extent, parts, innermost = int(sch.get(inputs[0]).extent), int(attrs[0]), int(attrs[1])
        divisors = lambda n: [d for d in range(1, n + 1) if n % d == 0]  # noqa: E731
        tile = rng.choice([d for d in divisors(extent) if innermost <= 0 or d <= innermost])
        factors, rest = [tile], extent // tile
        for _ in range(parts - 2):                 # the middle factors, then the outermost
            factors.insert(0, rng.choice(divisors(rest)))
            rest //= factors[0]
        chosen.append([rest, *factors])
        return chosen[-1]

    trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=provide)
    return (sch if keep_schedule else sch.trace), chosen


@pytest.mark.parametrize("layer,shape", SAMPLED_LAYERS, ids=[layer for layer, _ in SAMPLED_LAYERS])
def test_other_decisions_of_our_spaces_compute_torchs_numbers(layer, shape, tmp_path):
    """Each rule's design space has decisions, defaulting to the hand schedule, and schedules other
    decisions give (served as a tuning record, as a search's best would be) match torch."""
    import random
    module = compiler.layers.parse_layer(layer)
    request = compiler.layers.request_of(module, shape, output_padding=(0, 0) if module.transposed else None)
    target = host_target()
    hand = build.schedule(request, target)
    assert hand.rule in {"cpu-channel-vector", "cpu-depthwise", "cpu-transposed-phase", "cpu-direct"}
    (ours,) = space.design_spaces(request, target, "ours")
    assert ours.size > 1 and records.trace_key(ours.schedule.trace) == records.trace_key(hand.trace)
    mod = build.workload_module(request)
    rng = random.Random(layer)
    tried = set()
    for attempt in range(2):
        sch, tiles = _random_tiles(ours.schedule.trace, mod, rng, keep_schedule=True)
        depth = _unroll(sch.trace)
        if (tiles, depth) == (_defaults(hand.trace), 0) or str((tiles, depth)) in tried:
            continue
        tried.add(str((tiles, depth)))
        assert f'"pragma_auto_unroll_max_step": {depth}' in str(sch.mod)       # on the reduction's nest
        _serve_as_record(module, request, hand.trace, sch.trace, tmp_path / f"db{attempt}", shape)
    assert tried, "no decision other than the hand one was drawn"


CUDA_SAMPLED = [("Conv2d(8, 16, 3, padding=1)", (2, 8, 8, 16)),
                ("Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)", (1, 4, 9, 9)),
                ("ConvTranspose2d(8, 8, 4, stride=2, padding=1)", (1, 8, 4, 4))]


@pytest.mark.parametrize("layer,shape", CUDA_SAMPLED, ids=[layer for layer, _ in CUDA_SAMPLED])
def test_cuda_direct_space_draws_compute_torchs_numbers(layer, shape):
    """cuda-direct's space: its tiles and copy vectors are decisions; draws that TVM's GPU verifier
    accepts, finished by MetaSchedule's RewriteCooperativeFetch as in a search, compute torch's
    numbers (emulated on the CPU, tests/gpu_emulation.py)."""
    import random
    from gpu_emulation import compile_serialised
    from schedules.gpu_verify import passes_gpu_verification
    from targets import resolve
    from test_cuda_emulated import _run_and_compare
    module = compiler.layers.parse_layer(layer)
    request = compiler.layers.request_of(module, shape, output_padding=(0, 0) if module.transposed else None)
    target = resolve("cuda/sm_80")
    hand = build.schedule(request, target)
    assert hand.rule == "cuda-direct"
    (ours,) = space.design_spaces(request, target, "ours")
    kinds = {p.kind for p in ours.points}
    assert kinds == {"SamplePerfectTile", "SampleCategorical"} and ours.size > 1
    assert records.trace_key(ours.schedule.trace) == records.trace_key(hand.trace)
    mod, rng, checked = build.workload_module(request), random.Random(layer), 0
    for _ in range(12):
        sch, tiles = _random_tiles(ours.schedule.trace, mod, rng, keep_schedule=True)
        sch.enter_postproc()
        if not ms.postproc.RewriteCooperativeFetch().apply(sch) or not passes_gpu_verification(sch.mod, target):
            continue
        _run_and_compare(compile_serialised(sch.mod), module, shape)
        checked += 1
        if checked == 2:
            break
    assert checked == 2, "fewer than two draws passed the GPU verifier"


def test_a_search_ends_once_its_space_is_exhausted(tmp_path):
    """More trials than our space holds: the search measures what there is and ends
    (``search.UntilExhausted``); MetaSchedule's evolutionary search would send empty batches forever."""
    layer, shape = "Conv2d(16, 16, 3, padding=1, groups=16)", (1, 16, 1, 9)
    request = compiler.layers.request_of(layer, shape)
    (ours,) = space.design_spaces(request, host_target(), "ours")
    assert 1 < ours.size <= 12
    result = tune(layer, shape, trials=ours.size + 8, trials_per_iter=4, work_dir=tmp_path / "db", space="ours",
                  seed=0, population=16, final_check=0, out=io.StringIO())
    # every schedule of the space at most once (the hand schedule's own equal may be among them: MetaSchedule
    # checks candidates against the records it sampled from the database, not every record)
    assert 1 <= result.trials_total <= ours.size
    assert result.trials_run < ours.size + 8


UNROLLED_LAYERS = [("Conv2d(16, 16, 3, padding=1, groups=4)", (1, 16, 10, 10)),        # cpu-channel-vector
                   ("Conv2d(16, 16, 3, padding=1, groups=16)", (1, 16, 12, 12)),       # cpu-depthwise
                   ("ConvTranspose2d(16, 3, 3, stride=2, padding=1)", (1, 16, 6, 6))]  # cpu-transposed-phase


@pytest.mark.parametrize("layer,shape", UNROLLED_LAYERS, ids=[layer for layer, _ in UNROLLED_LAYERS])
def test_the_unroll_decision(layer, shape, tmp_path):
    """The auto-unroll depth, a decision of every CPU rule's space: at its default (0) the kernel is
    the one the rule makes without the decision (its ``apply`` alone); at 64 the reduction's loop
    nests carry the unroll pragma, their code changes, and the kernel, served as a record, computes
    torch's numbers."""
    from compiler.carry_over import machine_code
    module = compiler.layers.parse_layer(layer)
    request = compiler.layers.request_of(module, shape, output_padding=(0, 0) if module.transposed else None)
    target, mod = host_target(), build.workload_module(request)
    hand = build.schedule(request, target)
    (ours,) = space.design_spaces(request, target, "ours")
    (point,) = [p for p in ours.points if p.kind == "SampleCategorical"]
    assert point.where == f"one of {list(CPU_UNROLL_STEPS)}" and point.default == 0
    # MetaSchedule's evolutionary search mutates it (MutateUnroll finds decisions by their annotation)
    mutate = ms.mutator.MutateUnroll()
    mutate._initialize_with_tune_context(ms.TuneContext(mod=mod, target=target))
    mutated = mutate.apply(ours.schedule.trace)
    assert mutated is not None and _unroll(mutated) in CPU_UNROLL_STEPS[1:]

    def drawn(depth):
        sch = s_tir.Schedule(mod)
        ours.schedule.trace.apply_to_schedule(
            sch, remove_postproc=True, decision_provider=lambda inst, inputs, attrs, decision:
            CPU_UNROLL_STEPS.index(depth) if inst.kind.name == "SampleCategorical" else decision)
        return sch

    rule = next(r for r in CPU_RULES if r.name == hand.rule)
    plain = rule.apply(build.prim_func(request), build.workload_of(request), target)
    assert machine_code(drawn(0).mod, target) == machine_code(plain.mod, target)
    unrolled = drawn(64)
    assert '"pragma_auto_unroll_max_step": 64' in str(unrolled.mod)
    assert machine_code(unrolled.mod, target) != machine_code(plain.mod, target)
    _serve_as_record(module, request, hand.trace, unrolled.trace, tmp_path / "db", shape)
