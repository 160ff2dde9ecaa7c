"""Schedule rules: which rule serves which layer, that it parallelises and vectorises, and torch's numbers."""
import pytest
import torch
import tvm

import compiler
from compiler import build
from compiler.request import KernelRequest
from compiler.spec import ConvSpec
from reference import assert_matches_torch
import schedules
from schedules import CPU_RULES, CpuDirect, CpuFallback
from schedules.cpu_depthwise import choose_config as depthwise_config
from schedules.cpu_channel_vector import column_tile as channel_vector_columns
from schedules.cpu_direct import choose_config
from targets import host_target


def _loop_kinds(mod):
    script = mod.script()
    return {kind for kind, marker in (("PARALLEL", "T.parallel("), ("VECTORIZED", "T.vectorized("))
            if marker in script}


@pytest.mark.parametrize("spec,expected", [
    (ConvSpec.conv2d(16, 16, 3, padding=1), "cpu-direct"),
    (ConvSpec.conv2d(16, 16, 3, padding=2), "cpu-channel-vector"),
    (ConvSpec.conv2d(8, 32, 3, stride=2, padding=2, dilation=2, padding_mode="reflect"), "cpu-channel-vector"),
    (ConvSpec.conv2d(8, 8, 3, padding=1, groups=8, padding_mode="circular"), "cpu-depthwise"),
    (ConvSpec.conv2d(8, 16, 3, stride=2, groups=8, bias=False), "cpu-depthwise"),
    (ConvSpec.conv2d(8, 8, 3, padding=1, groups=4), "cpu-direct"),
    (ConvSpec.conv_transpose2d(8, 4, 4, stride=2, padding=1), "cpu-transposed-phase"),
    (ConvSpec.conv_transpose2d(8, 4, 3, stride=2, dilation=2, groups=2), "cpu-transposed-phase"),
], ids=str)
def test_rules_parallelise_and_vectorise(spec, expected):
    shape = (1, spec.in_channels, 19, 19)
    name = build.schedule(KernelRequest(spec, shape, "float32"), host_target(), prepacked=True).rule
    assert name == expected
    for rule in CPU_RULES:
        func = build.prim_func(KernelRequest(spec, shape, "float32"))
        if rule.apply(func, build.workload_of(KernelRequest(spec, shape, "float32")), host_target()) is None:
            assert rule.name != expected
            continue
        mod = build.schedule(KernelRequest(spec, shape, "float32"), host_target(), rules=[rule]).mod
        kinds = _loop_kinds(mod)
        assert {"PARALLEL", "VECTORIZED"} <= kinds, (rule.name, kinds)


def test_transposed_spends_no_multiply_adds_on_zeros():
    # the reduction of each phase covers ceil(k/s) taps per axis, not k
    spec = ConvSpec.conv_transpose2d(8, 4, 4, stride=2, padding=1)
    script = build.prim_func(KernelRequest(spec, (1, 8, 6, 6), "float32")).script()
    assert "T.grid(1, 4, 2, 2, 6, 6, 8, 2, 2)" in script


def test_direct_rule_declines_other_targets():
    from tvm.target import Target
    func = build.prim_func(KernelRequest(ConvSpec.conv2d(4, 4, 3), (1, 4, 8, 8), "float32"))
    wl = build.workload_of(KernelRequest(ConvSpec.conv2d(4, 4, 3), (1, 4, 8, 8), "float32"))
    assert CpuDirect().apply(func, wl, Target({"kind": "cuda", "arch": "sm_80"})) is None


def test_fallback_rule_matches_torch(monkeypatch):
    monkeypatch.setattr(schedules, "CPU_RULES", (CpuFallback(),))
    build.clear_cache()
    m = compiler.Conv2d(6, 4, 3, stride=2, padding=2, padding_mode="reflect", groups=2)
    assert_matches_torch(m, torch.randn(2, 6, 11, 9))
    assert m.schedule == "cpu-fallback"
    t = compiler.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
    assert_matches_torch(t, torch.randn(2, 6, 5, 7))
    build.clear_cache()


@pytest.mark.parametrize("width,lanes,expected", [(56, 16, 14), (28, 16, 14), (14, 16, 14), (112, 16, 16),
                                                  (7, 16, 7), (56, 8, 8), (13, 16, 13), (17, 16, 16)])
