"""CUDA: every variant schedules within every preset's limits and generates CUDA; nvcc compiles it
for sm_80 and sm_90 here (no GPU needed); on a machine with an NVIDIA GPU the modules run there."""
import contextlib

import pytest
import torch
import tvm
from hypothesis import HealthCheck, given, settings

import compiler
from compiler import build, cuda_binary
from compiler.request import KernelRequest
from compiler.spec import ConvSpec
from reference import assert_matches_torch, assert_output_matches
from schedules import CudaDirect
from schedules.gpu_verify import passes_gpu_verification
from targets import PRESETS, preset, resolve, target_key
from test_random_configs import conv2d_cases, conv_transpose2d_cases

VARIANTS = {
    "dense3x3": (ConvSpec.conv2d(32, 64, 3, padding=1), (1, 32, 28, 28)),
    "pointwise": (ConvSpec.conv2d(64, 32, 1), (2, 64, 14, 14)),
    "strided": (ConvSpec.conv2d(16, 32, 3, stride=2, padding=1), (1, 16, 30, 30)),
    "dilated": (ConvSpec.conv2d(32, 32, 3, padding=2, dilation=2), (1, 32, 20, 20)),
    "grouped": (ConvSpec.conv2d(32, 64, 3, padding=1, groups=4), (1, 32, 16, 16)),
    "depthwise_x2": (ConvSpec.conv2d(16, 32, 3, stride=2, padding=1, groups=16), (1, 16, 33, 33)),
    "stem7x7": (ConvSpec.conv2d(3, 64, 7, stride=2, padding=3), (1, 3, 224, 224)),
    "reflect": (ConvSpec.conv2d(8, 8, 3, padding=1, padding_mode="circular"), (1, 8, 15, 17)),
    "transposed": (ConvSpec.conv_transpose2d(32, 16, 4, stride=2, padding=1), (1, 32, 16, 16)),
    "transposed_dil_groups": (ConvSpec.conv_transpose2d(8, 12, 3, stride=3, dilation=2, groups=2,
                                                        output_padding=1), (2, 8, 7, 5)),
}


def test_presets_and_names():
    assert set(PRESETS) >= {"sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90"}
    t = resolve("cuda/sm_86")
    assert str(t.attrs["arch"]) == "sm_86" and int(t.attrs["max_threads_per_block"]) == 1024
    assert int(t.attrs["max_shared_memory_per_block"]) == 48 * 1024 and int(t.attrs["thread_warp_size"]) == 32
    assert target_key(t) == "cuda-sm_86" and preset("sm_90").short_name == "cuda/sm_90"
    with pytest.raises(ValueError, match="unknown CUDA target"):
        resolve("cuda/sm_10")


@pytest.mark.parametrize("arch", sorted(PRESETS))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_schedules_within_every_preset(variant, arch):
    spec, shape = VARIANTS[variant]
    target = resolve(f"cuda/{arch}")
    op = spec.output_padding if spec.transposed else None
    scheduled = build.schedule(KernelRequest(spec, shape, "float32", op), target)
    assert scheduled.rule == "cuda-direct"
    assert passes_gpu_verification(scheduled.mod, target)
    script = scheduled.mod.script()
    assert 'thread_binding' in script and '"shared"' in script
    executable = tvm.compile(scheduled.mod, target=target)
    assert "__global__" in cuda_binary.device_source(executable)


NVCC_CASES = [(v, "float32") for v in sorted(VARIANTS)] + [
    (v, dt) for v in ("dense3x3", "depthwise_x2", "transposed") for dt in ("float16", "bfloat16")]
