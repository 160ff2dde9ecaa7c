"""The ``cuda-tensorcore`` rule (mma.sync m16n8k16 + ldmatrix for float16 and bfloat16, m16n8k8 TF32
for float32 where torch allows TF32), checked on a machine without a GPU: its numbers on the CPU,
its PTX, ptxas's register report, its SASS, where it declines, and how a call chooses TF32.

How the numbers are checked.  The rule's ``tensorize`` steps swap blocks for our intrinsics'
implementations (inline PTX: ``ldmatrix``, ``mma.sync``), which no CPU runs.  ``tensorize`` first
checks that the block is structurally the intrinsic's *description* (the scalar loop nest of
``tensor_intrinsics.py``); so the same schedule with every ``Tensorize`` instruction left out of
its trace is the kernel with those descriptions in place of the PTX, every other step (GEMM view,
padding, tiling, shared-memory staging, fragment layouts, write-back, epilogue) identical.  That
replay is compiled for the CPU with thread bindings as serial loops (``tests/gpu_emulation.py``)
and compared with torch under the reference bound.  Not checked here: that the PTX computes the
descriptions (the descriptions and offsets are TVM's own mma.sync intrinsics'; the layout is
compared with TVM's below), races and barriers (TVM inserts them), and performance.  A re-run of
the rule with a "no tensorize" flag would do the same, but replaying the trace cannot drift from
what the rule emits.
"""
import ast
import copy
import functools
from dataclasses import replace
import importlib.util
import pathlib
import re
import shutil
import subprocess
from types import SimpleNamespace
from typing import Optional

import pytest
import torch
import tvm
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from tvm import s_tir, te
from tvm.s_tir import Trace

import compiler
from compiler import build, compute, cuda_binary, metaschedule_startup
from compiler.request import Epilogue, KernelRequest
from compiler.spec import ConvSpec
from gpu_emulation import compile_serialised, emulate
from compiler import ops
from reference import TF32_ROUNDOFF, UNIT_ROUNDOFF, assert_output_matches
from schedules import CudaTensorCore, cuda_tensorcore
from schedules.base import GPU_THREADS
from schedules.gpu_verify import passes_gpu_verification
from schedules.cuda_tensorcore import (ACCUMULATOR_SHARE, FRAGMENT, MAX_STAGES, NHWC_OCCUPANCY_WARPS,
                                       OCCUPANCY_WARPS, SEARCH_TILES, Config, Gemm, choose_config, completed,
                                       gathers, gemm_of, pipeline_stages, ranked_configs, shared_memory_limit,
                                       split_candidates, verifying_target)
from schedules.tensor_intrinsics import A_KM, A_MK, fragment_layout, tf32_layouts, tf32_positions, tile_position
from targets import host_target, resolve
from targets.cuda import compile_context, round_to_tf32
from test_random_configs import conv2d_cases, conv_transpose2d_cases

# The rule runs TVM's GPU verifier, whose first TuneContext imports every target's tensor
# intrinsics: ~60 s on two cores, ~8 s with this (see compiler/metaschedule_startup.py).
metaschedule_startup.cache_frozen_frames()

TORCH_DTYPE = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
#: the rule's operand types: the half types, and "tf32" (a float32 request with ``tf32``)
DTYPES = ("float16", "bfloat16", "tf32")
ARCHS = ("sm_80", "sm_90")
#: PTX of each operand type's mma.sync
PTX_MMA = {"float16": "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
           "bfloat16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
           "tf32": "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"}
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")

# Small shapes (the emulation runs each thread's staging serially), each padding some GEMM axis.
LAYERS = {
    "pointwise_batch2": (ConvSpec.conv2d(64, 32, 1), (2, 64, 7, 9)),
    # planes of whole 16-byte vectors: A is staged with vector loads, through the pipeline (3 chunks)
    "pointwise_vector": (ConvSpec.conv2d(96, 48, 1, bias=False), (2, 96, 4, 8)),
    # ... but vectors TVM cannot prove consecutive here (a 48-pixel block over 24-pixel planes)
    "pointwise_unproven": (ConvSpec.conv2d(96, 48, 1, bias=False), (2, 96, 4, 6)),
    "dense3x3": (ConvSpec.conv2d(32, 64, 3, padding=1), (1, 32, 12, 12)),
    "strided": (ConvSpec.conv2d(16, 32, 3, stride=2, padding=1), (1, 16, 15, 15)),
    "dilated": (ConvSpec.conv2d(32, 32, 3, padding=2, dilation=2), (1, 32, 10, 10)),
    "grouped": (ConvSpec.conv2d(64, 64, 3, padding=1, groups=4), (1, 64, 8, 8)),
    "odd_no_bias": (ConvSpec.conv2d(24, 40, (3, 5), stride=(2, 1), padding=(1, 2), bias=False), (3, 24, 9, 11)),
    "odd_channels": (ConvSpec.conv2d(17, 19, 3, padding=1), (1, 17, 5, 7)),
    "reflect": (ConvSpec.conv2d(16, 16, 3, padding=1, padding_mode="reflect"), (1, 16, 9, 13)),
    # NHWC only: chunks of 64 of 128 channels, K ordered (channel block, tap, channel) (``gemm_of``)
    "channel_blocks": (ConvSpec.conv2d(128, 32, 3, padding=1), (1, 128, 5, 5)),
    "transposed": (ConvSpec.conv_transpose2d(32, 16, 4, stride=2, padding=1), (1, 32, 8, 8)),
    "transposed_grouped": (ConvSpec.conv_transpose2d(32, 32, 3, stride=2, padding=1, output_padding=1,
                                                     groups=2), (1, 32, 5, 6)),
}


def _dtype(operands: str) -> str:
    """The layer's dtype for an operand type of ``DTYPES`` ("tf32": float32)."""
    return "float32" if operands == "tf32" else operands


def _request(spec: ConvSpec, shape, operands: str, epilogue=(), layout: str = "NCHW") -> KernelRequest:
    return KernelRequest(spec, shape, _dtype(operands), spec.output_padding if spec.transposed else None,
                         epilogue=Epilogue(epilogue), tf32=operands == "tf32", layout=layout)


@functools.lru_cache(maxsize=None)
def _scheduled(layer: str, dtype: str, arch: str, epilogue=(), pipelined: bool = False, layout: str = "NCHW",
               staging: Optional[str] = None):
    """(request, target, schedule) of the rule alone (whatever ``CUDA_RULES`` holds); ``pipelined``:
    its tile with the deepest software pipeline that fits (``pipeline_stages``) instead of none;
    ``staging``: the first tile of that way to stage A (``A_KM``: an NCHW input read in place,
    ``A_MK``: through an NHWC copy) instead of the rule's choice between them."""
    spec, shape = LAYERS[layer]
    request, target = _request(spec, shape, dtype, epilogue, layout), resolve(f"cuda/{arch}")
    func, workload = build.prim_func(request), build.workload_of(request)
    made = CudaTensorCore().tile_and_schedule(func, workload, target)
    assert made is not None, f"cuda-tensorcore declined {layer} {dtype} {arch}"
    tile, sch = made
    if staging is not None and staging != tile.a_staged:
        gemm = gemm_of(s_tir.Schedule(func), spec, layout)[0]
        tile = completed(ranked_configs(gemm, target, tile.element_bytes, staging)[0], gemm, workload, target)
        tile, sch = CudaTensorCore.schedule_contiguous(func, workload, tile)
    if pipelined:
        k = gemm_of(s_tir.Schedule(func), spec, layout)[0].k
        if k <= tile.chunk_k:                     # a pipeline needs two chunks
            tile = replace(tile, chunk_k=FRAGMENT)
        tile = replace(tile, stages=pipeline_stages(tile, k, int(target.attrs["max_shared_memory_per_block"])))
        assert tile.stages > 1
        _, sch = CudaTensorCore.schedule_contiguous(func, workload, tile)
    return request, target, sch


def _staging(layer: str, dtype: str, layout: str = "NCHW") -> str:
    """How the rule stages A for ``layer`` (``cuda_tensorcore.a_staging``)."""
    spec, shape = LAYERS[layer]
    return cuda_tensorcore.a_staging(build.workload_of(_request(spec, shape, dtype, layout=layout)))


def without_tensorize(sch: s_tir.Schedule, func) -> s_tir.Schedule:
    """``sch``'s trace replayed on ``func`` minus its ``Tensorize`` instructions (module docstring)."""
    kept = [inst for inst in sch.trace.insts if inst.kind.name != "Tensorize"]
    assert len(kept) < len(sch.trace.insts), "the schedule has no tensorize step"
    replay = s_tir.Schedule(func)
    Trace(kept, {}).apply_to_schedule(replay, remove_postproc=False)
    return replay


def _module(spec: ConvSpec, operands: str):
    cls = compiler.ConvTranspose2d if spec.transposed else compiler.Conv2d
    return cls(**spec.constructor_args(), dtype=TORCH_DTYPE[_dtype(operands)])


def tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 ``t`` rounded to TF32 as ``cvt.rna.tf32.f32`` does (PTX ISA: round to nearest, ties
    away from zero; infinities and NaNs kept), written on torch's integer view of the bits."""
    bits = t.view(torch.int32)
    finite = (bits & 0x7FFFFFFF) < 0x7F800000
    return torch.where(finite, bits + 0x1000, bits).bitwise_and(-0x2000).view(torch.float32)


def _emulate(request: KernelRequest, mod, m, x, packing=None) -> torch.Tensor:
    """The kernel's output on ``x`` (NCHW; an NHWC kernel reads and writes channels_last bytes, and
    takes the weight as ``[co, kh, kw, ci]``, as ``compiler.ops`` passes them; with ``packing`` the
    weight packed by the pack kernel's compute, ``_pack_on_host``)."""
    y = ops.new_output(x, request.output_shape, SimpleNamespace(request=request))
    weight = _pack_on_host(request, packing, m.weight) if packing else m.weight.detach()
    tensors = [x, weight, *([m.bias.detach()] if m.bias is not None else []), y]
    if request.layout == "NHWC":
        tensors = [ops.in_layout(t, "NHWC") if t.dim() == 4 else t for t in tensors]
    compile_serialised(mod)(*tensors)
    return y


