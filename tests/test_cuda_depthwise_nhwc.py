"""``cuda-depthwise-nhwc``: channels_last depthwise layers on NVIDIA GPUs, read and written in place in
16-byte vectors of a pixel's channels.  Checked without a GPU: which requests it takes, its numbers
through CPU emulation of the scheduled kernel (tests/gpu_emulation.py) against torch, and its machine
code (16-byte loads of the input and the packed weight, no local memory, no spills)."""
import re

import pytest
import torch
import tvm

import compiler
from compiler import build, cuda_binary, ops
from compiler.layers import spec_of
from compiler.request import Epilogue, KernelRequest
from compiler.spec import ConvSpec
from gpu_emulation import compile_serialised
from reference import UNIT_ROUNDOFF, assert_output_matches
from schedules import CudaDepthwiseNhwc, NoRule
from schedules.cuda_depthwise_nhwc import channel_lanes
from targets import resolve
from targets.cuda import compile_context
from test_tensorcore import _pack_on_host, needs_nvcc, ptxas_report

SM90 = resolve("cuda/sm_90")
DTYPES = ("float16", "bfloat16", "float32")

#: small layers for the emulation (each thread's loads run serially), every variant of a depthwise layer
VARIANTS = {
    "3x3": (ConvSpec.conv2d(32, 32, 3, padding=1, groups=32), (2, 32, 9, 12)),
    "3x3_stride2": (ConvSpec.conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False), (1, 16, 11, 11)),
    "5x5_stride2": (ConvSpec.conv2d(16, 16, 5, stride=2, padding=2, groups=16), (1, 16, 12, 9)),
    "dilated_reflect": (ConvSpec.conv2d(24, 24, 3, padding=2, dilation=2, groups=24, padding_mode="reflect"),
                        (1, 24, 9, 12)),
    "circular": (ConvSpec.conv2d(8, 8, (3, 5), padding=(1, 2), groups=8, padding_mode="circular"), (1, 8, 6, 7)),
    "replicate_unpadded": (ConvSpec.conv2d(16, 16, 3, groups=16, padding_mode="replicate"), (2, 16, 7, 10)),
    "odd_width": (ConvSpec.conv2d(8, 8, 3, padding=1, groups=8), (1, 8, 5, 7)),
}


def _request(spec: ConvSpec, shape, dtype: str, epilogue=()) -> KernelRequest:
    return KernelRequest(spec, shape, dtype, layout="NHWC", epilogue=Epilogue(epilogue))


