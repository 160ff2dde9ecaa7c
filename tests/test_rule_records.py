"""Hand records carry their rule's name and version: a changed rule is never shadowed by its own
older record, an old hand trace is never served as ``tuned:<hash>``, and records made before marks
(the shipped ones) are read by what they are.  No tuning here: records are committed by hand."""
import pytest
import torch
from tvm.s_tir import meta_schedule as ms

import compiler
from compiler import build, records
from compiler.bench import DEFAULT_SUITE
from compiler.layers import batched_shape, spec_of
from compiler.request import KernelRequest
from compiler.spec import ConvSpec
from reference import assert_matches_torch
from schedules import CPU_RULES, CUDA_RULES, CpuDirect, CpuFallback
from schedules.base import RULE_ANNOTATION, mark_rule, tunable_unroll
from targets import host_target, resolve

SHAPE = (1, 4, 8, 8)
REQUEST = KernelRequest(ConvSpec.conv2d(4, 6, 3, padding=1), SHAPE, "float32")   # cpu-direct anywhere
ZNVER4 = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}


def _suite_request(text):
    shape = dict(DEFAULT_SUITE)[text]
    spec = spec_of(text)
    return KernelRequest(spec, batched_shape(shape), "float32", spec.output_padding if spec.transposed else None)


CASES = [(REQUEST, "llvm", "cpu-direct"),
         (_suite_request("Conv2d(32, 32, 3, padding=1, groups=32)"), ZNVER4, "cpu-depthwise"),
         (_suite_request("Conv2d(64, 64, 3, padding=1)"), ZNVER4, "cpu-channel-vector"),
         (_suite_request("ConvTranspose2d(128, 64, 2, stride=2)"), ZNVER4, "cpu-transposed-phase"),
         (REQUEST, "cuda/sm_80", "cuda-direct"),
         (KernelRequest(ConvSpec.conv2d(32, 32, 3, padding=1), (1, 32, 16, 16), "float16"), "cuda/sm_80",
          "cuda-tensorcore")]


@pytest.mark.parametrize("request_,target,rule", CASES, ids=lambda v: getattr(v, "describe", lambda: str(v))())
def test_hand_schedules_carry_their_rule_and_version(request_, target, rule):
    target = resolve(target)
    hand = build.schedule(request_, target)
    versions = records.rule_versions(target)
    assert hand.rule == rule and records.rule_mark(hand.trace) == records.RuleMark(rule, versions[rule])
    assert f'"{RULE_ANNOTATION}": "{rule}:{versions[rule]}"' in hand.mod.script()
    # the mark is the trace's last step: without it, the trace is the rule's own (with its unroll decision)
    rule_obj = next(r for r in CPU_RULES + CUDA_RULES if r.name == rule)
    plain = tunable_unroll(rule_obj.apply(build.prim_func(request_), build.workload_of(request_), target),
                           rule_obj.unroll_steps)
    assert records.unmarked_key(hand.trace) == records.trace_key(plain.trace) != records.trace_key(hand.trace)
    assert records.rule_mark(plain.trace) is None


def test_every_rule_has_a_name_and_a_version():
    for rules in (CPU_RULES, CUDA_RULES):            # a record names its rule within its target's chain
        assert len({r.name for r in rules}) == len(rules)
        assert all(isinstance(r.version, int) and r.version >= 1 for r in rules)


def _generic_trace(request, target):
    """A trace of MetaSchedule's generic space for the workload (sampled decisions, no rule mark)."""
    ctx = ms.TuneContext(mod=build.workload_module(request), target=target, space_generator="post-order-apply",
                         task_name="t", num_threads=1, rand_state=0)
    return ctx.generate_design_space()[0].trace


def _database(path, request, target, traces_ms):
    mod = build.workload_module(request)
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    with records.RunFolder(path) as run:
        writer = run.database()
        workload = writer.commit_workload(mod)
        for trace, ms_ in traces_ms:
            writer.commit_tuning_record(ms.database.TuningRecord(trace, workload, [ms_ * 1e-3], target, args))
    return path