def assert_tf32_numbers(m, x, y) -> None:
    """``y`` is torch's float32 convolution with TF32 operands: within the TF32 bound of the exact
    convolution, and within the float32 bound of the exact convolution of the TF32-rounded input
    and weight (so the kernel rounds its operands as the tensor cores do, not merely well enough)."""
    assert_output_matches(m, x, y, operand_roundoff=TF32_ROUNDOFF)
    rounded = copy.deepcopy(m)
    with torch.no_grad():
        rounded.weight.copy_(tf32(m.weight))
    assert_output_matches(rounded, tf32(x), y, operand_roundoff=0.0)


def _emulated_matches(request: KernelRequest, func, sch, packing=None) -> None:
    """``sch`` of ``func``, emulated on a random input and the weights of a fresh module, computes
    torch's numbers (TF32 requests: as the tensor cores round them)."""
    spec = request.spec
    m = _module(spec, "tf32" if request.tf32 else request.dtype)
    x = torch.randn(*request.input_shape, dtype=TORCH_DTYPE[request.dtype])
    y = _emulate(request, without_tensorize(sch, func).mod, m, x, packing)
    if request.tf32:
        assert_tf32_numbers(m, x, y)
    else:
        assert_output_matches(m, x, y)


def _emulate_and_compare(layer: str, operands: str, arch: str, layout: str = "NCHW") -> None:
    request, _, sch = _scheduled(layer, operands, arch, layout=layout)
    _emulated_matches(request, build.prim_func(request), sch)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", sorted(set(LAYERS) - {"channel_blocks"}))
def test_tensorcore_schedule_computes_torchs_numbers(layer, dtype, arch):
    _emulate_and_compare(layer, dtype, arch)


#: Every layer in NHWC: the rule's [m, k] staging of A, 16-byte channel loads where a group's
#: channels are whole vectors (odd_channels: 17; reflect: the padding's index map defeats the
#: vectorizer, and the rule reads a channel per copy); the transposed form's phases too
NHWC_LAYERS = tuple(LAYERS)


#: every layer in float16; bfloat16 differs from it only in the mma's type name, TF32 in its
#: fragment loads: each on the layers whose staging differs (vectors, channel blocks, no vectors,
#: phases)
NHWC_CASES = [(layer, "float16") for layer in NHWC_LAYERS] + [
    (layer, dtype) for dtype in ("bfloat16", "tf32")
    for layer in ("dense3x3", "channel_blocks", "odd_channels", "transposed_grouped")]


@pytest.mark.parametrize("layer,dtype", NHWC_CASES)
def test_nhwc_schedule_computes_torchs_numbers(layer, dtype):
    """channels_last input and output, ``[co, kh, kw, ci]`` weight, K ordered (kh, kw, c)."""
    _emulate_and_compare(layer, dtype, "sm_90", "NHWC")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nhwc_schedule_computes_torchs_numbers_on_sm80(dtype):
    _emulate_and_compare("dense3x3", dtype, "sm_80", "NHWC")


def test_nhwc_fused_epilogue_reads_a_channels_last_residual():
    spec, shape = LAYERS["odd_no_bias"]
    request, _, sch = _scheduled("odd_no_bias", "float16", "sm_90", ("add", "relu"), layout="NHWC")
    m = _module(spec, "float16")
    x = torch.randn(*shape, dtype=torch.float16)
    residual = torch.randn(request.output_shape, dtype=torch.float16)
    y = ops.new_output(x, request.output_shape, SimpleNamespace(request=request))
    compile_serialised(without_tensorize(sch, build.prim_func(request)).mod)(
        ops.in_layout(x, "NHWC"), ops.in_layout(m.weight, "NHWC"), ops.in_layout(residual, "NHWC"),
        ops.in_layout(y, "NHWC"))
    exact = torch.relu(torch.nn.functional.conv2d(x.double(), m.weight.double(), stride=(2, 1), padding=(1, 2))
                       + residual.double())
    magnitude = torch.nn.functional.conv2d(x.double().abs(), m.weight.double().abs(), stride=(2, 1),
                                           padding=(1, 2)) + residual.double().abs()
    terms = spec.in_channels * 15 + 1
    bound = terms * UNIT_ROUNDOFF[torch.float32] * magnitude + UNIT_ROUNDOFF[torch.float16] * exact.abs() + 1e-7
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert bool(((y.double() - exact).abs() <= bound).all())


def test_fused_epilogue_is_applied_on_the_block_tile():
    """Residual add and ReLU in the write-back (the ``output`` stage inlined into it)."""
    spec, shape = LAYERS["dense3x3"]
    request, _, sch = _scheduled("dense3x3", "float16", "sm_90", ("add", "relu"))
    kernel = compile_serialised(without_tensorize(sch, build.prim_func(request)).mod)
    m = _module(spec, "float16")
    x = torch.randn(*shape, dtype=torch.float16)
    residual = torch.randn(request.output_shape, dtype=torch.float16)
    y = x.new_empty(request.output_shape)
    kernel(x, m.weight.detach(), m.bias.detach(), residual, y)
    conv = torch.nn.functional.conv2d(x.double(), m.weight.double(), m.bias.double(), padding=1)
    magnitude = torch.nn.functional.conv2d(x.double().abs(), m.weight.double().abs(), m.bias.double().abs(),
                                           padding=1) + residual.double().abs()
    exact = torch.relu(conv + residual.double())
    # the reference bound (tests/reference.py) with the residual as one more term of the sum
    terms = spec.in_channels * 9 + 2
    bound = terms * UNIT_ROUNDOFF[torch.float32] * magnitude + UNIT_ROUNDOFF[torch.float16] * exact.abs() + 1e-7
    assert bool(((y.double() - exact).abs() <= bound).all())


def _cuda_source(layer: str, dtype: str, arch: str, pipelined: bool = False, layout: str = "NCHW",
                 staging: Optional[str] = None) -> str:
    """The CUDA source of the rule's kernel, compiled as the modules compile it (cp.async on)."""
    _, target, sch = _scheduled(layer, dtype, arch, pipelined=pipelined, layout=layout, staging=staging)
    with compile_context(target):
        return cuda_binary.device_source(tvm.compile(sch.mod, target=target))


def _ptx_and_source(layer: str, dtype: str, arch: str, pipelined: bool = False, layout: str = "NCHW",
                    staging: Optional[str] = None):
    source = _cuda_source(layer, dtype, arch, pipelined, layout, staging)
    return source, cuda_binary.compile_device_code(source, resolve(f"cuda/{arch}"), "ptx").decode()


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", ("dense3x3", "strided", "channel_blocks", "odd_channels"))
def test_nhwc_input_is_staged_in_16_byte_copies(layer, dtype):
    """NHWC: A staged [m, k] is loaded with plain ``ldmatrix`` (no ``.trans``) for the half types,
    and a 3x3 layer's input (padded, strided) is read in 16-byte vectors of one pixel's channels,
    ``cp.async`` 16 bytes in a pipeline, as the weight is; 17 channels per group are no whole vector
    (a channel per copy).  ptxas reports no spills."""
    vector = layer != "odd_channels"
    source, ptx = _ptx_and_source(layer, dtype, "sm_90", layout="NHWC")
    assert PTX_MMA[dtype] in ptx
    if dtype != "tf32":
        assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in ptx
        assert "ldmatrix.sync.aligned.m8n8.x4.trans" not in ptx
    assert bool(re.search(r"\*\((uint4|float4)\*\)\(input_ptr \+ ", source)) == vector
    source, ptx = _ptx_and_source(layer, dtype, "sm_90", pipelined=True, layout="NHWC")
    copies = {(tensor, int(size)) for _, size, tensor in CP_ASYNC_COPY.findall(source)}
    expected = {16} if vector else ({4} if dtype == "tf32" else set())
    assert {size for tensor, size in copies if tensor == "input"} == expected
    assert ("weight", 16) in copies or not vector


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES)
def test_nhwc_transposed_input_is_staged_in_16_byte_copies(dtype, tmp_path):
    """A transposed layer's phase GEMMs in NHWC read the input's channels 16 bytes at a time
    (``cp.async`` 16 in a pipeline); the weight, ``[ci, kh, kw, co]``, a tap per copy (its K is not
    contiguous); plain ``ldmatrix`` for A; no spills."""
    source, ptx = _ptx_and_source("transposed", dtype, "sm_90", layout="NHWC")
    assert PTX_MMA[dtype] in ptx
    if dtype != "tf32":
        assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in ptx
    assert re.search(r"\*\((uint4|float4)\*\)\(input_ptr \+ ", source)
    for stack, stores, loads, registers in ptxas_report(source, "sm_90", tmp_path):
        assert (stack, stores, loads) == (0, 0, 0) and registers <= 255
    source, _ = _ptx_and_source("transposed", dtype, "sm_90", pipelined=True, layout="NHWC")
    copies = {(tensor, int(size)) for _, size, tensor in CP_ASYNC_COPY.findall(source)}
    assert {size for tensor, size in copies if tensor == "input"} == {16}


