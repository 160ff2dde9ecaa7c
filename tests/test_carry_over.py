"""``report --carry-over``: a hand record is committed again under its rule's current version only
where the older schedule compiles to the same machine code; any other stale record stays stale."""
import json

from tvm import s_tir, tirx
from tvm.s_tir import meta_schedule as ms

from compiler import build, records
from compiler.__main__ import main
from compiler.carry_over import carry_over, machine_code
from compiler.request import KernelRequest
from compiler.spec import ConvSpec
from schedules.base import RULE_ANNOTATION
from targets import host_target

REQUEST = KernelRequest(ConvSpec.conv2d(4, 12, 3, padding=1), (1, 4, 12, 12), "float32")     # cpu-direct


def _json(value):
    """A trace's TVM values as JSON that ``apply_json_to_schedule`` reads back (a sample_categorical's
    probabilities as numbers: ``records._plain`` keys them by their text)."""
    return float(value.value) if isinstance(value, tirx.FloatImm) else records._plain(value)


def _as_older_version(trace, mod, decisions=None):
    """``trace`` marked with its rule's previous version (optionally with other tile decisions)."""
    insts, old_decisions = trace.as_json(remove_postproc=False)
    mark = records.rule_mark(trace)
    text = json.dumps([insts, decisions if decisions is not None else old_decisions], default=_json)
    text = text.replace(f'{mark.rule}:{mark.version}\\"', f'{mark.rule}:{mark.version - 1}\\"')   # a quoted str
    sch = s_tir.Schedule(mod)
    s_tir.schedule.Trace.apply_json_to_schedule(json.loads(text), sch)
    return sch.trace


def test_only_the_same_kernel_is_carried_over(tmp_path, capsys):
    target = host_target()
    mod = build.workload_module(REQUEST)
    hand = build.schedule(REQUEST, target)
    assert RULE_ANNOTATION in str(hand.trace)
    same = _as_older_version(hand.trace, mod)
    insts, decisions = hand.trace.as_json(remove_postproc=False)
    other_tiles = [[int(i), [int(d[0]) * int(d[1]), 1]] if insts[int(i)][0] == "SamplePerfectTile" else [int(i), d]
                   for i, d in decisions]
    other = _as_older_version(hand.trace, mod, other_tiles)
    replayed = s_tir.Schedule(mod)
    other.apply_to_schedule(replayed, remove_postproc=False)
    assert machine_code(replayed.mod, target) != machine_code(hand.mod, target)
    db = tmp_path / "db"
    with records.RunFolder(db) as run:
        writer = run.database()
        workload = writer.commit_workload(mod)
        args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
        writer.commit_tuning_record(ms.database.TuningRecord(same, workload, [2e-3, 4e-3], target, args))
        writer.commit_tuning_record(ms.database.TuningRecord(other, workload, [1e-3], target, args))
    versions = records.rule_versions(target)
    kinds = records.classify(records.workload_records(db, target, mod), hand.trace, versions)
    assert not kinds.hand and len(kinds.stale) == 2 and build.tuned_schedule(REQUEST, target, db) is None

    requests = {build.workload_hash(mod): REQUEST}
    (carried,) = carry_over(db, target, requests)
    assert carried.was == f"cpu-direct:{versions['cpu-direct'] - 1}" and abs(carried.ms - 3.0) < 1e-9
    kinds = records.classify(records.workload_records(db, target, mod), hand.trace, versions)
    assert [list(map(float, r.run_secs)) for r in kinds.hand] == [[2e-3, 4e-3]]
    assert [records.trace_key(r.trace) for r in kinds.stale] == [records.trace_key(other), records.trace_key(same)]
    assert carry_over(db, target, requests) == []                 # done once

    # the CLI: nothing left to carry over here, and the report follows
    assert main(["report", str(db), "--carry-over", "--target", "llvm"]) == 0
    out = capsys.readouterr().out
    assert "carried over" not in out and "1 workload(s)" in out
    assert "unknown layer (1x4x12x12 ; 12x4x3x3 ; 12 ; 1x12x12x12)" in out      # no curve names it
