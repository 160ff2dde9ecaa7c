"""compiler.gradients against torch.autograd.grad of F.conv2d / F.conv_transpose2d (F.pad for the
padding modes): every gradient, both families, grids and random layers, each dtype's bound; the
CUDA kernels compiled by nvcc and their numbers checked by CPU emulation; bad input refused before
any kernel runs."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
import tvm
from hypothesis import HealthCheck, given, settings

from compiler import build, cuda_binary, gradients
from compiler.request import FORWARD, PAD_GRAD, WEIGHT_GRAD, KernelRequest
from compiler.spec import ConvSpec
from gpu_emulation import compile_serialised
from reference import assert_within_bound
from schedules import CPU_RULES, CUDA_RULES, CpuWeightGrad, schedule_bias_grad
from targets import host_target, resolve
from test_random_configs import conv2d_cases, conv_transpose2d_cases

CONV2D = {
    "3x3": (ConvSpec.conv2d(4, 6, 3, padding=1), (2, 4, 7, 9)),
    "vector_3x3": (ConvSpec.conv2d(8, 32, 3, padding=1), (1, 8, 9, 10)),
    "vector8_1x1": (ConvSpec.conv2d(5, 24, 1), (2, 5, 6, 7)),
    "strided": (ConvSpec.conv2d(16, 16, 3, stride=2, padding=1, bias=False), (1, 16, 11, 10)),
    "strided_asym": (ConvSpec.conv2d(3, 4, (3, 5), stride=(2, 1), padding=(2, 1)), (1, 3, 9, 8)),
    "dilated": (ConvSpec.conv2d(4, 4, 3, padding=2, dilation=(2, 3)), (1, 4, 9, 11)),
    "grouped": (ConvSpec.conv2d(6, 32, 3, padding=1, groups=2), (2, 6, 6, 7)),
    "depthwise": (ConvSpec.conv2d(16, 16, 3, padding=1, groups=16), (1, 16, 8, 9)),
    "depthwise_s2": (ConvSpec.conv2d(16, 16, 5, stride=2, padding=2, groups=16), (1, 16, 11, 12)),
    "depthwise_x2": (ConvSpec.conv2d(3, 6, 3, padding=1, groups=3), (1, 3, 7, 6)),
    # depthwise with taps few enough for registers (the weight gradient's columns form, each task
    # padding its planes): strides, dilation, a padding mode, a batch, odd widths, 1-wide kernels
    "depthwise_3x3_s2": (ConvSpec.conv2d(12, 12, 3, stride=2, padding=1, groups=12), (3, 12, 13, 18)),
    "depthwise_dilated_reflect": (ConvSpec.conv2d(5, 5, 3, padding=2, dilation=2, groups=5,
                                                  padding_mode="reflect"), (2, 5, 9, 11)),
    "depthwise_3x1_s21": (ConvSpec.conv2d(8, 8, (3, 1), stride=(2, 1), padding=(1, 0), groups=8), (1, 8, 10, 17)),
    "same_even": (ConvSpec.conv2d(4, 5, 4, padding="same"), (1, 4, 7, 8)),
    "valid_stride_remainder": (ConvSpec.conv2d(4, 5, 3, stride=3, padding="valid"), (1, 4, 11, 10)),
    "reflect": (ConvSpec.conv2d(4, 4, 3, padding=1, padding_mode="reflect"), (2, 4, 6, 7)),
    "reflect_wide_pads": (ConvSpec.conv2d(3, 16, 5, padding=(4, 2), padding_mode="reflect"), (1, 3, 5, 6)),
    "replicate": (ConvSpec.conv2d(4, 4, 3, padding=(3, 1), padding_mode="replicate", stride=2), (1, 4, 6, 5)),
    "replicate_one_row": (ConvSpec.conv2d(2, 3, 3, padding=2, padding_mode="replicate"), (1, 2, 1, 4)),
    "circular": (ConvSpec.conv2d(4, 4, 3, padding=(3, 2), padding_mode="circular"), (1, 4, 3, 5)),
    "circular_same_dilated": (ConvSpec.conv2d(4, 16, 4, padding="same", dilation=2, padding_mode="circular"),
                              (1, 4, 7, 8)),
}
CONV_TRANSPOSE2D = {
    "3x3": (ConvSpec.conv_transpose2d(4, 6, 3, padding=1), (2, 4, 5, 6)),
    "stride2_op1": (ConvSpec.conv_transpose2d(6, 4, 3, stride=2, padding=1, output_padding=1), (1, 6, 5, 4)),
    "vector_4x4_s2": (ConvSpec.conv_transpose2d(32, 8, 4, stride=2, padding=1), (1, 32, 5, 6)),
    "dilation_over_stride": (ConvSpec.conv_transpose2d(4, 6, 3, dilation=3, output_padding=2, groups=2),
                             (1, 4, 5, 4)),
    "grouped_asym": (ConvSpec.conv_transpose2d(6, 9, (2, 3), stride=(3, 2), padding=(1, 0), groups=3,
                                               output_padding=(2, 1), bias=False), (2, 6, 4, 5)),
    "k_not_multiple": (ConvSpec.conv_transpose2d(5, 3, 5, stride=2, padding=2, output_padding=1), (1, 5, 4, 3)),
    "depthwise_3x3_s2": (ConvSpec.conv_transpose2d(16, 16, 3, stride=2, padding=1, output_padding=1, groups=16),
                         (2, 16, 6, 7)),
}
#: a fixed AVX2 CPU (16 vector registers, 8 float32 lanes each) for the tests of schedule choices
AVX2 = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}
TORCH = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
         "bfloat16": torch.bfloat16}


def _forward(spec: ConvSpec, x, w, output_padding=None):
    if spec.transposed:
        op = spec.output_padding if output_padding is None else output_padding
        return F.conv_transpose2d(x, w, None, spec.stride, spec.padding, op, spec.groups, spec.dilation)
    pt, pb, pl, pr = spec.pads
    if spec.padding_mode != "zeros":
        return F.conv2d(F.pad(x, (pl, pr, pt, pb), mode=spec.padding_mode), w, None, spec.stride, 0,
                        spec.dilation, spec.groups)
    return F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, None, spec.stride, 0, spec.dilation, spec.groups)


def _torch_grads(spec: ConvSpec, x, w, gy, output_padding=None):
    """torch's (grad_input, grad_weight, grad_bias) in float64 of the (already rounded) operands."""
    x, w = x.double().requires_grad_(), w.double().requires_grad_()
    gx, gw = torch.autograd.grad(_forward(spec, x, w, output_padding), (x, w), gy.double())
    return gx, gw, gy.double().sum((0, 2, 3))