CODEGEN_LAYERS = ("dense3x3", "odd_no_bias", "transposed")


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", CODEGEN_LAYERS)
def test_ptx_has_mma_sync_and_ldmatrix(layer, dtype, arch):
    """The half types load fragments with ldmatrix (``.trans`` for A staged ``[k, m]``: a transposed
    layer's NCHW input, read in place); TF32 with per-lane loads and cvt.rna.tf32.f32 (ldmatrix.trans
    would split A's 32-bit elements)."""
    source, ptx = _ptx_and_source(layer, dtype, arch)
    in_place = _staging(layer, dtype) == A_KM
    assert PTX_MMA[dtype] in source and PTX_MMA[dtype] in ptx
    assert not [mma for other, mma in PTX_MMA.items() if other != dtype and mma in ptx]
    if dtype == "tf32":
        assert "ldmatrix" not in ptx
        assert 0 < ptx.count("cvt.rna.tf32.f32") <= ptx.count("ld.shared.f32")    # (and the accumulator tile's)
    else:
        assert ("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in ptx) == in_place   # A, staged [k, m]
        assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in ptx             # B, staged [n, k]
        assert "cvt.rna.tf32" not in ptx
    assert f".target {arch}" in ptx


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", CODEGEN_LAYERS)
def test_ptx_pipelines_the_staging_with_cp_async(layer, dtype, arch):
    """With ``stages`` > 1 (the rule's own choice is one: ``PIPELINE_STAGES``) the chunks are
    staged through the software pipeline: ``cp.async`` for copies of 4 or more bytes (16-byte
    ``.cg`` weight rows and channel runs of an NHWC copy of the input; TF32's 4-byte ``.ca`` input
    pixels where an NCHW input is read in place), committed in groups and waited for with
    ``cp.async.wait_group`` before a chunk is multiplied; 2-byte copies (the half types' NCHW input
    pixels, the transposed layer's weight taps) stay synchronous loads.  Without a pipeline no copy
    is asynchronous."""
    _, _, sch = _scheduled(layer, dtype, arch, pipelined=True)
    assert "software_pipeline_stage" in str(sch.trace)
    assert "software_pipeline_stage" not in str(_scheduled(layer, dtype, arch)[2].trace)
    assert "cp.async" not in _ptx_and_source(layer, dtype, arch)[1]
    _, ptx = _ptx_and_source(layer, dtype, arch, pipelined=True)
    assert "cp.async.commit_group" in ptx and "cp.async.wait_group" in ptx
    weight_rows = not LAYERS[layer][0].transposed                  # 16-byte weight vectors
    assert ("cp.async.cg.shared.global" in ptx) == weight_rows
    assert ("cp.async.ca.shared.global" in ptx) == (dtype == "tf32" and _staging(layer, dtype) == A_KM)


#: a cp.async copy in the CUDA source: (cache mode, bytes, the tensor it reads)
CP_ASYNC_COPY = re.compile(r"ptx_cp_async_legacy_(?:pred_)?(c[ag])_(\d+)_\w*\(buf_dyn_shmem_ptr, [^;]*?(\w+)_ptr")


# An NCHW conv2d input read through an NHWC copy (``cuda_tensorcore.relayout_pays``, ``_relayout``).

#: (layer, ``relayout_pays``): NCHW conv2d layers with 16+ channels per group in whole mma steps go
#: through the NHWC copy; the 1x1 unit-stride unpadded ones (runs of the plane), 17 or 24 channels
#: per group and transposed layers are read in place.
RELAYOUT_CHOICES = {"dense3x3": True, "strided": True, "dilated": True, "grouped": True, "reflect": True,
                    "channel_blocks": True, "odd_no_bias": False, "odd_channels": False, "pointwise_batch2": False,
                    "pointwise_vector": False, "pointwise_unproven": False, "transposed": False, "transposed_grouped": False}


@pytest.mark.parametrize("dtype", DTYPES)
def test_nchw_inputs_go_through_an_nhwc_copy_where_it_pays(dtype):
    """The rule's choice per layer (``RELAYOUT_CHOICES``); an NHWC input is staged ``[m, k]`` always,
    in place."""
    assert set(RELAYOUT_CHOICES) == set(LAYERS)
    for layer, expected in RELAYOUT_CHOICES.items():
        assert (_staging(layer, dtype) == A_MK) == expected, layer
        assert _staging(layer, dtype, "NHWC") == A_MK
        if expected:
            assert "input_global" in _scheduled(layer, dtype, "sm_90")[2].mod.script()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", sorted(layer for layer, copied in RELAYOUT_CHOICES.items() if copied))
def test_the_nchw_input_read_in_place_computes_torchs_numbers(layer, dtype):
    """The other way for the layers the rule reads through an NHWC copy (a design space of theirs:
    ``alternatives``): A staged ``[k, m]`` from the NCHW input, emulated against torch."""
    request, _, sch = _scheduled(layer, dtype, "sm_90", staging=A_KM)
    assert "input_global" not in sch.mod.script()
    _emulated_matches(request, build.prim_func(request), sch)


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", ("dense3x3", "grouped"))
def test_the_nhwc_copy_is_two_transpose_kernels_and_16_byte_copies(layer, dtype):
    """Through the NHWC copy: a transpose kernel for the input and one for the weight, each reading
    its tensor and writing its copy through a shared tile; the GEMM reads only the copies, in 16-byte
    vectors (``cp.async`` 16 bytes in a pipeline), A with plain ``ldmatrix``.  (Spills: on real layers,
    ``test_resnet_layers_through_the_nhwc_copy_compile_without_spills``.)"""
    source, ptx = _ptx_and_source(layer, dtype, "sm_90")
    kernels = [k for k in re.split(r'extern "C" __global__', source)[1:] if not k.split("{")[0].endswith(";\n")]
    assert len(kernels) == 3
    for kernel, tensor in zip(kernels, ("weight", "input")):
        signature, body = kernel.split("{", 1)
        assert re.findall(r"(\w+)_ptr,|(\w+)_ptr\)", signature) == [(tensor, ""), ("", f"{tensor}_global")]
        assert f"__shared__ alignas(64) {'float' if dtype == 'tf32' else ''}" in body or "_shared_ptr[" in body
        assert "mma" not in body
    gemm = kernels[2]
    assert "input_ptr" not in gemm and "weight_ptr" not in gemm
    assert re.search(r"\*\((uint4|float4)\*\)\(input_global_ptr \+ ", gemm)
    assert re.search(r"\*\((uint4|float4)\*\)\(weight_global_ptr \+ ", gemm)
    assert PTX_MMA[dtype] in ptx and "ldmatrix.sync.aligned.m8n8.x4.trans" not in ptx
    source, _ = _ptx_and_source(layer, dtype, "sm_90", pipelined=True)
    copies = {(tensor, int(size)) for _, size, tensor in CP_ASYNC_COPY.findall(source)}
    assert copies == {("input_global", 16), ("weight_global", 16)}


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_transpose_tile_reads_rows_and_writes_channels(dtype):
    """The input's transpose kernel on 1x32x12x12: tiles of 32 channels x 4 whole rows (48 pixels, up to
    ``TRANSPOSE_PIXELS``), 256 threads; each channel's row of the tile padded from 48 elements to an
    odd number of 4-byte words (33 of float16, 65 of float32), so that the threads reading down a
    column (consecutive channels of one pixel) hit 32 banks."""
    source = _cuda_source("dense3x3", dtype, "sm_90")
    kernel = source.split("__restrict__ input_ptr")[-1]
    row = 65 if dtype == "tf32" else 66
    assert f"input_shared_ptr[{32 * row}];" in kernel
    assert re.search(r"__launch_bounds__\(256\) conv_kernel_1\(\w+\* __restrict__ input_ptr", source)


#: ResNet-50's 3x3 layers at batch 32 (tiles of 64-128 x 64-128: the register budget's edge)
RESNET_3X3_BATCH_32 = [(ConvSpec.conv2d(c, c, 3, padding=1, bias=False), (32, c, s, s)) for c, s in ((64, 56), (128, 28), (256, 14))]


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", range(len(RESNET_3X3_BATCH_32)))
def test_resnet_layers_through_the_nhwc_copy_compile_without_spills(layer, dtype, arch, tmp_path):
    """The rule's kernels (two transposes and the GEMM) for ResNet-50's 3x3 layers at batch 32 in NCHW:
    ptxas spills nothing on sm_80 (where tiles of A staged ``[m, k]`` keep to ``SM80_MK_FRAGMENTS``) or
    sm_90."""
    spec, shape = RESNET_3X3_BATCH_32[layer]
    request, target = _request(spec, shape, dtype), resolve(f"cuda/{arch}")
    func, workload = build.prim_func(request), build.workload_of(request)
    tile, sch = CudaTensorCore().tile_and_schedule(func, workload, target)
    assert tile.a_staged == A_MK and tile.input_vector * tile.element_bytes == 16
    assert arch == "sm_90" or tile.frags_m * tile.frags_n <= cuda_tensorcore.SM80_MK_FRAGMENTS
    with compile_context(target):
        source = cuda_binary.device_source(tvm.compile(sch.mod, target=target))
    report = ptxas_report(source, arch, tmp_path)
    assert len(report) == 3 and all((stack, stores, loads) == (0, 0, 0) for stack, stores, loads, _ in report)


def _module_path(layer: str, dtype: str, layout: str = "NCHW"):
    """(request, function, schedule, packing) as a module call schedules ``layer``
    (``build.schedule(prepacked=True)``; searches and exported libraries take torch's weight)."""
    spec, shape = LAYERS[layer]
    request = _request(spec, shape, dtype, layout=layout)
    scheduled = build.schedule(request, resolve("cuda/sm_90"), prepacked=True)
    assert scheduled.rule == "cuda-tensorcore"
    func = build.prim_func(request, scheduled.weight_block)
    sch = s_tir.Schedule(func)
    scheduled.trace.apply_to_schedule(sch, remove_postproc=False)
    return request, func, sch, scheduled.weight_block


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", ["dense3x3", "grouped", "reflect", "channel_blocks"])
def test_a_module_packs_the_weight_once_for_the_nhwc_copy_path(layer, dtype):
    """On the module path the weight of a layer read through an NHWC copy is packed ``[co, kh, kw,
    ci/groups]`` once per module (``compute.ChannelsLastWeight``, the pack kernel's compute), so only
    the input is transposed per call; emulated with the packed weight, it computes torch's numbers."""
    request, func, sch, packing = _module_path(layer, dtype)
    assert packing == compute.ChannelsLastWeight()
    text = sch.mod.script()
    assert "input_global" in text and "weight_global" not in text
    _emulated_matches(request, func, sch, packing)


@needs_nvcc
def test_the_packed_weight_is_read_in_16_byte_copies_and_packed_on_the_gpu(tmp_path):
    """The module's kernels for a layer through the NHWC copy: the pack kernel (one thread per packed
    element), the input's transpose and the GEMM, which reads the packed weight in 16-byte vectors."""
    request, _, sch, packing = _module_path("dense3x3", "float16")
    target = resolve("cuda/sm_90")
    mod = build._with_weight_pack(sch.mod, request, packing, target)
    with compile_context(target):
        source = cuda_binary.device_source(tvm.compile(mod, target=target))
    assert re.search(r"\*\(uint4\*\)\(weight_ptr \+ ", source)
    assert re.search(r"\*\(uint4\*\)\(input_global_ptr \+ ", source) and "weight_global" not in source
    kernels = set(re.findall(r"__launch_bounds__\((\d+)\) (\w+)\(", source))
    assert (str(GPU_THREADS), f"{build.PACK_ENTRY}_kernel") in kernels
    assert all((stack, stores, loads) == (0, 0, 0) for stack, stores, loads, _ in ptxas_report(source, "sm_90", tmp_path))


def test_both_ways_of_reading_an_nchw_input_are_design_spaces():
    """The rule's choice for an NCHW conv2d is measured by a search: its design spaces hold the
    rule's schedule (through the NHWC copy) and the input read in place, each a different kernel."""
    from compiler import space
    request, target, _ = _scheduled("dense3x3", "float16", "sm_90")
    copied = ["input_global" in s.schedule.mod.script() for s in space.design_spaces(request, target, "ours")]
    assert copied[0] and not all(copied)


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", ("pointwise_vector", "pointwise_batch2", "dense3x3"))
def test_input_of_a_1x1_layer_is_staged_in_16_byte_copies(layer, dtype):
    """A 1x1 layer whose input planes are whole 16-byte vectors stages its input with 16-byte
    loads (A's rows are runs of the plane; ``cp.async`` in a pipeline); an odd plane (7x9) or a
    padded 3x3 layer reads a pixel per copy (2-byte loads for the half types, 4-byte ``cp.async``
    for TF32 in a pipeline).  nvcc compiles each.  (The NCHW input read in place: the rule reads the
    3x3 layer's through an NHWC copy, ``relayout_pays``.)"""
    vector = layer == "pointwise_vector"
    source, _ = _ptx_and_source(layer, dtype, "sm_90", staging=A_KM)
    assert bool(re.search(r"= \*\((uint4|float4)\*\)\(input_ptr \+ ", source)) == vector
    assert "make_uint4(input" not in source
    source, _ = _ptx_and_source(layer, dtype, "sm_90", pipelined=True, staging=A_KM)
    copies = {(tensor, int(size)) for _, size, tensor in CP_ASYNC_COPY.findall(source)}
    expected_input = {16} if vector else ({4} if dtype == "tf32" else set())
    assert {size for tensor, size in copies if tensor == "input"} == expected_input
    assert ("weight", 16) in copies and "make_uint4(input" not in source


@needs_nvcc
def test_gather_detection_sees_lowered_vectors():
    """``gathers`` tells a contiguous vector read from a gathered one in the lowered kernel: 8-pixel
    vectors of 32-pixel blocks over 32-pixel planes are consecutive; of 48-pixel blocks over 24-pixel
    planes TVM's vectorizer cannot prove them so (it gathers; the rule then reads a pixel a copy)."""
    for layer, block_m, gathered in (("pointwise_vector", 32, False), ("pointwise_unproven", 48, True)):
        spec, shape = LAYERS[layer]
        request = _request(spec, shape, "float16")
        config = Config(1, 1, block_m // FRAGMENT, 3, 32, input_vector=8)
        sch = CudaTensorCore.schedule(build.prim_func(request), build.workload_of(request), config)
        assert gathers(sch.mod, "input") == gathered
        assert not gathers(sch.mod, "weight")
        if gathered:       # the rule's own path reads a pixel per copy instead, and nvcc takes it
            target = resolve("cuda/sm_90")
            tile, sch = CudaTensorCore.schedule_contiguous(build.prim_func(request), build.workload_of(request), config)
            assert tile.input_vector == 1 and not gathers(sch.mod, "input")
            with compile_context(target):
                source = cuda_binary.device_source(tvm.compile(sch.mod, target=target))
            assert "make_uint4(input" not in source
            cuda_binary.compile_device_code(source, target, "ptx")


PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")


def ptxas_report(source: str, arch: str, tmp_path: pathlib.Path):
    """[(stack, spill stores, spill loads, registers)] per kernel of ``nvcc -cubin -Xptxas -v``."""
    (tmp_path / "kernel.cu").write_text(source)
    done = subprocess.run(["nvcc", f"-arch={arch}", "-cubin", "-Xptxas", "-v", "kernel.cu", "-o", "kernel.cubin"],
                          cwd=tmp_path, capture_output=True, text=True, check=True)
    spills = [tuple(map(int, m)) for m in PTXAS_SPILLS.findall(done.stderr)]
    registers = [int(r) for r in PTXAS_REGISTERS.findall(done.stderr)]
    assert spills and len(spills) == len(registers), done.stderr
    return [(*s, r) for s, r in zip(spills, registers)]


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", ("dense3x3", "odd_no_bias", "pointwise_batch2", "transposed"))
def test_ptxas_sm90_no_spills_and_fragments_in_registers(layer, dtype, tmp_path):
    """No spills and no stack frame: the [32, 8]-per-fragment local arrays (tensor_intrinsics.py)
    are promoted to registers, and the accumulators fit."""
    source = _cuda_source(layer, dtype, "sm_90")
    for stack, stores, loads, registers in ptxas_report(source, "sm_90", tmp_path):
        assert (stack, stores, loads) == (0, 0, 0)
        assert registers <= 255


def cuobjdump() -> str:
    """``cuobjdump`` from the CUDA toolkit, else from the pip package ``nvidia-cuda-cuobjdump`` (the
    test extra; it disassembles with ``nvidia-cuda-nvdisasm``'s nvdisasm beside it), else ''."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import nvidia.cu13
    except ImportError:
        return ""
    tool = pathlib.Path(list(nvidia.cu13.__path__)[0]) / "bin" / "cuobjdump"
    return str(tool) if tool.exists() else ""


def disassembled(tmp_path: pathlib.Path) -> str:
    """The SASS of the ``kernel.cubin`` that :func:`ptxas_report` wrote in ``tmp_path``."""
    return subprocess.run([cuobjdump(), "-sass", "kernel.cubin"], cwd=tmp_path, capture_output=True, text=True,
                          check=True).stdout


#: SASS of the tensor-core multiply-add on sm_80 and sm_90 (``HMMA.16816.F32`` for float16,
#: ``HMMA.16816.F32.BF16`` for bfloat16, ``HMMA.1688.F32.TF32`` for m16n8k8 TF32): what the
#: mma.sync of the PTX must become.
SASS_HMMA = {"float16": re.compile(r"HMMA\.16816\.F32(?!\.BF16)"), "bfloat16": re.compile(r"HMMA\.16816\.F32\.BF16"),
             "tf32": re.compile(r"HMMA\.1688\.F32\.TF32")}


@needs_nvcc
@pytest.mark.skipif(not cuobjdump(), reason="needs cuobjdump (pip: nvidia-cuda-cuobjdump, the test extra)")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", ("dense3x3", "transposed"))
def test_sass_holds_hmma_and_ldsm(layer, dtype, arch, tmp_path):
    """The machine code, not only the PTX: ptxas turned the mma.sync into HMMA of the layer's operand
    type and the ldmatrix into LDSM (``.trans`` only for A staged ``[k, m]``, the transposed layer's
    NCHW input; TF32: 32-bit shared loads), and the inner loop's operands come from shared memory."""
    source = _cuda_source(layer, dtype, arch)
    in_place = _staging(layer, dtype) == A_KM
    ptxas_report(source, arch, tmp_path)                       # writes kernel.cubin
    sass = disassembled(tmp_path)
    assert f"code for {arch}" in sass
    assert SASS_HMMA[dtype].search(sass), sass[:2000]
    if dtype == "tf32":
        assert "LDSM" not in sass and re.search(r"LDS(\.32)? ", sass)
    else:
        assert ("LDSM.16.MT88.4" in sass) == in_place and "LDSM.16.M88.4" in sass   # ldmatrix .trans (A [k, m]), plain
    assert not [other for other, hmma in SASS_HMMA.items() if other != dtype and hmma.search(sass)]


def _warps_per_sm(gemm: Gemm, config, sms: int) -> float:
    blocks = gemm.batch * -(-gemm.m // config.block_m) * -(-gemm.n // config.block_n)
    return blocks * config.warps_m * config.warps_n / sms


def test_tiles_keep_the_gpu_busy_then_grow_the_warp_tiles():
    """ResNet-50's 3x3 layers at batch 32 (H100: 132 SMs): the deep ones get small warp tiles that
    give the GPU OCCUPANCY_WARPS warps per SM, the shallow ones the largest warp tile that still
    does (measured: tuning_logs/cuda-sm_90/sweep-h100-20261126.json); within the registers'
    ACCUMULATOR_SHARE and 48 KiB of shared memory; no pipeline."""
    target = resolve("cuda/sm_90")
    limit = int(target.attrs["max_shared_memory_per_block"])
    for channels, size, fragments in ((512, 7, 1), (256, 14, 3), (128, 28, 4), (64, 56, 8)):
        gemm = Gemm(batch=1, m=32 * size * size, n=channels, k=channels * 9)
        for element_bytes in (2, 4):
            ranked = ranked_configs(gemm, target, element_bytes)
            config = ranked[0]
            assert _warps_per_sm(gemm, config, 132) >= OCCUPANCY_WARPS
            assert config.frags_m * config.frags_n == fragments and config.stages == 1
            assert config.frags_m * config.frags_n * FRAGMENT * FRAGMENT // 32 <= ACCUMULATOR_SHARE * 255
            assert all(c.shared_bytes() <= limit for c in ranked)
            # no tile with more fragments per warp keeps as many warps busy
            assert not [c for c in ranked if c.frags_m * c.frags_n > fragments
                        and _warps_per_sm(gemm, c, 132) >= OCCUPANCY_WARPS]
    # at batch 1 nothing reaches it: the most warps (one fragment each)
    small = choose_config(Gemm(batch=1, m=14 * 14, n=256, k=256 * 9), target)
    assert small.frags_m * small.frags_n == 1
    # an architecture with fewer SMs reaches it with larger warp tiles
    a100 = choose_config(Gemm(batch=1, m=32 * 14 * 14, n=256, k=256 * 9), resolve("cuda/sm_80"))
    assert a100.frags_m * a100.frags_n >= 3


def test_nhwc_tiles_are_the_measured_ones():
    """NHWC kernels rank by ``NHWC_OCCUPANCY_WARPS`` within the architecture's opt-in shared memory:
    on the sm_90 preset, batch 32, float16, the tiles the H100 sweep measured fastest of all it tried
    (tuning_logs/cuda-sm_90/h100-nhwc-20261127/sweep-occupancies.log), 96x128 ones over the 48 KiB
    static limit among them."""
    target = resolve("cuda/sm_90")
    assert shared_memory_limit(target, "mk") == 227 * 1024 and shared_memory_limit(target) == 48 * 1024
    for (channels, size, taps, out), block in {(128, 28, 9, 128): (96, 128), (256, 14, 9, 256): (96, 128),
                                               (512, 7, 9, 512): (64, 96), (64, 56, 9, 64): (128, 64),
                                               (256, 56, 1, 64): (128, 64)}.items():
        gemm = Gemm(batch=1, m=32 * size * size, n=out, k=channels * taps)
        config = ranked_configs(gemm, target, 2, "mk")[0]
        assert (config.block_m, config.block_n, config.stages, config.a_staged) == (*block, 1, "mk")
        assert _warps_per_sm(gemm, config, 132) >= NHWC_OCCUPANCY_WARPS
        # the same GEMM staged [k, m] (NCHW) keeps its own policy, within the static limit
        assert ranked_configs(gemm, target, 2)[0] == choose_config(gemm, target)
        assert all(c.shared_bytes() <= 48 * 1024 for c in ranked_configs(gemm, target, 2))


def test_an_nhwc_tile_over_48_kib_is_verified_against_the_opt_in_limit(tmp_path):
    """The rule's own 96x128 tile of Conv2d(128, 128, 3) on 32x128x28x28 (channels_last, float16,
    sm_90) stages a 49.5 KB accumulator tile: TVM's verifier passes it against the opt-in limit (and
    fails it against the static one, so the rule would otherwise have fallen back to a smaller tile),
    its one dynamic shared-memory buffer is that size, and ptxas fits it in registers."""
    request = _request(ConvSpec.conv2d(128, 128, 3, padding=1), (32, 128, 28, 28), "float16", layout="NHWC")
    target = resolve("cuda/sm_90")
    tile, sch = CudaTensorCore().tile_and_schedule(build.prim_func(request), build.workload_of(request), target)
    assert (tile.block_m, tile.block_n) == (96, 128) and 48 * 1024 < tile.shared_bytes() <= 227 * 1024
    assert passes_gpu_verification(sch.mod, verifying_target(target, "mk"))
    assert not passes_gpu_verification(sch.mod, target)
    assert _dynamic_shared_buffers(sch, target) == [tile.shared_bytes()]
    if shutil.which("nvcc"):
        with compile_context(target):
            source = cuda_binary.device_source(tvm.compile(sch.mod, target=target))
        for stack, stores, loads, registers in ptxas_report(source, "sm_90", tmp_path):
            assert (stack, stores, loads) == (0, 0, 0) and registers <= 255


def test_a_96x128_nhwc_tile_computes_torchs_numbers():
    """The 96x128 tile (3x4 fragments a warp), emulated on a small layer that pads M to whole blocks."""
    spec, shape = ConvSpec.conv2d(128, 128, 3, padding=1), (1, 128, 10, 10)
    request = _request(spec, shape, "float16", layout="NHWC")
    func, workload = build.prim_func(request), build.workload_of(request)
    tile, sch = CudaTensorCore.schedule_contiguous(func, workload, Config(2, 2, 3, 4, 64, a_staged="mk",
                                                                          input_vector=8))
    assert (tile.block_m, tile.block_n, tile.input_vector) == (96, 128, 8)
    m = _module(spec, "float16")
    x = torch.randn(*shape, dtype=torch.float16)
    assert_output_matches(m, x, _emulate(request, without_tensorize(sch, func).mod, m, x))


def test_a_pipelined_tile_fits_the_shared_memory():
    """``pipeline_stages``: as many stages as fit the limit, at most MAX_STAGES and the chunks."""
    target = resolve("cuda/sm_90")
    limit = int(target.attrs["max_shared_memory_per_block"])
    for config in ranked_configs(Gemm(batch=1, m=8 * 14 * 14, n=256, k=256 * 9), target)[:8]:
        stages = pipeline_stages(config, 256 * 9, limit)
        assert 1 <= stages <= MAX_STAGES and replace(config, stages=stages).shared_bytes() <= limit
        assert stages == MAX_STAGES or replace(config, stages=stages + 1).shared_bytes() > limit


@pytest.mark.parametrize("layer, dtype", [("dense3x3", "float16"), ("odd_no_bias", "float16"),
                                          ("pointwise_batch2", "float16"), ("dense3x3", "tf32"),
                                          ("odd_channels", "tf32")])
def test_shared_memory_model_is_tvms_allocation(layer, dtype):
    """Config.shared_bytes (what choose_config checks against the target's limit) is the size of
    the one ``shared.dyn`` buffer TVM's lowering leaves (staging and accumulator tile merged)."""
    request, target, sch = _scheduled(layer, dtype, "sm_90")
    config = choose_config(gemm_of(s_tir.Schedule(build.prim_func(request)), request.spec)[0], target,
                           element_bytes=4 if dtype == "tf32" else 2, a_staged=_staging(layer, dtype))
    assert _dynamic_shared_buffers(sch, target) == [config.shared_bytes()]


def _dynamic_shared_buffers(sch: s_tir.Schedule, target) -> list:
    """Bytes of each ``shared.dyn`` buffer TVM's lowering leaves in the kernel (it merges them into one)."""
    from tvm.s_tir.pipeline import default_s_tir_pipeline
    lower, _, _ = default_s_tir_pipeline()
    with tvm.transform.PassContext():
        lowered = lower(tvm.tirx.transform.BindTarget(target)(sch.mod)).script()
    return [int(n) for n in re.findall(r'buf_dyn_shmem = T\.alloc_buffer\(\((\d+),\)', lowered)]


@pytest.mark.parametrize("case", ["float32", "float64_tf32", "depthwise", "sm_75", "sm_70", "few_channels_per_group",
                                  "transposed_gcd", "tf32_sm_75", "tf32_depthwise"])
def test_rule_declines_and_cuda_direct_serves(case):
    """Exact float32 (torch's TF32 setting off) stays on cuda-direct, as does what the tensor
    cores cannot take; a TF32 request there is served with its rounded operands by cuda-direct."""
    if case == "float64_tf32":
        with pytest.raises(ValueError, match="TF32 is a mode of float32 forward kernels"):
            KernelRequest(ConvSpec.conv2d(32, 64, 3), (1, 32, 12, 12), "float64", tf32=True)
        return
    spec, shape, dtype, arch = {
        "float32": (ConvSpec.conv2d(32, 64, 3, padding=1), (1, 32, 12, 12), "float32", "sm_90"),
        "tf32_sm_75": (ConvSpec.conv2d(32, 64, 3, padding=1), (1, 32, 12, 12), "tf32", "sm_75"),
        "tf32_depthwise": (ConvSpec.conv2d(32, 32, 3, padding=1, groups=32), (1, 32, 12, 12), "tf32", "sm_90"),
        "depthwise": (ConvSpec.conv2d(32, 32, 3, padding=1, groups=32), (1, 32, 12, 12), "float16", "sm_90"),
        "sm_75": (ConvSpec.conv2d(32, 64, 3, padding=1), (1, 32, 12, 12), "float16", "sm_75"),
        "sm_70": (ConvSpec.conv2d(32, 64, 3, padding=1), (1, 32, 12, 12), "bfloat16", "sm_70"),
        "few_channels_per_group": (ConvSpec.conv2d(32, 64, 3, padding=1, groups=4), (1, 32, 8, 8),
                                   "float16", "sm_80"),
        "transposed_gcd": (ConvSpec.conv_transpose2d(32, 32, 3, stride=2, dilation=2), (1, 32, 5, 5),
                           "float16", "sm_90"),
    }[case]
    request, target = _request(spec, shape, dtype), resolve(f"cuda/{arch}")
    assert CudaTensorCore().apply(build.prim_func(request), build.workload_of(request), target) is None
    scheduled = build.schedule(request, target)
    assert scheduled.rule == "cuda-direct"
    if request.tf32:
        m = _module(spec, dtype)
        x = torch.randn(*shape)
        assert_tf32_numbers(m, x, _emulate(request, scheduled.mod, m, x))


def test_too_small_layer_declines_and_still_gets_torchs_numbers():
    """Fewer output pixels than one fragment row (GEMM M < 16): cuda-direct serves, correctly."""
    spec, shape = ConvSpec.conv2d(16, 32, 3), (1, 16, 4, 5)
    request, target = _request(spec, shape, "float16"), resolve("cuda/sm_90")
    assert CudaTensorCore().apply(build.prim_func(request), build.workload_of(request), target) is None
    rule, kernel = emulate(spec, shape, "float16", target)
    assert rule == "cuda-direct"
    m = _module(spec, "float16")
    x = torch.randn(*shape, dtype=torch.float16)
    y = x.new_empty(request.output_shape)
    kernel(x, m.weight.detach(), m.bias.detach(), y)
    assert_output_matches(m, x, y)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_registered_first_for_half_types_and_tf32(dtype, arch):
    spec, shape = LAYERS["dense3x3"]
    assert build.schedule(_request(spec, shape, dtype), resolve(f"cuda/{arch}")).rule == "cuda-tensorcore"


def test_gemm_view_of_a_grouped_strided_conv():
    spec, shape = ConvSpec.conv2d(64, 96, 3, stride=2, padding=1, groups=2), (2, 64, 9, 9)
    request = _request(spec, shape, "float16")
    gemm, _ = gemm_of(s_tir.Schedule(build.prim_func(request)), spec)
    assert gemm == Gemm(batch=2, m=2 * 5 * 5, n=48, k=32 * 9)


def _tvm_layout_functions():
    """TVM's ``shared_16x16_to_ldmatrix_32x8_layout`` and its inverse, read from the installed
    ``tvm/s_tir/tensor_intrin/cuda.py`` without importing it (the import registers every target's
    intrinsics: 30-80 s on two cores): the two plain functions are compiled on their own."""
    root = pathlib.Path(importlib.util.find_spec("tvm").origin).parent
    tree = ast.parse((root / "s_tir" / "tensor_intrin" / "cuda.py").read_text())
    names = ("shared_16x16_to_ldmatrix_32x8_layout", "ldmatrix_32x8_to_shared_16x16_layout")
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    assert len(functions) == 2
    namespace = {}
    exec(compile(ast.Module(body=functions, type_ignores=[]), "tvm-cuda-intrinsics", "exec"), namespace)
    return namespace[names[0]], namespace[names[1]]


def test_fragment_layout_is_tvms_ldmatrix_layout():
    to_fragment, to_tile = _tvm_layout_functions()
    cells = [(i, j) for i in range(FRAGMENT) for j in range(FRAGMENT)]
    assert [fragment_layout(i, j) for i, j in cells] == [to_fragment(i, j) for i, j in cells]
    assert sorted(fragment_layout(i, j) for i, j in cells) == [(t, e) for t in range(32) for e in range(8)]
    for lane in range(32):
        for element in range(8):
            assert tile_position(lane, element) == to_tile(lane, element)
            assert fragment_layout(*tile_position(lane, element)) == (lane, element)


# ------------------------------------------------------------------------------ TF32
def _tf32_by_arithmetic(values: torch.Tensor) -> torch.Tensor:
    """TF32 rounding from its definition, in float64: the nearest multiple of the TF32 spacing at
    the value's exponent (10 fraction bits; the spacing of the smallest exponent below it, as
    subnormals), ties away from zero, past the largest finite TF32 value infinity."""
    v = values.double()
    exponent = torch.floor(torch.log2(v.abs())).clamp(min=-126)
    spacing = torch.exp2(exponent - 10)
    rounded = torch.sign(v) * torch.floor(v.abs() / spacing + 0.5) * spacing
    rounded = torch.where(v == 0, v, rounded)
    return torch.where(v.isfinite(), rounded, v).float()


def test_round_to_tf32_is_cvt_rna():
    """``targets.cuda.round_to_tf32`` (what the compute of a TF32 request and the intrinsics'
    descriptions use), compiled for the CPU, against TF32's definition on random bit patterns of
    every exponent, halfway cases, carries into the exponent, subnormals, zeros and infinities."""
    from tvm import te
    generator = torch.Generator().manual_seed(0)
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (20000,), generator=generator, dtype=torch.int64).to(torch.int32)
    finite = bits.view(torch.float32)
    finite = finite[finite.isfinite()]
    halfway = (torch.randint(0, 2 ** 23, (2000,), generator=generator, dtype=torch.int32).bitwise_and(-0x2000)
               | 0x3F801000).view(torch.float32)                     # [1, 2) exactly between two TF32 values
    special = torch.tensor([0.0, -0.0, 1.0, 1 + 2 ** -11, -(1 + 2 ** -11), 2 - 2 ** -12, 3.4028235e38, -3.4028235e38,
                            1e-40, -1e-40, 2 ** -126, 2 ** -137, float("inf"), float("-inf")])
    values = torch.cat([finite, halfway, -halfway, special, torch.tensor([float("nan")])])
    x = te.placeholder((values.numel(),), "float32", name="x")
    y = te.compute(x.shape, lambda i: round_to_tf32(x[i]), name="y")
    rounded = torch.empty_like(values)
    tvm.compile(te.create_prim_func([x, y]), target=host_target())(values, rounded)
    assert rounded[-1].isnan()                                                       # NaN stays NaN
    rounded, values = rounded[:-1], values[:-1]
    assert torch.equal(rounded.view(torch.int32), _tf32_by_arithmetic(values).view(torch.int32))
    assert torch.equal(rounded.view(torch.int32), tf32(values).view(torch.int32))     # the tests' own twin
    assert not rounded.view(torch.int32).bitwise_and(0x1FFF).any()                   # 10 fraction bits left


def test_tf32_fragment_layouts_are_ptxs():
    """``tf32_layouts`` place each element of a staged tile where PTX's m16n8k8 TF32 fragments hold
    it (PTX ISA "Matrix Fragments for mma.m16n8k8", written out here register by register), and
    ``tf32_positions`` invert them."""
    a_layout, b_layout = tf32_layouts()
    a_position, b_position = tf32_positions()
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for k_half in range(2):
            # A registers a0..a3 of this K half: (m, k) = (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4)
            for register, (m, k) in enumerate([(g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4)]):
                assert a_layout(8 * k_half + k, m) == (lane, 4 * k_half + register)
            for n_half in range(2):
                # B registers b0, b1 of this K half and N half: (k, n) = (t, g), (t + 4, g)
                for register, (k, n) in enumerate([(t, g), (t + 4, g)]):
                    assert b_layout(8 * n_half + n, 8 * k_half + k) == (lane, 4 * k_half + 2 * n_half + register)
    cells = [(i, j) for i in range(FRAGMENT) for j in range(FRAGMENT)]
    for layout, position in ((a_layout, a_position), (b_layout, b_position)):
        assert sorted(layout(i, j) for i, j in cells) == [(t, e) for t in range(32) for e in range(8)]
        assert all(position(*layout(i, j)) == (i, j) for i, j in cells)


def test_a_tf32_request_is_its_own_kernel_and_workload():
    """TF32 is part of the request: another kernel-cache key and another workload (so tuning records
    of exact float32 never serve TF32 calls nor the reverse); exact requests keep their keys."""
    spec, shape = LAYERS["dense3x3"]
    exact, rounded = KernelRequest(spec, shape, "float32"), KernelRequest(spec, shape, "float32", tf32=True)
    assert exact != rounded and exact.key + ("tf32",) == rounded.key and len(exact.key) == 7
    assert rounded.describe().endswith("float32 (TF32)")
    assert build.workload_hash(build.workload_module(exact)) != build.workload_hash(build.workload_module(rounded))
    for dtype, operator in (("float16", "forward"), ("bfloat16", "forward"), ("float32", "weight_grad")):
        with pytest.raises(ValueError, match="TF32 is a mode of float32 forward kernels"):
            KernelRequest(spec, shape, dtype, tf32=True, operator=operator)


@pytest.fixture
def torch_tf32_setting():
    """Restores torch's TF32 settings after a test changes them through both of torch's APIs.

    Restored through the legacy ``allow_tf32``, which sets conv and RNN alike: once the new API has
    set conv after the legacy one, torch refuses every later read of ``allow_tf32`` in the process
    (torch.export reads it) even with the new API's values put back one by one (torch 2.13)."""
    cudnn = torch.backends.cudnn
    saved = cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision
    assert saved[0] == saved[1], "the test process started with mixed TF32 settings"
    yield
    cudnn.allow_tf32 = saved[0] == "tf32"
    assert (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) == saved
    assert cudnn.allow_tf32 == (saved[0] == "tf32")          # readable again: not a mixed state


def test_tf32_follows_torchs_setting_for_convolutions(torch_tf32_setting):
    """A call may use TF32 exactly where torch's cuDNN convolution may: float32 on CUDA while
    ``torch.backends.cudnn.allow_tf32`` (or the newer ``conv.fp32_precision``) says so, read at
    each call; the request is TF32 only on a target with TF32 tensor cores (sm_80+)."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    torch.backends.cudnn.allow_tf32 = True                              # torch's default
    assert ops.tf32_allowed(torch.float32, cuda)
    assert not ops.tf32_allowed(torch.float32, cpu) and not ops.tf32_allowed(torch.float16, cuda)
    assert not ops.tf32_allowed(torch.float64, cuda)
    torch.backends.cudnn.allow_tf32 = False
    assert not ops.tf32_allowed(torch.float32, cuda)
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    assert ops.tf32_allowed(torch.float32, cuda)
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    assert not ops.tf32_allowed(torch.float32, cuda)

    spec, shape = LAYERS["dense3x3"]
    meta = torch.device("meta")                                         # plans the call, compiles nothing

    def planned(target: str, tf32: bool) -> KernelRequest:
        _, kernel, request = ops.plan(spec, shape, torch.float32, meta, None, Epilogue(), resolve(target), False,
                                      spec.weight_shape, (spec.out_channels,), tf32)
        assert kernel is None
        return request

    assert planned("cuda/sm_90", True).tf32 and planned("cuda/sm_80", True).tf32
    assert not planned("cuda/sm_75", True).tf32 and not planned("cuda/sm_90", False).tf32
    assert not planned("llvm", True).tf32


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("layer", ["dense3x3", "transposed"])
def test_float32_modules_on_the_gpu_follow_torchs_tf32_setting(layer, torch_tf32_setting):
    """On an sm_80+ GPU a float32 layer runs on TF32 tensor cores while torch allows TF32, in
    exact float32 once it does not (the same module, the setting changed between calls), each
    within its bound."""
    spec, shape = LAYERS[layer]
    cls = compiler.ConvTranspose2d if spec.transposed else compiler.Conv2d
    m = cls(**spec.constructor_args(), device="cuda")
    m.tuning_database = False
    x = torch.randn(*shape, device="cuda")
    tensor_cores = torch.cuda.get_device_capability()[0] >= 8
    for allowed in (True, False, True):
        torch.backends.cudnn.allow_tf32 = allowed
        with torch.no_grad():
            y = m(x)
        assert m.last_request.tf32 == (allowed and tensor_cores)
        assert m.schedule == ("cuda-tensorcore" if m.last_request.tf32 else "cuda-direct")
        assert_output_matches(m, x, y, operand_roundoff=TF32_ROUNDOFF if m.last_request.tf32 else 0.0)


@pytest.mark.parametrize("layer,dtype", [("dense3x3", "float16"), ("transposed", "bfloat16")])
def test_other_tiles_are_design_spaces_that_compute_torchs_numbers(layer, dtype):
    """The rule's tile choice is searchable: its design spaces are its own schedule and the next
    verified tiles in rank order (``alternatives``), each marked with the rule, each a different
    kernel; two of them, emulated, compute torch's numbers."""
    from compiler import records, space
    request, target, sch = _scheduled(layer, dtype, "sm_80")
    spaces = space.design_spaces(request, target, "ours")
    assert 1 < len(spaces) <= SEARCH_TILES
    assert records.trace_key(spaces[0].schedule.trace) == records.trace_key(build.schedule(request, target).trace)
    assert len({records.trace_key(s.schedule.trace) for s in spaces}) == len(spaces)
    assert all(records.rule_mark(s.schedule.trace) == records.RuleMark("cuda-tensorcore", CudaTensorCore.version)
               for s in spaces)
    spec, shape = LAYERS[layer]
    m = _module(spec, dtype)
    x = torch.randn(*shape, dtype=TORCH_DTYPE[request.dtype])
    for alternative in (spaces[1], spaces[-1]):
        y = _emulate(request, without_tensorize(alternative.schedule, build.prim_func(request)).mod, m, x)
        assert_output_matches(m, x, y)


# Split-K (``Config.split_k``): the slices' GEMMs (``rfactor``) in one kernel, their sum in a second.

#: (layer, operand type, layout) the emulation splits: every staging the rule has (A [k, m] and
#: [m, k], channel blocks, K padded to whole chunks, groups, the transposed form's phases, TF32)
SPLIT_CASES = [("dense3x3", "float16", "NCHW"), ("odd_channels", "bfloat16", "NCHW"),
               ("odd_no_bias", "tf32", "NCHW"), ("grouped", "float16", "NCHW"),
               ("transposed", "bfloat16", "NCHW"), ("transposed_grouped", "float16", "NCHW"),
               ("channel_blocks", "float16", "NHWC"), ("strided", "tf32", "NHWC"), ("dense3x3", "bfloat16", "NHWC")]


def _split(layer: str, operands: str, layout: str, slices=max, epilogue=()):
    """(request, function, schedule) of the rule's tile for ``layer`` split into ``slices(candidates)``
    K slices, the candidates of slices of one chunk or more (``MIN_SLICE_K`` is a performance
    threshold: the test layers' K is a few chunks; a K of one chunk is cut into 16-wide chunks)."""
    spec, shape = LAYERS[layer]
    request, target = _request(spec, shape, operands, epilogue, layout), resolve("cuda/sm_90")
    func, workload = build.prim_func(request), build.workload_of(request)
    tile, _ = CudaTensorCore().tile_and_schedule(func, workload, target)
    gemm = gemm_of(s_tir.Schedule(func), spec, layout)[0]
    if gemm.k <= tile.chunk_k:                  # one chunk: split chunks of one mma step instead
        tile = replace(tile, chunk_k=FRAGMENT)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cuda_tensorcore, "MIN_SLICE_K", FRAGMENT)
        candidates = split_candidates(gemm, tile, spec)
        assert candidates, f"{layer}: K of {gemm.k} cannot be split"
        tile, sch = CudaTensorCore.schedule_contiguous(func, workload, replace(tile, split_k=slices(candidates)))
    return request, func, sch


@pytest.mark.parametrize("layer,dtype,layout", SPLIT_CASES)
def test_split_k_computes_torchs_numbers(layer, dtype, layout):
    """The most slices the layer's K allows, emulated: the workspace holds every slice's partial
    sums and the second kernel adds them up, un-pads, interleaves phases, adds the bias, casts."""
    request, func, sch = _split(layer, dtype, layout)
    assert [i.kind.name for i in sch.trace.insts].count("RFactor") == 1
    _emulated_matches(request, func, sch)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_split_k_applies_the_fused_epilogue_in_the_second_kernel(layout):
    """Residual add and ReLU after the slices are summed (not per slice)."""
    spec, shape = LAYERS["dense3x3"]
    request, func, sch = _split("dense3x3", "float16", layout, epilogue=("add", "relu"))
    m = _module(spec, "float16")
    x = torch.randn(*shape, dtype=torch.float16)
    residual = torch.randn(request.output_shape, dtype=torch.float16)
    y = ops.new_output(x, request.output_shape, SimpleNamespace(request=request))
    tensors = [x, m.weight.detach(), m.bias.detach(), residual, y]
    if layout == "NHWC":
        tensors = [ops.in_layout(t, "NHWC") if t.dim() == 4 else t for t in tensors]
    compile_serialised(without_tensorize(sch, func).mod)(*tensors)
    exact = torch.relu(torch.nn.functional.conv2d(x.double(), m.weight.double(), m.bias.double(), padding=1)
                       + residual.double())
    magnitude = torch.nn.functional.conv2d(x.double().abs(), m.weight.double().abs(), m.bias.double().abs(),
                                           padding=1) + residual.double().abs()
    terms = spec.in_channels * 9 + 2      # the reference bound, the residual one more term
    bound = terms * UNIT_ROUNDOFF[torch.float32] * magnitude + UNIT_ROUNDOFF[torch.float16] * exact.abs() + 1e-7
    assert bool(((y.double() - exact).abs() <= bound).all())


def test_split_k_count_is_a_sampled_decision_any_value_of_which_computes_torchs_numbers():
    """The slice count is the design space's ``sample_categorical`` over ``split_candidates``, the
    rule's count its default; the trace replayed with another count is a different, correct kernel."""
    request, func, sch = _split("dense3x3", "float16", "NCHW", slices=min)
    (inst,) = [i for i in sch.trace.insts if i.kind.name == "SampleCategorical"]
    candidates = [int(c) for c in inst.attrs[0]]
    assert len(candidates) > 1 and int(sch.trace.decisions[inst]) == 0      # the rule's: the fewest
    other = s_tir.Schedule(func)
    sch.trace.with_decision(inst, len(candidates) - 1, remove_postproc=False).apply_to_schedule(
        other, remove_postproc=False)
    assert other.mod.script() != sch.mod.script()
    _emulated_matches(request, func, other)


#: ResNet-50's deep 3x3 layer at batch 1: a GEMM of 49 x 512 x 4608
DEEP_BATCH_1 = (ConvSpec.conv2d(512, 512, 3, padding=1, bias=False), (1, 512, 7, 7))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_split_k_is_chosen_where_the_blocks_leave_the_gpu_idle(layout):
    """Batch 1: the fewest slices (of at least ``MIN_SLICE_K``) whose blocks give the GPU the warps
    the tiles aim for; batch 32 fills it without."""
    target = resolve("cuda/sm_90")
    spec, (_, channels, size, _) = DEEP_BATCH_1
    for batch in (1, 32):
        request = KernelRequest(spec, (batch, channels, size, size), "float16", None, layout=layout)
        func, workload = build.prim_func(request), build.workload_of(request)
        tile, _ = CudaTensorCore().tile_and_schedule(func, workload, target)
        wanted = (NHWC_OCCUPANCY_WARPS if tile.a_staged == A_MK else OCCUPANCY_WARPS) * 132
        gemm = gemm_of(s_tir.Schedule(func), spec, layout)[0]
        warps = _warps_per_sm(gemm, tile, 132) * 132
        if batch == 32:
            assert tile.split_k == 1 and warps >= wanted
            continue
        candidates = split_candidates(gemm, tile, spec)
        assert tile.split_k in candidates and warps * tile.split_k >= wanted
        assert all(warps * fewer < wanted for fewer in candidates if fewer < tile.split_k)
        assert -(-gemm.k // tile.chunk_k) % tile.split_k == 0
        assert gemm.k // tile.split_k >= cuda_tensorcore.MIN_SLICE_K


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES)
def test_split_k_kernels_compile_with_mma_sync_and_no_spills(dtype, tmp_path):
    """The batch-1 deep layer as the rule splits it, for sm_90: two kernels, the slices' with
    mma.sync (and ldmatrix for the half types), the sum's without, after the two transposes of its
    input and weight (``relayout``); no spills."""
    spec, shape = DEEP_BATCH_1
    request = _request(spec, shape, dtype)
    target = resolve("cuda/sm_90")
    func, workload = build.prim_func(request), build.workload_of(request)
    tile, sch = CudaTensorCore().tile_and_schedule(func, workload, target)
    assert tile.split_k > 1
    with compile_context(target):
        source = cuda_binary.device_source(tvm.compile(sch.mod, target=target))
    kernels = [k for k in re.split(r'extern "C" __global__', source)[1:] if not k.split("{")[0].endswith(";\n")]
    assert len(kernels) == 4                   # (the definitions, not the declarations before them)
    transposes, kernels = kernels[:2], kernels[2:]
    assert all("_global_ptr" in k.split("{")[0] and "mma" not in k for k in transposes)
    assert PTX_MMA[dtype].split(".")[0] + "." in kernels[0] and "mma" not in kernels[1]
    # the second kernel's only memory: the workspace and the output (the sum in a register)
    assert kernels[1].split("{")[0].count("__restrict__") == 2
    ptx = cuda_binary.compile_device_code(source, target, "ptx").decode()
    assert PTX_MMA[dtype] in ptx and (dtype == "tf32" or "ldmatrix" in ptx)
    report = ptxas_report(source, "sm_90", tmp_path)
    assert len(report) == 4 and all((stack, stores, loads) == (0, 0, 0) for stack, stores, loads, _ in report)


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_split_weight_read_in_place_that_tvm_would_gather_is_read_an_element_at_a_time(dtype):
    """Conv2d(128, 128, 3) at batch 1 with its NCHW input read in place (the design space beside the
    rule's NHWC copy) splits K in 3, and TVM cannot prove the weight's 16-byte vectors consecutive
    across a slice's K (``(k // 9, k % 9 // 3, k % 3)``): it would gather them, in an 8-half
    ``make_uint4`` nvcc rejects.  ``schedule_contiguous`` reads that weight an element at a time; nvcc
    compiles the kernel and, emulated, it computes torch's numbers."""
    spec, shape = ConvSpec.conv2d(128, 128, 3, padding=1), (1, 128, 28, 28)
    request, target = _request(spec, shape, dtype), resolve("cuda/sm_90")
    func, workload = build.prim_func(request), build.workload_of(request)
    gemm = gemm_of(s_tir.Schedule(func), spec)[0]
    tile = completed(ranked_configs(gemm, target, 4 if dtype == "tf32" else 2, A_KM)[0], gemm, workload, target)
    assert tile.split_k == 3 and tile.weight_vector is None
    tile, sch = CudaTensorCore.schedule_contiguous(func, workload, tile)
    assert tile.weight_vector == 1 and not gathers(sch.mod, "weight")
    with compile_context(target):
        source = cuda_binary.device_source(tvm.compile(sch.mod, target=target))
    assert "make_uint4(weight" not in source
    cuda_binary.compile_device_code(source, target, "ptx")
    _emulated_matches(request, func, sch)


def test_the_unsplit_tile_is_the_first_other_design_space():
    """Whether split-K's second kernel pays is for a search to measure: the rule's tile without the
    split is the design space after the rule's own."""
    from compiler import space
    spec, shape = DEEP_BATCH_1
    request, target = _request(spec, shape, "float16"), resolve("cuda/sm_90")
    spaces = space.design_spaces(request, target, "ours")
    kinds = [[i.kind.name for i in s.schedule.trace.insts] for s in spaces]
    assert "RFactor" in kinds[0] and "RFactor" not in kinds[1]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layer", [(compiler.Conv2d, dict(in_channels=512, out_channels=512, kernel_size=3, padding=1),
                                    (1, 512, 7, 7)),
                                   (compiler.ConvTranspose2d, dict(in_channels=512, out_channels=256, kernel_size=4,
                                                                   stride=2, padding=1), (1, 512, 8, 8))],
                         ids=["conv3x3", "transposed"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_split_k_modules_on_the_gpu_match_torch(layer, dtype, channels_last):
    """Batch-1 deep layers, which the rule splits on sm_80+ GPUs (up to 132 SMs), run and match."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("tensor cores need sm_80+")
    cls, args, shape = layer
    m = cls(**args, device="cuda", dtype=TORCH_DTYPE[dtype])
    m.tuning_database = False
    x = torch.randn(*shape, device="cuda", dtype=TORCH_DTYPE[dtype])
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        y = m(x)
    assert m.schedule == "cuda-tensorcore"
    assert_output_matches(m, x, y)


@pytest.mark.parametrize("layer,dtype,layout", [("dense3x3", "float16", "NCHW"),
                                                ("channel_blocks", "bfloat16", "NHWC")])
def test_the_rule_tile_with_a_pipeline_is_a_design_space(layer, dtype, layout):
    """The pipeline depth is searchable: the rule's tile with the deepest ``cp.async`` pipeline that
    fits its shared memory (``pipeline_stages``) is a design space right after the rule's own (and
    its unsplit form); emulated (the pipeline dropped), it computes torch's numbers."""
    from compiler import space
    request, target, sch = _scheduled(layer, dtype, "sm_90", layout=layout)
    spaces = space.design_spaces(request, target, "ours")
    unsplit = int("RFactor" in [i.kind.name for i in spaces[0].schedule.trace.insts])
    (pipelined,) = [s for s in spaces[1:2 + unsplit] if "software_pipeline_stage" in str(s.schedule.trace)]
    stages = re.search(r'"software_pipeline_stage", ann_val=\[0, 0, (\d+)\]', str(pipelined.schedule.trace))
    assert stages and int(stages.group(1)) + 1 > 1
    assert "software_pipeline_stage" not in str(spaces[0].schedule.trace)
    spec, shape = LAYERS[layer]
    m = _module(spec, dtype)
    x = torch.randn(*shape, dtype=TORCH_DTYPE[request.dtype])
    assert_output_matches(m, x, _emulate(request, without_tensorize(pipelined.schedule, build.prim_func(request)).mod,
                                         m, x))