def _emulated(spec: ConvSpec, shape, dtype: str, epilogue=()) -> None:
    """The module path's schedule (packed weight), emulated on channels_last tensors, against torch."""
    request = _request(spec, shape, dtype, epilogue)
    scheduled = build.schedule(request, SM90, prepacked=True)
    assert scheduled.rule == "cuda-depthwise-nhwc" and scheduled.weight_block == channel_lanes(dtype)
    kind = getattr(torch, dtype)
    m = compiler.Conv2d(**spec.constructor_args(), dtype=kind)
    x = torch.randn(*shape, dtype=kind)
    y = torch.empty(spec.output_shape(shape), dtype=kind, memory_format=torch.channels_last)
    residual = torch.randn_like(y) if "add" in epilogue else None
    args = [ops.in_layout(x, "NHWC"), _pack_on_host(request, scheduled.weight_block, m.weight)]
    args += [m.bias.detach()] if m.bias is not None else []
    args += [ops.in_layout(residual, "NHWC")] if residual is not None else []
    compile_serialised(scheduled.mod)(*args, ops.in_layout(y, "NHWC"))
    if not epilogue:
        assert_output_matches(m, x, y)
        return
    # the residual added and the ReLU applied in float32 before the one rounding: the float32 sum's
    # bound (as reference.py's) plus the half type's rounding of the result (ReLU is 1-Lipschitz)
    conv = dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=spec.groups)
    with torch.no_grad():
        exact = torch.relu(torch.nn.functional.conv2d(x.double(), m.weight.double(), m.bias.double(), **conv)
                           + residual.double())
        magnitude = torch.nn.functional.conv2d(x.double().abs(), m.weight.double().abs(), m.bias.double().abs(),
                                               **conv) + residual.double().abs()
    terms = spec.kernel_size[0] * spec.kernel_size[1] + 2
    bound = terms * UNIT_ROUNDOFF[torch.float32] * magnitude + UNIT_ROUNDOFF[kind] * exact.abs() + 1e-7
    assert bool(((y.double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_depthwise_nhwc_computes_torchs_numbers(variant, dtype):
    _emulated(*VARIANTS[variant], dtype)


def test_float64_takes_two_channels_a_vector():
    _emulated(ConvSpec.conv2d(6, 6, 3, padding=1, groups=6), (1, 6, 5, 8), "float64")


def test_a_fused_residual_and_activation_are_applied_from_the_registers():
    _emulated(ConvSpec.conv2d(16, 16, 3, padding=1, groups=16), (1, 16, 6, 8), "float16", ("add", "relu"))


def test_which_requests_it_takes():
    """Depthwise (one channel per group, as many out as in) NHWC layers whose channels are whole
    16-byte vectors, weights packed; an NCHW request, a channel multiplier, 12 half channels (1.5
    vectors) or a transposed layer are left to the other rules, and so are torch-layout weights
    (searches: no rule takes the NHWC request, and a call gets the NCHW kernel)."""
    rule = CudaDepthwiseNhwc()

    def takes(layer, shape, dtype="float16", layout="NHWC"):
        spec = spec_of(layer)
        request = KernelRequest(spec, shape, dtype, spec.output_padding if spec.transposed else None, layout=layout)
        return rule.takes(build.workload_of(request), SM90)
    assert takes("Conv2d(32, 32, 3, padding=1, groups=32)", (1, 32, 8, 8))
    assert takes("Conv2d(12, 12, 3, padding=1, groups=12)", (1, 12, 8, 8), "float32")        # 3 vectors of 4
    assert not takes("Conv2d(12, 12, 3, padding=1, groups=12)", (1, 12, 8, 8))
    assert not takes("Conv2d(32, 32, 3, padding=1, groups=32)", (1, 32, 8, 8), layout="NCHW")
    assert not takes("Conv2d(16, 32, 3, padding=1, groups=16)", (1, 16, 8, 8))
    assert not takes("Conv2d(32, 32, 3, padding=1, groups=2)", (1, 32, 8, 8))
    assert not takes("ConvTranspose2d(32, 32, 3, padding=1, groups=32)", (1, 32, 8, 8))
    request = _request(ConvSpec.conv2d(32, 32, 3, padding=1, groups=32), (1, 32, 8, 8), "float16")
    with pytest.raises(NoRule):
        build.schedule(request, SM90)                # torch-layout weights


#: MobileNetV2/V3's and EfficientNet's depthwise layers (channels, kernel, stride, input size) at batch 8
MOBILE_LAYERS = [(144, 3, 1, 56), (96, 3, 2, 112), (240, 5, 1, 28), (960, 5, 1, 7), (672, 5, 2, 14)]


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_loads_are_16_bytes_and_nothing_goes_to_local_memory(dtype, arch, tmp_path):
    """For the mobile networks' depthwise layers: the input and the packed weight are loaded in
    16-byte vectors (``uint4`` of 8 halves, ``float4``), the sums and loaded vectors stay in registers
    (ptxas: no stack frame, no spills), and the blocks have at most 256 threads."""
    target = resolve(f"cuda/{arch}")
    for channels, kernel, stride, size in MOBILE_LAYERS:
        spec = ConvSpec.conv2d(channels, channels, kernel, stride=stride, padding=kernel // 2, groups=channels)
        scheduled = build.schedule(_request(spec, (8, channels, size, size), dtype), target, prepacked=True)
        assert scheduled.rule == "cuda-depthwise-nhwc"
        with compile_context(target):
            source = cuda_binary.device_source(tvm.compile(scheduled.mod, target=target))
        vector = "float4" if dtype == "float32" else "uint4"
        for tensor in ("input", "weight"):
            assert re.search(rf"= \*\({vector}\*\)\({tensor}_ptr \+ ", source), (channels, tensor)
        (threads,) = re.findall(r"__launch_bounds__\((\d+)\)", source)[:1]
        assert int(threads) <= 256
        report = ptxas_report(source, arch, tmp_path)
        assert all((stack, stores, loads) == (0, 0, 0) for stack, stores, loads, _ in report), (channels, report)


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_channels_last_depthwise_modules_on_the_gpu(dtype):
    """A channels_last depthwise module call on a GPU takes this rule, returns channels_last, and
    matches torch; its packed weight follows an in-place update."""
    m = compiler.Conv2d(96, 96, 3, stride=2, padding=1, groups=96, device="cuda", dtype=dtype)
    m.tuning_database = False
    x = torch.randn(8, 96, 56, 56, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        with torch.no_grad():
            y = m(x)
        assert m.schedule == "cuda-depthwise-nhwc" and y.is_contiguous(memory_format=torch.channels_last)
        assert_output_matches(m, x, y)
        with torch.no_grad():
            m.weight.mul_(-0.5)
