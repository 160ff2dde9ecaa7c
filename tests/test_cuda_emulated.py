"""The CUDA schedules' numbers, checked on the CPU (tests/gpu_emulation.py): every variant and
random layers, as scheduled for the smallest and the largest presets, against torch.  This is what
a machine without a GPU can say about the GPU kernels beyond "nvcc compiles them"."""
import pytest
import torch
from hypothesis import given

import compiler
from compiler.request import KernelRequest
from compiler.spec import ConvSpec
from gpu_emulation import emulate
from reference import assert_output_matches
from schedules import CudaDirect
from targets import resolve
from test_random_configs import SETTINGS, conv2d_cases, conv_transpose2d_cases

TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Small shapes: the emulation stages a block's whole window once per thread.
VARIANTS = {
    "dense3x3": (ConvSpec.conv2d(32, 64, 3, padding=1), (1, 32, 12, 12)),
    "pointwise": (ConvSpec.conv2d(64, 32, 1), (2, 64, 7, 9)),
    "strided": (ConvSpec.conv2d(16, 32, 3, stride=2, padding=1), (1, 16, 15, 15)),
    "dilated": (ConvSpec.conv2d(32, 32, 3, padding=2, dilation=2), (1, 32, 10, 10)),
    "grouped": (ConvSpec.conv2d(32, 64, 3, padding=1, groups=4), (1, 32, 8, 8)),
    "depthwise_x2": (ConvSpec.conv2d(16, 32, 3, stride=2, padding=1, groups=16), (1, 16, 17, 17)),
    "stem7x7": (ConvSpec.conv2d(3, 64, 7, stride=2, padding=3), (1, 3, 32, 32)),
    "circular": (ConvSpec.conv2d(8, 8, 3, padding=1, padding_mode="circular"), (1, 8, 15, 17)),
    "reflect_wide": (ConvSpec.conv2d(4, 8, (3, 5), padding=(1, 2), padding_mode="reflect"), (1, 4, 9, 70)),
    "transposed": (ConvSpec.conv_transpose2d(32, 16, 4, stride=2, padding=1), (1, 32, 16, 16)),
    "transposed_1x1_phase": (ConvSpec.conv_transpose2d(16, 8, 2, stride=2), (1, 16, 9, 7)),
    "transposed_dil_groups": (ConvSpec.conv_transpose2d(8, 12, 3, stride=3, dilation=2, groups=2,
                                                        output_padding=1), (2, 8, 7, 5)),
    "transposed_k_not_multiple": (ConvSpec.conv_transpose2d(6, 4, 5, stride=2, padding=2,
                                                            output_padding=1), (1, 6, 6, 5)),
}


def _module(spec: ConvSpec, dtype: str):
    cls = compiler.ConvTranspose2d if spec.transposed else compiler.Conv2d
    return cls(**spec.constructor_args(), dtype=TORCH_DTYPE[dtype])


def _run_and_compare(kernel, m, shape, dtype: str = "float32") -> None:
    """Run an emulated kernel with ``m``'s parameters on a random input; compare with torch."""
    spec = m._spec()
    x = torch.randn(*shape, dtype=TORCH_DTYPE[dtype])
    y = x.new_empty(spec.output_shape(shape, spec.output_padding if spec.transposed else None))
    kernel(x, m.weight.detach(), *([m.bias.detach()] if m.bias is not None else []), y)
    assert_output_matches(m, x, y)


def _check(spec: ConvSpec, shape, dtype: str, arch: str) -> None:
    op = spec.output_padding if spec.transposed else None
    # the direct rule, which serves every variant (the tensor-core rule, first for the half types
    # where it applies, is emulated by tests/test_tensorcore.py)
    rule, kernel = emulate(spec, shape, dtype, resolve(f"cuda/{arch}"), op, rules=(CudaDirect(),))
    assert rule == "cuda-direct"
    _run_and_compare(kernel, _module(spec, dtype), shape, dtype)


@pytest.mark.parametrize("arch", ["sm_70", "sm_90"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cuda_schedule_computes_torchs_numbers(variant, arch):
    spec, shape = VARIANTS[variant]
    _check(spec, shape, "float32", arch)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("variant", ["dense3x3", "depthwise_x2", "transposed"])
def test_cuda_schedule_half_types(variant, dtype):
    spec, shape = VARIANTS[variant]
    _check(spec, shape, dtype, "sm_90")


def _spec(args, kw, transposed):
    return (ConvSpec.conv_transpose2d if transposed else ConvSpec.conv2d)(*args, **kw)


@SETTINGS
@given(conv2d_cases())
def test_cuda_schedule_random_conv2d(case):
    args, kw, shape = case
    _check(_spec(args, kw, False), shape, "float32", "sm_90")


@SETTINGS
@given(conv_transpose2d_cases())
def test_cuda_schedule_random_conv_transpose2d(case):
    args, kw, shape = case
    _check(_spec(args, kw, True), shape, "float32", "sm_90")


def _shipped_cuda_records():
    """(arch, layer, input shape) of every benchmark-suite layer a shipped CUDA record serves."""
    from compiler import build, records
    from compiler.bench import DEFAULT_SUITE
    from compiler.layers import batched_shape, spec_of
    cases = []
    for folder in sorted(records.SHIPPED.glob("cuda-sm_*")):
        target = resolve(f"cuda/{folder.name[len('cuda-'):]}")
        for text, shape in DEFAULT_SUITE:
            spec, shape = spec_of(text), batched_shape(shape)
            op = spec.output_padding if spec.transposed else None
            if build.tuned_schedule(KernelRequest(spec, shape, "float32", op), target, folder) is not None:
                cases.append((str(target.attrs["arch"]), text, shape))
    return cases


@pytest.mark.parametrize("arch,layer,shape", _shipped_cuda_records(), ids=str)
def test_shipped_cuda_records_compute_torchs_numbers(arch, layer, shape):
    """Records tuned on a GPU are replayed here (another host, another TVM process): their kernels
    compute torch's numbers, and nvcc compiles them for the arch they were tuned on."""
    import tvm
    from compiler import build, cuda_binary, records
    from compiler.layers import parse_layer
    from gpu_emulation import compile_serialised
    target = resolve(f"cuda/{arch}")
    m = parse_layer(layer)
    spec = m._spec()
    op = spec.output_padding if spec.transposed else None
    tuned = build.tuned_schedule(KernelRequest(spec, shape, "float32", op), target,
                                 records.SHIPPED / f"cuda-{arch}")
    source = cuda_binary.device_source(tvm.compile(tuned.mod, target=target))
    assert arch.encode() in cuda_binary.compile_device_code(source, target, "fatbin")
    _run_and_compare(compile_serialised(tuned.mod), m, shape)