def check_gradients(spec: ConvSpec, shape, dtype: str = "float64", output_padding=None, device="cpu") -> None:
    """Every gradient of the layer on a random input, against torch within the dtype's bound."""
    t = TORCH[dtype]
    x, w = torch.randn(shape, dtype=t), torch.randn(spec.weight_shape, dtype=t)
    gy = torch.randn(spec.output_shape(shape, output_padding), dtype=t)
    exact = _torch_grads(spec, x, w, gy, output_padding)
    magnitude = _torch_grads(spec, x.abs(), w.abs(), gy.abs(), output_padding)
    x, w, gy = x.to(device), w.to(device), gy.to(device)
    ours = (gradients.conv_input_grad(spec, shape, w, gy, output_padding),
            gradients.conv_weight_grad(spec, x, gy, output_padding),
            gradients.conv_bias_grad(gy))
    # sums: input: a tap per kernel position and channel of grad_output's group, then the padding's
    # fold (at most (1 + pads) per axis for replicate, 3 per axis otherwise); weight and bias: a
    # product per pixel of the larger side
    pt, pb, pl, pr = spec.pads
    out_per_group = spec.out_channels // spec.groups
    fold = (1 + pt + pb) * (1 + pl + pr) + 9
    pixels = shape[0] * max(shape[2] * shape[3], gy.shape[2] * gy.shape[3])
    adjoint = spec.input_grad(shape, output_padding)
    reductions = (out_per_group * spec.kernel_size[0] * spec.kernel_size[1] + fold, pixels, pixels)
    roundings = (2 if adjoint.padding_mode != "zeros" else 1, 1, 1)
    for name, y, e, m, k, r in zip(("input", "weight", "bias"), ours, exact, magnitude, reductions, roundings):
        assert y.shape == e.shape and y.dtype == t and y.device == x.device, f"{name}: {y.shape} {y.dtype}"
        assert_within_bound(y.cpu(), e, m, k, roundings=r)