HALF_C_TYPE = {"float16": "half", "bfloat16": "nv_bfloat16"}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("variant,dtype", NVCC_CASES, ids=[f"{v}-{d}" for v, d in NVCC_CASES])
def test_nvcc_compiles_every_variant(variant, dtype, arch):
    spec, shape = VARIANTS[variant]
    target = resolve(f"cuda/{arch}")
    op = spec.output_padding if spec.transposed else None
    # the direct rule, which serves every variant (tests/test_tensorcore.py compiles the tensor-core one)
    scheduled = build.schedule(KernelRequest(spec, shape, dtype, op), target, rules=(CudaDirect(),))
    source = cuda_binary.device_source(tvm.compile(scheduled.mod, target=target))
    assert "float conv_local" in source                      # registers accumulate in float32
    if dtype in HALF_C_TYPE:
        assert f"__shared__ alignas(64) {HALF_C_TYPE[dtype]} " in source   # staged in the half type
    fatbin = cuda_binary.compile_device_code(source, target, "fatbin")
    other = "sm_80" if arch == "sm_90" else "sm_90"
    assert arch.encode() in fatbin and other.encode() not in fatbin


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@contextlib.contextmanager
def exact_float32():
    """torch's TF32 setting for convolutions off (ours and cuDNN's float32 exact), then restored."""
    saved = torch.backends.cudnn.conv.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.cudnn.conv.fp32_precision = saved


@needs_gpu
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_modules_run_on_the_gpu_and_match_torch(variant, dtype):
    spec, shape = VARIANTS[variant]
    cls = compiler.ConvTranspose2d if spec.transposed else compiler.Conv2d
    kwargs = spec.constructor_args()
    m = cls(**kwargs, device="cuda", dtype=dtype)
    m.tuning_database = False            # the hand-written rule (shipped records are tested apart)
    x = torch.randn(*shape, device="cuda", dtype=dtype)
    assert_matches_torch(m, x)
    # tensor cores for the half types, and float32 while torch allows TF32, where the rule applies
    # (>= 16 channels per group, sm_80+)
    request = m.last_request
    assert request == KernelRequest(spec, tuple(shape), str(dtype).replace("torch.", ""),
                                    spec.output_padding if spec.transposed else None,
                                    tf32=dtype is torch.float32 and torch.backends.cudnn.allow_tf32
                                    and torch.cuda.get_device_capability()[0] >= 8)
    expected = build.schedule(request, m.kernel.target).rule
    assert m.schedule == expected and str(m.kernel.target.kind.name) == "cuda"
    assert expected == "cuda-direct" or dtype is not torch.float32 or request.tf32


@needs_gpu
@pytest.mark.parametrize("layer,shape", [("Conv2d(128, 128, 3, padding=1)", (32, 128, 28, 28)),
                                         ("Conv2d(1024, 256, 1, bias=False)", (32, 1024, 14, 14)),
                                         ("ConvTranspose2d(128, 64, 2, stride=2)", (32, 128, 64, 64))])
def test_exact_float32_batches_take_the_register_blocked_tile_on_the_gpu(layer, shape):
    """torch's TF32 off, batch 32: cuda-direct's register-blocked tile (tests/test_cuda_direct.py),
    conv2d's weights packed in channel blocks once per module and repacked after an in-place update."""
    from compiler.layers import parse_layer
    from schedules import cuda_direct
    m = parse_layer(layer).cuda()
    m.tuning_database = False
    x = torch.randn(*shape, device="cuda")
    with exact_float32():
        assert_matches_torch(m, x)
        assert m.schedule == "cuda-direct" and not m.last_request.tf32
        assert cuda_direct.CudaDirect.tile(build.workload_of(m.last_request), m.kernel.target).strided
        assert (m.kernel.weight_block is None) == m._spec().transposed
        with torch.no_grad():
            m.weight.mul_(-0.5)
        assert_matches_torch(m, x)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layer,shape", [("Conv2d(128, 128, 3, padding=1)", (8, 128, 28, 28)),
                                         ("Conv2d(64, 128, 3, stride=2, padding=1, groups=2)", (4, 64, 30, 30)),
                                         ("Conv2d(512, 512, 3, padding=1, bias=False)", (1, 512, 7, 7))])
