"""The NHWC kernel layout (``request.LAYOUTS``): channels_last activations read and written in place,
the weight as ``[co, kh, kw, ci/groups]``.

Checked without a GPU: the compute itself against torch (unscheduled, on the CPU, float64, every
conv2d variant and the fused epilogue), which requests may be NHWC, and how a call chooses the layout
(``ops.plan`` asks a CUDA target's rules for NHWC and takes NCHW where none accepts it; kernels are
compiled with nvcc).  The tensor-core schedule's numbers in NHWC are emulated in test_tensorcore.py;
on a GPU, ``tests/test_cuda.py`` runs the modules on channels_last tensors.
"""
import pytest
import torch
import tvm
from hypothesis import HealthCheck, given, settings

from compiler import build, ops
from compiler.request import Epilogue, KernelRequest
from compiler.spec import ConvSpec
from reference import assert_matches_torch, assert_output_matches, assert_within_bound
from schedules import NoRule
from targets import host_target, resolve
from test_random_configs import conv2d_cases, conv_transpose2d_cases


def _run_unscheduled(request: KernelRequest, m: torch.nn.Conv2d, x, residual=None) -> torch.Tensor:
    """``request``'s compute as TVM builds it with no schedule, on channels_last tensors."""
    f = tvm.compile(build.prim_func(request), target=host_target())
    y = ops.new_output(x, request.output_shape, type("K", (), {"request": request}))
    args = [ops.in_layout(x, request.layout), ops.in_layout(m.weight, request.layout)]
    args += [m.bias.detach()] if m.bias is not None else []
    args += [ops.in_layout(residual, request.layout)] if residual is not None else []
    f(*args, ops.in_layout(y, request.layout))
    return y


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(conv2d_cases())
def test_nhwc_compute_is_torchs_conv2d(case):
    """Random layers of every variant (groups, dilation, stride, padding modes, 'same'/'valid')."""
    args, kw, shape = case
    m = torch.nn.Conv2d(*args, **kw, dtype=torch.float64)
    spec = ops.layer_spec(False, m.weight.shape, m.bias is not None, m.stride, m.padding, m.dilation, m.groups,
                          m.padding_mode, (0, 0))
    x = torch.randn(*shape, dtype=torch.float64)
    y = _run_unscheduled(KernelRequest(spec, shape, "float64", layout="NHWC"), m, x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_output_matches(m, x, y, operand_roundoff=0.0)        # torch.nn's twin is itself


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(conv_transpose2d_cases())
def test_nhwc_compute_is_torchs_conv_transpose2d(case):
    """Random transposed layers (groups, dilation, stride, output padding, phases without taps), the
    weight as the channels_last bytes of torch's ``[ci, co/groups, kh, kw]``."""
    args, kw, shape = case
    m = torch.nn.ConvTranspose2d(*args, **kw, dtype=torch.float64)
    spec = ops.layer_spec(True, m.weight.shape, m.bias is not None, m.stride, m.padding, m.dilation, m.groups,
                          "zeros", m.output_padding)
    x = torch.randn(*shape, dtype=torch.float64)
    y = _run_unscheduled(KernelRequest(spec, shape, "float64", spec.output_padding, layout="NHWC"), m, x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_output_matches(m, x, y, operand_roundoff=0.0)


def test_nhwc_compute_applies_the_epilogue_to_a_channels_last_residual():
    m = torch.nn.Conv2d(8, 12, 3, padding=1, dtype=torch.float64)
    spec = ops.layer_spec(False, m.weight.shape, True, m.stride, m.padding, m.dilation, 1, "zeros", (0, 0))
    x, residual = torch.randn(2, 8, 7, 6, dtype=torch.float64), torch.randn(2, 12, 7, 6, dtype=torch.float64)
    request = KernelRequest(spec, x.shape, "float64", layout="NHWC", epilogue=Epilogue(("add", "silu")))
    y = _run_unscheduled(request, m, x, residual)
    with torch.no_grad():
        exact = torch.nn.functional.silu(m(x) + residual)
    torch.testing.assert_close(y, exact, rtol=1e-12, atol=1e-12)


def test_nhwc_is_a_forward_layout():
    conv = ConvSpec.conv2d(16, 16, 3, padding=1)
    transposed = KernelRequest(ConvSpec.conv_transpose2d(16, 16, 3), (1, 16, 8, 8), "float32", layout="NHWC")
    with pytest.raises(NoRule):             # the CPU's transposed rules read NCHW only
        build.schedule(transposed, host_target())
    with pytest.raises(ValueError, match="forward operators only"):
        KernelRequest(conv, (1, 16, 8, 8), "float32", layout="NHWC", operator="weight_grad")
    with pytest.raises(ValueError, match="not supported"):
        KernelRequest(conv, (1, 16, 8, 8), "float32", layout="NCWH")
    odd = ConvSpec.conv2d(16, 6, 3, padding=1)
    with pytest.raises(NoRule):             # no CPU rule reads NHWC for 6 dense output channels
        build.schedule(KernelRequest(odd, (1, 16, 8, 8), "float32", layout="NHWC"), host_target())


@pytest.mark.parametrize("layer,shape,layout,rule", [
    (ConvSpec.conv2d(32, 64, 3, padding=1), (2, 32, 8, 8), "NHWC", "cuda-tensorcore"),
    # depthwise: no tensor-core kernel, but the channel-vector one (cuda-depthwise-nhwc) ...
    (ConvSpec.conv2d(32, 32, 3, padding=1, groups=32), (2, 32, 8, 8), "NHWC", "cuda-depthwise-nhwc"),
    # ... not for 12 half channels (1.5 vectors): the call takes the NCHW kernel
    (ConvSpec.conv2d(12, 12, 3, padding=1, groups=12), (2, 12, 8, 8), "NCHW", "cuda-direct"),
    # the transposed form too, where the tensor-core rule takes it
    (ConvSpec.conv_transpose2d(32, 16, 4, stride=2, padding=1), (1, 32, 8, 8), "NHWC", "cuda-tensorcore"),
    # ... not where stride and dilation share a factor (phases without taps): cuda-direct, NCHW
    (ConvSpec.conv_transpose2d(32, 16, 3, stride=2, dilation=2), (1, 32, 8, 8), "NCHW", "cuda-direct"),
    # and a channels_last transposed call on the CPU takes NCHW (its transposed rules read NCHW only)
    (ConvSpec.conv_transpose2d(32, 16, 4, stride=2, padding=1), (1, 32, 8, 8), "NCHW", "cpu-transposed-phase"),
])
def test_a_gpu_call_asks_for_nhwc_and_falls_back_to_nchw(layer, shape, layout, rule):
    """``ops.plan`` with NHWC asked (what ``kernel_layout`` asks for channels_last tensors)."""
    target, dtype = (host_target(), torch.float32) if rule.startswith("cpu") else (resolve("cuda/sm_90"), torch.float16)
    out_shape, kernel, request = ops.plan(layer, shape, dtype, torch.device("cpu"), layer.output_padding
                                          if layer.transposed else None, Epilogue(), target, False,
                                          layer.weight_shape, (layer.out_channels,), layout="NHWC")
    assert request.layout == kernel.request.layout == layout
    assert kernel.schedule == rule and out_shape == request.output_shape


def test_channels_last_cpu_calls_ask_for_nhwc_and_take_nchw_where_no_rule_reads_it():
    """A channels_last CPU input asks for NHWC (torch's output is channels_last); the CPU's NHWC rules
    (depthwise, and channel vectors: output channels per group a multiple of the vector) decline 6
    output channels, so the layer takes the NCHW kernel (input copied in, output out)."""
    x = torch.randn(1, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 4, 3, 3)
    assert ops.kernel_layout(x, w) == "NHWC" and ops.kernel_layout(x.contiguous(), w) == "NCHW"
    assert ops.kernel_layout(x.contiguous(), w.contiguous(memory_format=torch.channels_last)) == "NHWC"
    spec = ops.layer_spec(False, w.shape, False, (1, 1), (1, 1), (1, 1), 1, "zeros", (0, 0))
    _, kernel, request = ops.plan(spec, tuple(x.shape), torch.float32, x.device, None, Epilogue(), host_target(),
                                  False, w.shape, None, layout="NHWC")
    assert request.layout == kernel.request.layout == "NCHW"


def test_in_layout_reads_channels_last_bytes_in_place():
    x = torch.randn(2, 8, 5, 3).contiguous(memory_format=torch.channels_last)
    view = ops.in_layout(x, "NHWC")
    assert view.data_ptr() == x.data_ptr() and view.is_contiguous() and view.shape == (2, 5, 3, 8)
    nchw = torch.randn(2, 8, 5, 3)
    assert torch.equal(ops.in_layout(nchw, "NHWC"), nchw.permute(0, 2, 3, 1))


def test_an_nhwc_output_is_returned_as_it_is():
    """The NHWC kernel's channels_last output has torch's strides: the call returns that tensor
    (so the repeated call, ``module._repeat``, may record it); a one-channel output is restrided."""
    x = torch.randn(2, 8, 5, 3).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 8, 3, 3)
    y = torch.empty(2, 6, 5, 3, memory_format=torch.channels_last)
    assert ops.in_torchs_format(y, x, w) is y
    one = torch.empty(2, 1, 5, 3)
    out = ops.in_torchs_format(one, x, w)
    assert out.stride() == torch.empty(2, 1, 5, 3, memory_format=torch.channels_last).stride()


# the CPU's NHWC rule: depthwise layers on channels_last tensors (ConvNeXt's 7x7 layers take them);
# channels in whole vectors of AVX2 and AVX-512 registers alike (16 float32 lanes), so every host takes them
DEPTHWISE = [
    ((16, 16, 3), {"padding": 1}, (2, 16, 9, 14)),
    ((32, 32, 7), {"padding": 3, "bias": False}, (1, 32, 7, 7)),
    ((16, 16, 5), {"stride": 2, "padding": 2, "dilation": 1}, (1, 16, 11, 13)),
    ((32, 32, 3), {"padding": 2, "dilation": 2, "padding_mode": "reflect"}, (1, 32, 10, 12)),
    ((16, 16, (3, 1)), {"stride": (1, 2), "padding": "valid"}, (3, 16, 6, 9)),
    ((16, 16, 3), {"padding": "same", "padding_mode": "circular"}, (1, 16, 5, 6)),
]


def _check_channels_last_cpu_layer(args, kw, shape, dtype, rule):
    """The kernel is NHWC (``rule``), its output torch's channels_last one, its values within the
    dtype's bound; a repeated call on new values takes the same kernel."""
    import compiler
    m = compiler.Conv2d(*args, **kw, dtype=dtype)
    x = torch.randn(*shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    y = assert_matches_torch(m, x)
    assert m.last_request.layout == "NHWC" and m.schedule == rule
    assert y.is_contiguous(memory_format=torch.channels_last)
    x2 = torch.randn_like(x)
    with torch.no_grad():
        y2 = m(x2)
    assert m.__dict__["_repeat_record"][1].request.layout == "NHWC"
    assert y2.is_contiguous(memory_format=torch.channels_last)
    assert_output_matches(m, x2, y2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(len(DEPTHWISE)))
def test_channels_last_depthwise_reads_nhwc_in_place_on_the_cpu(case, dtype):
    args, kw, shape = DEPTHWISE[case]
    _check_channels_last_cpu_layer(args, {**kw, "groups": args[0]}, shape, dtype, "cpu-depthwise-nhwc")


def test_channels_last_depthwise_with_a_fused_epilogue_and_a_permuted_input():
    """A channels_last residual and activation in the NHWC kernel's epilogue, on the permuted NHWC
    tensor ConvNeXt's blocks pass (a view, not a copy), and NCHW where the channels are no whole
    vectors (5: the NCHW rule, the input copied)."""
    import compiler
    from compiler.fusion import FusedConv2d
    m = FusedConv2d(16, 16, 3, padding=1, groups=16)
    m.epilogue = Epilogue(("add", "gelu"))
    nhwc = torch.randn(2, 7, 9, 16)
    x, residual = nhwc.permute(0, 3, 1, 2), torch.randn(2, 16, 7, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = m(x, residual)
        conv = torch.nn.functional.conv2d(x.double(), m.weight.double(), m.bias.double(), padding=1, groups=16)
        magnitude = torch.nn.functional.conv2d(x.double().abs(), m.weight.double().abs(), m.bias.double().abs(),
                                               padding=1, groups=16) + residual.double().abs()
    assert m.last_request.layout == "NHWC" and y.is_contiguous(memory_format=torch.channels_last)
    # test_fusion.py's bound: (K + 3) u (M + |r|) through the GELU's slope (at most 1.13), then its
    # float32 evaluation (4 u |y|) and rounding (u |y|)
    exact = torch.nn.functional.gelu(conv + residual.double())
    bound = 1.13 * (9 + 3) * 2.0 ** -24 * magnitude + 5 * 2.0 ** -24 * exact.abs()
    assert bool(((y.double() - exact).abs() <= bound).all())
    odd = compiler.Conv2d(5, 5, 3, padding=1, groups=5)
    assert_matches_torch(odd, torch.randn(1, 5, 6, 6).contiguous(memory_format=torch.channels_last))
    assert odd.last_request.layout == "NCHW" and odd.schedule == "cpu-depthwise"


def _check_channels_last_gradients(args, kw, shape):
    """Autograd through the NHWC kernel in float64: the input gradient comes back channels_last, as
    torch's, and every gradient is within the bound of torch's (the backward kernels read NCHW
    copies).  Both sides round sums of at most ``reduction`` products (a tap per kernel position
    and output channel of the group for the input; a pixel per image for the weight and bias), so
    they differ by at most twice the bound of one from the exact value (``reference.py``), with the
    magnitudes torch computes from the operands' absolute values."""
    import compiler
    torch.manual_seed(0)
    ours = compiler.Conv2d(*args, **kw, dtype=torch.float64)
    theirs = torch.nn.Conv2d(*args, **kw, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = ours(x1)
    g = torch.randn_like(y)
    y.backward(g)
    theirs(x2).backward(g)
    assert ours.last_request.layout == "NHWC" and x1.grad.is_contiguous(memory_format=torch.channels_last)
    magnitude = torch.nn.Conv2d(*args, **kw, dtype=torch.float64)
    with torch.no_grad():
        for p, q in zip(magnitude.parameters(), theirs.parameters()):
            p.copy_(q.abs())
    xa = x.abs().requires_grad_()
    magnitude(xa).backward(g.abs())
    spec = ours._spec()
    taps = spec.kernel_size[0] * spec.kernel_size[1] * spec.out_channels // spec.groups
    pixels = shape[0] * y.shape[2] * y.shape[3]
    for a, b, m, k in ((x1.grad, x2.grad, xa.grad, taps), (ours.weight.grad, theirs.weight.grad, magnitude.weight.grad,
                                                          pixels), (ours.bias.grad, theirs.bias.grad, magnitude.bias.grad,
                                                                    pixels)):
        assert_within_bound(a, b, m, 2 * k)


def test_channels_last_depthwise_gradients_are_torchs():
    _check_channels_last_gradients((16, 16, 3), {"padding": 1, "groups": 16}, (2, 16, 6, 7))


# the CPU's dense NHWC kernels: cpu-channel-vector on channels_last tensors (ConvNeXt's downsampling
# layers, channels_last networks), plain and blocked variants, every padding mode, groups, dilation;
# widths with a column tile, which AVX-512 hosts need (there the rule leaves other widths to cpu-direct)
DENSE = [
    ((96, 32, 2), {"stride": 2}, (1, 96, 12, 14)),
    ((16, 32, 3), {"padding": 1}, (2, 16, 9, 10)),
    ((8, 16, 3), {"stride": 2, "padding": 2, "dilation": 2, "bias": False}, (1, 8, 13, 11)),
    ((12, 32, 3), {"padding": 1, "padding_mode": "reflect", "groups": 2}, (1, 12, 7, 10)),
    ((32, 16, 1), {}, (3, 32, 5, 7)),
    ((4, 16, (5, 3)), {"padding": (2, 1), "padding_mode": "circular"}, (1, 4, 8, 6)),
    ((64, 64, 3), {"padding": "same", "padding_mode": "replicate"}, (1, 64, 6, 6)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(len(DENSE)))
def test_channels_last_dense_layers_read_nhwc_in_place_on_the_cpu(case, dtype):
    _check_channels_last_cpu_layer(*DENSE[case], dtype, "cpu-channel-vector")


def test_channels_last_dense_kernel_packs_an_ohwi_weight_itself():
    """Without pre-packed weights (exported libraries pack inside the kernel), the NHWC kernel takes
    the channels_last weight's own bytes, ``[co, kh, kw, ci]``."""
    spec = ConvSpec.conv2d(16, 32, 3, padding=1)
    request = KernelRequest(spec, (2, 16, 7, 10), "float64", layout="NHWC")
    kernel = build.get_kernel(request, host_target(), prepacked=False, database=False)
    assert kernel.schedule == "cpu-channel-vector" and kernel.weight_block is None
    x, w, b = torch.randn(2, 16, 7, 10, dtype=torch.float64), torch.randn(32, 16, 3, 3, dtype=torch.float64), \
        torch.randn(32, dtype=torch.float64)
    y = torch.empty(2, 7, 10, 32, dtype=torch.float64)
    kernel(x.permute(0, 2, 3, 1).contiguous(), w.permute(0, 2, 3, 1).contiguous(), b, y)
    exact = torch.nn.functional.conv2d(x, w, b, padding=1)
    torch.testing.assert_close(y.permute(0, 3, 1, 2), exact, rtol=0, atol=1e-12)


def test_channels_last_dense_fused_epilogue_and_gradients():
    """A channels_last residual and ReLU in the dense NHWC kernel's epilogue; autograd through it gives
    torch's gradients (float64) and a channels_last input gradient."""
    import compiler
    from compiler.fusion import FusedConv2d
    m = FusedConv2d(16, 32, 3, padding=1, dtype=torch.float64)
    m.epilogue = Epilogue(("add", "relu"))
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(2, 32, 6, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = m(x, residual)
        exact = torch.relu(torch.nn.functional.conv2d(x, m.weight, m.bias, padding=1) + residual)
        magnitude = torch.nn.functional.conv2d(x.abs(), m.weight.abs(), m.bias.abs(), padding=1) + residual.abs()
    assert m.last_request.layout == "NHWC" and y.is_contiguous(memory_format=torch.channels_last)
    # sums of 144 products, the bias and the residual, on both sides (torch's float64 rounds too);
    # the ReLU is exact
    assert_within_bound(y, exact, magnitude, 2 * (144 + 2))
    _check_channels_last_gradients((16, 32, 3), {"padding": 1}, (2, 16, 6, 7))