@pytest.mark.parametrize("case", sorted(CONV2D))
def test_conv2d_gradients(case):
    check_gradients(*CONV2D[case])


@pytest.mark.parametrize("case", sorted(CONV_TRANSPOSE2D))
def test_conv_transpose2d_gradients(case):
    check_gradients(*CONV_TRANSPOSE2D[case])


def test_transposed_output_padding_of_the_call():
    """The output padding of the call (``output_size``), not the layer's, sizes the gradients."""
    spec, shape = CONV_TRANSPOSE2D["stride2_op1"]
    check_gradients(spec, shape, output_padding=(0, 1))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", ["vector_3x3", "depthwise", "depthwise_3x3_s2", "reflect", "same_even",
                                  "t:vector_4x4_s2", "t:dilation_over_stride"])
def test_gradients_in_each_dtype(case, dtype):
    spec, shape = CONV_TRANSPOSE2D[case[2:]] if case.startswith("t:") else CONV2D[case]
    check_gradients(spec, shape, dtype)


GRAD_SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow])


@GRAD_SETTINGS
@given(conv2d_cases())
def test_random_conv2d_gradients(case):
    args, kw, shape = case
    check_gradients(ConvSpec.conv2d(*args, **kw), shape)


@GRAD_SETTINGS
@given(conv_transpose2d_cases())
def test_random_conv_transpose2d_gradients(case):
    args, kw, shape = case
    check_gradients(ConvSpec.conv_transpose2d(*args, **kw), shape)


@pytest.fixture
def no_kernels(monkeypatch):
    """Fail if any kernel is looked up or compiled."""
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was requested")
    monkeypatch.setattr(gradients, "get_kernel", refuse)
    monkeypatch.setattr(gradients, "_bias_kernel", refuse)
    gradients._PLANS.clear()
    yield
    gradients._PLANS.clear()


@pytest.mark.parametrize("case", ["c:3x3", "c:reflect", "t:stride2_op1"])
def test_empty_batch_gives_zeros_without_kernels(case, no_kernels):
    spec, shape = CONV_TRANSPOSE2D[case[2:]] if case.startswith("t:") else CONV2D[case[2:]]
    shape = (0, *shape[1:])
    x, w = torch.randn(shape), torch.randn(spec.weight_shape)
    gy = torch.randn(spec.output_shape(shape))
    exact = _torch_grads(spec, x, w, gy)
    ours = (gradients.conv_input_grad(spec, shape, w, gy), gradients.conv_weight_grad(spec, x, gy),
            gradients.conv_bias_grad(gy))
    for y, e in zip(ours, exact):
        assert y.shape == e.shape and y.dtype == torch.float32 and not y.any()


def _bad_calls():
    spec, shape = CONV2D["3x3"]
    x, w = torch.randn(shape), torch.randn(spec.weight_shape)
    gy = torch.randn(spec.output_shape(shape))
    return {
        "grad_output_shape": lambda: gradients.conv_input_grad(spec, shape, w, gy[:, :, 1:]),
        "grad_output_shape_weight": lambda: gradients.conv_weight_grad(spec, x, gy[:, :2]),
        "input_channels": lambda: gradients.conv_weight_grad(spec, x[:, :3], gy),
        "weight_shape": lambda: gradients.conv_input_grad(spec, shape, w[:, :2], gy),
        "weight_dtype": lambda: gradients.conv_input_grad(spec, shape, w.double(), gy),
        "input_dtype": lambda: gradients.conv_weight_grad(spec, x.double(), gy),
        "integer_grad": lambda: gradients.conv_weight_grad(spec, x.long(), gy.long()),
        "unbatched_input": lambda: gradients.conv_weight_grad(spec, x[0], gy),
        "unbatched_shape": lambda: gradients.conv_input_grad(spec, shape[1:], w, gy),
        "bias_unbatched": lambda: gradients.conv_bias_grad(gy[0]),
        "bias_integer": lambda: gradients.conv_bias_grad(gy.long()),
        "reflect_pad_too_large": lambda: gradients.conv_weight_grad(
            dataclasses.replace(spec, padding=(3, 3), padding_mode="reflect"), x[:, :, :3, :3], gy),
    }