def test_an_older_rule_version_never_shadows_the_rule(tmp_path, monkeypatch):
    target = host_target()
    old_hand = build.schedule(REQUEST, target).trace
    generic = _generic_trace(REQUEST, target)
    monkeypatch.setattr(CpuDirect, "version", CpuDirect.version + 1)     # the rule changed since
    new_hand = build.schedule(REQUEST, target).trace
    assert records.rule_mark(new_hand).version == records.rule_mark(old_hand).version + 1
    # the old hand trace is the fastest record, and there is no record of the rule as it is now
    db = _database(tmp_path / "a", REQUEST, target, [(old_hand, 0.5), (generic, 0.9)])
    kinds = records.classify(records.workload_records(db, target, build.workload_module(REQUEST)), new_hand,
                             records.rule_versions(target))
    assert [len(kinds.hand), len(kinds.searched), len(kinds.stale)] == [0, 1, 1]
    assert build.tuned_schedule(REQUEST, target, db) is None     # nothing to compare the search with
    # once the rule as it is now is measured, the search record competes with it, the old trace never
    db = _database(tmp_path / "a", REQUEST, target, [(new_hand, 1.0)])
    chosen = build.tuned_schedule(REQUEST, target, db)
    assert chosen is not None and records.trace_key(chosen.trace) == records.trace_key(generic)
    assert chosen.rule == f"tuned:{build.workload_hash(build.workload_module(REQUEST))}"
    # a module served from that database computes torch's numbers with the search record
    build.clear_cache()
    m = compiler.Conv2d(4, 6, 3, padding=1)
    m.tuning_database = db
    assert_matches_torch(m, torch.randn(*SHAPE))
    assert m.schedule == chosen.rule
    build.clear_cache()


def test_a_search_around_an_older_rule_version_is_stale(tmp_path, monkeypatch):
    """A record marked by an older version of the rule, with sampled decisions (a search in that
    version's space), is as stale as that version's hand trace."""
    target = host_target()
    searched_old = CpuDirect().apply(build.prim_func(REQUEST), build.workload_of(REQUEST), target)
    searched_old.sample_categorical([1, 2], [0.5, 0.5], decision=1)       # a decision of its space
    old_trace = mark_rule(searched_old, CpuDirect()).trace
    assert records.samples(old_trace) >= 1
    monkeypatch.setattr(CpuDirect, "version", CpuDirect.version + 1)
    hand = build.schedule(REQUEST, target).trace
    db = _database(tmp_path / "b", REQUEST, target, [(hand, 1.0), (old_trace, 0.1)])
    kinds = records.classify(records.workload_records(db, target, build.workload_module(REQUEST)), hand,
                             records.rule_versions(target))
    assert len(kinds.stale) == 1 and not kinds.searched
    assert build.tuned_schedule(REQUEST, target, db) is None


def test_records_made_before_marks_are_read_by_what_they_are(tmp_path):
    """An unmarked trace equal to the rule's own is its hand record; an unmarked trace without
    sampled decisions that differs is an old hand schedule (stale); one with decisions, a search."""
    target = host_target()
    func, workload = build.prim_func(REQUEST), build.workload_of(REQUEST)
    legacy_hand = tunable_unroll(CpuDirect().apply(func, workload, target), CpuDirect.unroll_steps).trace
    legacy_old_hand = CpuFallback().apply(build.prim_func(REQUEST), workload, target).trace
    generic = _generic_trace(REQUEST, target)
    db = _database(tmp_path / "c", REQUEST, target, [(legacy_old_hand, 0.2), (generic, 0.5), (legacy_hand, 1.0)])
    hand = build.schedule(REQUEST, target).trace
    kinds = records.classify(records.workload_records(db, target, build.workload_module(REQUEST)), hand,
                             records.rule_versions(target))
    assert [records.trace_key(r.trace) for r in kinds.hand] == [records.trace_key(legacy_hand)]
    assert [records.trace_key(r.trace) for r in kinds.stale] == [records.trace_key(legacy_old_hand)]
    assert [records.trace_key(r.trace) for r in kinds.searched] == [records.trace_key(generic)]
    chosen = build.tuned_schedule(REQUEST, target, db)
    assert chosen is not None and records.trace_key(chosen.trace) == records.trace_key(generic)


def _shipped(text, target):
    request = _suite_request(text)
    folder = records.SHIPPED / records.target_key(target)
    hand = build.schedule(request, target).trace
    ranked = records.workload_records(folder, target, build.workload_module(request))
    return request, folder, ranked, records.classify(ranked, hand, records.rule_versions(target))