def test_column_tile_divides_width_within_one_vector(width, lanes, expected):
    assert choose_config(64, width, lanes, 32).ow_tile == expected


@pytest.mark.parametrize("width,stride,registers,expected", [
    (56, 1, 32, 14), (28, 1, 32, 14), (14, 1, 32, 14), (112, 2, 32, 16), (7, 1, 32, 7), (35, 1, 32, 7),
    (56, 1, 16, 8), (112, 1, 32, None), (224, 1, 32, None), (64, 2, 32, None), (256, 1, 32, None),
])
def test_channel_vector_columns(width, stride, registers, expected):
    assert channel_vector_columns(width, stride, 16, registers) == expected


def test_register_budget():
    assert choose_config(64, 56, 16, 32).co_tile == 16     # AVX-512: 32 registers, half for accumulators
    assert choose_config(64, 56, 8, 16).co_tile == 8       # AVX2: 16 registers
    assert choose_config(3, 56, 16, 32).co_tile == 3


@pytest.mark.parametrize("height,width,stride,expected", [
    (112, 112, 1, (8, 16)), (56, 56, 1, (8, 14)), (14, 14, 1, (7, 14)), (13, 17, 1, (1, 16)),
    (28, 28, 2, (4, 7)), (56, 56, 2, (4, 8)), (7, 7, 2, (1, 7)), (9, 3, 3, (3, 3)),
])
def test_depthwise_tile_divides_the_output(height, width, stride, expected):
    cfg = depthwise_config(height, width, stride, 16)
    assert (cfg.rows, cfg.columns) == expected


@pytest.mark.parametrize("layer,shape", [
    (compiler.Conv2d(16, 16, 3, padding=1, groups=16), (2, 16, 20, 18)),
    (compiler.Conv2d(16, 16, 5, stride=2, padding=2, groups=16), (2, 16, 20, 18)),
    (compiler.Conv2d(8, 16, 7, stride=2, padding=3, dilation=2, groups=8, padding_mode="reflect"), (1, 8, 30, 24)),
    (compiler.Conv2d(8, 8, 5, stride=(2, 3), padding=(1, 3), groups=8, bias=False), (1, 8, 15, 17)),
    (compiler.Conv2d(8, 24, 3, groups=8), (3, 8, 13, 11)),                           # no padding, multiplier 3
    (compiler.Conv2d(4, 4, (1, 9), padding=(0, 4), groups=4, padding_mode="circular"), (1, 4, 6, 33)),
    (compiler.Conv2d(4, 4, 11, padding=5, groups=4, padding_mode="replicate"), (1, 4, 12, 12)),  # taps kept rolled
], ids=repr)
def test_depthwise_rule_matches_torch(layer, shape):
    assert_matches_torch(layer, torch.randn(*shape))
    assert layer.schedule == "cpu-depthwise"


def test_depthwise_rule_pads_one_channel_plane_per_task():
    spec = ConvSpec.conv2d(16, 16, 3, padding=1, groups=16)
    mod = build.schedule(KernelRequest(spec, (1, 16, 20, 18), "float32"), host_target()).mod
    passes = tvm.s_tir.transform      # the allocation placement TVM's lowering does, then its compaction
    lowered = tvm.transform.Sequential([
        passes.LowerInitBlock(), passes.PlanAndUpdateBufferAllocationLocation(),
        passes.ConvertBlocksToOpaque(), passes.CompactBufferAllocation()])(mod).script()
    assert "pad = T.sblock_alloc_buffer((1, 1, 22, 20))" in lowered
    assert lowered.index("T.parallel(16)") < lowered.index("pad = T.sblock_alloc_buffer")


@pytest.mark.parametrize("layer", [
    compiler.Conv2d(16, 32, 3, padding=1),
    compiler.Conv2d(8, 32, 3, stride=2, padding=3, dilation=2, padding_mode="circular", bias=False),
    compiler.Conv2d(32, 32, 1, groups=2),
], ids=repr)
def test_channel_vector_rule_matches_torch(layer):
    assert_matches_torch(layer, torch.randn(2, layer.in_channels, 14, 21))
    assert layer.schedule == "cpu-channel-vector"