@pytest.mark.parametrize("call", sorted(_bad_calls()))
def test_bad_input_raises_before_any_kernel(call, no_kernels):
    with pytest.raises(RuntimeError):
        _bad_calls()[call]()


def test_torch_raises_runtime_error_for_the_same_mismatches():
    """The error type the bad-input tests expect is torch's own for those mismatches."""
    spec, shape = CONV2D["3x3"]
    x, w = torch.randn(shape, requires_grad=True), torch.randn(spec.weight_shape)
    y = F.conv2d(x, w, None, spec.stride, spec.padding)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(y, x, torch.randn(y.shape[0], y.shape[1], y.shape[2] - 1, y.shape[3]))
    with pytest.raises(RuntimeError):
        torch.ops.aten.convolution_backward(torch.randn(y.shape), x.detach(), w.double(), None, spec.stride,
                                            spec.padding, spec.dilation, False, [0, 0], 1, [True, True, False])


# ----------------------------------------------------------------------------- requests and rules
def test_forward_requests_keep_their_keys():
    spec, shape = CONV2D["3x3"]
    request = KernelRequest(spec, shape, "float32")
    assert request.operator == FORWARD and request.op == "conv2d"
    assert request.key[0] == "conv2d" and len(request.key) == 7
    grad = KernelRequest(spec, shape, "float32", operator=WEIGHT_GRAD)
    assert grad != request and grad.op == "conv2d_weight_grad" and grad.describe().startswith("weight_grad of ")
    with pytest.raises(ValueError, match="operator"):
        KernelRequest(spec, shape, "float32", operator="backward")
    with pytest.raises(ValueError, match="no epilogue"):
        KernelRequest(spec, shape, "float32", epilogue=("relu",), operator=WEIGHT_GRAD)


@pytest.mark.parametrize("operator", [WEIGHT_GRAD, PAD_GRAD])
def test_forward_rules_are_never_offered_gradient_kernels(operator):
    spec, shape = CONV2D["reflect"]
    workload = build.workload_of(KernelRequest(spec, shape, "float32", operator=operator))
    for rules in (CPU_RULES, CUDA_RULES):
        takers = [rule.name for rule in rules if operator in rule.operators]
        assert len(takers) == 1 and all("forward" not in r.operators for r in rules if r.name in takers)
    assert workload.operator == operator
    scheduled = build.schedule(KernelRequest(spec, shape, "float32", operator=operator), host_target())
    assert scheduled.rule == ("cpu-weight-grad" if operator == WEIGHT_GRAD else "pad-grad")


@pytest.mark.parametrize("case,path", [("vector_3x3", "vector"), ("vector8_1x1", "vector"),
                                       ("depthwise", "columns"), ("depthwise_s2", "vector"),
                                       ("depthwise_x2", "columns"), ("3x3", "columns"),
                                       ("t:vector_4x4_s2", "vector")])
def test_weight_grad_rule_paths(case, path, monkeypatch):
    """On an AVX2 CPU (16 registers) the channel-vector schedule serves vector-divisible channels
    and depthwise layers of more taps than registers (5x5), columns the rest (depthwise 3x3 in
    registers); both give torch's numbers (the grid above) — here, that each path is the one taken."""
    spec, shape = CONV_TRANSPOSE2D[case[2:]] if case.startswith("t:") else CONV2D[case]
    taken = []
    for method in ("_apply_channel_vector", "_apply_columns"):
        original = getattr(CpuWeightGrad, method)
        monkeypatch.setattr(CpuWeightGrad, method, lambda self, *a, _o=original, _m=method, **k:
                            taken.append(_m) or _o(self, *a, **k))
    build.schedule(KernelRequest(spec, shape, "float32", operator=WEIGHT_GRAD), resolve(AVX2))
    assert taken == ["_apply_channel_vector" if path == "vector" else "_apply_columns"]