# The transposed form's weight packed per output phase (``compute.PhaseTaps``), as modules run it.

def _phase_packed(layer: str, operands: str, layout: str):
    """(request, packed function, the rule's schedule of it) of a transposed layer on the module path
    (``_module_path``): its weight packed per phase."""
    request, func, sch, packing = _module_path(layer, operands, layout)
    assert packing == compute.PhaseTaps(layout)
    return request, func, sch


def _pack_on_host(request: KernelRequest, packing, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` packed by the pack kernel's compute, compiled for the host."""
    pack = tvm.compile(te.create_prim_func(compute.pack_weight(request.spec, request.dtype, packing)),
                       target=host_target())
    packed = torch.empty(compute.packed_weight_shape(request.spec, packing), dtype=weight.dtype)
    pack(weight.detach(), packed)
    return packed


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", ["transposed", "transposed_grouped"])
def test_phase_packed_transposed_weight_computes_torchs_numbers(layer, dtype, layout):
    """Module calls give the transposed form its weight packed per phase; emulated, with the weight
    packed by the pack kernel's compute, the kernel computes torch's numbers."""
    request, func, sch = _phase_packed(layer, dtype, layout)
    _emulated_matches(request, func, sch, compute.PhaseTaps(layout))


@needs_nvcc
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_phase_packed_weight_is_staged_in_16_byte_copies(dtype, layout, tmp_path):
    """Packed per phase, a transposed layer's weight rows are runs of K: 16-byte loads (torch's
    layout: an element per load, ``test_nhwc_transposed_input_is_staged_in_16_byte_copies``);
    with the module's pack kernel, one thread per element; no spills."""
    request, func, sch = _phase_packed("transposed", dtype, layout)
    target = resolve("cuda/sm_90")
    mod = build._with_weight_pack(sch.mod, request, compute.PhaseTaps(layout), target)
    with compile_context(target):
        source = cuda_binary.device_source(tvm.compile(mod, target=target))
    assert re.search(r"\*\((uint4|float4)\*\)\(weight_ptr \+ ", source)
    kernels = set(re.findall(r"__launch_bounds__\((\d+)\) (\w+)\(", source))
    assert (str(GPU_THREADS), f"{build.PACK_ENTRY}_kernel") in kernels
    for stack, stores, loads, registers in ptxas_report(source, "sm_90", tmp_path):
        assert (stack, stores, loads) == (0, 0, 0) and registers <= 255


def test_the_transposed_form_and_nchw_inputs_through_an_nhwc_copy_ask_for_packed_weights():
    """Per phase for the transposed form; ``[co, kh, kw, ci/groups]`` for a conv2d whose NCHW input
    is read through an NHWC copy (``relayout_pays``); torch's layout for the others (an NHWC kernel
    reads that layout as its own)."""
    rule, target = CudaTensorCore(), resolve("cuda/sm_90")
    for layer in ("dense3x3", "transposed", "pointwise_batch2", "odd_no_bias"):
        spec, shape = LAYERS[layer]
        for layout in ("NCHW", "NHWC"):
            workload = build.workload_of(_request(spec, shape, "float16", layout=layout))
            expected = compute.PhaseTaps(layout) if spec.transposed else \
                compute.ChannelsLastWeight() if layout == "NCHW" and RELAYOUT_CHOICES[layer] else None
            assert rule.weight_block(workload, target) == expected, (layer, layout)
    # where the two layouts have one shape (16 channels per group, a 16x16 kernel) nothing is packed
    workload = build.workload_of(_request(ConvSpec.conv2d(16, 16, 16, padding=8), (1, 16, 20, 20), "float16"))
    assert cuda_tensorcore.relayout_pays(workload) and rule.weight_block(workload, target) is None
    # a layer the rule does not take gets cuda-direct's torch-layout weight
    spec = ConvSpec.conv_transpose2d(32, 16, 3, stride=2, dilation=2)
    scheduled = build.schedule(_request(spec, (1, 32, 8, 8), "float16"), target, prepacked=True)
    assert scheduled.rule == "cuda-direct" and scheduled.weight_block is None


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_transposed_modules_on_the_gpu_pack_their_weight_per_phase(channels_last):
    """A half-type ConvTranspose2d on an sm_80+ GPU runs with its weight packed per phase, and packs
    it again after an in-place update."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("tensor cores need sm_80+")
    m = compiler.ConvTranspose2d(64, 32, 4, stride=2, padding=1, device="cuda", dtype=torch.float16)
    m.tuning_database = False
    x = torch.randn(2, 64, 16, 16, device="cuda", dtype=torch.float16)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        y = m(x)
    assert m.schedule == "cuda-tensorcore"
    assert m.kernel.weight_block == compute.PhaseTaps("NHWC" if channels_last else "NCHW")
    assert_output_matches(m, x, y)
    with torch.no_grad():
        m.weight.mul_(-0.5)
        y = m(x)
    assert_output_matches(m, x, y)


@st.composite
def _tensorcore_cases(draw):
    """A random layer of ``test_random_configs`` with 16x its channels (16-48 per group: the rule
    takes it), an operand type, a layout, and whether to split K (into a random count)."""
    transposed = draw(st.booleans())
    (in_ch, out_ch, kernel), kw, shape = draw(conv_transpose2d_cases() if transposed else conv2d_cases())
    make = ConvSpec.conv_transpose2d if transposed else ConvSpec.conv2d
    spec = make(16 * in_ch, 16 * out_ch, kernel, **kw)
    return spec, (shape[0], 16 * shape[1], *shape[2:]), draw(st.sampled_from(DTYPES)), \
        draw(st.sampled_from(["NCHW", "NHWC"])), draw(st.booleans()), draw(st.integers(0, 7))


@settings(max_examples=24, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(_tensorcore_cases())
def test_random_layers_through_the_module_path_compute_torchs_numbers(case):
    """Random layers (groups, stride, dilation, padding modes, output padding) as module calls
    schedule them (a transposed layer's weight packed per phase), K split or not, emulated."""
    spec, shape, dtype, layout, split, pick = case
    request, target = _request(spec, shape, dtype, layout=layout), resolve("cuda/sm_90")
    workload = build.workload_of(request)
    rule = CudaTensorCore()
    assume(rule.takes(workload, target))
    packing = rule.weight_block(workload, target)
    func = build.prim_func(request, packing)
    made = rule.tile_and_schedule(func, workload, target)
    assume(made is not None)
    tile, sch = made
    if split:
        gemm = gemm_of(s_tir.Schedule(func), spec, layout)[0]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cuda_tensorcore, "MIN_SLICE_K", FRAGMENT)
            candidates = split_candidates(gemm, tile, spec)
            if candidates:
                tile, sch = CudaTensorCore.schedule_contiguous(
                    func, workload, replace(tile, split_k=candidates[pick % len(candidates)]))
    event(f"{'transposed' if spec.transposed else 'conv2d'} {layout} {'split' if tile.split_k > 1 else 'one kernel'}")
    _emulated_matches(request, func, sch, packing)
