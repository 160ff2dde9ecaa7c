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
from schedules.base import registers_per_vector
from schedules.cpu_depthwise import choose_config as depthwise_config
from schedules.cpu_channel_vector import column_tile as channel_vector_columns
from schedules.cpu_direct import choose_config
from targets import host_target


def _loop_kinds(mod):
    script = mod.script()
    return {kind for kind, marker in (("PARALLEL", "T.parallel("), ("VECTORIZED", "T.vectorized("))
            if marker in script}


@pytest.mark.parametrize("spec,expected", [
    (ConvSpec.conv2d(16, 12, 3, padding=1), "cpu-direct"),   # channels not whole vectors
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
    for rule in (r for r in CPU_RULES if "forward" in r.operators):
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


@pytest.mark.parametrize("width,expected", [(56, (8, 8)), (28, (7, 8)), (14, (7, 8)), (7, (7, 8)), (24, (8, 8)),
                                            (32, (16, 4)), (112, (16, 4)), (13, (13, 4))])
def test_avx2_columns_are_whole_registers(width, expected):
    """AVX2 (16-lane accumulator vectors of two 8-lane registers, 8 of them): columns of whole
    registers dividing the width, else half a register or more, with 8 accumulators in all."""
    config = choose_config(64, width, 16, 8, native=8)
    assert (config.ow_tile, config.co_tile) == expected
    assert config.co_tile * -(-config.ow_tile // 8) == 8


def test_register_budget():
    assert choose_config(64, 56, 16, 32).co_tile == 16     # AVX-512: 32 registers, half for accumulators
    assert choose_config(64, 56, 8, 16).co_tile == 8       # AVX2: 16 registers
    assert choose_config(3, 56, 16, 32).co_tile == 3


@pytest.mark.parametrize("height,width,stride,expected", [
    (112, 112, 1, (8, 16)), (56, 56, 1, (2, 28)), (14, 14, 1, (7, 14)), (13, 17, 1, (1, 16)),
    (28, 28, 2, (4, 7)), (56, 56, 2, (4, 8)), (7, 7, 2, (1, 7)), (9, 3, 3, (3, 3)),
])
def test_depthwise_tile_divides_the_output(height, width, stride, expected):
    cfg = depthwise_config(height, width, stride, 16)
    assert (cfg.rows, cfg.columns) == expected


@pytest.mark.parametrize("height,width,expected", [
    (14, 14, (2, 14)), (7, 14, (1, 14)), (12, 12, (2, 12)),      # a row of 1.5-2 registers, 2 rows
    (28, 28, (2, 14)), (42, 42, (2, 14)), (26, 26, (2, 13)),     # 1.5-2 registers dividing the row
    (7, 7, (7, 7)), (11, 11, (1, 8)), (56, 56, (8, 8)), (20, 20, (5, 5)),
])
def test_depthwise_rows_of_two_registers(height, width, expected):
    cfg = depthwise_config(height, width, 1, 8)                       # AVX2: 8 float32 lanes
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
    assert lowered.index("T.parallel(16") < lowered.index("pad = T.sblock_alloc_buffer")


@pytest.mark.parametrize("layer", [
    compiler.Conv2d(16, 32, 3, padding=1),
    compiler.Conv2d(8, 32, 3, stride=2, padding=3, dilation=2, padding_mode="circular", bias=False),
    compiler.Conv2d(32, 32, 1, groups=2),
], ids=repr)
def test_channel_vector_rule_matches_torch(layer):
    assert_matches_torch(layer, torch.randn(2, layer.in_channels, 14, 21))
    assert layer.schedule == "cpu-channel-vector"


# Blocked channel-vector tiles (schedules/cpu_tiles.py): deep reductions, dead padding taps, and the
# transposed phases on channel vectors.

@pytest.mark.parametrize("layer,shape,expected", [
    (compiler.Conv2d(32, 32, 3, padding=6, dilation=6, bias=False), (1, 32, 32, 32), "cpu-channel-vector"),  # ASPP
    (compiler.Conv2d(16, 32, 3, padding=24, dilation=24), (2, 16, 32, 32), "cpu-channel-vector"),  # 75% dead
    (compiler.Conv2d(16, 16, 3, padding=40, dilation=40, bias=False), (1, 16, 16, 16), "cpu-channel-vector"),
    (compiler.Conv2d(8, 32, (3, 2), stride=(2, 3), padding=(9, 5), dilation=(9, 5), groups=2), (2, 8, 19, 23),
     "cpu-channel-vector"),
    (compiler.Conv2d(1024, 16, 3, padding=1), (1, 1024, 6, 9), "cpu-channel-vector"),           # deep: chunked
    # whole vectors of columns: cpu-direct's columns-on-SIMD tile, unless a vector takes two
    # registers (AVX2), where the blocked channel-vector tile serves
    (compiler.Conv2d(16, 16, 3, padding=1), (1, 16, 32, 32), "cpu-direct or, on AVX2, cpu-channel-vector"),
    (compiler.Conv2d(128, 96, 1), (1, 128, 32, 32), "cpu-direct or, on AVX2, cpu-channel-vector"),  # 48 KB
    (compiler.Conv2d(96, 32, 1, bias=False), (2, 96, 1, 1), "cpu-direct or, on AVX2, cpu-channel-vector"),
], ids=repr)
def test_blocked_channel_vector_matches_torch(layer, shape, expected):
    _check_blocked(layer, shape, expected)


@pytest.mark.parametrize("layer,shape", [
    (compiler.Conv2d(3, 16, 3, stride=2, padding=1), (1, 3, 30, 26)),      # MobileNetV3's stem, smaller
    (compiler.Conv2d(3, 16, 3, padding=1, bias=False), (1, 3, 13, 23)),    # prime width: a partial tile
    (compiler.Conv2d(5, 8, 5, padding=2, padding_mode="reflect"), (1, 5, 12, 9)),
], ids=repr)
def test_few_channel_vectors_share_rows_between_tasks(layer, shape):
    """Fewer (image, channel vector) tasks than cores: each task also takes a row of pixel tiles
    (``cpu_channel_vector.row_bands``), so every core works; the numbers stay torch's."""
    from tvm.target import Target
    target = Target({"kind": "llvm", "mcpu": "znver3", "num-cores": 2})          # AVX2: 8-lane vectors
    request = KernelRequest(layer._spec(), shape, "float32")
    scheduled = build.schedule(request, target, prepacked=True)
    assert scheduled.rule == "cpu-channel-vector"
    assert "T.parallel(1)" not in scheduled.mod.script()   # one image x one vector: one task without rows
    assert_matches_torch(layer, torch.randn(*shape))


def _check_blocked(layer, shape, expected):
    assert_matches_torch(layer, torch.randn(*shape))
    if expected.startswith("cpu-direct or"):
        request = KernelRequest(layer._spec(), shape, "float32")
        two_registers = registers_per_vector(build.workload_of(request), host_target()) > 1
        expected = "cpu-channel-vector" if two_registers else "cpu-direct"
    assert layer.schedule == expected


# Pointwise layers with weights that fit L1 (schedules/cpu_pointwise.py): pixels on the SIMD axis, in
# widths of whole vectors on AVX2 and AVX-512 hosts alike (16 float32 lanes).

@pytest.mark.parametrize("layer,shape", [
    (compiler.Conv2d(16, 96, 1), (1, 16, 24, 32)),                 # 6 channels x 2 rows per tile
    (compiler.Conv2d(32, 16, 1, bias=False), (2, 32, 9, 16)),      # 4 x 3, a last partial row band
    (compiler.Conv2d(24, 7, 1), (1, 24, 5, 16)),                   # 7 channels: 1 x 12 (all 5 rows)
    (compiler.Conv2d(48, 18, (1, 1), padding=0, dilation=3), (3, 48, 4, 32)),   # dilation is moot
], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_pointwise_rule_matches_torch(layer, shape, dtype):
    layer = layer.to(dtype)
    assert_matches_torch(layer, torch.randn(*shape, dtype=dtype))
    assert layer.schedule == "cpu-pointwise"


@pytest.mark.parametrize("layer,shape,reason", [
    (compiler.Conv2d(128, 96, 1), (1, 128, 16, 16), "48 KB of weights: more than L1"),
    (compiler.Conv2d(16, 96, 1), (1, 16, 28, 28), "28 columns: not whole vectors"),
    (compiler.Conv2d(16, 96, 1, stride=2), (1, 16, 32, 32), "strided"),
    (compiler.Conv2d(16, 96, 1, padding=1), (1, 16, 30, 30), "padded"),
    (compiler.Conv2d(16, 96, 1, groups=2), (1, 16, 32, 32), "grouped"),
    (compiler.Conv2d(16, 96, 3, padding=1), (1, 16, 32, 32), "3x3"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_pointwise_rule_declines(layer, shape, reason):
    request = KernelRequest(layer._spec(), shape, "float32")
    func = build.prim_func(request)
    assert schedules.CpuPointwise().apply(func, build.workload_of(request), host_target()) is None, reason


def test_pointwise_rule_fuses_the_epilogue_into_the_tile():
    """The tile is stored from registers by its own epilogue (no NCHW sums buffer in memory)."""
    request = KernelRequest(ConvSpec.conv2d(16, 96, 1), (1, 16, 32, 32), "float32", epilogue=("add", "relu6"))
    sched = build.schedule(request, host_target())
    assert sched.rule == "cpu-pointwise"
    script = sched.mod.script()
    assert 'scope="local"' in script and "T.parallel(" in script and "T.vectorized(" in script


def test_pointwise_tile_fills_three_quarters_of_the_registers():
    from schedules.cpu_pointwise import PointwiseTile, choose_tile
    assert choose_tile(96, 112, 8, 16) == PointwiseTile(6, 2, 8)      # AVX2: 12 accumulators
    assert choose_tile(16, 112, 8, 16) == PointwiseTile(4, 3, 8)
    assert choose_tile(7, 5, 8, 16) == PointwiseTile(1, 5, 8)         # a prime count of channels
    assert choose_tile(96, 56, 16, 32) == PointwiseTile(6, 4, 16)     # AVX-512: 24 accumulators


def _taps_read(spec, shape):
    """The (kh, kw) taps whose packed weights the lowered kernel still reads."""
    import re
    sched = build.schedule(KernelRequest(spec, shape, "float32"), host_target(), prepacked=True)
    s_tir, tirx = tvm.s_tir.transform, tvm.tirx.transform
    lowered = tvm.transform.Sequential([
        s_tir.LowerInitBlock(), s_tir.ConvertBlocksToOpaque(), s_tir.LowerOpaqueBlock(),
        tirx.UnrollLoop(), tirx.StmtSimplify(), tirx.RemoveNoOp()])(sched.mod).script()
    return {(int(r), int(c)) for r, c in re.findall(r"weight\[0, \w+, (\d), (\d), ", lowered)}


def test_taps_reading_only_zero_padding_are_dropped():
    # dilation 40 on a 16x16 image: every tap but the centre reads padding for every pixel
    assert _taps_read(ConvSpec.conv2d(16, 16, 3, padding=40, dilation=40, bias=False), (1, 16, 16, 16)) == {(1, 1)}
    # dilation 12: every tap reads the image for some pixels
    assert len(_taps_read(ConvSpec.conv2d(16, 16, 3, padding=12, dilation=12, bias=False), (1, 16, 16, 16))) == 9


def test_tap_ranges_follow_the_padding():
    from tvm import s_tir
    from schedules.cpu_tiles import dead_tap_share, tap_ranges
    func = build.prim_func(KernelRequest(ConvSpec.conv2d(16, 16, 3, padding=6, dilation=6), (1, 16, 32, 32), "float32"))
    rows = tap_ranges(s_tir.Schedule(func), 2, 2, 5, 3, 32)
    assert rows.ranges == (((6, 32), (0, 32), (0, 26)),) and rows.breakpoints(0) == [6, 26]
    assert dead_tap_share(rows, rows) == pytest.approx(1 - (84 / 96) ** 2)
    # transposed 3x3 at stride 2: phase 0's second tap is past the kernel's edge (a zero weight),
    # phase 1's first reads row q + 1 (the bottom margin for the last row)
    func = build.prim_func(KernelRequest(ConvSpec.conv_transpose2d(16, 16, 3, stride=2, padding=1, output_padding=1),
                                         (1, 16, 7, 7), "float32"))
    rows = tap_ranges(s_tir.Schedule(func), 2, 4, 7, 2, 7, phase=2, phases=2)
    assert rows.ranges == (((0, 7), (0, 0)), ((0, 6), (0, 7)))


@pytest.mark.parametrize("extent,tile,breakpoints,expected", [
    (32, 4, (), []), (32, 6, (), [5]), (32, 4, (6, 26), [1, 2, 6, 7]), (32, 4, (8, 24), [2, 6]),
    (4, 4, (1, 2, 3), []), (7, 6, (1, 6), [1]),
])
def test_tile_cuts_isolate_straddling_and_partial_tiles(extent, tile, breakpoints, expected):
    from schedules.cpu_tiles import tile_cuts
    assert tile_cuts(extent, tile, breakpoints) == expected


def test_blocked_tiles_fit_the_register_file():
    from tvm.target import Target
    from schedules.base import native_vector_bits
    from schedules.cpu_tiles import pixel_tile_limit, reduction_chunk, tile_extent
    wl = build.workload_of(KernelRequest(ConvSpec.conv2d(16, 16, 3), (1, 16, 8, 8), "float32"))
    avx2, avx512 = Target({"kind": "llvm", "mcpu": "znver3"}), Target({"kind": "llvm", "mcpu": "znver4"})
    assert native_vector_bits(avx2) == 256 and native_vector_bits(avx512) == 512
    assert pixel_tile_limit(wl, avx2) == 6       # 6 pixels x 2 registers + weights (2) + broadcast < 16
    assert pixel_tile_limit(wl, avx512) == 16    # half of the 32 registers, as measured on znver4
    assert [tile_extent(e, 6) for e in (4, 32, 28, 7, 13)] == [4, 4, 4, 6, 6]
    small, large = 64 * 1024, 1024 * 1024                      # a task's sums: in L2, or not
    assert [reduction_chunk(c, 9 * 64, small) for c in (3, 16, 100, 2048, 17, 24)] == [3, 16, 10, 16, 17, 12]
    assert reduction_chunk(128, 4 * 64, large) == 128          # one chunk: the sums are read once
    assert reduction_chunk(2048, 9 * 64, large) == 256         # as many weights as the cache holds


@pytest.mark.parametrize("layer,shape", [
    (compiler.ConvTranspose2d(32, 32, 4, 2, 1, bias=False), (2, 32, 4, 4)),                   # DCGAN
    (compiler.ConvTranspose2d(16, 32, 4, 1, 0, bias=False), (3, 16, 1, 1)),                   # DCGAN's first
    (compiler.ConvTranspose2d(16, 16, 3, stride=2, padding=1, output_padding=1), (1, 16, 7, 9)),
    (compiler.ConvTranspose2d(24, 32, 4, stride=2, padding=1), (1, 24, 16, 16)),              # margins kept
    (compiler.ConvTranspose2d(8, 32, 3, stride=(3, 2), padding=(2, 1), dilation=(2, 3), output_padding=(1, 2),
                              groups=2), (2, 8, 5, 6)),
    (compiler.ConvTranspose2d(16, 16, 2, stride=2), (1, 16, 9, 11)),                          # no margins
    (compiler.ConvTranspose2d(16, 16, 4, 2, 1, dtype=torch.float64), (1, 16, 5, 5)),
    (compiler.ConvTranspose2d(16, 16, 4, 2, 1, dtype=torch.bfloat16), (1, 16, 5, 5)),
], ids=repr)
def test_transposed_channel_vector_matches_torch(layer, shape):
    assert_matches_torch(layer, torch.randn(*shape).to(layer.weight.dtype))
    assert layer.schedule == "cpu-transposed-phase"


@pytest.mark.parametrize("mcpu,block,rule", [("znver3", 8, "cpu-channel-vector"), ("znver4", None, "cpu-direct")])
def test_avx2_takes_one_register_channel_vectors(mcpu, block, rule):
    """24 output channels are no whole 16-lane vector; on AVX2, whose registers hold 8 float32,
    they are three one-register vectors (AVX-512's 16-lane registers leave them to cpu-direct)."""
    from tvm.target import Target
    from schedules import CpuChannelVector
    request = KernelRequest(ConvSpec.conv2d(96, 24, 1), (1, 96, 20, 20), "float32")
    target = Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    assert CpuChannelVector().weight_block(build.workload_of(request), target) == block
    assert build.schedule(request, target, prepacked=True).rule == rule


@pytest.mark.parametrize("layer", [compiler.Conv2d(96, 24, 1), compiler.Conv2d(40, 40, 3, padding=1, groups=5),
                                   compiler.Conv2d(8, 56, 3, stride=2, bias=False)], ids=repr)
def test_channel_vectors_of_any_register_width_match_torch(layer):
    assert_matches_torch(layer, torch.randn(2, layer.in_channels, 17, 12))


# A last, partial column tile (schedules/cpu_direct.partial_tile_pieces): widths without a divisor
# near a vector (prime widths, a reflect-padded gradient's 262 columns).

@pytest.mark.parametrize("layer,shape,rule", [
    (compiler.Conv2d(8, 3, 3), (1, 8, 9, 39), "cpu-direct"),                            # 37 columns
    (compiler.Conv2d(6, 5, 3, padding=2, dilation=2, bias=False), (2, 6, 5, 53), "cpu-direct"),
    (compiler.Conv2d(4, 12, 5, stride=2, padding=1, padding_mode="reflect"), (1, 4, 7, 83), "cpu-direct"),   # 41
    (compiler.ConvTranspose2d(8, 3, 3), (1, 8, 6, 35), "cpu-transposed-phase"),          # 37 columns
    (compiler.ConvTranspose2d(6, 5, 3, stride=2, padding=1, output_padding=1), (2, 6, 4, 37),
     "cpu-transposed-phase"),                                                           # 37 per phase
    (compiler.ConvTranspose2d(4, 3, 3, dtype=torch.float64), (1, 4, 3, 39), "cpu-transposed-phase"),
], ids=repr)
def test_partial_column_tile_is_a_piece_of_its_own(layer, shape, rule):
    assert_matches_torch(layer, torch.randn(*shape).to(layer.weight.dtype))
    assert layer.schedule == rule
    # the first piece's accumulation (every tile but the last) carries no predicate
    request = KernelRequest(layer._spec(), shape, str(layer.weight.dtype).replace("torch.", ""),
                            layer._spec().output_padding if layer._spec().transposed else None)
    script = build.schedule(request, host_target(), prepacked=True).mod.script()
    updates = script.split('T.sblock("conv_')[1:]
    pieces = [u for u in updates if u.startswith("ow_") or u.startswith("qw_")]
    assert len(pieces) >= 2 and "T.where" not in pieces[0].split("T.writes")[0], script