def _small_grid():
    for transposed in (False, True):
        for k in (1, 2, 3):
            for s in (1, 2, 3):
                for d in (1, 2):
                    for p in (0, 1, 2):
                        for size in (1, 4, 5):
                            yield transposed, k, s, d, p, size


def test_input_grad_recovers_the_input_shape_on_a_small_grid():
    """Exhaustively: the adjoint's output, less its pads, is the input; torch accepts its output
    padding; and the direct (unpadded) form is taken whenever torch allows it."""
    for transposed, k, s, d, p, size in _small_grid():
        modes = ("zeros",) if transposed else ("zeros", "reflect", "replicate", "circular")
        for mode in modes:
            make = ConvSpec.conv_transpose2d if transposed else ConvSpec.conv2d
            kw = dict(stride=s, padding=p, dilation=d) if transposed else \
                dict(stride=s, padding=p, dilation=d, padding_mode=mode)
            spec, shape = make(2, 3, k, **kw), (1, 2, size, size + 1)
            try:
                out = spec.output_shape(shape)
            except RuntimeError:
                continue
            adjoint = spec.input_grad(shape)
            pt, pb, pl, pr = adjoint.pads
            grad_shape = adjoint.spec.output_shape(out, adjoint.output_padding)
            assert grad_shape == (1, 2, size + pt + pb, size + 1 + pl + pr), (spec, shape)
            if not transposed and mode == "zeros" and p == 0:
                assert not adjoint.folds


# ----------------------------------------------------------------------------- CUDA
CUDA_CASES = {
    "weight_3x3": (CONV2D["vector_3x3"], WEIGHT_GRAD),
    "weight_depthwise_s2": (CONV2D["depthwise_s2"], WEIGHT_GRAD),
    "weight_transposed": (CONV_TRANSPOSE2D["grouped_asym"], WEIGHT_GRAD),
    "fold_reflect": (CONV2D["reflect_wide_pads"], PAD_GRAD),
    "fold_replicate": (CONV2D["replicate"], PAD_GRAD),
    "fold_circular": (CONV2D["circular"], PAD_GRAD),
}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", sorted(CUDA_CASES))
def test_cuda_gradient_kernels_compile_with_nvcc_and_compute_torchs_numbers(case, dtype):
    (spec, shape), operator = CUDA_CASES[case]
    gpu = resolve("cuda/sm_80")
    request = KernelRequest(spec, shape, dtype, operator=operator)
    scheduled = build.schedule(request, gpu)
    assert scheduled.rule == ("cuda-weight-grad" if operator == WEIGHT_GRAD else "pad-grad")
    source = cuda_binary.device_source(tvm.compile(scheduled.mod, target=gpu))
    assert b"sm_80" in cuda_binary.compile_device_code(source, gpu, "fatbin")
    if dtype != "float32" and operator == WEIGHT_GRAD:
        assert "volatile float*)red_result" in source            # the block's sums are float32
    kernel = compile_serialised(scheduled.mod)
    t = TORCH[dtype]
    x, w = torch.randn(shape, dtype=t), torch.randn(spec.weight_shape, dtype=t)
    gy = torch.randn(spec.output_shape(shape), dtype=t)
    if operator == WEIGHT_GRAD:
        y = torch.empty(spec.weight_shape, dtype=t)
        kernel(x, gy, y)
        exact = _torch_grads(spec, x, w, gy)[1]
        magnitude = _torch_grads(spec, x.abs(), w.abs(), gy.abs())[1]
        assert_within_bound(y, exact, magnitude, shape[0] * gy.shape[2] * gy.shape[3])
    else:
        # the fold of a padded gradient is the pad's adjoint: F.pad's gradient in float64
        pt, pb, pl, pr = spec.pads
        padded = torch.randn((shape[0], shape[1], shape[2] + pt + pb, shape[3] + pl + pr), dtype=t)
        y = torch.empty(shape, dtype=t)
        kernel(padded, y)
        xd = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        (exact,) = torch.autograd.grad(F.pad(xd, (pl, pr, pt, pb), mode=spec.padding_mode), xd, padded.double())
        (magnitude,) = torch.autograd.grad(F.pad(xd, (pl, pr, pt, pb), mode=spec.padding_mode), xd,
                                           padded.double().abs())
        assert_within_bound(y, exact, magnitude, (1 + pt + pb) * (1 + pl + pr) + 9)