def test_nchw_inputs_go_through_an_nhwc_copy_on_the_gpu(layer, shape, dtype):
    """NCHW inputs of 3x3 layers in the half types and TF32 (torch's default): the tensor-core rule
    reads them through an NHWC copy (a transpose kernel before the GEMM's, K split at batch 1), the
    weight packed ``[co, kh, kw, ci/groups]`` once per module and again after an in-place update;
    torch's numbers in an NCHW output."""
    from compiler import compute
    from compiler.layers import parse_layer
    from schedules import cuda_tensorcore
    m = parse_layer(layer).to("cuda", dtype)
    m.tuning_database = False
    x = torch.randn(*shape, device="cuda", dtype=dtype)
    for _ in range(2):
        y = assert_matches_torch(m, x)
        assert y.is_contiguous() and m.schedule == "cuda-tensorcore"
        assert cuda_tensorcore.relayout_pays(build.workload_of(m.last_request))
        assert m.kernel.weight_block == compute.ChannelsLastWeight()
        with torch.no_grad():
            m.weight.mul_(-0.5)


@needs_gpu
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("weights", ["contiguous", "channels_last"])
def test_channels_last_on_the_gpu_reads_nhwc_in_place(variant, dtype, weights):
    """channels_last inputs (and weights) take an NHWC tensor-core kernel wherever the rule takes the
    layer (torch's output format, values within the bound); the rest an NCHW kernel with copies."""
    spec, shape = VARIANTS[variant]
    cls = compiler.ConvTranspose2d if spec.transposed else compiler.Conv2d
    m = cls(**spec.constructor_args(), device="cuda", dtype=dtype)
    m.tuning_database = False
    if weights == "channels_last":
        m = m.to(memory_format=torch.channels_last)
    x = torch.randn(*shape, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    y = assert_matches_torch(m, x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    nhwc = m.last_request.layout == "NHWC"
    assert nhwc == (m.schedule == "cuda-tensorcore")
    # the repeated call (module._repeat) on new values: the same kernel and layout, no copies
    x2 = torch.randn_like(x)
    with torch.no_grad():
        y2 = m(x2)
    record = m.__dict__.get("_repeat_record")      # an NCHW kernel copies a channels_last input: no record
    assert (record is not None and record[1].request.layout == "NHWC") == nhwc
    assert y2.is_contiguous(memory_format=torch.channels_last)
    assert_output_matches(m, x2, y2)


@needs_gpu
def test_gpu_runs_on_torchs_current_stream():
    m = compiler.Conv2d(16, 16, 3, padding=1, device="cuda")
    x = torch.randn(4, 16, 32, 32, device="cuda")
    s = torch.cuda.Stream()
    with exact_float32():
        with torch.cuda.stream(s):
            y = m(x)
        s.synchronize()
        torch.testing.assert_close(y, torch.nn.functional.conv2d(x, m.weight, m.bias, padding=1),
                                   rtol=1e-4, atol=1e-4)


@needs_gpu
def test_gpu_benchmark_runs_against_cudnn(capsys):
    from compiler.__main__ import main
    main(["bench", "--device", "cuda", "--layer", "Conv2d(32, 32, 3, padding=1)", "--input-shape", "1,32,28,28"])
    assert "geometric-mean speedup" in capsys.readouterr().out


def test_metaschedule_cuda_space_works_on_the_same_expressions():
    from tvm.s_tir import meta_schedule as ms
    spec, shape = VARIANTS["grouped"]
    mod = build.workload_module(KernelRequest(spec, shape, "float32"))
    ctx = ms.TuneContext(mod=mod, target=resolve("cuda/sm_90"), space_generator=ms.space_generator.PostOrderApply(
        sch_rules="cuda", postprocs="cuda", mutator_probs="cuda"), task_name="conv")
    spaces = ctx.generate_design_space()
    assert spaces and all("threadIdx" in str(s.trace) or "thread" in s.mod.script() for s in spaces)


@needs_gpu
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(conv2d_cases())
def test_random_conv2d_on_the_gpu(case):
    args, kw, shape = case
    assert_matches_torch(compiler.Conv2d(*args, **kw, device="cuda"), torch.randn(*shape, device="cuda"))


@needs_gpu
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(conv2d_cases())
def test_random_channels_last_half_conv2d_on_the_gpu(case):
    """Random layers with 16x the channels (16-48 per group: the tensor cores' NHWC kernels)."""
    (in_ch, out_ch, kernel), kw, shape = case
    args, shape = (16 * in_ch, 16 * out_ch, kernel), (shape[0], 16 * shape[1], *shape[2:])
    m = compiler.Conv2d(*args, **kw, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    x = torch.randn(*shape, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    assert_matches_torch(m, x)


@needs_gpu
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(conv_transpose2d_cases())
def test_random_channels_last_half_conv_transpose2d_on_the_gpu(case):
    """Random transposed layers with 16x the channels: NHWC tensor-core kernels where the rule takes
    them (strides and dilations without a common factor), NCHW ones with copies elsewhere."""
    (in_ch, out_ch, kernel), kw, shape = case
    args, shape = (16 * in_ch, 16 * out_ch, kernel), (shape[0], 16 * shape[1], *shape[2:])
    m = compiler.ConvTranspose2d(*args, **kw, device="cuda", dtype=torch.float16).to(
        memory_format=torch.channels_last)
    x = torch.randn(*shape, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    assert assert_matches_torch(m, x).is_contiguous(memory_format=torch.channels_last)


@needs_gpu
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(conv_transpose2d_cases())
def test_random_conv_transpose2d_on_the_gpu(case):
    args, kw, shape = case
    assert_matches_torch(compiler.ConvTranspose2d(*args, **kw, device="cuda"),
                         torch.randn(*shape, device="cuda"))


@needs_gpu
def test_tuning_measures_on_the_local_gpu(tmp_path):
    from compiler import records
    from compiler.tuning import tune
    spec, shape = VARIANTS["grouped"]
    target = resolve("cuda")
    result = tune(spec, shape, target=target, trials=4, trials_per_iter=4, work_dir=tmp_path / "db",
                  final_check=1, population=16)
    assert result.trials_run == 4 and result.hand_ms > 0 and result.target_key == target_key(target)
    m = compiler.Conv2d(**spec.constructor_args(), device="cuda")
    m.tuning_database = tmp_path / "db"
    with exact_float32():                # the tuned workload is the exact float32 one
        assert_matches_torch(m, torch.randn(*shape, device="cuda"))
    tuned = f"tuned:{records.workload_hash(build.workload_module(KernelRequest(spec, shape, 'float32')))}"
    assert m.schedule in ("cuda-direct", tuned)


def test_inputs_that_do_not_start_on_16_bytes_are_copied_for_the_vector_loads():
    """``ops.aligned``: a view 2 bytes into its storage (legal in torch) becomes a copy with the same
    strides and values; an aligned one is passed as it is (the CUDA kernels' 16-byte loads fault
    on the former)."""
    from compiler import ops
    storage = torch.randn(1 + 2 * 32 * 8 * 8, dtype=torch.float16)
    view = storage[1:].view(2, 32, 8, 8)
    assert view.data_ptr() % ops.CUDA_ALIGNMENT == 2
    copy = ops.aligned(view)
    assert copy.data_ptr() % ops.CUDA_ALIGNMENT == 0 and copy.stride() == view.stride()
    assert torch.equal(copy, view)
    nhwc = storage[1:].view(2, 8, 8, 32)                # an NHWC kernel's view of channels_last bytes
    assert ops.aligned(nhwc).stride() == nhwc.stride()
    whole = torch.randn(2, 32, 8, 8)
    assert ops.aligned(whole) is whole


@needs_gpu
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_a_misaligned_input_runs_on_the_gpu(channels_last):
    """A half input 2 bytes into its storage reaches kernels with 16-byte loads (1x1 NCHW, NHWC)."""
    m = compiler.Conv2d(64, 32, 1, device="cuda", dtype=torch.float16)
    storage = torch.randn(1 + 2 * 64 * 8 * 8, device="cuda", dtype=torch.float16)
    x = storage[1:].view(2, 8, 8, 64).permute(0, 3, 1, 2) if channels_last else storage[1:].view(2, 64, 8, 8)
    assert x.data_ptr() % 16 == 2
    assert_matches_torch(m, x)