def test_shipped_old_hand_trace_is_not_served_as_a_tuning_record():
    """The shipped llvm-znver4 folder's fastest record of the 4x4 transposed layer is the hand
    schedule of an older cpu-transposed-phase (no sampled decisions, unmarked): it was served as
    ``tuned:<hash>``.  It is stale now, and with no record of the current rule, the rule serves."""
    target = resolve(ZNVER4)
    request, folder, ranked, kinds = _shipped("ConvTranspose2d(256, 128, 4, stride=2, padding=1)", target)
    assert ranked and records.samples(ranked[0].trace) == 0 and records.rule_mark(ranked[0].trace) is None
    assert records.trace_key(ranked[0].trace) in {records.trace_key(r.trace) for r in kinds.stale}
    assert not kinds.hand
    assert build.tuned_schedule(request, target, folder) is None


@pytest.mark.parametrize("text,served", [("Conv2d(144, 144, 3, stride=2, padding=1, groups=144)", True),
                                         ("Conv2d(64, 64, 3, padding=1)", False)])
def test_shipped_records_still_serve_against_the_current_hand_record(text, served):
    """The hand records keep their role across the rules' version bumps that changed only their traces
    (tiles became sampling decisions): the unmarked hand records were carried over to the current
    version (``report --carry-over``: same machine code, the same measurements), so the depthwise
    stride-2 layer's search record (0.066 ms) still beats the hand schedule's (0.074 ms), and the
    3x3's hand rule stays."""
    target = resolve(ZNVER4)
    request, folder, _, kinds = _shipped(text, target)
    current = records.rule_mark(build.schedule(request, target).trace)
    assert kinds.hand and all(records.rule_mark(r.trace) == current for r in kinds.hand)
    measured = {tuple(map(float, r.run_secs)) for r in kinds.stale if records.rule_mark(r.trace) is None}
    assert all(tuple(map(float, r.run_secs)) in measured for r in kinds.hand)
    chosen = build.tuned_schedule(request, target, folder)
    assert (chosen is not None) == served
    if served:
        assert records.samples(chosen.trace) > 0


def test_shipped_cuda_records_still_serve():
    """The H100 records of the first three suite layers still beat the cuda-direct rule, whose version
    2 changed its trace (tiles as decisions) but not its kernel, version 3 added a tile that these
    batch-1 layers do not take, and version 4 narrowed the copies' vector widths to aligned ones (the
    hand schedules' widths unchanged): the older hand records (unmarked, then cuda-direct:2 and 3) were
    carried over (same machine code, same measurements) and are the only stale ones."""
    target = resolve("cuda/sm_90")
    for text, _ in DEFAULT_SUITE[:3]:
        request, folder, _, kinds = _shipped(text, target)
        marks = [records.rule_mark(r.trace) for r in kinds.stale]
        assert kinds.hand and all((mark is None and not records.samples(r.trace))
                                  or (mark.rule, mark.version) in (("cuda-direct", 2), ("cuda-direct", 3))
                                  for r, mark in zip(kinds.stale, marks))
        carried = {tuple(map(float, r.run_secs)) for r in kinds.hand}
        assert carried <= {tuple(map(float, r.run_secs)) for r in kinds.stale}
        assert build.tuned_schedule(request, target, folder) is not None


def test_shipped_records_of_this_cpu_compute_torchs_numbers():
    """Each searched record the shipped folder of this CPU serves (the suite tuned on it) is what a
    module runs by default, and it computes torch's numbers.  (Found here, not at collection: finding
    them schedules every suite layer's hand rule, ~11 s that every test run's collection would pay.)"""
    from compiler.layers import parse_layer
    target = host_target()
    folder = records.SHIPPED / records.target_key(target)
    if not folder.is_dir():
        pytest.skip(f"no records are shipped for this CPU ({records.target_key(target)})")
    served = [text for text, _ in DEFAULT_SUITE if build.tuned_schedule(_suite_request(text), target, folder)]
    if not served:
        pytest.skip(f"no searched record of {folder.name} beats its hand schedule")
    for text in served:
        m = parse_layer(text)
        assert_matches_torch(m, torch.randn(batched_shape(dict(DEFAULT_SUITE)[text])))
        assert m.schedule.startswith("tuned:"), text