@pytest.mark.parametrize("shape", [(1, 5, 28, 28), (3, 4, 14, 14), (2, 3, 7, 7), (1, 2, 13, 17), (2, 3, 37, 1), (2, 3, 1, 1),
                                   (1, 6, 112, 112)])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_cpu_bias_gradient_of_every_plane_size(shape, dtype):
    """The CPU sum runs each plane in vector partial sums of the plane's largest divisor up to four
    registers (28x28: 28 lanes, 13x17: 17, 37x1: 1, a scalar sum): every split against torch's float64
    sum."""
    gy = torch.randn(shape, dtype=TORCH[dtype])
    n, _, h, w = shape
    assert_within_bound(gradients.conv_bias_grad(gy), gy.double().sum((0, 2, 3)),
                        gy.double().abs().sum((0, 2, 3)), n * h * w)


@pytest.mark.parametrize("shape, dtype, lanes", [((1, 5, 28, 28), "float32", 28), ((2, 5, 56, 56), "float32", 32),
                                                ((1, 5, 56, 56), "float64", 16), ((1, 2, 13, 17), "float32", 17),
                                                ((1, 2, 37, 1), "float32", None)])
def test_cpu_bias_gradient_vector_width(shape, dtype, lanes):
    """The partial sums are as wide as the docstring says on an AVX2 CPU (4 registers of 8 float32
    or 4 float64 lanes), and a plane of prime size keeps the scalar sum."""
    from tvm import te
    func = te.create_prim_func(gradients.compute.bias_grad(shape, dtype))
    script = schedule_bias_grad(func, resolve(AVX2)).mod.script()
    if lanes is None:
        assert "sum_rf" not in script and "T.vectorized" not in script
    else:
        assert f"T.vectorized({lanes})" in script and "sum_rf" in script


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_bias_gradient_compiles_and_computes_torchs_numbers(dtype):
    gpu = resolve("cuda/sm_80")
    t = TORCH[dtype]
    gy = torch.randn(2, 5, 7, 9, dtype=t)
    from tvm import te
    func = te.create_prim_func(gradients.compute.bias_grad(tuple(gy.shape), dtype)).with_attr("global_symbol", "conv")
    sch = schedule_bias_grad(func, gpu)
    source = cuda_binary.device_source(tvm.compile(sch.mod, target=gpu))
    assert b"sm_80" in cuda_binary.compile_device_code(source, gpu, "fatbin")
    y = torch.empty(5, dtype=t)
    compile_serialised(sch.mod)(gy, y)
    assert_within_bound(y, gy.double().sum((0, 2, 3)), gy.double().abs().sum((0, 2, 3)), 2 * 7 * 9)


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("case", ["c:vector_3x3", "c:reflect", "c:depthwise_s2", "t:vector_4x4_s2"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gradients_on_the_gpu(case, dtype):
    spec, shape = CONV_TRANSPOSE2D[case[2:]] if case.startswith("t:") else CONV2D[case[2:]]
    check_gradients(spec, shape, dtype, device="cuda")


@pytest.mark.parametrize("operator", [WEIGHT_GRAD, PAD_GRAD])
def test_export_and_tuning_refuse_gradient_requests(operator, tmp_path):
    """They write and measure the forward kernel's arguments; a gradient request is refused up front."""
    import compiler
    spec, shape = CONV2D["reflect"]
    request = KernelRequest(spec, shape, "float32", operator=operator)
    with pytest.raises(ValueError, match="only forward kernel requests"):
        compiler.export_library(request, None, tmp_path / "out")
    with pytest.raises(ValueError, match="only forward kernel requests"):
        compiler.tune(request, work_dir=tmp_path / "db", trials=1)
    assert not any(tmp_path.iterdir())
