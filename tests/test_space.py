"""``compiler space``: each design space's trace, its decision points, default decisions and number
of choices (no tuning, no measuring)."""
import itertools
import math
import time

import pytest

from compiler import build, space
from compiler.__main__ import main
from compiler.request import KernelRequest
from compiler.spec import ConvSpec
from targets import host_target

REQUEST = KernelRequest(ConvSpec.conv2d(4, 6, 3, padding=1), (1, 4, 8, 8), "float32")   # cpu-direct


@pytest.mark.parametrize("extent,parts,innermost", [(1, 4, 64), (12, 2, -1), (12, 3, 4), (64, 4, 16), (56, 4, 64),
                                                    (7, 2, 1)], ids=str)
def test_perfect_tilings_counts_what_sample_perfect_tile_chooses_from(extent, parts, innermost):
    brute = sum(1 for factors in itertools.product(range(1, extent + 1), repeat=parts)
                if math.prod(factors) == extent and (innermost <= 0 or factors[-1] <= innermost))
    assert space.perfect_tilings(extent, parts, innermost) == brute


def test_generic_space_decision_points():
    (design, *_) = space.design_spaces(REQUEST, host_target(), "generic")
    assert design.origin == "generic" and design.points
    tiles = [p for p in design.points if p.kind == "SamplePerfectTile"]
    assert tiles and {p.kind for p in design.points} >= {"SamplePerfectTile", "SampleCategorical"}
    for p in tiles:                          # each default is one of the perfect tilings counted
        extent = int(p.where.split("extent ")[1].split(")")[0])
        assert math.prod(p.default) == extent and 1 <= p.choices
    categorical = next(p for p in design.points if p.kind == "SampleCategorical")
    assert categorical.choices == len(eval(categorical.where[len("one of "):]))   # noqa: S307 - our own text
    assert 0 <= categorical.default < categorical.choices
    counted = [p.choices for p in design.points if p.choices is not None]
    uncounted = [p.kind for p in design.points if p.choices is None]
    assert set(uncounted) <= {"SampleComputeLocation"}
    assert design.size == (None if uncounted else math.prod(counted))


def test_our_space_is_the_hand_schedule_marked_with_its_rule():
    (design,) = space.design_spaces(REQUEST, host_target(), "ours")
    hand = build.schedule(REQUEST, host_target())
    from compiler import records
    assert design.origin == f"ours ({hand.rule}:{records.rule_versions(host_target())[hand.rule]})"
    assert records.trace_key(design.schedule.trace) == records.trace_key(hand.trace)


def test_space_command_prints_traces_and_decisions(capsys):
    start = time.perf_counter()
    assert main(["space", "--layer", "Conv2d(4, 6, 3, padding=1)", "--input-shape", "1,4,8,8"]) == 0
    seconds = time.perf_counter() - start
    text = capsys.readouterr().out
    assert "Conv2d(4, 6, kernel_size=[3, 3]" in text and "design space(s)" in text
    assert "== space 1/" in text and ": ours (cpu-direct:" in text and ": generic," in text
    assert "sch.sample_perfect_tile(" in text and "decision points:" in text
    assert "SamplePerfectTile" in text and "default [" in text and "choices " in text
    assert seconds < 120, f"compiler space took {seconds:.0f} s"


@pytest.mark.parametrize("argv,message", [
    (["space", "--layer", "Conv2d(4, 6, 3)"], "give --layer with --input-shape"),
    (["space", "--layer", "Conv2d(4, 6, 3)", "--input-shape", "1,4,8,8", "--space", "mine"],
     "argument --space: invalid choice: 'mine'"),
    (["space", "--layer", "Conv2d(4, 6, 3)", "--input-shape", "1,5,8,8"], "expected input[1, 5, 8, 8] to have 4 channels"),
], ids=["no-shape", "bad-space", "bad-shape"])
def test_space_command_refuses_bad_input(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
